"""The diffusion side of the lab: digits data, the shipped networks, training, pipelines and the pixel-space sampler."""
