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
    idea = ("Keys with a small length (L2 norm) tend to receive a lot of attention, so the norm of a key is a free "
            "guess of how important its token is. Knorm keeps the tokens whose keys have the smallest norms and evicts "
            "the rest, without ever computing attention weights. That makes it the cheapest scored eviction, and it "
            "works with any fast attention kernel. The guess is rougher than one read from real attention, so at high "
            "compression it drops more tokens that mattered.")
    paper_claim = ("Keeping the low-norm keys cuts the KV cache by 50% on language modelling and needle-in-a-haystack "
                   "and by 90% on passkey retrieval without losing accuracy (Llama and Gemma models of up to 8B "
                   "parameters; a quality result, with no speed claim).")
    picture = "kv_eviction"

    def score(self, module, hidden_states, keys, values, attentions, kwargs):
        # lazy: torch loads only when a technique runs; pages import every technique to build their forms
        import torch
        # in at least fp32 so a bf16 cache does not tie distinct positions (as kvpress does)
        return -torch.linalg.vector_norm(keys, dim=-1, dtype=torch.promote_types(keys.dtype, torch.float32))
