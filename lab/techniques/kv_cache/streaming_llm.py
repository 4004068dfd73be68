"""StreamingLLM: keep the first tokens (attention sinks) and the most recent ones, evict the middle."""
from __future__ import annotations

from dataclasses import dataclass

from lab.techniques.base import knob
from lab.techniques.kv_cache.base import KVPress


@dataclass
class StreamingLLM(KVPress):
    name = "streaming_llm"
    title = "StreamingLLM (sinks + recent window)"
    summary = ("Keeps n_sink initial tokens, which soak up attention mass, and the most recent tokens; evicts "
               "the middle. No scores needed.")
    paper = "Xiao et al., Efficient Streaming Language Models with Attention Sinks, ICLR 2024 (arXiv:2309.17453)"

    n_sink: int = knob(4, min=0, max=1024, unit="tokens", help="Initial tokens always kept.")

    def score(self, module, hidden_states, keys, values, attentions, kwargs):
        # lazy: torch loads only when a technique runs; pages import every technique to build their forms
        import torch
        # The cache is in text order, so slot order is recency: rank by slot, sinks above everything. After
        # the prefill this keeps what kvpress keeps (the sinks and the last n_kept - n_sink tokens); at a
        # decode-time prune it keeps the sinks and the most recent tokens of whatever budget the hook asks for.
        b, h, k_len, _ = keys.shape
        scores = torch.arange(k_len, dtype=torch.float32, device=keys.device).expand(b, h, k_len).clone()
        scores[..., :self.n_sink] += 2 * k_len
        return scores
