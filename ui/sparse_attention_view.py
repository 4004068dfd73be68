"""Sparse-attention view: the mask a pattern applied, queries x keys, downsampled, with its attended share."""
from __future__ import annotations

import altair as alt
import streamlit as st

from lab.views import sparse_attention as sparse


def show_sparse_attention_views(exp) -> None:
    runs = sparse.pattern_runs(exp)
    if not runs:
        return
    st.markdown("**Sparse attention**")
    labels = {r.id: r.variant for r in runs}
    run_id = st.selectbox("Mask of", list(labels), format_func=lambda i: labels[i], key="sparse_mask_run")
    length = sparse.sequence_length(exp.spec)
    frame = sparse.mask_frame(next(r for r in runs if r.id == run_id), length)
    chart = alt.Chart(frame.dropna()).mark_rect().encode(
        x=alt.X("key:O", title="Key position (block start)", axis=alt.Axis(labelOverlap=True)),
        y=alt.Y("query:O", title="Query position (block start)", axis=alt.Axis(labelOverlap=True)),
        color=alt.Color("kept:Q", title="Share kept", scale=alt.Scale(domain=[0, 1], scheme="blues")),
        tooltip=["query", "key", "kept"]).properties(height=420, width=420)
    st.altair_chart(chart)
    st.caption(f"Every layer and head uses this mask over {length} tokens (the experiment's longest sequence), "
               f"drawn in blocks; dense causal attention would fill the whole lower triangle. White above the "
               f"diagonal: no causal pair there.")
