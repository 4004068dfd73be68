"""StreamingLLM: keep the first tokens (attention sinks) and the most recent ones, evict the middle."""
from __future__ import annotations

from dataclasses import dataclass

from lab.techniques.base import knob
from lab.techniques.kv_cache.press import KVPress, n_kept


@dataclass
class StreamingLLM(KVPress):
    name = "streaming_llm"
    title = "StreamingLLM (sinks + recent window)"
    summary = ("Keeps n_sink initial tokens, which soak up attention mass, and the most recent tokens; evicts "
               "the middle. No scores needed.")
    paper = "Xiao et al., Efficient Streaming Language Models with Attention Sinks, ICLR 2024 (arXiv:2309.17453)"

    n_sink: int = knob(4, min=0, max=1024, unit="tokens", help="Initial tokens always kept.")

    def score(self, module, hidden_states, keys, values, attentions, kwargs):
        import torch
        # as kvpress: ones everywhere, zeros on the n_pruned tokens right after the sinks
        k_len = keys.shape[2]
        n_pruned = k_len - n_kept(k_len, self.compression_ratio)
        scores = torch.ones_like(keys[..., 0])
        scores[:, :, self.n_sink:self.n_sink + n_pruned] = 0
        return scores
