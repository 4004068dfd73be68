"""Data for the quantization views of the LLM Lab page, from the per-layer numbers a weight technique stored with
its run (run.params["details"]["layers"]): activation outliers before and after smoothing, each layer's error,
the bits each layer got, and the memory-vs-perplexity curve of a budget sweep. No Streamlit, no torch."""
from __future__ import annotations

import pandas as pd

from lab.store import Experiment, Run

# the per-layer error a technique reports, and what it means
ERRORS = {
    "int8_error": "Relative output error of the layer run as W8A8 (int8 weights and activations) on the "
                  "calibration text: ||Q(X) Q(W)^T - X W^T|| / ||X W^T||.",
    "weight_error": "Relative error of the layer's stored weight against the original: ||W_q - W|| / ||W||.",
    "sensitivity": "Output error the layer's chosen bits cause on the calibration text, diagonal-Hessian form: "
                   "sum_ij (sum of x_j^2) (W_q - W)_ij^2.",
}


def layer_rows(run: Run) -> list[dict]:
    return ((run.params or {}).get("details") or {}).get("layers") or []


def runs_with_layers(exp: Experiment) -> list[Run]:
    return [r for r in exp.runs if layer_rows(r)]


def layer_frame(run: Run) -> pd.DataFrame:
    """One row per quantized Linear: name, decoder layer, module kind and the technique's numbers."""
    return pd.DataFrame(layer_rows(run))


def error_metric(frame: pd.DataFrame) -> str | None:
    return next((m for m in ERRORS if m in frame.columns), None)


def outlier_frame(frame: pd.DataFrame) -> pd.DataFrame:
    """Long form for the outlier chart: per decoder layer and Linear kind, max |x| of its input before and after
    smoothing (empty when the technique does not smooth)."""
    if "outlier_before" not in frame.columns:
        return pd.DataFrame()
    long = frame.melt(id_vars=["layer", "module"], value_vars=["outlier_before", "outlier_after"],
                      var_name="stage", value_name="max_abs_input")
    long["stage"] = long["stage"].map({"outlier_before": "before smoothing", "outlier_after": "after smoothing"})
    return long


def budget_curve(exp: Experiment) -> pd.DataFrame:
    """Per run of a weight budget (and the baseline and any plain dtype cast beside it): budget, weights held and
    perplexity, for the memory-vs-quality curve."""
    rows = []
    for run in exp.runs:
        metrics = {m.name: m.value for m in run.metrics}
        techniques = run.params.get("techniques", [])
        budget = next((t.get("budget_mb") for t in techniques if t.get("name") == "weight_budget"), None)
        if budget is None and not (run.is_baseline or [t.get("name") for t in techniques] == ["weight_dtype"]):
            continue
        rows.append({"variant": run.variant, "budget_mb": budget, "weight_mb": metrics.get("weight_mb"),
                     "perplexity": metrics.get("perplexity"),
                     "kind": "weight budget" if budget is not None else "reference"})
    frame = pd.DataFrame(rows)
    if frame.empty or not (frame["kind"] == "weight budget").any() or frame["perplexity"].isna().all():
        return pd.DataFrame()
    return frame.sort_values("weight_mb").reset_index(drop=True)
