"""Scissorhands: tokens that were important for the recent queries stay important (persistence of
importance), so keep the tokens most often attended above average over a history window."""
from __future__ import annotations

from dataclasses import dataclass

from lab.techniques.base import knob
from lab.techniques.kv_cache.press import KVPress, protect_recent


@dataclass
class Scissorhands(KVPress):
    name = "scissorhands"
    title = "Scissorhands (persistence of importance)"
    summary = ("Counts, over the last `history` queries, how often each token got more than the average "
               "attention; keeps the most often important tokens and always the recent window.")
    paper = ("Liu et al., Scissorhands: Exploiting the Persistence of Importance Hypothesis for LLM KV Cache "
             "Compression at Test Time, NeurIPS 2023 (arXiv:2305.17118)")
    needs_attention_weights = True

    history: int = knob(64, min=1, max=4096, unit="queries", help="Recent queries whose attention is counted.")
    window: int = knob(16, min=0, max=4096, unit="tokens", help="Most recent tokens always kept.")

    def score(self, module, hidden_states, keys, values, attentions, kwargs):
        import torch
        b, kv_heads, k_len, _ = keys.shape
        recent = attentions[..., -self.history:, :].float()  # [b, heads, h, k_len]
        q_len = attentions.shape[-2]
        # a query at absolute row i sees (k_len - q_len + i + 1) keys; "important" = above the uniform share
        rows = torch.arange(q_len - recent.shape[-2], q_len, device=keys.device)
        visible = (k_len - q_len + rows + 1).float()[None, None, :, None]
        counts = (recent * visible > 1.0).float().sum(dim=2)  # [b, heads, k_len]
        return protect_recent(counts.view(b, kv_heads, -1, k_len).sum(2), self.window)
