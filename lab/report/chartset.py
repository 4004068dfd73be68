"""Which charts a report draws, from its data alone, and how they become SVG (inline in HTML) or PNG (beside
Markdown): vl-convert renders Vega-Lite offline in-process, no browser and no network."""
from __future__ import annotations

from dataclasses import dataclass

import altair as alt
import vl_convert

from lab.views.charts import memory_chart, memory_rows, metric_rows, pareto_chart, quality_chart, speedup_chart
from lab.views.pareto import default_axes, points_frame
from lab.views.results import definition

# the Vega-Lite version altair writes (e.g. v6.4.1 -> "6.4"), so vl-convert reads the spec as it was meant
VL_VERSION = ".".join(alt.SCHEMA_VERSION.lstrip("v").split(".")[:2])
PNG_SCALE = 2  # sharp when printed


@dataclass(frozen=True)
class ReportChart:
    key: str  # a file-name-safe name, unique within the report
    title: str
    chart: alt.TopLevelMixin


class _Run:
    """A report run shaped like a store Run for lab.views.charts.metric_rows (variant, is_baseline, metrics)."""

    def __init__(self, run: dict):
        self.variant, self.is_baseline = run["variant"], run["is_baseline"]
        self.metrics = [_Metric(m) for m in run["metrics"]]


class _Metric:
    def __init__(self, m: dict):
        self.name, self.value, self.p10, self.p90, self.n = m["name"], m["median"], m["p10"], m["p90"], m["n"]


def _point_rows(experiments: list[dict], label_with_experiment: bool) -> list[dict]:
    rows = []
    for exp in experiments:
        for run in exp["runs"]:
            label = f"#{exp['id']} {run['variant']}"
            rows.append({"run": run["id"], "label": label, "experiment": exp["id"],
                         "variant": label if label_with_experiment else run["variant"],
                         "is_baseline": run["is_baseline"], **{m["name"]: m["median"] for m in run["metrics"]}})
    return rows


def _pareto(experiments: list[dict], key: str, label_with_experiment: bool) -> ReportChart | None:
    rows = _point_rows(experiments, label_with_experiment)
    x, y = default_axes({name for r in rows for name in r} - {"run", "label", "experiment", "variant",
                                                              "is_baseline"})
    if x is None or y is None:
        return None
    points = points_frame(rows, x, y)
    if len(points.dropna(subset=["x", "y"])) < 2:  # one point is no trade-off
        return None
    title = f"{definition(y).label} against {definition(x).label}: the Pareto front (no run beats it on both)"
    return ReportChart(key, title, pareto_chart(points, x, y))


def experiment_charts(experiment: dict) -> list[ReportChart]:
    """The speedup per variant, the first quality metric per variant, peak memory in its parts, and quality
    against speed with the Pareto front; each only when the experiment has what it needs."""
    runs = [_Run(r) for r in experiment["runs"]]
    names = {m["name"] for r in experiment["runs"] for m in r["metrics"]}
    prefix, charts = f"experiment-{experiment['id']}", []
    if "speedup" in names:
        charts.append(ReportChart(f"{prefix}-speedup", "Speedup per variant: median, p10–p90 (1 = the baseline)",
                                  speedup_chart(metric_rows(runs, "speedup"))))
    _, quality = default_axes(names)
    if quality is not None:
        charts.append(ReportChart(f"{prefix}-{quality}", f"{definition(quality).label} per variant: median, "
                                  f"p10–p90", quality_chart(metric_rows(runs, quality), quality)))
    memory = memory_rows(runs)
    if memory:
        charts.append(ReportChart(f"{prefix}-memory", "Peak memory per variant: runtime, weights, KV cache (inside "
                                  "the work) and the rest of the work", memory_chart(memory)))
    front = _pareto([experiment], f"{prefix}-pareto", label_with_experiment=False)
    return charts + ([front] if front else [])


def comparison_chart(data: dict) -> ReportChart | None:
    """Quality against speed across all the report's experiments (only when it holds more than one)."""
    if len(data["experiments"]) < 2:
        return None
    return _pareto(data["experiments"], "comparison-pareto", label_with_experiment=True)


def svg(chart: ReportChart) -> str:
    return vl_convert.vegalite_to_svg(chart.chart.to_dict(), vl_version=VL_VERSION)


def png(chart: ReportChart) -> bytes:
    return vl_convert.vegalite_to_png(chart.chart.to_dict(), vl_version=VL_VERSION, scale=PNG_SCALE)
