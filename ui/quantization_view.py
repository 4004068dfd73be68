"""Quantization views: the memory-vs-perplexity curve of a budget sweep, and per layer the activation outliers
before and after smoothing, each layer's error and the bits it got."""
from __future__ import annotations

import altair as alt
import streamlit as st

from lab.views import quantization as quant


def show_quantization_views(exp) -> None:
    curve = quant.budget_curve(exp)
    runs = quant.runs_with_layers(exp)
    if curve.empty and not runs:
        return
    st.markdown("**Quantization**")
    st.caption("What am I looking at: what the weights became (bits per layer, the error each layer's rounding "
               "made) and what it cost in quality; the table above has the speed and memory.")
    if not curve.empty:
        _budget_chart(curve)
    if runs:
        labels = {r.id: r.variant for r in runs}
        run_id = st.selectbox("Per-layer numbers of", list(labels), format_func=lambda i: labels[i],
                              key="quant_layers_run")
        frame = quant.layer_frame(next(r for r in runs if r.id == run_id))
        _outlier_chart(quant.outlier_frame(frame))
        _heatmaps(frame)


def _budget_chart(curve) -> None:
    points = alt.Chart(curve).mark_point(filled=True, size=80).encode(
        x=alt.X("weight_mb", title="Weights held (MB)", scale=alt.Scale(zero=False)),
        y=alt.Y("perplexity", title="Perplexity", scale=alt.Scale(zero=False)),
        color=alt.Color("kind", title=""),
        tooltip=["variant", "budget_mb", "weight_mb", "perplexity"])
    line = alt.Chart(curve[curve["kind"] == "weight budget"]).mark_line().encode(x="weight_mb", y="perplexity")
    labels = points.mark_text(align="left", dx=7).encode(text="variant")
    st.altair_chart((line + points + labels).properties(height=320), width="stretch")
    st.caption("Memory against quality: each budget's weights as held (codes, scales, zero points and the bf16 "
               "rest) and its perplexity; the baseline and bf16 for reference.")


def _outlier_chart(long) -> None:
    if long.empty:
        return
    kinds = sorted(long["module"].unique())
    kind = st.selectbox("Inputs of", kinds, index=kinds.index("down_proj") if "down_proj" in kinds else 0,
                        key="quant_outlier_kind")
    chart = alt.Chart(long[long["module"] == kind]).mark_line(point=True).encode(
        x=alt.X("layer:O", title="Decoder layer"),
        y=alt.Y("max_abs_input", title="Largest |activation| entering the layer", scale=alt.Scale(type="log")),
        color=alt.Color("stage", title=""), tooltip=["layer", "stage", "max_abs_input"]).properties(height=280)
    st.altair_chart(chart, width="stretch")
    st.caption("Why per-tensor W8A8 fails: one int8 scale must span the largest activation, so a channel of "
               "thousands leaves the others a few levels. Smoothing divides each channel by its scale (folded "
               "into the weights), so the largest input shrinks; the calibration text gives these numbers.")


def _heatmaps(frame) -> None:
    metric = quant.error_metric(frame)
    cols = st.columns(2 if metric and "bits" in frame.columns else 1)
    if metric:
        cols[0].altair_chart(_heatmap(frame, metric, "Error", "viridis"), width="stretch")
        cols[0].caption(quant.ERRORS[metric])
    if "bits" in frame.columns:
        cols[-1].altair_chart(_heatmap(frame, "bits", "Bits", "blues", ordinal=True), width="stretch")
        cols[-1].caption("Bits each Linear holds (32 = kept in float).")


def _heatmap(frame, field: str, title: str, scheme: str, ordinal: bool = False):
    # symlog: per-layer errors span orders of magnitude (down_proj's outliers) and may be exactly 0
    scale = alt.Scale(scheme=scheme) if ordinal else alt.Scale(scheme=scheme, type="symlog")
    return alt.Chart(frame).mark_rect().encode(
        x=alt.X("layer:O", title="Decoder layer"), y=alt.Y("module:N", title=""),
        color=alt.Color(f"{field}:{'O' if ordinal else 'Q'}", title=title, scale=scale),
        tooltip=["name", field]).properties(height=alt.Step(22), title=title)
