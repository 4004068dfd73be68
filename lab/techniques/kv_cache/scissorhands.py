"""Scissorhands: tokens that were important for the recent queries stay important (persistence of
importance), so keep the tokens most often attended above average over a history window."""
from __future__ import annotations

from dataclasses import dataclass

from lab.techniques.base import knob
from lab.techniques.kv_cache.base import KVPress, protect_recent


def importance_rows(attentions, kv_heads: int, k_len: int):
    """For each query of this forward, which held keys it found important: [b, kv_heads, q, k_len] counts.

    A key is important for a query when it gets more than the uniform share 1/visible of that query's
    attention (the paper's "attended above average"); query heads are summed into their KV head (GQA).
    """
    # lazy: torch loads only when a technique runs; pages import every technique to build their forms
    import torch
    b, heads, q_len, _ = attentions.shape
    rows = torch.arange(q_len, device=attentions.device)
    visible = (k_len - q_len + rows + 1).float()[None, None, :, None]  # a causal query sees the keys up to itself
    important = (attentions.float() * visible > 1.0).float()
    return important.view(b, kv_heads, heads // kv_heads, q_len, k_len).sum(2)


@dataclass
class Scissorhands(KVPress):
    name = "scissorhands"
    title = "Scissorhands (persistence of importance)"
    summary = ("Counts, over the last `history` queries (prompt and generated tokens alike), how often each "
               "token got more than the average attention; keeps the most often important tokens and always "
               "the recent window.")
    paper = ("Liu et al., Scissorhands: Exploiting the Persistence of Importance Hypothesis for LLM KV Cache "
             "Compression at Test Time, NeurIPS 2023 (arXiv:2305.17118)")
    idea = ("Scissorhands rests on an observation: a token that mattered to recent queries keeps mattering later (the "
            "'persistence of importance'). It counts how often each cached token received more than an average share "
            "of attention over a recent history of queries, keeps the most often important ones and the newest tokens, "
            "and evicts the rest. The cache stays within a fixed budget, so memory stops growing with the text. It "
            "needs the attention weights and a history of them, and tokens that become important only later are lost.")
    paper_claim = ("Reduces the KV cache's memory by up to 5x without hurting model quality, and by up to 20x combined "
                   "with 4-bit quantization of the cache (OPT models from 6.7B to 66B parameters; a memory result).")
    picture = "kv_eviction"
    needs_attention_weights = True

    history: int = knob(64, min=1, max=4096, unit="queries", help="Recent queries whose attention is counted.")
    window: int = knob(16, min=0, max=4096, unit="tokens", help="Most recent tokens always kept.")

    def observe(self, state, module, attentions):
        """Append this forward's importance rows to the history, keeping the last `history` queries.

        state['history'] is [b, kv_heads, rows, held]: aligned with the held tokens along its last dimension,
        so a prune gathers it with the cache. Tokens new in this forward were invisible to older queries (0).
        """
        if attentions is None:
            return
        # lazy: torch loads only when a technique runs; pages import every technique to build their forms
        import torch
        k_len = attentions.shape[-1]
        rows = importance_rows(attentions[..., -self.history:, :], module.config.num_key_value_heads, k_len)
        past = state.get("history")
        if past is not None:
            past = torch.nn.functional.pad(past, (0, k_len - past.shape[-1]))
            rows = torch.cat([past, rows], dim=2)[:, :, -self.history:]
        state["history"] = rows

    def score(self, module, hidden_states, keys, values, attentions, kwargs):
        counts = kwargs["state"]["history"].sum(dim=2)  # [b, kv_heads, held]
        return protect_recent(counts, self.window)
