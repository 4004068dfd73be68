"""The diffusion side of the lab: digits data, the shipped networks, training, and the pixel-space sampler.

Nothing here imports torch, so specs and pages can name the samplers without loading it."""

SAMPLERS = ("ddim", "dpmsolver++")
