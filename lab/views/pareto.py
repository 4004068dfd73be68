"""The speed-vs-quality trade-off: which runs no other run beats on both axes (the Pareto front), for the Compare
page and for reports. No Streamlit, no torch."""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import pandas as pd

from lab.views.compare import scatter_axes
from lab.views.results import definition, load_runs

POINT_COLUMNS = ["run", "label", "experiment", "variant", "is_baseline", "x", "y", "on_front"]


def _number(value) -> float | None:
    """A coordinate, or None when it is missing or not finite (such a point is on no front)."""
    if value is None or isinstance(value, bool):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def pareto_front(points: Sequence[Mapping] | pd.DataFrame, x: str, y: str, x_higher_better: bool,
                 y_higher_better: bool) -> list[int]:
    """Indices (into `points`) of the non-dominated points, ascending. A point is dominated when another is at
    least as good on both axes and better on one; two equal points do not dominate each other, so both stay.
    Points missing either value are left out."""
    records = points.to_dict("records") if isinstance(points, pd.DataFrame) else list(points)
    # flip the signs so that higher is better on both axes; then one comparison rule serves all four cases
    sx, sy = (1 if x_higher_better else -1), (1 if y_higher_better else -1)
    valid = []
    for i, p in enumerate(records):
        px, py = _number(p.get(x)), _number(p.get(y))
        if px is not None and py is not None:
            valid.append((i, sx * px, sy * py))
    return [i for i, a, b in valid
            if not any(c >= a and d >= b and (c > a or d > b) for _, c, d in valid)]


def axis_choices(metric_names) -> tuple[list[str], list[str]]:
    """The metrics a Pareto chart can put on each axis (both need a better direction): speed and memory, quality."""
    speed, quality = scatter_axes(pd.DataFrame(columns=sorted(set(metric_names))))
    return speed, [q for q in quality if definition(q).higher_is_better is not None]


def default_axes(metric_names) -> tuple[str | None, str | None]:
    """The scatter's default axes among the metrics present: speed is "speedup" (else the first measured metric
    with a better direction), quality the first metric scored against the baseline; None where there is none."""
    speed, quality = scatter_axes(pd.DataFrame(columns=sorted(set(metric_names))))
    x = "speedup" if "speedup" in speed else (speed[0] if speed else None)
    return x, (quality[0] if quality else None)


def points_frame(rows: list[dict], x_metric: str, y_metric: str) -> pd.DataFrame:
    """POINT_COLUMNS from rows holding a run's identity (run, label, experiment, variant, is_baseline) and its
    metric values by name; `on_front` marks the Pareto front under the metrics' own directions."""
    x_better, y_better = _direction(x_metric), _direction(y_metric)
    points = [{**{k: r[k] for k in POINT_COLUMNS[:5]}, "x": _number(r.get(x_metric)), "y": _number(r.get(y_metric))}
              for r in rows]
    front = set(pareto_front(points, "x", "y", x_better, y_better))
    for i, p in enumerate(points):
        p["on_front"] = i in front
    return pd.DataFrame(points, columns=POINT_COLUMNS)


def pareto_points(run_ids: list[int], x_metric: str | None = None, y_metric: str | None = None) -> pd.DataFrame:
    """The runs as points of x_metric against y_metric (default_axes when not given), sorted by run id, with
    whether each is on the front. Empty when the runs hold no metric for an axis."""
    runs = sorted(load_runs(run_ids), key=lambda r: r.id)
    values = [{m.name: m.value for m in run.metrics} for run in runs]
    if x_metric is None or y_metric is None:
        default_x, default_y = default_axes({name for v in values for name in v})
        x_metric, y_metric = x_metric or default_x, y_metric or default_y
    if x_metric is None or y_metric is None:
        return pd.DataFrame(columns=POINT_COLUMNS)
    rows = [{"run": run.id, "label": f"#{run.experiment.id} {run.variant}", "experiment": run.experiment.id,
             "variant": run.variant, "is_baseline": run.is_baseline, **v} for run, v in zip(runs, values)]
    return points_frame(rows, x_metric, y_metric)


def _direction(metric: str) -> bool:
    better = definition(metric).higher_is_better
    if better is None:
        raise ValueError(f"metric {metric!r} has no better direction; a Pareto front needs one on both axes")
    return better
