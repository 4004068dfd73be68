"""transformers' own QuantizedCache with its fp8 backend (per-tensor scale, runs on CPU)."""
from __future__ import annotations

from dataclasses import dataclass

from lab.techniques.slots import CacheTechnique


@dataclass
class Fp8KV(CacheTechnique):
    name = "fp8_kv"
    family = "kv_cache"
    title = "fp8 KV cache (transformers QuantizedCache)"
    summary = ("transformers' QuantizedCache, fp8 (e4m3) backend: one scale per tensor, frozen after the "
               "prefill; new tokens are appended in fp8 (values beyond the prefill's range saturate).")
    paper = "Micikevicius et al., FP8 Formats for Deep Learning, 2022 (arXiv:2209.05433)"

    def make_cache(self, model):
        # lazy: torch loads only when a technique runs; pages import every technique to build their forms
        from transformers import QuantizedCache
        return QuantizedCache(backend="fp8", config=model.config)
