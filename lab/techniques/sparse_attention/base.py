"""A static sparse-attention pattern, kvpress style: a pattern is one function, keep(query_pos, key_pos) -> bool.

The cache stays whole (nothing is evicted); each attention call computes only the causal pairs the pattern keeps.
Query i of a call sits at position (keys - queries + i): the cache holds every earlier token in order, which is
why a cache technique that evicts tokens is refused beside a pattern. This module's attend() is the reference
path: the pattern becomes a boolean mask for torch's SDPA, which still computes every pair (no speedup; the
mask's share of pairs is what a sparse kernel would compute). A pattern that keeps every causal pair hands the
call to SDPA untouched, so full coverage equals dense attention exactly.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from lab.errors import SpecError
from lab.techniques.base import knob, metric
from lab.techniques.slots import AttentionTechnique


@dataclass
class StaticPattern(AttentionTechnique):
    """Base of the static patterns: a subclass defines keep(q_pos, k_pos) on broadcastable position tensors."""

    family: ClassVar[str] = "sparse_attention"
    batchable: ClassVar[bool] = False  # a ragged batch's holes shift positions; the pattern needs the true ones
    metrics = (
        metric("attended_share", "Attended share", "%", "Sparse attention: causal query-key pairs the pattern "
               "computes, over all causal pairs of the generation's sequence (prompt and generated tokens), counted "
               "from the mask; 100 = dense attention.", False),
        metric("compile_s", "Kernel compile", "s", "Sparse attention: time of the first call of each new shape of "
               "the compiled FlexAttention kernel (compiling included), all made in warm-up, never in a timed "
               "repeat; a few seconds at most when inductor's cache on disk already holds the kernels.", False),
    )

    kernel: str = knob("flex", choices=("flex", "sdpa_mask"),
                       help="flex: a compiled FlexAttention kernel that skips the key blocks the pattern leaves "
                            "empty (prefill); sdpa_mask: torch's SDPA with the pattern as a mask, which computes "
                            "every pair (the quality reference, no speedup). Decode steps use the mask either way.")
    block_size: int = knob(128, choices=(64, 128, 256), unit="tokens",
                           help="FlexAttention's block: a key block is skipped when the pattern keeps none of its "
                                "pairs for a query block.")

    def keep(self, q_pos, k_pos):
        raise NotImplementedError

    def causal_keep(self, q_pos, k_pos):
        """The pattern restricted to causal pairs (a key never after its query)."""
        return self.keep(q_pos, k_pos) & (k_pos <= q_pos)

    def attend(self, module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
        # lazy: transformers loads only when a technique runs; pages import every technique
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        queries, keys = query.shape[2], key.shape[2]
        if self._covers_all(queries, keys):  # nothing skipped: exactly dense attention
            return sdpa_attention_forward(module, query, key, value, attention_mask, scaling=scaling,
                                          dropout=dropout, **kwargs)
        if self.kernel == "flex" and queries > 1:
            # batch 1 (batchable is False), no padding: the model's own mask is the causal one the pattern keeps
            return self._flex()(query, key, value, scaling), None
        kept = self._kept(queries, keys, query.device)
        mask = kept[None, None]
        if attention_mask is not None:  # padding the model's own mask excludes stays excluded
            mask = mask & attention_mask[:, :, -queries:, :keys].bool()
        kwargs.pop("is_causal", None)
        return sdpa_attention_forward(module, query, key, value, mask, scaling=scaling, dropout=dropout,
                                      is_causal=False, **kwargs)

    def _kept(self, queries: int, keys: int, device):
        """The pattern's causal mask [queries, keys] for queries at the last positions of the keys."""
        # lazy: torch loads only when a technique runs
        import torch

        q_pos = torch.arange(keys - queries, keys, device=device)[:, None]
        return self.causal_keep(q_pos, torch.arange(keys, device=device)[None, :])

    def _covers_all(self, queries: int, keys: int) -> bool:
        """Whether the pattern keeps every causal pair of this shape. Every layer of a forward asks the same
        question, and at 8k tokens the mask it is read from holds 64M entries, so each answer is kept."""
        known = self.__dict__.setdefault("_coverage", {})
        if (queries, keys) not in known:
            kept = int(self._kept(queries, keys, "cpu").sum())
            known[queries, keys] = kept == causal_pairs(keys - queries, keys)
        return known[queries, keys]

    def _flex(self):
        # lazy: torch.compile and flex attention load only when a pattern runs
        from lab.ops.flex import FlexPattern

        if getattr(self, "_flex_pattern", None) is None:
            self._flex_pattern = FlexPattern(self.causal_keep, self.block_size)
        return self._flex_pattern

    def run_metrics(self) -> dict[str, float]:
        flex = getattr(self, "_flex_pattern", None)
        return {"compile_s": flex.compile_seconds} if flex is not None else {}

    def attended_share(self, length: int) -> float:
        """Percent of the causal pairs of a `length`-token sequence the pattern keeps."""
        # lazy: torch loads only when a technique runs
        import torch

        pos = torch.arange(length)
        return 100.0 * int(self.causal_keep(pos[:, None], pos[None, :]).sum()) / causal_pairs(0, length)

    def measure(self, output) -> dict[str, float]:
        # every token but the last generated one was fed through the attention
        return {"attended_share": self.attended_share(output.prompt_len + max(len(output.token_ids) - 1, 0))}

    def conflicts_with(self, other) -> str | None:
        if getattr(other, "compression_ratio", None) is not None:
            return ("an evicting KV cache no longer holds every earlier token in order, so the pattern cannot "
                    "tell a key's position; combine a sparse pattern with a cache that keeps every token "
                    "(quantized_kv, fp8_kv)")
        return None

    def check_model(self, model) -> None:
        config = model.config
        if getattr(config, "attn_logit_softcapping", None) or getattr(config, "final_logit_softcapping", None):
            raise SpecError(f"technique '{self.name}': {type(model).__name__} caps its attention logits "
                            f"(softcapping), which SDPA with a mask does not do; allowed: models without it "
                            f"(Llama, Mistral, Qwen2, SmolLM2)")
        if getattr(config, "alibi", False) or getattr(config, "position_embedding_type", "rope") == "alibi":
            raise SpecError(f"technique '{self.name}': {type(model).__name__} adds ALiBi biases inside attention, "
                            f"which the pattern's SDPA call would drop; allowed: RoPE models (Llama, Mistral, "
                            f"Qwen2, SmolLM2)")
        if getattr(config, "rope_theta", None) is None and not getattr(config, "rope_parameters", None):
            raise SpecError(f"technique '{self.name}': {type(model).__name__} has no rotary position embedding; "
                            f"the patterns are written for RoPE attention (Llama, Mistral, Qwen2, SmolLM2)")


def causal_pairs(start: int, end: int) -> int:
    """Causal query-key pairs of queries at positions start..end-1 over keys 0..end-1: sum of (p + 1)."""
    return (end * (end + 1) - start * (start + 1)) // 2
