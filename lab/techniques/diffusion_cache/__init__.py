"""Diffusion feature caching: reuse what the denoiser computed at earlier sampler steps."""
