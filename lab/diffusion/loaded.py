"""A loaded diffusion model as a run holds it: the denoiser, and the pipeline or classifier around it."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass
class LoadedDenoiser:
    name: str
    kind: str
    model: object
    classifier: object
    architecture: str
    device: str
    dtype: str
    source: str
    tokenizer: object = None
    pipeline: object = None  # a diffusers pipeline the user pointed at (then `model` is its denoiser)
