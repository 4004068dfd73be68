"""Altair charts shared by the pages and the reports: a metric per variant with its p10–p90 spread, and the
speed-vs-quality Pareto chart. The same chart must export to the same bytes twice, so the data is taken in the
order given (callers pass it sorted), every category order is explicit, and no chart uses a selection (altair
numbers those with a global counter). No Streamlit, no torch."""
from __future__ import annotations

import altair as alt
import pandas as pd

from lab.views.results import definition

WIDTH = 420
ROLE_COLOURS = {"baseline": "#7f7f7f", "variant": "#4c78a8", "on the front": "#e45756", "dominated": "#9ecae9"}
ROLE_SHAPES = {"baseline": "square", "variant": "circle", "on the front": "circle", "dominated": "circle"}
ROW_COLUMNS = ["label", "median", "p10", "p90", "n", "is_baseline"]
MEMORY_PARTS = {"runtime": "#bab0ac", "weights": "#4c78a8", "KV cache": "#f58518", "other work": "#72b7b2"}
MEMORY_COLUMNS = ["label", "part", "mb", "order"]


def axis_title(metric: str) -> str:
    d = definition(metric)
    unit = f" [{d.unit}]" if d.unit else ""
    direction = {True: ", higher is better", False: ", lower is better"}.get(d.higher_is_better, "")
    return f"{d.label}{unit}{direction}"


def metric_rows(runs, metric: str) -> list[dict]:
    """ROW_COLUMNS for one metric of store runs (a page's), labelled by variant, in the runs' order."""
    rows = []
    for run in runs:
        m = next((m for m in run.metrics if m.name == metric), None)
        if m is not None:
            rows.append({"label": run.variant, "median": m.value, "p10": m.p10, "p90": m.p90, "n": m.n,
                         "is_baseline": run.is_baseline})
    return rows


def value_scale(values) -> alt.Scale:
    """A quantitative axis around the data, not from zero. When every value is the same (agreement 100% for all,
    a ratio of 1), Vega's own domain collapses to one point and draws one tick labelled to six decimals; a span
    of 5% around that value (at least 1 unit) keeps the axis readable."""
    finite = [float(v) for v in values if v is not None and pd.notna(v)]
    if finite and max(finite) - min(finite) <= 1e-9 * max(1.0, abs(max(finite))):
        pad = max(abs(finite[0]) * 0.05, 1.0)
        return alt.Scale(zero=False, domain=[finite[0] - pad, finite[0] + pad])
    return alt.Scale(zero=False)


def _legend(roles: list[str]) -> tuple[alt.Color, alt.Shape]:
    scale = alt.Scale(domain=roles, range=[ROLE_COLOURS[r] for r in roles])
    shapes = alt.Scale(domain=roles, range=[ROLE_SHAPES[r] for r in roles])
    return (alt.Color("role:N", scale=scale, title=None, legend=alt.Legend(orient="bottom")),
            alt.Shape("role:N", scale=shapes, title=None, legend=alt.Legend(orient="bottom")))


def _interval_chart(rows: list[dict], metric: str, reference: float | None) -> alt.LayerChart:
    """One point per row at its median, a rule from p10 to p90, the baseline in grey squares; an optional
    vertical rule at `reference` (1 = no change, for a ratio to the baseline)."""
    data = pd.DataFrame([r for r in rows if r.get("median") is not None], columns=ROW_COLUMNS)
    data["role"] = ["baseline" if b else "variant" for b in data["is_baseline"]]
    order = list(dict.fromkeys(data["label"]))
    colour, shape = _legend(["baseline", "variant"])
    y = alt.Y("label:N", sort=order, title=None)
    base = alt.Chart(data).encode(y=y)
    spread = base.mark_rule(strokeWidth=2).encode(
        x=alt.X("p10:Q", title=axis_title(metric),
                scale=value_scale([*data["p10"], *data["p90"], *data["median"]])), x2="p90:Q", color=colour)
    points = base.mark_point(filled=True, size=90, opacity=1).encode(
        x="median:Q", color=colour, shape=shape,
        tooltip=[alt.Tooltip("label:N", title="variant"), "median:Q", "p10:Q", "p90:Q", "n:Q"])
    layers = [spread, points]
    if reference is not None:
        layers.insert(0, alt.Chart(pd.DataFrame({"x": [reference]})).mark_rule(strokeDash=[4, 4], color="#999")
                      .encode(x="x:Q"))
    # fit-x: the page stretches the width; the height stays the rows' own (Streamlit's default, "fit", would squeeze
    # the rows into the given height with the title, axis and legend, drawing all labels on top of each other)
    return alt.layer(*layers).properties(width=WIDTH, height=max(60, 28 * len(order)), title=definition(metric).label,
                                         autosize=alt.AutoSizeParams(type="fit-x", contains="padding"))


