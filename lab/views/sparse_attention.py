"""Data for the sparse-attention view of the LLM Lab page: what a pattern keeps of one layer and head, beside the
dense attention of the same text, in cells of queries x keys. Runs recorded these maps (bench/attention_profile:
the experiment's first input, three layers, every head); older runs without them get their static pattern's mask
drawn from the stored knobs. No Streamlit, no torch."""
from __future__ import annotations

import base64

import numpy as np
import pandas as pd

from lab.errors import SpecError
from lab.store import Experiment, Run
from lab.techniques import build


def pattern_of(run: Run):
    """The run's attention technique with a keep() pattern, rebuilt from its stored knobs; None without one."""
    entries = [t for t in run.params.get("techniques", []) if t.get("name")]
    try:
        techniques = build(entries, model_kind="llm")
    except SpecError:  # a technique no longer registered here (a plugin): no pattern to draw
        return None
    return next((t for t in techniques if t.slot == "attention" and hasattr(t, "causal_keep")), None)


def recorded_maps(run: Run) -> dict:
    return run.params.get("details", {}).get("attention_maps", {})


def pattern_runs(exp: Experiment) -> list[Run]:
    return [r for r in exp.runs if recorded_maps(r).get("kept") or pattern_of(r) is not None]


def dense_maps(exp: Experiment) -> dict:
    """The baseline's recorded dense attention maps ({} when none was recorded)."""
    return next((recorded_maps(r) for r in exp.runs if recorded_maps(r).get("dense")), {})


def map_choices(exp: Experiment, run: Run) -> tuple[list[int], int]:
    """(layers, heads) recorded for `run`: ([], 0) when it has no recorded maps."""
    kept = recorded_maps(run).get("kept") or {}
    if not kept:
        return [], 0
    layers = sorted(int(k) for k in kept)
    dense = dense_maps(exp).get("dense") or {}
    heads = max([kept[str(layers[0])]["shape"][0]] + [dense[k]["shape"][0] for k in dense if k in kept])
    return layers, heads


def _decoded(entry: dict) -> np.ndarray:
    return np.frombuffer(base64.b64decode(entry["float16"]), dtype=np.float16).reshape(entry["shape"]).astype(float)


def maps_frame(exp: Experiment, run: Run, layer: int, head: int) -> pd.DataFrame:
    """Per cell (query cell start, key cell start): `kept`, the share of its causal pairs the run's pattern
    keeps (a pattern shared by all heads is stored once), and `dense`, the mean attention mass a query of the
    cell gives the cell's keys in the dense baseline (NaN above the diagonal)."""
    maps = recorded_maps(run)
    kept = _decoded(maps["kept"][str(layer)])
    kept = kept[head if kept.shape[0] > 1 else 0]
    dense_entry = (dense_maps(exp).get("dense") or {}).get(str(layer))
    dense = _decoded(dense_entry)[head] if dense_entry else np.full(kept.shape, np.nan)
    edges = np.linspace(0, maps["length"], kept.shape[0] + 1).astype(int)
    rows = [{"query": int(edges[q]), "key": int(edges[k]), "kept": kept[q, k],
             "dense": dense[q, k] if k <= q else np.nan}
            for q in range(kept.shape[0]) for k in range(kept.shape[1])]
    return pd.DataFrame(rows)


def sequence_length(spec: dict) -> int:
    """The longest sequence the experiment's attention saw: a needle haystack or a perplexity window."""
    if spec.get("workload") == "needle":
        return int(max(spec.get("needle_lengths") or [1024]))
    if spec.get("workload") == "perplexity":
        return int(spec.get("perplexity_window") or 1024)
    return 1024


def mask_frame(run: Run, length: int, cells: int = 64) -> pd.DataFrame:
    """For a run without recorded maps: per block of queries x keys (cells x cells blocks over `length` tokens)
    the share of the block's causal pairs its static pattern keeps (NaN above the diagonal). Built one row of
    blocks at a time: at 8k tokens the whole mask would hold 64M pairs."""
    pattern = pattern_of(run)
    pos = np.arange(length)
    edges = np.linspace(0, length, min(cells, length) + 1).astype(int)
    rows = []
    for qi in range(len(edges) - 1):
        q_pos = pos[edges[qi]:edges[qi + 1], None]
        keep = np.add.reduceat(pattern.causal_keep(q_pos, pos[None, :]).sum(0), edges[:-1])
        causal = np.add.reduceat((pos[None, :] <= q_pos).sum(0), edges[:-1])
        for ki in range(len(edges) - 1):
            rows.append({"query": int(edges[qi]), "key": int(edges[ki]),
                         "kept": float(keep[ki] / causal[ki]) if causal[ki] else np.nan})
    return pd.DataFrame(rows)
