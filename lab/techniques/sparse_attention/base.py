"""Sparse-attention patterns, kvpress style: a static pattern is one function, keep(query_pos, key_pos) -> bool;
a pattern that differs per layer and head, or is chosen per call (block top-k), gives its mask per call instead.

The cache stays whole (nothing is evicted); each attention call attends only to the causal pairs the pattern keeps.
Query i of a call sits at position (keys - queries + i): the cache holds every earlier token in order, which is
why a cache technique that evicts tokens is refused beside a pattern. This module's attend() is the reference
path: the pattern becomes a boolean mask for torch's SDPA, which still computes every pair (no speedup). The
compiled FlexAttention kernel (prefill) computes whole blocks: every block its BlockMask names. attend() counts
what each call computes (attended_share) apart from what the pattern keeps (kept_share). A pattern that keeps every
causal pair hands the call to SDPA untouched, so full coverage equals dense attention exactly.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from lab.errors import SpecError
from lab.techniques.base import knob, metric
from lab.techniques.slots import AttentionTechnique


@dataclass
class SparsePattern(AttentionTechnique):
    """Base of every attention pattern: the kernel knobs, the metrics, and attend(), which asks the subclass for
    the pattern of one call: token_mask() (the reference path and decode steps) or flex_mask() (prefill)."""

    family: ClassVar[str] = "sparse_attention"
    batchable: ClassVar[bool] = False  # a ragged batch's holes shift positions; the pattern needs the true ones
    metrics = (
        metric("attended_share", "Computed share", "%", "Sparse attention: causal query-key pairs the attention "
               "kernel computes, over all causal pairs of the sequence fed through attention (generation: prompt "
               "and generated tokens but the last, prefill and decode steps together; perplexity: the window's "
               "forwards), summed over layers and heads. The FlexAttention prefill computes whole blocks: every "
               "block its BlockMask names (partial or full) counts the causal pairs it holds (block_size x "
               "block_size below the diagonal, fewer on it, clipped to the sequence), as dense causal attention's "
               "own blocks would; kernel sdpa_mask and every decode step compute every causal pair. 100 = dense "
               "attention.", False),
        metric("kept_share", "Kept share", "%", "Sparse attention: causal query-key pairs the pattern keeps (its "
               "mask), over all causal pairs of the same sequence, summed over layers and heads. The kernel "
               "computes at least these (computed share >= kept share): the rest of a touched block with flex, "
               "every pair with sdpa_mask and in decode steps.", None),
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
                                "pairs for a query block. A length that is no multiple of it is padded by the kernel.")

    def covers_all(self, queries: int, keys: int) -> bool:
        """Whether the pattern keeps every causal pair of this call's shape (then attention is dense SDPA)."""
        raise NotImplementedError

    def token_mask(self, layer: int, query, key):
        """Boolean [heads or 1, queries, keys]: the pairs computed, for queries at the last positions of the keys."""
        raise NotImplementedError

    def flex_mask(self, layer: int, query, key):
        """The BlockMask of the same pairs for the FlexAttention kernel."""
        raise NotImplementedError

    def forget_calls(self) -> None:
        """Drop what was counted (the calls of the sequence so far): the page's attention maps call token_mask
        outside any measured run."""
        self.__dict__.pop("_pair_counts", None)

    def kept_share(self, length: int) -> float:
        """Percent of the causal pairs of a `length`-token sequence the pattern keeps; here from the calls counted
        since the sequence started (a pattern that chooses per call counts its kept pairs; a static one
        overrides this with its mask)."""
        pairs = self._pairs()
        return 100.0 * pairs["kept"] / pairs["causal"] if pairs["causal"] else 100.0

    def sequence_shares(self, length: int) -> dict[str, float]:
        """attended_share and kept_share of the calls since the current sequence started (its first forward
        over an empty cache): `length` tokens went through attention."""
        pairs = self._pairs()
        computed = 100.0 * pairs["computed"] / pairs["causal"] if pairs["causal"] else 100.0
        return {"attended_share": computed, "kept_share": self.kept_share(length)}

    def measure(self, output) -> dict[str, float]:
        # every token but the last generated one was fed through the attention
        return self.sequence_shares(output.prompt_len + max(len(output.token_ids) - 1, 0))

    def _pairs(self) -> dict[str, int]:
        """Causal pairs counted since the sequence started: computed by the kernel, kept by the pattern, and all
        causal pairs of the calls (over layers and heads)."""
        return self.__dict__.setdefault("_pair_counts", {"computed": 0, "kept": 0, "causal": 0})

    def _count(self, **pairs: int) -> None:
        counts = self._pairs()
        for name, n in pairs.items():
            counts[name] += n

    def compiles_per_shape(self) -> bool:
        return self.kernel == "flex"  # the compiled FlexAttention kernel specialises on the sequence length

    def attend(self, module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
        # lazy: transformers loads only when a technique runs; pages import every technique
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        queries, keys, heads = query.shape[2], key.shape[2], query.shape[1]
        layer = getattr(module, "layer_idx", 0)
        if queries == keys and layer == 0:  # an empty cache: a new sequence (warm-up and earlier ones drop out)
            self.forget_calls()
        causal = causal_pairs(keys - queries, keys) * heads
        if self._covers_all(queries, keys):  # nothing skipped: exactly dense attention
            self._count(computed=causal, kept=causal, causal=causal)
            return sdpa_attention_forward(module, query, key, value, attention_mask, scaling=scaling,
                                          dropout=dropout, **kwargs)
        if self.kernel == "flex" and queries > 1:
            # batch 1 (batchable is False), no padding: the model's own mask is the causal one the pattern keeps
            block_mask = self.flex_mask(layer, query, key)
            self._count(computed=self._flex_computed(block_mask, queries, keys, heads), causal=causal)
            return self._flex()(query, key, value, block_mask, scaling), None
        self._count(computed=causal, causal=causal)  # SDPA with a mask computes every pair
        mask = self.token_mask(layer, query, key)[None]
        if attention_mask is not None:  # padding the model's own mask excludes stays excluded
            mask = mask & attention_mask[:, :, -queries:, :keys].bool()
        kwargs.pop("is_causal", None)
        return sdpa_attention_forward(module, query, key, value, mask, scaling=scaling, dropout=dropout,
                                      is_causal=False, **kwargs)

    def _flex_computed(self, block_mask, queries: int, keys: int, heads: int) -> int:
        """The causal pairs the kernel computes for this BlockMask; a static pattern hands every layer the same
        mask, so the last count is kept."""
        # lazy: torch loads only when a technique runs
        from lab.ops.flex import computed_pairs

        last = self.__dict__.get("_last_counted")
        if last is None or last[0] is not block_mask or last[1] != heads:
            last = self._last_counted = (block_mask, heads, computed_pairs(block_mask, queries, keys, heads))
        return last[2]

    def _covers_all(self, queries: int, keys: int) -> bool:
        """covers_all(), asked by every layer of a forward with the same shape, so each answer is kept."""
        known = self.__dict__.setdefault("_coverage", {})
        if (queries, keys) not in known:
            known[queries, keys] = self.covers_all(queries, keys)
        return known[queries, keys]

    def _flex(self):
        # lazy: torch.compile and flex attention load only when a pattern runs
        from lab.ops.flex import FlexPattern

        if getattr(self, "_flex_pattern", None) is None:
            self._flex_pattern = FlexPattern(self.block_size)
        return self._flex_pattern

    def run_metrics(self) -> dict[str, float]:
        flex = getattr(self, "_flex_pattern", None)
        return {"compile_s": flex.compile_seconds} if flex is not None else {}

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


@dataclass
class StaticPattern(SparsePattern):
    """A pattern every layer and head shares: a subclass defines keep(q_pos, k_pos) on broadcastable positions."""

    def keep(self, q_pos, k_pos):
        raise NotImplementedError

    def causal_keep(self, q_pos, k_pos):
        """The pattern restricted to causal pairs (a key never after its query)."""
        return self.keep(q_pos, k_pos) & (k_pos <= q_pos)

    def token_mask(self, layer: int, query, key):
        return self._kept(query.shape[2], key.shape[2], query.device)[None]

    def flex_mask(self, layer: int, query, key):
        return self._flex().static_mask(self.causal_keep, query.shape[2], key.shape[2], query.device)

    def _kept(self, queries: int, keys: int, device):
        """The pattern's causal mask [queries, keys] for queries at the last positions of the keys."""
        # lazy: torch loads only when a technique runs
        import torch

        q_pos = torch.arange(keys - queries, keys, device=device)[:, None]
        return self.causal_keep(q_pos, torch.arange(keys, device=device)[None, :])

    def covers_all(self, queries: int, keys: int) -> bool:
        return int(self._kept(queries, keys, "cpu").sum()) == causal_pairs(keys - queries, keys)

    def kept_share(self, length: int) -> float:
        """Percent of the causal pairs of a `length`-token sequence the pattern keeps (the same in every layer and
        head, whichever calls fed the sequence through)."""
        # lazy: torch loads only when a technique runs
        import torch

        pos = torch.arange(length)
        return 100.0 * int(self.causal_keep(pos[:, None], pos[None, :]).sum()) / causal_pairs(0, length)


def causal_pairs(start: int, end: int) -> int:
    """Causal query-key pairs of queries at positions start..end-1 over keys 0..end-1: sum of (p + 1)."""
    return (end * (end + 1) - start * (start + 1)) // 2
