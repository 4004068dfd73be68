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
    unsupported_denoisers: ClassVar[dict[str, str]] = DROPS_A_STREAM

    threshold: float = knob(0.1, min=0.0, max=2.0, unit="rel. change",
                            help="Skip the remaining blocks while the first block's residual changed less than "
                                 "this (relative L1) since the last computed step; higher skips more.")

    def cache_config(self, call):
        # lazy: torch loads only when a technique runs; pages import every technique to build their forms
        from diffusers import FirstBlockCacheConfig
        return FirstBlockCacheConfig(threshold=self.threshold)
