"""The shared mechanics of KV eviction, kvpress style: a press is a score function.

After the attention of layer L has run, a forward hook reads L's keys and values from the cache, asks the
press for a score per (KV head, token), keeps the int(n * (1 - ratio)) best per head, and writes the pruned
tensors back. As in kvpress this happens on the first forward (the context prefill); with compress_every=N
it also happens every N decode steps, pruning back to the same share of all tokens seen.

kvpress itself cannot be imported beside transformers >= 5.3 (it pins <5.3), so the hook mechanics are ours;
the score functions follow kvpress's so the kept sets can be checked against golden files it produced.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import ClassVar

from lab.errors import SpecError
from lab.techniques.base import knob
from lab.techniques.kv_cache.hooks import attach_press, attention_modules
from lab.techniques.slots import CacheTechnique


def protect_recent(scores, window: int):
    """Give the last `window` tokens an infinite score, so top-k always keeps them."""
    if window:
        scores[..., -window:] = float("inf")
    return scores


@dataclass
class KVPress(CacheTechnique):
    """Base of the eviction methods. Subclasses define score(); they may keep per-token state."""

    family = "kv_cache"
    needs_attention_weights: ClassVar[bool] = False  # attention weights (the eager-with-weights path)
    recomputes_queries: ClassVar[bool] = False  # scores from queries rebuilt from q_proj + RoPE (SnapKV, TOVA)

    compression_ratio: float = knob(0.5, min=0.0, max=0.95, unit="fraction",
                                    help="Share of the KV pairs to evict per head (0 keeps everything).")
    compress_every: int = knob(0, min=0, max=4096, unit="decode steps",
                               help="0: compress once after the context prefill (kvpress). N: also every N "
                                    "decode steps, back to the same share of all tokens seen.")

    @property
    def needs_decode_weights(self) -> bool:
        """Weights at every decode step too: only when the method compresses during decoding."""
        return self.needs_attention_weights and self.compress_every > 0

    # --- the score function (higher = keep) --------------------------------------------------------
    def score(self, module, hidden_states, keys, values, attentions, kwargs):
        raise NotImplementedError

    def observe(self, state: dict, module, attentions) -> None:
        """Hook for methods that accumulate evidence every forward (H2O)."""

    def evict(self, layer, state: dict, keep) -> None:
        """Called with the kept indices just before the other tokens are dropped (MiKV demotes them)."""

    # --- slot protocol -----------------------------------------------------------------------------
    def check_model(self, model) -> None:
        reason = unsupported_attention(model, attention_modules(model), self)
        if reason:
            raise SpecError(f"technique '{self.name}' cannot run on {type(model).__name__}: {reason}")

    def make_cache(self, model):
        # lazy: torch loads only when a technique runs; pages import every technique to build their forms
        from transformers import DynamicCache
        return DynamicCache(config=model.config)

    def attention_needed(self) -> str | None:
        if self.needs_attention_weights or self.needs_decode_weights:
            # lazy: lab.ops.attention imports torch; pages import this module
            from lab.ops.attention import WEIGHTS_ATTENTION
            return WEIGHTS_ATTENTION
        return None

    def output_extra(self, output, decode, prompt_ids, detail) -> dict:
        """Which context tokens each layer and KV head kept (first sequence), with the context's token texts."""
        kept = output.extra.get("kept_positions")
        if not (kept and detail):
            return {}
        return {"kept_positions": {str(layer): pos[0].sort(dim=-1).values.tolist() for layer, pos in kept.items()},
                "context_tokens": [decode([t]) for t in prompt_ids]}

    @contextlib.contextmanager
    def cache_hooks(self, model, cache):
        """Attach the post-attention hooks for one generation; state lives only inside this block."""
        with attach_press(self, model, cache) as tracker:
            yield tracker


def unsupported_attention(model, modules: list, press: KVPress) -> str | None:
    """Why the hooks cannot apply `press` faithfully to this model's attention (None when they can).

    The hooks and the weight-returning path reproduce Llama-style full attention; anything else would either
    leave the cache untouched (no module found: the variant would silently be the baseline) or score tokens
    with an attention the model does not compute.
    """
    config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    layers = getattr(config, "num_hidden_layers", None)
    if not modules or (layers is not None and len(modules) != layers):
        return (f"the KV hooks attach to Llama-style attention modules (layer_idx and q_proj/k_proj/v_proj/o_proj) "
                f"and found {len(modules)} for {layers} layers; supported: Llama-style models (SmolLM2, Llama, "
                f"Qwen2, Mistral without sliding window)")
    sliding = "sliding_attention" in (getattr(config, "layer_types", None) or []) or (
        getattr(config, "sliding_window", None) and getattr(config, "use_sliding_window", True))
    if sliding:
        return ("its sliding-window attention layers already drop old tokens from their cache, so eviction "
                "positions would not match; supported: full-attention models")
    scores_attention = press.needs_attention_weights or press.recomputes_queries
    if scores_attention and getattr(config, "attn_logit_softcapping", None):
        return ("it caps attention logits (attn_logit_softcapping), which the lab's weight-returning attention "
                "does not reproduce; use knorm or streaming_llm")
    if press.recomputes_queries and any(hasattr(m, "q_norm") for m in modules):
        return ("its attention normalises queries (q_norm), which the lab's query recomputation does not "
                "reproduce; use knorm or streaming_llm")
    return None
