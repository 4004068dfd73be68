"""A class pressing the same button: thirty identical quick starts should not queue thirty runs behind one
worker. A spec whose hash matches an experiment already queued or running is joined; one that matches a finished
result measured on this host with this commit is shown at once (with when it was measured), and a fresh
measurement stays one click away, never the default."""
from __future__ import annotations

import platform

from sqlalchemy import select

from lab import store
from lab.paths import git_commit
from lab.spec import Spec, spec_hash
from lab.store import Experiment

IN_FLIGHT = ("queued", "running")


def matching_experiment(spec: Spec) -> dict | None:
    """The newest local experiment the spec can reuse: {"id", "status", "finished_at"}; None when there is none.

    In flight: any queued or running experiment of the same spec hash (its result will be this one's).
    Finished: status done, and its runs were measured on this host with this commit (another machine's or another
    version's numbers are not this machine's result)."""
    host, commit = platform.node(), git_commit()
    with store.session() as s:
        candidates = s.scalars(select(Experiment).where(Experiment.spec_hash == spec_hash(spec),
                                                        Experiment.origin == store.ORIGIN_LOCAL)
                               .order_by(Experiment.id.desc())).all()
        for exp in candidates:
            if exp.status in IN_FLIGHT:
                return _found(exp)
            if exp.status == "done" and exp.runs and all(
                    r.environment.get("host") == host and r.environment.get("lab_commit") == commit
                    for r in exp.runs):
                return _found(exp)
    return None


def _found(exp: Experiment) -> dict:
    return {"id": exp.id, "status": exp.status, "finished_at": exp.finished_at}
