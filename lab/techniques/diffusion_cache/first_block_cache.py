"""First-block cache: diffusers' FirstBlockCacheConfig, the other blocks skipped while the first block's residual
barely changes."""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from lab.techniques.base import knob
from lab.techniques.diffusion_cache.base import DROPS_A_STREAM, DiffusersCacheHook


@dataclass
class FirstBlockCache(DiffusersCacheHook):
    name = "first_block_cache"
    title = "First-block cache"
    summary = ("Always computes the first transformer block; when its residual changed by less than the "
               "threshold (relative mean absolute change since the last fully computed step), the other "
               "blocks are skipped and their cached residual is added instead.")
    paper = "Liu et al. 2024, TeaCache (arXiv:2411.19108); First Block Cache in ParaAttention / diffusers"
    idea = ("How much the rest of the network will change on a step can be guessed from how much the first block's "
            "output changed. First-block cache always computes the first transformer block; when its residual moved "
            "less than a threshold since the last full step, it skips all the other blocks and reuses their cached "
            "residual. Steps where little happens become almost free, and busy steps are still computed. A threshold "
            "set too high skips steps that mattered, and the image drifts.")
    paper_claim = ("TeaCache (the input-change test this cache follows): up to 4.41x faster than Open-Sora-Plan with "
                   "negligible loss of visual quality (-0.07% VBench score), training-free, on GPUs.")
    picture = "block_reuse"
    unsupported_denoisers: ClassVar[dict[str, str]] = DROPS_A_STREAM

    threshold: float = knob(0.1, min=0.0, max=2.0, unit="rel. change",
                            help="Skip the remaining blocks while the first block's residual changed less than "
                                 "this (relative L1) since the last computed step; higher skips more.")

    def cache_config(self, call):
        # lazy: torch loads only when a technique runs; pages import every technique to build their forms
        from diffusers import FirstBlockCacheConfig
        return FirstBlockCacheConfig(threshold=self.threshold)
