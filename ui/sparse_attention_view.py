"""Sparse-attention view: what a pattern keeps of a chosen layer and head (queries x keys, in cells), beside the
dense attention of the same text."""
from __future__ import annotations

import altair as alt
import streamlit as st

from lab.views import sparse_attention as sparse


def _heatmap(frame, field: str, title: str, scale):
    return alt.Chart(frame.dropna(subset=[field])).mark_rect().encode(
        x=alt.X("key:O", title="Key position (cell start)", axis=alt.Axis(labelOverlap=True)),
        y=alt.Y("query:O", title="Query position (cell start)", axis=alt.Axis(labelOverlap=True)),
        color=alt.Color(f"{field}:Q", title=title, scale=scale),
        tooltip=["query", "key", field]).properties(height=380, width=380)


def show_sparse_attention_views(exp) -> None:
    runs = sparse.pattern_runs(exp)
    if not runs:
        return
    st.markdown("**Sparse attention**")
    labels = {r.id: r.variant for r in runs}
    run_id = st.selectbox("Mask of", list(labels), format_func=lambda i: labels[i], key="sparse_mask_run")
    run = next(r for r in runs if r.id == run_id)
    layers, heads = sparse.map_choices(exp, run)
    if not layers:  # an older run: its static pattern, drawn from the knobs
        length = sparse.sequence_length(exp.spec)
        st.altair_chart(_heatmap(sparse.mask_frame(run, length), "kept", "Share kept",
                                 alt.Scale(domain=[0, 1], scheme="blues")))
        st.caption(f"Every layer and head uses this mask over {length} tokens, drawn in blocks; dense causal "
                   f"attention would fill the whole lower triangle.")
        return
    left, right = st.columns(2)
    layer = left.selectbox("Layer", layers, key="sparse_layer")
    head = right.selectbox("Head", list(range(heads)), key="sparse_head")
    frame = sparse.maps_frame(exp, run, layer, head)
    left.altair_chart(_heatmap(frame, "kept", "Share kept", alt.Scale(domain=[0, 1], scheme="blues")))
    right.altair_chart(_heatmap(frame, "dense", "Attention mass", alt.Scale(type="log", scheme="oranges")))
    st.caption("What am I looking at: the experiment's first input, one layer and head, in 64 x 64 cells of "
               "queries x keys. Left, the share of each cell's causal pairs the pattern keeps (block top-k "
               "chooses per input, so this is its choice for this text); the kernel computes at least these: "
               "whole blocks with flex, every pair with sdpa_mask (the Computed share column). Right, dense "
               "attention of the same text on the baseline: the mean attention a query of the cell gives the "
               "cell's keys, log scale. A good pattern keeps the dark cells.")
