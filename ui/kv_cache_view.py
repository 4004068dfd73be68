"""KV-cache views: tokens kept per layer, and the accuracy/perplexity-vs-compression curves of a sweep."""
from __future__ import annotations

import altair as alt
import streamlit as st

from lab.views import kv_cache as kv_views
from lab.views.results import column_label

CURVE_METRICS = ["answer_accuracy", "perplexity", "agreement", "kv_compression", "tokens_per_s"]


def show_kv_views(exp) -> None:
    runs = kv_views.runs_with_kept_tokens(exp)
    sweep = kv_views.sweep_frame(exp)
    needles = kv_views.needle_table(exp)
    if not needles.empty:
        st.markdown("**Needle in a haystack** — did the pass key come back, per context length and depth?")
        st.table(needles)
    if not runs and sweep.empty:
        return
    st.markdown("**KV cache**")
    st.caption("What am I looking at: how much of the cache each method kept and what that did to the answers; "
               "the tokens below are the context, shaded by how many KV heads kept each one.")
    if not sweep.empty:
        options = [m for m in CURVE_METRICS if m in sweep.columns and sweep[m].notna().any()]
        metric = st.selectbox("Curve of", options, format_func=column_label, key="kv_curve_metric")
        chart = alt.Chart(sweep).mark_line(point=True).encode(
            x=alt.X("compression_ratio", title="Compression ratio (share of KV evicted)"),
            y=alt.Y(metric, title=column_label(metric), scale=alt.Scale(zero=False)),
            color=alt.Color("method", title="Method"),
            tooltip=["method", "compression_ratio", alt.Tooltip(metric, title=column_label(metric))],
        ).properties(height=340)
        st.altair_chart(chart, width="stretch")
        st.caption("Ratio 0 is the baseline (no compression) for every method.")
    if runs:
        labels = {r.id: r.variant for r in runs}
        run_id = st.selectbox("Which tokens did this variant keep? (first item)", list(labels),
                              format_func=lambda i: labels[i], key="kv_kept_run")
        run = next(r for r in runs if r.id == run_id)
        layers = sorted(int(k) for k in run.outputs[0].extra["kept_positions"])
        layer = st.slider("Layer", min(layers), max(layers), min(layers), key="kv_kept_layer")
        tokens, shares = kv_views.kept_share(run, layer)
        st.caption(f"{sum(1 for s in shares if s > 0)} of {len(tokens)} context tokens kept by at least one KV "
                   f"head in layer {layer}; shading = share of heads that kept the token, struck through = evicted.")
        st.html(kv_views.kept_tokens_html(tokens, shares))
