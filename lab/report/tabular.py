"""The report as machine-readable files: JSON (everything, what `python -m lab import` reads back) and CSV (one
row per run and metric, for a spreadsheet)."""
from __future__ import annotations

import csv
import io
import json

CSV_COLUMNS = ["experiment", "run", "variant", "metric", "median", "p10", "p90", "n", "unit"]
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
        for run in exp["runs"]:
            for m in run["metrics"]:
                writer.writerow([exp["id"], run["id"], _cell_text(run["variant"]), m["name"], _number(m["median"]),
                                 _number(m["p10"]), _number(m["p90"]), m["n"], m["unit"]])
    return out.getvalue()
