"""Pyramid Attention Broadcast: diffusers' PyramidAttentionBroadcastConfig, attention recomputed only every few
calls inside a band of timesteps."""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from lab.errors import SpecError
from lab.techniques.base import knob
from lab.techniques.diffusion_cache.base import DiffusersCacheHook


@dataclass
class PyramidAttentionBroadcast(DiffusersCacheHook):
    name = "pyramid_attention_broadcast"
    title = "Pyramid Attention Broadcast"
    summary = ("Inside a middle band of timesteps, each attention layer is recomputed only every few calls and "
               "its last output is broadcast to the calls between; MLPs always run.")
    paper = "Zhao et al. 2024, Real-Time Video Generation with Pyramid Attention Broadcast (arXiv:2408.12588)"
    idea = ("Attention outputs barely change in the middle part of the denoising process, while the first noisy steps "
            "and the last detailed ones matter. Pyramid Attention Broadcast recomputes each attention layer only every "
            "few steps inside a middle band of timesteps and broadcasts its last output to the steps between; the MLPs "
            "always run. Attention is the most expensive part of an image or video transformer, so this saves much of "
            "its work. Outputs change a little, more with longer skips.")
    paper_claim = ("Up to 10.5x faster across Open-Sora, Open-Sora-Plan and Latte, training-free with quality "
                   "preserved, reaching real-time generation of up to 720p video (together with its broadcast sequence "
                   "parallelism, measured on 8 H100 GPUs).")
    picture = "block_reuse"
    # diffusers finds attention layers by class and name (*blocks*), which UNets' attentions also match
    denoisers: ClassVar[tuple[str, ...]] = ("dit", "unet")

    skip_range: int = knob(2, min=2, max=20, unit="steps",
                           help="Recompute attention every this many steps inside the band.")
    t_low: int = knob(100, min=0, max=1000, unit="timestep",
                      help="Lower end of the band (training timesteps 0-1000; strictly inside is cached).")
    t_high: int = knob(800, min=0, max=1000, unit="timestep",
                       help="Upper end of the band: early, noisy steps above it are always computed.")

    def check(self) -> None:
        if self.t_low >= self.t_high:
            raise SpecError(f"technique '{self.name}': t_low ({self.t_low}) must be below t_high ({self.t_high})")

    def cache_config(self, call):
        # lazy: torch loads only when a technique runs; pages import every technique to build their forms
        from diffusers import PyramidAttentionBroadcastConfig
        return PyramidAttentionBroadcastConfig(spatial_attention_block_skip_range=self.skip_range,
                                               spatial_attention_timestep_skip_range=(self.t_low, self.t_high),
                                               current_timestep_callback=lambda: call.timestep)
