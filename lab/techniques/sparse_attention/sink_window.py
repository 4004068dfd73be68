"""Sink + sliding window attention (StreamingLLM's pattern without eviction; ALISA's sparse window): each query
attends to the first n_sink tokens, which soak up attention mass, and to the `window` most recent ones."""
from __future__ import annotations

from dataclasses import dataclass

from lab.errors import SpecError
from lab.techniques.base import knob
from lab.techniques.sparse_attention.base import StaticPattern


@dataclass
class SinkWindow(StaticPattern):
    name = "sink_window"
    title = "Sink + sliding window attention"
    summary = ("Each query attends to the first n_sink tokens (attention sinks) and to the `window` most recent "
               "tokens, itself included; the KV cache stays whole. Without the sinks a short window loses the "
               "model (perplexity doubles at window 64 on SmolLM2).")
    paper = ("Xiao et al., Efficient Streaming Language Models with Attention Sinks, ICLR 2024 (arXiv:2309.17453); "
             "Zhao et al., ALISA: Accelerating LLM Inference via Sparsity-Aware KV Caching, ISCA 2024")
    idea = ("Sparse attention skips work without throwing anything away: every query looks only at the first few "
            "tokens (the attention sinks) and at a window of recent tokens, while the whole KV cache is kept. "
            "Attention work grows with the square of the prompt's length, so skipping the far middle saves a lot on "
            "long prompts. The skipped pairs simply do not contribute, so facts far back in the text become invisible "
            "to the answer. Without the sinks, a short window breaks the model completely.")
    paper_claim = ("StreamingLLM: with 4 sink tokens and a recent window, Llama-2, MPT, Falcon and Pythia keep a "
                   "stable perplexity over up to 4 million tokens and run up to 22.2x faster than a recomputed sliding "
                   "window. ALISA: sparse-window attention with KV caching gives up to 3x the throughput of FlexGen "
                   "and 1.9x that of vLLM on a single GPU-CPU system.")
    picture = "attention_mask"

    n_sink: int = knob(4, min=0, max=1024, unit="tokens", help="First tokens every query attends to.")
    window: int = knob(512, min=1, max=1_000_000, unit="tokens",
                       help="Most recent tokens each query attends to, itself included.")

    def keep(self, q_pos, k_pos):
        return (k_pos < self.n_sink) | (q_pos - k_pos < self.window)

    def check_shape(self, shape) -> None:
        if shape.context is not None and self.window + self.n_sink > shape.context:
            raise SpecError(f"technique '{self.name}': window {self.window} + n_sink {self.n_sink} covers more than "
                            f"the model's context of {shape.context} tokens, so nothing would be skipped; allowed: "
                            f"window + n_sink <= {shape.context}")
