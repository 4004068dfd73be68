"""TOVA: keep the tokens the newest query attends to most (averaged over all heads)."""
from __future__ import annotations

from dataclasses import dataclass

from lab.techniques.kv_cache.base import KVPress
from lab.techniques.kv_cache.snapkv import window_attention


@dataclass
class TOVA(KVPress):
    name = "tova"
    title = "TOVA (last-token attention)"
    summary = ("Scores every cached token by the attention the latest token gives it, averaged over heads; "
               "the same ranking applies to every KV head.")
    paper = "Oren et al., Transformers are Multi-State RNNs, 2024 (arXiv:2401.06104)"
    idea = ("TOVA treats the KV cache as a fixed-size memory, like the state of a recurrent network. Whenever the "
            "cache is over its budget, it drops the tokens the newest token attends to least, averaged over the heads. "
            "The newest query is a cheap, up-to-date judge of what still matters, so no attention history has to be "
            "kept. The cost is reading the attention weights, and a token judged unimportant now may be needed by a "
            "later question.")
    paper_claim = ("Beats the other eviction policies on four long-range tasks with several open LLMs, and is often "
                   "nearly on par with the full cache while keeping as little as 1/8 of it, which translated to 4.8x "
                   "higher throughput.")
    picture = "kv_eviction"
    needs_attention_weights = True
    recomputes_queries = True  # a single-token forward without weights rebuilds the query from q_proj + RoPE

    def score(self, module, hidden_states, keys, values, attentions, kwargs):
        # lazy: torch loads only when a technique runs; pages import every technique to build their forms
        import torch.nn.functional as F
        if attentions is not None:
            weights = attentions[..., -1:, :-1]
        else:
            weights = window_attention(module, hidden_states, keys, 1, kwargs["position_embeddings"])
        scores = weights.mean(1).repeat(1, keys.shape[1], 1)
        return F.pad(scores, (0, 1), value=scores.max().item() + 1)  # the last token is always kept
