"""Knorm: keys with a small L2 norm draw the most attention, so keep the lowest-norm keys."""
from __future__ import annotations

from dataclasses import dataclass

from lab.techniques.kv_cache.base import KVPress


@dataclass
class Knorm(KVPress):
    name = "knorm"
    title = "Knorm (key L2 norm)"
    summary = "Scores each cached key by minus its L2 norm; cheap, needs no attention weights."
    paper = ("Devoto et al., A Simple and Effective L2 Norm-Based Strategy for KV Cache Compression, "
             "EMNLP 2024 (arXiv:2406.11430)")

    def score(self, module, hidden_states, keys, values, attentions, kwargs):
        # lazy: torch loads only when a technique runs; pages import every technique to build their forms
        import torch
        # in at least fp32 so a bf16 cache does not tie distinct positions (as kvpress does)
        return -torch.linalg.vector_norm(keys, dim=-1, dtype=torch.promote_types(keys.dtype, torch.float32))
