"""A class pressing the same button: thirty identical quick starts should not queue thirty runs behind one
worker. A spec whose hash matches an experiment already queued or running is joined; one that matches a finished
result is shown at once (with when it was measured) only when a fresh run would measure the same thing: this host,
the same clean commit, the same library versions, the same model weights, and a machine that was not busy. A fresh
measurement stays one click away, never the default."""
from __future__ import annotations

import platform

from sqlalchemy import select

from lab import store
from lab.bench.machine_load import busy_reason
from lab.bench.provenance import LIBRARIES, WEIGHTS_KEY, library_versions, weights_fingerprint
from lab.paths import git_commit
from lab.spec import Spec, spec_hash
from lab.store import Experiment, Run

IN_FLIGHT = ("queued", "running")
UNKNOWN_COMMIT = "unknown"  # lab.paths.git_commit without git: any code at all
DIRTY = "+dirty"  # lab.paths.git_commit with changed tracked files: code no commit names


def matching_experiment(spec: Spec) -> dict | None:
    """The newest local experiment the spec can reuse: {"id", "status", "finished_at"}; None when there is none.

    In flight: any queued or running experiment of the same spec hash (its result will be this one's).
    Finished: status done, and every run's environment matches what a run here would record now (`refusal`)."""
    here: dict | None = None  # computed once, and only when a finished candidate needs it
    with store.session() as s:
        candidates = s.scalars(select(Experiment).where(Experiment.spec_hash == spec_hash(spec),
                                                        Experiment.origin == store.ORIGIN_LOCAL)
                               .order_by(Experiment.id.desc())).all()
        for exp in candidates:
            if exp.status in IN_FLIGHT:
                return _found(exp)
            if exp.status == "done" and exp.runs:
                here = here or environment_here(spec)
                if refusal(exp.runs, here) is None:
                    return _found(exp)
    return None


def environment_here(spec: Spec) -> dict:
    """What a run of `spec` started now would record about where and with what it measured (the keys reuse
    compares), read without loading torch or the model."""
    return {"host": platform.node(), "lab_commit": git_commit(), **library_versions(),
            WEIGHTS_KEY: weights_fingerprint(spec.model)}


def refusal(runs: list[Run], here: dict) -> str | None:
    """Why these stored runs do not stand for a run measured `here` now, or None when they do."""
    commit = here["lab_commit"]
    if commit == UNKNOWN_COMMIT or commit.endswith(DIRTY):
        return f"this checkout's commit is {commit}: the code that would run is named by no commit"
    if here[WEIGHTS_KEY] is None:
        return "the model's files cannot be found here to compare its weights"
    for run in runs:
        env = run.environment or {}
        for key in ("host", "lab_commit", *LIBRARIES, WEIGHTS_KEY):
            if env.get(key) != here[key]:
                return f"run {run.id} ({run.variant}) has {key} {env.get(key)!r}, here it is {here[key]!r}"
        busy = busy_reason(env)
        if busy:
            return f"run {run.id} ({run.variant}) was measured on a busy machine: {busy}"
    return None


def _found(exp: Experiment) -> dict:
    return {"id": exp.id, "status": exp.status, "finished_at": exp.finished_at}
