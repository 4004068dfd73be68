"""Data for the KV-cache views of the LLM Lab page: which context tokens a method kept, and how accuracy
and perplexity move with the compression ratio across a sweep. No Streamlit, no torch."""
from __future__ import annotations

import html

import pandas as pd

from lab.store import Experiment, Run


def runs_with_kept_tokens(exp: Experiment) -> list[Run]:
    return [r for r in exp.runs if r.outputs and "kept_positions" in (r.outputs[0].extra or {})]


def kept_share(run: Run, layer: int) -> tuple[list[str], list[float]]:
    """Context tokens of the run's first item and, per token, the share of KV heads of `layer` that kept it."""
    extra = run.outputs[0].extra
    tokens = extra["context_tokens"]
    heads = extra["kept_positions"][str(layer)]
    counts = [0] * len(tokens)
    for head in heads:
        for position in head:
            if position < len(tokens):
                counts[position] += 1
    return tokens, [c / len(heads) for c in counts]


def kept_tokens_html(tokens: list[str], shares: list[float], max_tokens: int = 1500) -> str:
    """Tokens shaded by how many heads kept them: dark = every head kept it, blank = evicted everywhere."""
    spans = []
    for tok, share in list(zip(tokens, shares))[:max_tokens]:
        title = f"kept by {share:.0%} of KV heads"
        spans.append(f'<span title="{title}" style="background: rgba(31, 119, 180, {0.1 + 0.8 * share:.2f});'
                     f'{"" if share else "color:#999;text-decoration:line-through;"}">{html.escape(tok)}</span>')
    more = f" … ({len(tokens) - max_tokens} more tokens)" if len(tokens) > max_tokens else ""
    return ('<div style="font-family: monospace; font-size: 0.8em; line-height: 1.7; white-space: pre-wrap;">'
            + "".join(spans) + more + "</div>")


def sweep_frame(exp: Experiment) -> pd.DataFrame:
    """One row per run that uses a cache technique with a compression_ratio: method, ratio and its metrics.

    The baseline is added as ratio 0 of every method, so each curve starts from the uncompressed model.
    """
    rows, base = [], None
    for run in exp.runs:
        metrics = {m.name: m.value for m in run.metrics}
        techniques = run.params.get("techniques", [])
        cache = next((t for t in techniques if "compression_ratio" in t), None)
        if run.is_baseline:
            base = metrics
        elif cache is not None and len(techniques) == 1:
            rows.append({"method": cache["name"], "compression_ratio": cache["compression_ratio"], **metrics})
    frame = pd.DataFrame(rows)
    if frame.empty or base is None:
        return frame
    starts = pd.DataFrame([{"method": m, "compression_ratio": 0.0, **base} for m in frame["method"].unique()])
    frame = pd.concat([starts, frame[frame["compression_ratio"] > 0]], ignore_index=True)
    return frame.sort_values(["method", "compression_ratio"]).reset_index(drop=True)


def needle_table(exp: Experiment) -> pd.DataFrame:
    """Rows: variants; columns: context length / needle depth; cells: whether the pass key came back."""
    rows = {}
    for run in exp.runs:
        cells = {}
        for out in run.outputs:
            extra = out.extra or {}
            if "correct" in extra and "length" in extra:
                cells[f"{extra['length']} tok @ {extra['depth']}%"] = "✓" if extra["correct"] else "✗"
        if cells:
            rows[run.variant] = cells
    return pd.DataFrame.from_dict(rows, orient="index")
