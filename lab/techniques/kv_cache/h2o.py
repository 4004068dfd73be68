"""H2O: heavy hitters (tokens with the most accumulated attention) plus a recent window."""
from __future__ import annotations

from dataclasses import dataclass

from lab.techniques.base import knob
from lab.techniques.kv_cache.base import KVPress, protect_recent


def accumulate_attention(state: dict, attentions, kv_heads: int) -> None:
    """Add the attention each held key received in this forward to state['acc'] [b, kv_heads, held].

    Query heads are summed into their KV head (GQA); tokens new in this forward start from zero.
    """
    # lazy: torch loads only when a technique runs; pages import every technique to build their forms
    import torch
    b, heads, _q, k_len = attentions.shape
    received = attentions.float().sum(dim=2).view(b, kv_heads, heads // kv_heads, k_len).sum(2)
    acc = state.get("acc")
    if acc is None:
        acc = torch.zeros_like(received)
    elif acc.shape[-1] < k_len:
        acc = torch.nn.functional.pad(acc, (0, k_len - acc.shape[-1]))
    state["acc"] = acc + received


@dataclass
class H2O(KVPress):
    name = "h2o"
    title = "H2O (heavy hitters + recent window)"
    summary = ("Keeps the tokens that have received the most attention so far (summed over queries) and always "
               "the most recent window; with compress_every it keeps accumulating during decoding.")
    paper = ("Zhang et al., H2O: Heavy-Hitter Oracle for Efficient Generative Inference of Large Language "
             "Models, NeurIPS 2023 (arXiv:2306.14048)")
    idea = ("A few tokens collect most of the attention over the whole text: the 'heavy hitters'. H2O adds up, for "
            "every cached token, the attention it has received so far, keeps the heaviest hitters and a window of "
            "recent tokens, and evicts the rest. The cache shrinks to a fixed budget, which saves memory and lets more "
            "sequences run side by side. It needs the attention weights themselves (a slower attention path than the "
            "fused kernel), and a token that becomes important only later may already be gone.")
    paper_claim = ("Keeping 20% of the KV cache as heavy hitters raises throughput by up to 29x over DeepSpeed "
                   "Zero-Inference and Hugging Face Accelerate and 3x over FlexGen, and cuts latency by up to 1.9x at "
                   "the same batch size (OPT-6.7B and OPT-30B, against those GPU inference systems).")
    picture = "kv_eviction"
    needs_attention_weights = True

    window: int = knob(32, min=0, max=4096, unit="tokens", help="Most recent tokens always kept.")

    def observe(self, state, module, attentions):
        if attentions is not None:
            accumulate_attention(state, attentions, module.config.num_key_value_heads)

    def score(self, module, hidden_states, keys, values, attentions, kwargs):
        return protect_recent(kwargs["state"]["acc"].clone(), self.window)
