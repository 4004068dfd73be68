"""The diffusion side of the lab: digits data, the shipped networks, training, and the pixel-space sampler."""
