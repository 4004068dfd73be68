"""`python -m lab import report.json`: a colleague's exported report back into this store, as experiments that
say where they came from (origin "imported", imported_from: the file, the original id, the commit that measured).
The whole file is checked before anything is written, and written in one transaction: a bad file leaves the
store as it was."""
from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path

from lab import store
from lab.report.collect import FORMAT, VERSION
from lab.spec import spec_hash
from lab.textfile import read_text_file

# The shipped gallery (five experiments, outputs and samples included) is 1.7 MiB; 64 MiB holds dozens of large
# experiments, and parsing takes about five times a file's size in memory, which a page's process can spare.
REPORT_FILE_LIMIT = 64 * 2**20
NUMBER = (int, float)
# field -> (accepted types, may be null), per level of the report
EXPERIMENT_FIELDS = {"id": (int, False), "name": (str, False), "spec": (dict, False), "runs": (list, False)}
RUN_FIELDS = {"variant": (str, False), "is_baseline": (bool, False), "params": (dict, False),
              "environment": (dict, False), "metrics": (list, False), "outputs": (list, False)}
METRIC_FIELDS = {"name": (str, False), "median": (NUMBER, True), "p10": (NUMBER, True), "p90": (NUMBER, True),
                 "n": (int, False), "unit": (str, False), "samples": (list, True)}
OUTPUT_FIELDS = {"item_index": (int, False), "item_key": (str, False), "prompt": (str, False), "text": (str, False),
                 "token_ids": (list, False), "extra": (dict, False)}


class ReportFormatError(ValueError):
    """A file that is not a report this lab can import; the message names the file and what is wrong."""


class _NotJson(ValueError):
    def __init__(self, msg: str):
        super().__init__(msg)
        self.msg = msg


def _no_constant(name: str):
    # Python's reader takes NaN and Infinity, which JSON does not have: a report written here never holds them
    raise _NotJson(f"{name} is not a JSON value")


def read_report(path: str | Path) -> dict:
    """The report in `path`, checked whole (format, version, every field a stored experiment needs)."""
    path = Path(path)
    text = read_text_file(path, REPORT_FILE_LIMIT, "JSON report", ReportFormatError)
    try:
        data = json.loads(text, parse_constant=_no_constant)
    except (json.JSONDecodeError, _NotJson) as e:
        where = f"line {e.lineno}, column {e.colno}: " if isinstance(e, json.JSONDecodeError) else ""
        raise ReportFormatError(f"{path}: not valid JSON ({where}{e.msg})") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise ReportFormatError(f"{path}: not an Efficiency Lab report (expected \"format\": \"{FORMAT}\"; export "
                                f"one with `python -m lab report ID --format json`)")
    if data.get("version") != VERSION:
        raise ReportFormatError(f"{path}: report format version {data.get('version')!r} is not supported; this lab "
                                f"reads version {VERSION}")
    experiments = data.get("experiments")
    if not isinstance(experiments, list) or not experiments:
        raise ReportFormatError(f"{path}: 'experiments' must be a non-empty list")
    for i, exp in enumerate(experiments):
        _check(path, f"experiments[{i}]", exp, EXPERIMENT_FIELDS)
        for j, run in enumerate(exp["runs"]):
            where = f"experiments[{i}].runs[{j}]"
            _check(path, where, run, RUN_FIELDS)
            for k, metric in enumerate(run["metrics"]):
                _check(path, f"{where}.metrics[{k}]", metric, METRIC_FIELDS)
            for k, output in enumerate(run["outputs"]):
                _check(path, f"{where}.outputs[{k}]", output, OUTPUT_FIELDS)
        for key in ("created_at", "finished_at"):
            _moment(path, f"experiments[{i}].{key}", exp.get(key))
        if len(exp["name"]) > store.NAME_LIMIT:
            raise ReportFormatError(f"{path}: experiments[{i}].name is longer than {store.NAME_LIMIT} characters")
    return data


def _check(path: Path, where: str, value, fields: dict) -> None:
    if not isinstance(value, dict):
        raise ReportFormatError(f"{path}: {where} must be an object, got {type(value).__name__}")
    for key, (types, nullable) in fields.items():
        if key not in value:
            raise ReportFormatError(f"{path}: {where} has no '{key}'")
        item = value[key]
        wrong_bool = isinstance(item, bool) and bool not in (types if isinstance(types, tuple) else (types,))
        if (item is None and not nullable) or (item is not None and (not isinstance(item, types) or wrong_bool)):
            raise ReportFormatError(f"{path}: {where}.{key} has the wrong type ({type(item).__name__})")


def _moment(path: Path, where: str, text) -> datetime | None:
    if text is None:
        return None
    try:
        return datetime.fromisoformat(text)
    except (TypeError, ValueError):
        raise ReportFormatError(f"{path}: {where} is not an ISO date and time: {str(text)[:40]!r}") from None


def _experiment(path: Path, exp: dict, origin: str) -> store.Experiment:
    commits = sorted({str(r["environment"]["lab_commit"]) for r in exp["runs"] if r["environment"].get("lab_commit")})
    row = store.Experiment(
        name=exp["name"], spec=exp["spec"], spec_hash=exp.get("spec_hash") or spec_hash(exp["spec"]), status="done",
        created_at=_moment(path, "created_at", exp.get("created_at")) or store.utcnow(),
        finished_at=_moment(path, "finished_at", exp.get("finished_at")), tags=list(exp.get("tags") or []),
        note=str(exp.get("note") or ""), origin=origin,
        imported_from={"file": path.name, "original_id": exp["id"], "exported_at_commit": ", ".join(commits) or None})
    for position, run in enumerate(exp["runs"]):
        stored = store.Run(position=position, variant=run["variant"], is_baseline=run["is_baseline"],
                           params=run["params"], environment=run["environment"])
        stored.metrics = [store.Metric(name=m["name"], value=m["median"], p10=m["p10"], p90=m["p90"], n=m["n"],
                                       unit=m["unit"], samples=m["samples"]) for m in run["metrics"]]
        stored.outputs = [store.Output(**{k: o[k] for k in OUTPUT_FIELDS}) for o in run["outputs"]]
        row.runs.append(stored)
    return row


def import_experiments(path: str | Path, origin: str = store.ORIGIN_IMPORTED) -> list[int]:
    """Every experiment of the report at `path` as a new one (status "done"), all in one transaction; their ids.
    `origin` says what they are: a colleague's (imported) or the lab's shipped recordings (gallery)."""
    path = Path(path)
    data = read_report(path)
    with store.session() as s:
        rows = [_experiment(path, exp, origin) for exp in data["experiments"]]
        s.add_all(rows)
        s.flush()
        return [row.id for row in rows]


def import_report(path: str | Path) -> int:
    """The one experiment of the report at `path`, imported; its new id. A report of several experiments is
    refused here (nothing written): import_experiments takes them all."""
    if len(read_report(path)["experiments"]) != 1:
        raise ReportFormatError(f"{path}: holds several experiments; `python -m lab import` imports them all")
    return import_experiments(path)[0]
