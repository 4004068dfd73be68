"""The report as machine-readable files: JSON (everything, what `python -m lab import` reads back) and CSV (one
row per run and metric, for a spreadsheet, each row carrying what the pages say beside a number: where it was
measured, whether the machine was busy, whether a ratio can be told from noise)."""
from __future__ import annotations

import csv
import io
import json

from lab.bench.machine_load import busy_reason
from lab.views.results import RATIOS, ratio_note

# origin: local (run through this store's queue), imported (a colleague's report) or gallery (the lab's recordings);
# busy: why the machine counted as busy while the run measured (empty: not busy, or not recorded);
# noise: why a ratio to the baseline cannot be told from noise (empty: it can, or the metric is no such ratio)
CSV_COLUMNS = ["experiment", "run", "variant", "metric", "median", "p10", "p90", "n", "unit", "origin", "busy",
               "noise"]
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")  # what a spreadsheet would run as a formula


def to_json(data: dict) -> str:
    """Sorted keys and no NaN: the same data gives the same bytes, and any strict JSON reader takes it."""
    return json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False, allow_nan=False) + "\n"


def _cell_text(text: str) -> str:
    # a variant named "=HYPERLINK(...)" must not become a formula in the colleague's spreadsheet (CSV injection)
    return "'" + text if text.startswith(FORMULA_STARTS) else text


def _number(value) -> str:
    return "" if value is None else repr(value)


def to_csv(data: dict) -> str:
    """CSV_COLUMNS, one row per run and metric, in the report's order; an empty cell is a missing value."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for exp in data["experiments"]:
        warmup = (exp.get("spec") or {}).get("warmup", 1)
        for run in exp["runs"]:
            busy = busy_reason(run.get("environment") or {}) or ""
            for m in run["metrics"]:
                writer.writerow([exp["id"], run["id"], _cell_text(run["variant"]), m["name"], _number(m["median"]),
                                 _number(m["p10"]), _number(m["p90"]), m["n"], m["unit"], exp.get("origin", ""),
                                 busy, _noise(run, m, warmup)])
    return out.getvalue()


def _noise(run: dict, metric: dict, warmup: int) -> str:
    """The results table's note beside a ratio (lab/views/results.ratio_note); the baseline's ratios are 1 by
    construction and get none."""
    if metric["name"] not in RATIOS or run.get("is_baseline"):
        return ""
    return ratio_note(metric["p10"], metric["p90"], metric["n"], warmup) or ""