def speedup_chart(rows: list[dict], metric: str = "speedup") -> alt.LayerChart:
    """A paired ratio to the baseline per variant (rows: ROW_COLUMNS), with a dashed line at 1 (no change)."""
    return _interval_chart(rows, metric, reference=1.0)


def quality_chart(rows: list[dict], metric: str) -> alt.LayerChart:
    """A quality metric per variant (rows: ROW_COLUMNS) with its p10–p90 spread."""
    return _interval_chart(rows, metric, reference=None)


def pareto_chart(points: pd.DataFrame, x: str, y: str) -> alt.LayerChart:
    """Every run as a point (points: lab.views.pareto.POINT_COLUMNS; x and y are the metric names), the front
    joined by a line in order of x and labelled with its variant names, the baseline a grey square."""
    data = points.dropna(subset=["x", "y"]).sort_values(["x", "y", "label"], kind="stable")
    data = data.assign(role=["baseline" if b else ("on the front" if f else "dominated")
                             for b, f in zip(data["is_baseline"], data["on_front"])])
    data = data[["label", "variant", "x", "y", "on_front", "role"]].reset_index(drop=True)
    colour, shape = _legend([r for r in ("baseline", "on the front", "dominated") if r in set(data["role"])])
    x_enc = alt.X("x:Q", title=axis_title(x), scale=value_scale(data["x"]))
    y_enc = alt.Y("y:Q", title=axis_title(y), scale=value_scale(data["y"]))
    front = data[data["on_front"]]
    line = alt.Chart(front).mark_line(color=ROLE_COLOURS["on the front"], strokeWidth=1.5).encode(
        x=x_enc, y=y_enc, order=alt.Order("x:Q"))
    dots = alt.Chart(data).mark_point(filled=True, size=100, opacity=1).encode(
        x=x_enc, y=y_enc, color=colour, shape=shape,
        tooltip=[alt.Tooltip("label:N", title="run"), alt.Tooltip("x:Q", title=definition(x).label),
                 alt.Tooltip("y:Q", title=definition(y).label)])
    named = data[data["on_front"] | (data["role"] == "baseline")]
    labels = alt.Chart(named).mark_text(align="left", dx=8, dy=-8, fontSize=11).encode(x=x_enc, y=y_enc,
                                                                                        text="variant:N")
    return alt.layer(line, dots, labels).properties(
        width=WIDTH, height=300, title=f"{definition(y).label} against {definition(x).label}")


def memory_rows(runs) -> list[dict]:
    """MEMORY_COLUMNS: each variant's peak as its parts (the memory probe's runtime, weights and work), the KV
    cache drawn inside the work (at most all of it: the KV bytes a generation ended with live there)."""
    rows = []
    for run in runs:
        m = {x.name: x.value for x in run.metrics}
        if any(m.get(k) is None for k in ("mem_runtime_mb", "mem_weights_mb", "mem_rise_mb")):
            continue
        work = max(m["mem_rise_mb"], 0.0)
        kv = min(max(m.get("kv_cache_mb") or 0.0, 0.0), work)
        parts = (m["mem_runtime_mb"], m["mem_weights_mb"], kv, work - kv)
        rows += [{"label": run.variant, "part": part, "mb": mb, "order": i}
                 for i, (part, mb) in enumerate(zip(MEMORY_PARTS, parts))]
    return rows


def memory_chart(rows: list[dict]) -> alt.Chart:
    """Peak memory per variant as stacked bars of its parts (rows: MEMORY_COLUMNS)."""
    data = pd.DataFrame(rows, columns=MEMORY_COLUMNS)
    order = list(dict.fromkeys(data["label"]))
    colour = alt.Color("part:N", scale=alt.Scale(domain=list(MEMORY_PARTS), range=list(MEMORY_PARTS.values())),
                       title=None, legend=alt.Legend(orient="bottom"))
    return alt.Chart(data).mark_bar().encode(
        y=alt.Y("label:N", sort=order, title=None), x=alt.X("mb:Q", title=axis_title("peak_mem_mb"), stack="zero"),
        color=colour, order=alt.Order("order:Q"),
        tooltip=[alt.Tooltip("label:N", title="variant"), "part:N", alt.Tooltip("mb:Q", title="MB", format=".0f")],
    ).properties(width=WIDTH, height=max(60, 28 * len(order)), title="Peak memory: runtime, weights, KV cache, work",
                 autosize=alt.AutoSizeParams(type="fit-x", contains="padding"))
