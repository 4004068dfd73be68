"""The gallery: results the lab recorded on the default models (the workshop presets), shipped as one JSON report
in data/gallery/, so a class can browse every family's results without running anything. `make gallery` (or
`python -m lab gallery record IDS`) writes it with the machine and commit in every run's environment; the home
page loads it into the store once, as read-only experiments of origin "gallery", marked as recorded wherever shown."""
from __future__ import annotations

import functools
import json
from pathlib import Path

from sqlalchemy import select

from lab import store
from lab.paths import ROOT
from lab.report.collect import report_data
from lab.report.importer import import_experiments, read_report
from lab.views.workshop import steps

GALLERY_FILE = ROOT / "data" / "gallery" / "recorded.json"
DIFFUSION_WORKLOADS = ("digits", "image_prompts")  # the Diffusion Lab page shows these


def workshop_experiment_ids() -> list[int]:
    """The newest finished local experiment of each workshop preset, in workshop order (what `record` keeps)."""
    ids = []
    with store.session() as s:
        for step in steps():
            exp = s.scalars(select(store.Experiment).where(
                store.Experiment.name == step.name, store.Experiment.status == "done",
                store.Experiment.origin == store.ORIGIN_LOCAL).order_by(store.Experiment.id.desc())).first()
            if exp is None:
                raise LookupError(f"no finished run of the workshop preset '{step.name}' ({step.path.name}): run "
                                  f"`python -m lab run {step.path.relative_to(ROOT)} --wait` first (make gallery "
                                  f"runs them all)")
            ids.append(exp.id)
    return ids


def record(experiment_ids: list[int] | None = None, target: Path = GALLERY_FILE) -> Path:
    """Write the gallery file from these experiments (default: the workshop's newest runs): a JSON report, written
    without indentation because it ships in the repository (a third of the size; `lab import` reads it alike)."""
    data = report_data(experiment_ids or workshop_experiment_ids(), report_file=target.name)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps(data, sort_keys=True, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
                      + "\n", encoding="utf-8")
    return target


def summary(path: Path = GALLERY_FILE) -> dict | None:
    """What the shipped gallery holds, for the home page: experiment names, where and when it was recorded, and
    whether this store has loaded it; None when there is no gallery file."""
    if not path.exists():
        return None
    return {**_recorded(path, path.stat().st_mtime_ns), "loaded_ids": loaded_ids(path)}


@functools.lru_cache(maxsize=4)
def _recorded(path: Path, _mtime_ns: int) -> dict:
    # reading and checking 1.8 MB of JSON takes ~0.1 s: once per version of the file, not on every home page load
    data = read_report(path)
    environments = [r["environment"] for e in data["experiments"] for r in e["runs"]]
    return {"names": [e["name"] for e in data["experiments"]],
            "diffusion": [e["spec"].get("workload") in DIFFUSION_WORKLOADS for e in data["experiments"]],
            "machine": ", ".join(sorted({str(env.get("device_name", "?")) for env in environments})),
            "commit": ", ".join(sorted({str(env.get("lab_commit", "?"))[:12] for env in environments})),
            "recorded_at": max((e.get("finished_at") or "" for e in data["experiments"]), default="") or "?"}


def loaded_ids(path: Path = GALLERY_FILE) -> list[int]:
    with store.session() as s:
        rows = s.scalars(select(store.Experiment).where(store.Experiment.origin == store.ORIGIN_GALLERY)
                         .order_by(store.Experiment.id)).all()
        return [e.id for e in rows if (e.imported_from or {}).get("file") == path.name]


def load(path: Path = GALLERY_FILE) -> list[int]:
    """The gallery's experiments in this store (loaded once; a second call returns the same ids)."""
    return loaded_ids(path) or import_experiments(path, origin=store.ORIGIN_GALLERY)
