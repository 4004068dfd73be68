"""Post-attention hooks that apply a KVPress to a transformers DynamicCache, layer by layer.

The cache is kept in text order: after a prune the kept tokens stay in the order they were written, so slot i
always holds an older token than slot i+1. Methods that reason about position by slot (StreamingLLM's sinks,
H2O's and Scissorhands' recent window, SnapKV's pooling over neighbours) stay right across decode-time
prunes; attention itself is order-free over keys (RoPE is already in them), so the outputs do not depend on it.

torch is imported inside the functions: every module under lab/techniques is imported to register the
techniques, and pages do that without loading torch.
"""
from __future__ import annotations

import contextlib


def n_kept(n: int, ratio: float) -> int:
    """kvpress's budget: keep int(n * (1 - ratio)) tokens per KV head."""
    return int(n * (1 - ratio))


class PressTracker:
    """Per-generation state: tokens seen per layer, and tensors aligned with the held tokens.

    `state[layer]["positions"]` holds the original position of every held token per KV head, so the lab can
    show which tokens a method kept; any other tensor a press adds whose last dimension is the held tokens
    (accumulated attention, a history of importance flags) is gathered along with it.
    """

    def __init__(self):
        self.seen: dict[int, int] = {}
        self.decode_steps: dict[int, int] = {}
        self.state: dict[int, dict] = {}  # layer -> name -> tensor aligned with the held tokens

    def kept_positions(self) -> dict:
        return {layer: s["positions"] for layer, s in self.state.items()}


def attention_modules(model) -> list:
    """The attention modules the hooks attach to: Llama-style, with a layer index and q/k/v/o projections."""
    return [m for m in model.modules()
            if hasattr(m, "layer_idx") and all(hasattr(m, p) for p in ("q_proj", "k_proj", "v_proj", "o_proj"))]


def keep_in_text_order(scores, budget: int):
    """Indices [b, kv_heads, budget] of the `budget` best tokens per head, ascending (= text order)."""
    return scores.topk(budget, dim=-1).indices.sort(dim=-1).values


def _prune(layer, state: dict, indices) -> None:
    """Keep `indices` [b, kv_heads, k] of the held tokens: keys, values and the state aligned with them."""
    held, d = layer.keys.shape[-2], layer.keys.shape[-1]
    idx = indices.unsqueeze(-1).expand(-1, -1, -1, d)
    layer.keys = layer.keys.gather(2, idx).contiguous()
    layer.values = layer.values.gather(2, idx).contiguous()
    for name, tensor in state.items():
        if tensor.shape[-1] == held:  # aligned with the held tokens along its last dimension
            extra = tensor.shape[2:-1]  # e.g. the rows of a history: [b, kv_heads, rows, held]
            gather = indices.view(*indices.shape[:2], *(1,) * len(extra), -1).expand(*tensor.shape[:-1], -1)
            state[name] = tensor.gather(-1, gather)


def _budget(press, tracker: PressTracker, layer_idx: int, held: int, q_len: int, first: bool) -> int | None:
    """How many tokens to keep now, or None when this forward does not compress."""
    if press.compression_ratio == 0:
        return None
    if first:
        return n_kept(held, press.compression_ratio)
    if not press.compress_every or q_len != 1:
        return None
    tracker.decode_steps[layer_idx] = tracker.decode_steps.get(layer_idx, 0) + 1
    if tracker.decode_steps[layer_idx] % press.compress_every:
        return None
    budget = n_kept(tracker.seen[layer_idx], press.compression_ratio)
    return budget if held > budget else None


def _hook(press, tracker: PressTracker):
    # lazy: torch loads only when a technique runs; pages import every technique to build their forms
    import torch

    def hook(module, _args, kwargs, output):
        layer_idx = module.layer_idx
        hidden = kwargs["hidden_states"]
        cache = kwargs["past_key_values"]
        layer = cache.layers[layer_idx]
        q_len = hidden.shape[1]
        first = tracker.seen.get(layer_idx, 0) == 0
        tracker.seen[layer_idx] = tracker.seen.get(layer_idx, 0) + q_len
        state = tracker.state.setdefault(layer_idx, {})
        b, h, held, _ = layer.keys.shape
        new_pos = torch.arange(tracker.seen[layer_idx] - q_len, tracker.seen[layer_idx], device=layer.keys.device)
        new_pos = new_pos.expand(b, h, q_len)
        state["positions"] = new_pos if first else torch.cat([state["positions"], new_pos], dim=-1)
        attentions = output[1] if isinstance(output, tuple) and len(output) > 1 else None
        press.observe(state, module, attentions)
        budget = _budget(press, tracker, layer_idx, held, q_len, first)
        if budget is None:
            return output
        scores = press.score(module, hidden, layer.keys, layer.values, attentions, {**kwargs, "state": state})
        indices = keep_in_text_order(scores, budget)
        press.evict(layer, state, indices)
        _prune(layer, state, indices)
        return output
    return hook


@contextlib.contextmanager
def attach_press(press, model, cache):
    tracker = PressTracker()
    modules = attention_modules(model)
    handles = [m.register_forward_hook(_hook(press, tracker), with_kwargs=True) for m in modules]
    for m in modules:
        m.lab_want_weights = press.needs_decode_weights
    try:
        yield tracker
    finally:
        for handle in handles:
            handle.remove()
        for m in modules:
            m.lab_want_weights = False
