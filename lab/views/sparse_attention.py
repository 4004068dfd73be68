"""Data for the sparse-attention view of the LLM Lab page: the mask a static pattern applies, drawn from its
stored knobs (the same keep() the run used, on numpy positions), downsampled to blocks of queries x keys.
No Streamlit, no torch."""
from __future__ import annotations

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


def pattern_runs(exp: Experiment) -> list[Run]:
    return [r for r in exp.runs if pattern_of(r) is not None]


def sequence_length(spec: dict) -> int:
    """The longest sequence the experiment's attention saw: a needle haystack or a perplexity window."""
    if spec.get("workload") == "needle":
        return int(max(spec.get("needle_lengths") or [1024]))
    if spec.get("workload") == "perplexity":
        return int(spec.get("perplexity_window") or 1024)
    return 1024


def mask_frame(run: Run, length: int, cells: int = 64) -> pd.DataFrame:
    """Per block of queries x keys (cells x cells blocks over `length` tokens): the share of the block's causal
    pairs the pattern computes (NaN above the diagonal, where causal attention has nothing)."""
    pattern = pattern_of(run)
    pos = np.arange(length)
    keep = pattern.causal_keep(pos[:, None], pos[None, :]).astype(float)
    causal = (pos[None, :] <= pos[:, None]).astype(float)
    edges = np.linspace(0, length, min(cells, length) + 1).astype(int)
    rows = []
    for qi in range(len(edges) - 1):
        for ki in range(len(edges) - 1):
            q, k = slice(edges[qi], edges[qi + 1]), slice(edges[ki], edges[ki + 1])
            pairs = causal[q, k].sum()
            rows.append({"query": int(edges[qi]), "key": int(edges[ki]),
                         "kept": float(keep[q, k].sum() / pairs) if pairs else np.nan})
    return pd.DataFrame(rows)
