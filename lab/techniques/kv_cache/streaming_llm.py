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
    idea = ("Language models pour a surprising share of their attention onto the first few tokens of a text, whatever "
            "those tokens say: they act as 'attention sinks'. StreamingLLM keeps those first tokens and a window of "
            "the most recent ones and evicts the middle of the KV cache. The cache then stops growing with the text, "
            "so memory and the cost of each new token stay flat. The price: whatever stood in the evicted middle is "
            "gone, so a question about it can no longer be answered.")
    paper_claim = ("With 4 sink tokens and a recent window, Llama-2, MPT, Falcon and Pythia models keep a stable "
                   "perplexity over texts of up to 4 million tokens, and in streaming the method is up to 22.2x faster "
                   "per token than a sliding window that recomputes its cache (measured on a GPU).")
    picture = "kv_eviction"

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
