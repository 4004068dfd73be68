"""How much of a dense prefill is attention, measured: the ceiling a sparse pattern's speedup cannot pass.

One prefill of the workload's first input runs through the baseline model with its attention function wrapped by
a timer (the attention op itself: SDPA over q, k, v; the projections are not attention's). If attention takes a
share s of the prefill and a pattern computes a fraction a of its pairs, Amdahl's law bounds the prefill speedup
by 1 / (1 - s (1 - a)); free attention (a = 0) by 1 / (1 - s). Measured after the timed repeats, never in them.
"""
from __future__ import annotations

import time

import torch
from transformers.integrations.sdpa_attention import sdpa_attention_forward

from lab.ops.attention import register_attention

TIMED = "lab_timed_sdpa"


class _Timer:
    seconds = 0.0


def _timed_sdpa(module, query, key, value, attention_mask, **kwargs):
    start = time.perf_counter()
    out = sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)
    _Timer.seconds += time.perf_counter() - start
    return out


register_attention(TIMED, _timed_sdpa, "sdpa")


@torch.inference_mode()
def attention_share(engine, ids: list[int]) -> float:
    """Share (0..1) of one dense prefill of `ids` spent in the attention op (the fastest of two runs)."""
    model, previous = engine.model, engine.model.config._attn_implementation
    model.set_attn_implementation(TIMED)
    try:
        shares = []
        for _ in range(2):  # the first run also pays for first-touch allocations
            _Timer.seconds, cache = 0.0, engine.new_cache()
            start = time.perf_counter()
            engine.forward(torch.tensor([ids], device=engine.device), cache, 0)
            shares.append(_Timer.seconds / (time.perf_counter() - start))
    finally:
        model.set_attn_implementation(previous)
    return min(shares)


def amdahl_ceiling(share: float, attended: float) -> float:
    """The prefill speedup bound when a fraction `attended` of attention's work remains."""
    return 1.0 / (1.0 - share * (1.0 - attended))
