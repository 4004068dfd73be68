"""SnapKV: the last `window_size` queries of the context vote for the keys they attend to."""
from __future__ import annotations

import math
from dataclasses import dataclass

from lab.techniques.base import knob
from lab.techniques.kv_cache.base import KVPress


def window_attention(module, hidden_states, keys, window: int, position_embeddings):
    """Attention of the last `window` queries over the keys before the window: [b, heads, window, n - window].

    Queries are recomputed from the layer input (q_proj, RoPE) so this works under sdpa, as in kvpress.
    """

    # lazy: torch loads only when a technique runs; pages import every technique to build their forms
    import torch
    b, kv_heads, k_len, head_dim = keys.shape
    heads = module.config.num_attention_heads
    q = module.q_proj(hidden_states[:, -window:]).view(b, window, heads, head_dim).transpose(1, 2)
    cos, sin = position_embeddings
    cos, sin = cos[:, -window:].unsqueeze(1), sin[:, -window:].unsqueeze(1)
    half = head_dim // 2
    rotated = torch.cat([-q[..., half:], q[..., :half]], dim=-1)
    q = q * cos + rotated * sin  # RoPE: q·cos + rotate_half(q)·sin
    k = keys[:, :, None].expand(b, kv_heads, heads // kv_heads, k_len, head_dim).reshape(b, heads, k_len, head_dim)
    scores = torch.matmul(q, k.transpose(2, 3)) / math.sqrt(head_dim)
    causal = torch.triu(torch.full_like(scores, float("-inf")), diagonal=k_len - window + 1)
    weights = torch.softmax(scores + causal, dim=-1, dtype=torch.float32).to(q.dtype)
    return weights[..., :-window]


@dataclass
class SnapKV(KVPress):
    name = "snapkv"
    title = "SnapKV (observation-window voting)"
    summary = ("The last window_size tokens of the context vote, by their attention, for the earlier tokens "
               "to keep; votes are smoothed by average pooling and averaged over each KV head's query group.")
    paper = "Li et al., SnapKV: LLM Knows What You are Looking for Before Generation, 2024 (arXiv:2404.14469)"
    idea = ("Before the answer starts, the last tokens of the prompt (usually the question) already attend to the "
            "parts of the context they will need. SnapKV lets this observation window vote with its attention for the "
            "earlier tokens, smooths the votes so neighbouring tokens stay together, and keeps only the winners in the "
            "KV cache. A smaller cache means less memory and less to read at every decoding step. It costs one extra "
            "attention computation over the window after the prefill, and a later question about a token nobody voted "
            "for cannot be answered.")
    paper_claim = ("With 16k-token inputs, generation is 3.6x faster and the KV cache 8.2x more memory-efficient than "
                   "the full cache, with comparable accuracy on 16 long-context datasets; up to 380k tokens of context "
                   "fit on one A100-80GB GPU with only a negligible drop on needle-in-a-haystack (open long-context "
                   "LLMs).")
    picture = "kv_eviction"
    recomputes_queries = True  # sdpa returns no weights: the window's queries are rebuilt from q_proj + RoPE

    window_size: int = knob(64, min=1, max=1024, unit="tokens", help="Observation window at the context's end.")
    kernel_size: int = knob(5, min=1, max=63, unit="tokens", help="Average-pooling width over the votes (odd).")

    def score(self, module, hidden_states, keys, values, attentions, kwargs):
        # lazy: torch loads only when a technique runs; pages import every technique to build their forms
        import torch.nn.functional as F
        b, kv_heads, k_len, _ = keys.shape
        window = min(self.window_size, hidden_states.shape[1], k_len - 1)  # a decode step has one query
        if attentions is not None and attentions.shape[-2] >= window:
            weights = attentions[..., -window:, :k_len - window]
        else:
            weights = window_attention(module, hidden_states, keys, window, kwargs["position_embeddings"])
        votes = weights.mean(dim=-2)
        votes = F.avg_pool1d(votes, kernel_size=self.kernel_size, padding=self.kernel_size // 2, stride=1)
        votes = votes.view(b, kv_heads, -1, k_len - window).mean(2)  # one score per KV head: mean of its group
        return F.pad(votes, (0, window), value=votes.max().item() + 1)  # the window itself is always kept
