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
    idea = ("fp8 is an 8-bit floating-point format: like any float it has an exponent, so small and large values both "
            "keep a few significant bits. Storing the KV cache in fp8 halves it compared with 16-bit floats and "
            "quarters it compared with fp32, with no integer grid to fit. Here one scale for the whole tensor is fixed "
            "after the prompt, so later values beyond the prompt's range saturate. A speed gain needs hardware with "
            "fp8 support; on a CPU the conversion costs time.")
    paper_claim = ("The format paper, about training rather than KV caches: the E4M3 and E5M2 fp8 formats match the "
                   "quality of 16-bit training on image and language models, including language models of up to 175B "
                   "parameters, with hyperparameters unchanged from the 16-bit runs.")
    picture = "kv_quantization"

    def make_cache(self, model):
        # lazy: torch loads only when a technique runs; pages import every technique to build their forms
        from transformers import QuantizedCache
        return QuantizedCache(backend="fp8", config=model.config)
