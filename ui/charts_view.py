"""The experiment at a glance: speedup per variant with its p10–p90 bar, the quality metric beside it, peak
memory in its parts, and quality against speed with the Pareto front (lab/views/charts.py draws them; the table keeps exact numbers)."""
from __future__ import annotations

import streamlit as st

from lab.views import charts, pareto
from lab.views.results import column_label


def show_experiment_charts(exp) -> None:
    names = {m.name for run in exp.runs for m in run.metrics}
    x, quality = pareto.default_axes(names)
    st.caption("What am I looking at: each variant's speedup against the baseline (dot: median; bar: p10 to p90; "
               "dashed line: no change) and its quality beside it; below, quality against speed.")
    left, right = st.columns(2)
    if "speedup" in names:
        left.altair_chart(charts.speedup_chart(charts.metric_rows(exp.runs, "speedup")), width="stretch")
    if quality is not None:
        right.altair_chart(charts.quality_chart(charts.metric_rows(exp.runs, quality), quality), width="stretch")
    memory = charts.memory_rows(exp.runs)
    if memory:
        st.altair_chart(charts.memory_chart(memory), width="stretch")
        st.caption("Peak memory of each variant in a fresh process of its own: the runtime (Python and the "
                   "libraries), the weights, and the work above them; the KV cache a generation ended with is drawn "
                   "inside the work.")
    if x is not None and quality is not None and len(exp.runs) > 1:
        show_pareto([r.id for r in exp.runs], names, key=f"pareto_{exp.id}")


def show_pareto(run_ids: list[int], names: set[str], key: str) -> None:
    """Speed (or memory) against quality, axes chosen by the user, the non-dominated runs joined."""
    speed, quality = pareto.axis_choices(names)
    if not speed or not quality:
        return
    x_default, y_default = pareto.default_axes(names)
    c1, c2 = st.columns(2)
    x = c1.selectbox("Speed or memory axis", speed, index=speed.index(x_default) if x_default in speed else 0,
                     format_func=column_label, key=f"{key}_x")
    y = c2.selectbox("Quality axis", quality, index=quality.index(y_default) if y_default in quality else 0,
                     format_func=column_label, key=f"{key}_y")
    points = pareto.pareto_points(run_ids, x, y)
    if len(points.dropna(subset=["x", "y"])) < 2:
        st.caption("The Pareto front needs two runs with both metrics.")
        return
    st.altair_chart(charts.pareto_chart(points, x, y), width="stretch")
    front = ", ".join(points[points["on_front"]]["variant"])
    st.caption(f"Pareto front (no other run is better on both axes): {front}. The grey square is the baseline.")
