"""How much of a dense prefill is attention, measured: the Amdahl ceiling of a sparse pattern's prefill speedup.

The baseline runs a timed unit's prefill again (the same calls the timed repeats make: see llm_runner) with its
attention function wrapped by a timer (the attention op itself: SDPA over q, k, v; the projections are not
attention's). If attention takes a share s of the prefill and a pattern's kernel computes a fraction a of its
causal pairs, Amdahl's law bounds the prefill speedup by 1 / (1 - s (1 - a)); free attention (a = 0) by
1 / (1 - s). The bound assumes the rest of the prefill costs the same and attention's time shrinks with the pairs
computed: a kernel cheaper per computed pair than dense SDPA, or noise, can pass it. Measured after the timed
repeats, never in them.
"""
from __future__ import annotations

import time
from typing import Callable

import torch
from transformers.integrations.sdpa_attention import sdpa_attention_forward

from lab.ops.attention import register_attention

TIMED = "lab_timed_sdpa"


class _Timer:
    seconds = 0.0


def _timed_sdpa(module, query, key, value, attention_mask, **kwargs):
    start = time.perf_counter()
    out = sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)
    _Timer.seconds += time.perf_counter() - start
    return out


register_attention(TIMED, _timed_sdpa, "sdpa")


@torch.inference_mode()
def attention_share(engine, prefill: Callable[[], float]) -> float:
    """Share (0..1) of a prefill on the dense `engine` spent in the attention op: prefill() runs it on `engine`
    and returns its seconds; the share of the faster of two runs (the first may pay first-touch costs)."""
    model, previous = engine.model, engine.model.config._attn_implementation
    model.set_attn_implementation(TIMED)
    try:
        runs = []
        for _ in range(2):
            _Timer.seconds = 0.0
            seconds = prefill()
            runs.append((seconds, _Timer.seconds))
    finally:
        model.set_attn_implementation(previous)
    seconds, attention = min(runs)
    return attention / seconds


def amdahl_ceiling(share: float, computed: float) -> float:
    """The prefill speedup bound when attention is a fraction `share` of the prefill and the kernel computes a
    fraction `computed` of its pairs at dense attention's cost per pair."""
    return 1.0 / (1.0 - share * (1.0 - computed))


MAPPED = "lab_attention_maps"


class _Maps:
    """What the mapping attention records during one prefill (a class: the registered function is global)."""
    layers: tuple[int, ...] = ()
    cells: int = 64
    patterns: dict = {}  # variant name -> pattern technique
    dense: dict = {}  # layer -> [heads, cells, cells]
    kept: dict = {}  # (variant, layer) -> [heads, cells, cells]


def _mapping_sdpa(module, query, key, value, attention_mask, scaling=None, **kwargs):
    layer = getattr(module, "layer_idx", 0)
    if layer in _Maps.layers:
        scale = scaling if scaling is not None else query.shape[-1] ** -0.5
        _Maps.dense[layer] = dense_cells(query, key, scale, _Maps.cells)
        for name, pattern in _Maps.patterns.items():
            _Maps.kept[name, layer] = kept_cells(pattern.token_mask(layer, query, key), _Maps.cells)
    return sdpa_attention_forward(module, query, key, value, attention_mask, scaling=scaling, **kwargs)


register_attention(MAPPED, _mapping_sdpa, "sdpa")


def cell_edges(length: int, cells: int) -> torch.Tensor:
    return torch.linspace(0, length, min(cells, length) + 1).long()


def _reduce_keys(rows: torch.Tensor, edges: torch.Tensor) -> torch.Tensor:
    """[..., keys] -> [..., cells]: sums over each key cell."""
    running = torch.nn.functional.pad(rows.double().cumsum(-1), (1, 0))
    return running[..., edges[1:]] - running[..., edges[:-1]]


def dense_cells(query: torch.Tensor, key: torch.Tensor, scale: float, cells: int) -> torch.Tensor:
    """[heads, cells, cells]: the causal softmax attention of each query head, as the mean attention mass a query
    of a query cell gives to the keys of a key cell. Row by row of cells, so an 8k prefill never holds the whole
    queries x keys matrix."""
    heads, queries, keys = query.shape[1], query.shape[2], key.shape[2]
    groups, edges = heads // key.shape[1], cell_edges(queries, cells)
    k_edges = cell_edges(keys, cells) if queries == keys else edges
    out = torch.zeros(heads, len(edges) - 1, len(k_edges) - 1)
    k_pos = torch.arange(keys)
    for c in range(len(edges) - 1):
        rows = slice(int(edges[c]), int(edges[c + 1]))
        q_pos = torch.arange(rows.start, rows.stop) + (keys - queries)
        for h in range(heads):
            scores = (query[0, h, rows].float() @ key[0, h // groups].float().T) * scale
            scores = scores.masked_fill(k_pos[None] > q_pos[:, None], float("-inf"))
            probs = torch.softmax(scores, -1)
            out[h, c] = _reduce_keys(probs, k_edges).mean(0).float()
    return out


def kept_cells(mask: torch.Tensor, cells: int) -> torch.Tensor:
    """[heads, cells, cells]: the share of each cell's causal pairs a [heads|1, queries, keys] mask keeps (NaN
    where a cell holds no causal pair)."""
    queries, keys = mask.shape[-2], mask.shape[-1]
    edges = cell_edges(queries, cells)
    k_edges = cell_edges(keys, cells) if queries == keys else edges
    causal = (torch.arange(keys - queries, keys)[:, None] >= torch.arange(keys)[None]).float()
    out = torch.zeros(mask.shape[0], len(edges) - 1, len(k_edges) - 1)
    for c in range(len(edges) - 1):
        rows = slice(int(edges[c]), int(edges[c + 1]))
        pairs = _reduce_keys(causal[rows], k_edges).sum(0)
        kept = _reduce_keys(mask[:, rows].float(), k_edges).sum(1)
        out[:, c] = (kept / pairs).float()  # 0/0 -> NaN: no causal pair in the cell
    return out


@torch.inference_mode()
def attention_maps(engine, ids: list[int], patterns: dict, layers: tuple[int, ...], cells: int = 64) -> dict:
    """One dense prefill of `ids` on the baseline engine, recording at `layers` the dense attention (mean mass
    per cell) and what each pattern keeps of the same queries and keys (share of causal pairs per cell). Returns
    {"dense": {layer: array}, "kept": {(variant, layer): array}} as float16 numpy arrays."""
    model, previous = engine.model, engine.model.config._attn_implementation
    _Maps.layers, _Maps.cells, _Maps.patterns, _Maps.dense, _Maps.kept = tuple(layers), cells, patterns, {}, {}
    model.set_attn_implementation(MAPPED)
    try:
        engine.forward(torch.tensor([ids], device=engine.device), engine.new_cache(), 0)
    finally:
        model.set_attn_implementation(previous)
        for pattern in patterns.values():
            pattern.forget_calls()  # these calls were no part of any measured run
    return {"dense": {k: v.half().numpy() for k, v in _Maps.dense.items()},
            "kept": {k: v.half().numpy() for k, v in _Maps.kept.items()}}
