"""Sampler-level techniques for diffusion: changing the sampling schedule itself."""
