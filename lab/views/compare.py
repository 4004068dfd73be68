"""The compare view's data: runs from any experiments side by side (MLflow style), diff-only filtering,
and the points of the speed-vs-quality scatter. No Streamlit, no torch."""
from __future__ import annotations

import pandas as pd
from sqlalchemy import select

from lab import store
from lab.store import Experiment, Run
from lab.views.results import column_label, definition, fmt, load_runs, ordered_metric_names

ENV_FIELDS = ["device", "device_name", "threads", "dtype", "torch", "transformers", "lab_commit", "spec_hash"]


ORIGIN_MARKS = {store.ORIGIN_IMPORTED: " [imported]", store.ORIGIN_GALLERY: " [recorded]"}  # not measured here


def run_label(run: Run, exp: Experiment) -> str:
    return f"#{exp.id} {exp.name} / {run.variant} (run {run.id}){ORIGIN_MARKS.get(exp.origin, '')}"


def run_choices(limit: int = 500) -> list[dict]:
    with store.session() as s:
        rows = s.execute(select(Run, Experiment).join(Experiment).order_by(Run.id.desc()).limit(limit)).all()
        return [{"id": r.id, "experiment_id": e.id, "label": run_label(r, e)} for r, e in rows]


def default_selection(choices: list[dict]) -> list[int]:
    """The runs of the newest experiment."""
    if not choices:
        return []
    newest = max(c["experiment_id"] for c in choices)
    return sorted(c["id"] for c in choices if c["experiment_id"] == newest)


def _technique_text(run: Run) -> str:
    techs = run.params.get("techniques", [])
    if not techs:
        return "none (baseline)" if run.params.get("engine", "lab") == "lab" else run.params.get("engine")
    return " + ".join(f"{t['name']}(" + ", ".join(f"{k}={v}" for k, v in t.items() if k != "name") + ")"
                      for t in techs)


def comparison_table(run_ids: list[int]) -> pd.DataFrame:
    """Rows: settings, environment and metrics; columns: runs. Metrics as 'median (p10–p90)'."""
    runs = load_runs(run_ids)
    columns = {}
    metric_names = ordered_metric_names({m.name for r in runs for m in r.metrics})
    for run in runs:
        spec, col = run.experiment.spec, {}
        col["experiment"] = f"#{run.experiment.id} {run.experiment.name}{ORIGIN_MARKS.get(run.experiment.origin, '')}"
        col["variant"] = run.variant
        col["techniques"] = _technique_text(run)
        keys = {"digits": ("model", "workload", "classes", "images_per_class", "sampler", "steps", "guidance",
                           "repeats"),
                "image_prompts": ("model", "workload", "prompts", "image_size", "steps", "guidance", "repeats")
                }.get(spec.get("workload"), ("model", "workload", "prompts", "max_new_tokens", "repeats",
                                             "temperature"))
        for key in keys:
            col[key] = str(spec.get(key))
        for key in ENV_FIELDS:
            col[f"env.{key}"] = str(run.environment.get(key))
        metrics = {m.name: m for m in run.metrics}
        for name in metric_names:
            m = metrics.get(name)
            col[column_label(name)] = "–" if m is None else fmt(m.value) + (
                f" ({fmt(m.p10)}–{fmt(m.p90)}, n={m.n})" if m.n > 1 else "")
        columns[f"run {run.id}: {run.variant}"] = col
    return pd.DataFrame(columns)


def only_differences(table: pd.DataFrame) -> pd.DataFrame:
    """Keep the rows whose values are not all the same across the runs."""
    if table.shape[1] < 2:
        return table
    return table[table.nunique(axis=1) > 1]


def scatter_points(run_ids: list[int]) -> pd.DataFrame:
    rows = []
    for run in load_runs(run_ids):
        row = {"run": f"#{run.experiment.id} {run.variant} (run {run.id})"}
        row.update({m.name: m.value for m in run.metrics})
        rows.append(row)
    return pd.DataFrame(rows)


def scatter_axes(points: pd.DataFrame) -> tuple[list[str], list[str]]:
    """The metrics the scatter offers, in catalogue order (technique metrics included): what was measured
    (speed, memory, counts with a better direction) on x, what was scored against the baseline on y."""
    names = ordered_metric_names(c for c in points.columns if c != "run")
    speed = [n for n in names if definition(n).kind == "measured" and definition(n).higher_is_better is not None]
    quality = [n for n in names if definition(n).kind == "quality"]
    return speed, quality


# What must match for runs' numbers to be read across experiments (spec_hash differs by design; the dtype is a
# variant's own choice)
COMPARABLE_ENV = ["device", "device_name", "threads", "torch", "transformers", "lab_commit"]


def environment_differences(run_ids: list[int]) -> list[str]:
    """One line per environment field on which the picked runs differ ("threads: 2 (runs 3, 4) vs 8 (run 9)")."""
    values: dict[str, dict[str, list[int]]] = {}
    for run in load_runs(run_ids):
        for key in COMPARABLE_ENV:
            values.setdefault(key, {}).setdefault(str(run.environment.get(key)), []).append(run.id)
    lines = []
    for key in COMPARABLE_ENV:
        if len(values.get(key, {})) > 1:
            parts = [f"{value} ({'runs' if len(ids) > 1 else 'run'} {', '.join(map(str, ids))})"
                     for value, ids in sorted(values[key].items())]
            lines.append(f"{key}: " + " vs ".join(parts))
    return lines
