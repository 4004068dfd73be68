"""Speculative decoding views: the output coloured by how each token came, and a per-round timeline."""
from __future__ import annotations

import altair as alt
import pandas as pd
import streamlit as st

from lab.views import speculative


def show_speculative_views(exp) -> None:
    runs = speculative.runs_with_rounds(exp)
    if not runs:
        return
    st.markdown("**Speculative decoding** — how each token of the output came")
    st.caption("What am I looking at: the output of the first prompt, each token coloured by how it came (the "
               "legend); struck-through tokens were drafted and rejected, so they are not in the output.")
    labels = {r.id: r.variant for r in runs}
    run_id = st.selectbox("Variant", list(labels), format_func=lambda i: labels[i], key="spec_run")
    run = next(r for r in runs if r.id == run_id)
    outputs = sorted(run.outputs, key=lambda o: o.item_index)
    index = st.selectbox("Item", range(len(outputs)), key="spec_item",
                         format_func=lambda i: f"{i + 1}: {outputs[i].prompt[:70]}")
    out = outputs[index]
    summary = speculative.round_summary(out.extra)
    st.caption(f"{len(out.token_ids)} tokens in {summary['rounds']} draft/verify rounds (+ prefill): "
               f"{summary['accepted']} of {summary['proposed']} draft tokens accepted "
               f"({100 * summary['acceptance']:.0f}%).")
    st.html(speculative.legend_html())
    st.html(speculative.spans_html(speculative.token_spans(out.extra, len(out.token_ids))))
    frame = pd.DataFrame(speculative.timeline_rows(out.extra))
    phases = alt.Scale(domain=["prefill", "draft", "verify"], range=["#9ca3af", "#E69F00", "#0072B2"])
    # a white edge between bars keeps back-to-back rounds apart
    chart = alt.Chart(frame).mark_bar(stroke="white", strokeWidth=1).encode(
        x=alt.X("start", title="Time since the start of the generation (s)"), x2="end",
        y=alt.Y("phase", title=None, sort=["prefill", "draft", "verify"]),
        color=alt.Color("phase", title="Phase", scale=phases),
        tooltip=["round", "phase", "proposed", "accepted", alt.Tooltip("start", format=".3f"),
                 alt.Tooltip("end", format=".3f")],
    ).properties(height=160)
    st.altair_chart(chart, width="stretch")
    st.caption("One bar per round and phase: the drafter proposes, the target verifies all proposals in one "
               "forward. Hover a bar for how many drafts it accepted.")
