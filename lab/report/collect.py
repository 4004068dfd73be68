"""Everything a report shows, read from the store once into plain JSON-able data: the renderers (JSON, CSV,
Markdown, HTML) and the importer work from this dict alone, so a report a colleague imports draws the same."""
from __future__ import annotations

import math
from datetime import datetime
from types import SimpleNamespace

from lab import store
from lab.report.images import stored_image_png
from lab.store import Experiment, Run
from lab.views.results import busy_runs, definition, load_experiment, load_runs

FORMAT = "efficiency-lab-report"
VERSION = 1
RERUN = "python -m lab run {file}"


class NotInStore(LookupError):
    """An experiment or run id the store does not hold."""

    def __init__(self, kind: str, ids: list[int]):
        self.kind, self.ids = kind, ids
        listed = ", ".join(str(i) for i in ids)
        super().__init__(f"no {kind}{'s' if len(ids) > 1 else ''} with id{'s' if len(ids) > 1 else ''} {listed} "
                         f"in the store ({store.database_url()}); `python -m lab list` shows what it holds")


class SelectionError(ValueError):
    """A selection no report can be made of."""


class EmptySelection(SelectionError):
    """A report of nothing."""


def report_data(experiment_ids: list[int] | None = None, run_ids: list[int] | None = None,
                report_file: str = "report.json") -> dict:
    """The report of whole experiments, or of chosen runs (a Compare selection, grouped by experiment).
    `report_file` names the JSON file in the re-run command. NotInStore for an unknown id, EmptySelection for
    none at all, SelectionError for both kinds at once."""
    experiment_ids, run_ids = list(dict.fromkeys(experiment_ids or [])), list(dict.fromkeys(run_ids or []))
    if experiment_ids and run_ids:
        raise SelectionError("give experiment ids or run ids, not both")
    if not experiment_ids and not run_ids:
        raise EmptySelection("nothing to report: give at least one experiment id (or run ids with --runs)")
    if experiment_ids:
        groups = [(exp, exp.runs) for exp in _experiments(experiment_ids)]
        selection = {"experiments": sorted(experiment_ids)}
    else:
        groups = _runs_by_experiment(run_ids)
        selection = {"runs": sorted(run_ids)}
    experiments = [_experiment(exp, runs) for exp, runs in groups]
    names = sorted({m["name"] for e in experiments for r in e["runs"] for m in r["metrics"]})
    return {"format": FORMAT, "version": VERSION, "selection": selection,
            "rerun": RERUN.format(file=report_file), "metrics": {n: _definition(n) for n in names},
            "experiments": experiments}


def _experiments(ids: list[int]) -> list[Experiment]:
    found = {i: load_experiment(i) for i in ids}
    missing = [i for i, exp in found.items() if exp is None]
    if missing:
        raise NotInStore("experiment", missing)
    return [found[i] for i in sorted(ids)]


def _runs_by_experiment(ids: list[int]) -> list[tuple[Experiment, list[Run]]]:
    runs = load_runs(ids)
    missing = sorted(set(ids) - {r.id for r in runs})
    if missing:
        raise NotInStore("run", missing)
    groups: dict[int, tuple[Experiment, list[Run]]] = {}
    for run in sorted(runs, key=lambda r: (r.experiment.id, r.position)):
        groups.setdefault(run.experiment.id, (run.experiment, []))[1].append(run)
    return list(groups.values())


def _definition(name: str) -> dict:
    d = definition(name)
    return {"label": d.label, "unit": d.unit, "definition": d.definition, "higher_is_better": d.higher_is_better,
            "kind": d.kind}


def _experiment(exp: Experiment, runs: list[Run]) -> dict:
    selected = SimpleNamespace(runs=runs)  # busy_runs reads exp.runs: only the selected ones count
    return {"id": exp.id, "name": exp.name, "status": exp.status, "spec": json_safe(exp.spec),
            "spec_hash": exp.spec_hash, "created_at": _time(exp.created_at), "finished_at": _time(exp.finished_at),
            "origin": exp.origin, "imported_from": exp.imported_from, "tags": list(exp.tags or []),
            "note": exp.note or "", "busy_warning": busy_runs(selected), "runs": [_run(r) for r in runs]}


def _run(run: Run) -> dict:
    outputs = []
    for out in sorted(run.outputs, key=lambda o: o.item_index):
        item = {"item_index": out.item_index, "item_key": out.item_key, "prompt": out.prompt, "text": out.text,
                "token_ids": out.token_ids, "extra": json_safe(out.extra or {})}
        png = stored_image_png(out.extra or {})
        if png is not None:
            item["image_png"] = png
        outputs.append(item)
    return {"id": run.id, "position": run.position, "variant": run.variant, "is_baseline": run.is_baseline,
            "params": json_safe(run.params), "environment": json_safe(run.environment),
            "metrics": [json_safe({"name": m.name, "median": m.value, "p10": m.p10, "p90": m.p90, "n": m.n,
                                   "unit": m.unit, "samples": m.samples}) for m in run.metrics],
            "outputs": outputs}


def json_safe(value):
    """`value` with every non-finite float as None: JSON has no NaN or infinity, and a strict reader refuses them."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


def _time(moment: datetime | None) -> str | None:
    return moment.isoformat() if moment is not None else None
