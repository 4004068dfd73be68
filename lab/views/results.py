"""Read results back from the store as tables (for the CLI, the pages and reports). No torch here."""
from __future__ import annotations

import math

from sqlalchemy import select
from sqlalchemy.orm import selectinload

from lab import metrics, store
from lab.bench.machine_load import busy_reason
from lab.metrics import MetricDef
from lab.store import Experiment, Job, Run
from lab.techniques.registry import discover

# The summary table shows these, in this order, when present.
SUMMARY_METRICS = ["speedup", "decode_speedup", "prefill_speedup", "s_per_image", "s_per_step", "blocks_computed",
                   "class_accuracy", "psnr_db", "ssim", "image_exact", "tokens_per_s", "decode_tokens_per_s",
                   "prefill_tokens_per_s", "batch_tokens_per_s", "ttft_s", "tpot_ms", "floor_ms", "tpot_over_floor",
                   "latency_s", "acceptance_rate", "mean_accepted", "tokens_per_forward", "draft_ms", "verify_ms",
                   "peak_mem_mb", "mem_runtime_mb", "mem_weights_mb", "mem_rise_mb",
                   "weight_mb", "calibration_s", "kv_cache_mb", "draft_kv_mb", "kv_compression", "answer_accuracy",
                   "agreement", "answer_similarity", "exact_match", "first_divergence", "perplexity"]
NOT_SUMMARISED = ("new_tokens", "images_per_s")  # shown as TPOT/latency and s/image; technique metrics all show
RATIOS = ("speedup", "decode_speedup", "prefill_speedup")  # paired ratios to the baseline: 1 = no change
MIN_PAIRS = 3  # fewer paired ratios than this cannot tell a change from the machine's noise


def fmt(x: float | None, digits: int = 3) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "–"
    if x == 0:
        return "0"
    mag = math.floor(math.log10(abs(x)))
    decimals = max(0, digits - 1 - mag)
    return f"{x:.{decimals}f}"


def definition(name: str) -> MetricDef:
    """A metric's definition. A technique declares its own metrics in its file, so the techniques are loaded first
    (a page may show an experiment before it has built any form)."""
    discover()
    return metrics.definition(name)


def column_label(name: str) -> str:
    d = definition(name)
    return f"{d.label} [{d.unit}]" if d.unit else d.label


def load_experiment(experiment_id: int) -> Experiment | None:
    with store.session() as s:
        return s.scalars(select(Experiment).where(Experiment.id == experiment_id).options(
            selectinload(Experiment.runs).selectinload(Run.metrics),
            selectinload(Experiment.runs).selectinload(Run.outputs))).first()


def load_runs(run_ids: list[int]) -> list[Run]:
    with store.session() as s:
        runs = s.scalars(select(Run).where(Run.id.in_(run_ids)).options(
            selectinload(Run.metrics), selectinload(Run.outputs), selectinload(Run.experiment))).all()
    by_id = {r.id: r for r in runs}
    return [by_id[i] for i in run_ids if i in by_id]


def summary_rows(exp: Experiment) -> list[dict]:
    """One row per variant: each metric as 'median (p10–p90) n=N' (each cell its own n), and a speedup that
    cannot be told from noise says so beside the number. Ready for a table."""
    rows = []
    warmup = (exp.spec or {}).get("warmup", 1)
    stored = {m.name for run in exp.runs for m in run.metrics}
    # the lab's own metrics in their reading order, then any technique's (a new technique needs no edit here)
    shown = SUMMARY_METRICS + [n for n in ordered_metric_names(stored)
                               if n not in SUMMARY_METRICS and n not in NOT_SUMMARISED]
    for run in exp.runs:
        metrics = {m.name: m for m in run.metrics}
        row = {"Variant": run.variant}
        for name in shown:
            m = metrics.get(name)
            if m is None:
                continue
            spread = f" ({fmt(m.p10)}–{fmt(m.p90)})" if m.n > 1 and m.p10 != m.p90 else ""
            note = ratio_note(m.p10, m.p90, m.n, warmup) if name in RATIOS and not run.is_baseline else None
            row[column_label(name)] = fmt(m.value) + spread + f" n={m.n}" + (f" · {note}" if note else "")
        rows.append(row)
    return rows


def ratio_note(p10: float | None, p90: float | None, n: int, warmup: int) -> str | None:
    """Why a paired ratio to the baseline should not be read as a real change, or None when it can be.

    Without warm-up the first variant pays the one-time costs (allocation, lazy init) and the others look
    faster; with too few pairs, or a spread that includes 1, the ratio is not distinguishable from noise.
    """
    reasons = []
    if warmup == 0:
        reasons.append("no warm-up")
    if n < MIN_PAIRS:
        reasons.append(f"only {n} pair{'s' if n != 1 else ''}")
    if p10 is not None and p90 is not None and p10 <= 1.0 <= p90:
        reasons.append("within noise")
    return ", ".join(reasons) or None


def busy_runs(exp: Experiment) -> str | None:
    """Why the experiment's runs count as measured on a busy machine (one reason per distinct cause), or None."""
    reasons = {busy_reason(run.environment or {}) for run in exp.runs} - {None}
    return "; ".join(sorted(reasons)) or None


def metric_values(run: Run) -> dict[str, float | None]:
    return {m.name: m.value for m in run.metrics}


def definitions_for(names) -> list[dict]:
    discover()
    return [{"Metric": column_label(n), "Definition": definition(n).definition} for n in names if n in metrics.METRICS]


def text_table(rows: list[dict]) -> str:
    """A plain fixed-width table for the terminal."""
    if not rows:
        return "(no runs)"
    cols = list(dict.fromkeys(k for r in rows for k in r))
    widths = {c: max(len(c), *(len(str(r.get(c, ""))) for r in rows)) for c in cols}
    line = "  ".join(c.ljust(widths[c]) for c in cols)
    sep = "  ".join("-" * widths[c] for c in cols)
    body = ["  ".join(str(r.get(c, "")).ljust(widths[c]) for c in cols) for r in rows]
    return "\n".join([line, sep, *body])


def recent_experiments(limit: int = 20) -> list[dict]:
    with store.session() as s:
        exps = s.scalars(select(Experiment).order_by(Experiment.id.desc()).limit(limit)).all()
        return [{"ID": e.id, "Name": e.name, "Status": e.status, "Model": e.spec.get("model"),
                 "Workload": e.spec.get("workload"),
                 "Variants": ", ".join(v["name"] for v in e.spec.get("variants", [])),
                 "Created (UTC)": e.created_at.strftime("%Y-%m-%d %H:%M:%S"),
                 "Run time [s]": run_seconds(s, e.id)} for e in exps]


def run_seconds(s, experiment_id: int) -> int | None:
    """Wall time of the experiment's last job, from its start to its end (queueing excluded); None if unfinished."""
    job = s.scalars(select(Job).where(Job.experiment_id == experiment_id).order_by(Job.id.desc())).first()
    if job is None or job.started_at is None or job.finished_at is None:
        return None
    return round((job.finished_at - job.started_at).total_seconds())


def ordered_metric_names(names) -> list[str]:
    """Metric names in the catalogue's order (the lab's, then techniques' in the order they were declared)."""
    discover()
    names = set(names)
    known = [n for n in metrics.ORDER if n in names]
    return known + sorted(n for n in names if n not in metrics.ORDER)
