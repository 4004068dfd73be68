"""The job queue (in the store): submitting, cancelling, and judging workers alive or dead.

A page or the CLI submits a validated spec: the experiment and its job are written in one transaction; the job
asks for the spec's device kind (auto, cpu or cuda). A worker (lab/jobs/worker.py, `python -m lab worker`) on a
device of that kind claims it, taking the device's lease (lab/jobs/leases.py) first, so one job measures on a
device at a time however many workers run on however many machines. Each job runs in its own process
(lab/jobs/process.py) that saves all results in one transaction. A job whose worker died is marked failed with the
reason by whoever looks next (a worker, the page, the CLI), and its lease is freed. `python -m lab run --ray`
(lab/jobs/ray_units.py) submits jobs that only its Ray tasks run.
"""
from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import delete, exists, select, update
from sqlalchemy.engine import make_url

from lab import store
from lab.bench.validate import validate
from lab.jobs.leases import cuda_usable
from lab.jobs.liveness import worker_dead as _worker_dead
from lab.paths import ROOT, child_env, data_dir
from lab.spec import Spec, spec_hash
from lab.store import RUNNER_WORKER, Experiment, Job, Lease, Run, Worker, utcnow

NO_WORKER_HINT = ("no worker is running and LAB_WORKER_AUTOSTART=0, so none was started: the job waits in the "
                  "queue until one runs. Start one with `python -m lab worker` (in another terminal).")


def no_worker_hint(kind: str = "auto") -> str:
    """Why a job asking for `kind` waits, and what starts a worker for it."""
    if kind == "cuda" and autostart_enabled() and not cuda_usable():
        return ("the job asks for a cuda device and this machine has no usable GPU: it waits in the queue until a "
                "worker on a GPU machine sharing this store takes it (`python -m lab worker --device cuda:0` there).")
    return NO_WORKER_HINT


def autostart_enabled() -> bool:
    """LAB_WORKER_AUTOSTART=0 means: never start a worker on the user's behalf (the CLI and the pages)."""
    return os.environ.get("LAB_WORKER_AUTOSTART", "1") != "0"


# --- submitting and inspecting -----------------------------------------------------------------------
@store.retried("queueing a job")
def submit(spec: Spec, runner: str = RUNNER_WORKER, tags: list[str] | None = None) -> tuple[int, int]:
    """Store a validated spec as a queued experiment with its job; returns (experiment id, job id)."""
    with store.session() as s:
        exp = Experiment(name=spec.name, spec=spec.to_dict(), spec_hash=spec_hash(spec), status="queued",
                         tags=list(tags or []))
        s.add(exp)
        s.flush()
        job = Job(experiment_id=exp.id, status="queued", message="queued", device_kind=spec.device, runner=runner)
        s.add(job)
        s.flush()
        return exp.id, job.id


def submit_raw(raw: dict) -> tuple[int, int]:
    """Validate a raw spec (a page's form) and submit it; SpecError names what is wrong, and nothing is stored."""
    return submit(validate(raw))


def get_job(job_id: int) -> Job | None:
    reap_dead()
    with store.session() as s:
        return s.get(Job, job_id)


def job_for_experiment(experiment_id: int) -> Job | None:
    with store.session() as s:
        return s.scalars(select(Job).where(Job.experiment_id == experiment_id).order_by(Job.id.desc())).first()


@store.retried("cancelling a job")
def cancel(job_id: int) -> str:
    """Cancel a queued job at once; a running one is flagged and its worker kills its process within seconds."""
    with store.session() as s:
        job = s.get(Job, job_id)
        if job is None:
            raise LookupError(f"no job with id {job_id}")
        status = job.status
    if status == "queued" and _finish_if(job_id, "queued", "cancelled", None, "cancelled before it started"):
        return "cancelled"
    if status in ("queued", "running"):  # a queued job claimed in between is running now: flag it
        with store.session() as s:
            s.execute(update(Job).where(Job.id == job_id, Job.status == "running").values(cancel_requested=True))
    with store.session() as s:
        return s.get(Job, job_id).status


@store.retried("recording a job's outcome")
def _finish_if(job_id: int, expected: str, status: str, error: str | None, message: str) -> bool:
    """Record a job's outcome unless someone else already moved it on (compare-and-set on its status)."""
    now = utcnow()
    values = dict(status=status, error=error, message=message, finished_at=now)
    if status == "done":
        values["progress"] = 1.0
    with store.session() as s:
        if not s.execute(update(Job).where(Job.id == job_id, Job.status == expected).values(**values)).rowcount:
            return False
        exp_id = s.scalar(select(Job.experiment_id).where(Job.id == job_id))
        s.execute(update(Experiment).where(Experiment.id == exp_id).values(status=status, finished_at=now))
        return True


@store.retried("putting a job back in the queue")
def _requeue_if_running(job_id: int, message: str) -> bool:
    """Put a running job back in the queue, untouched: the next worker runs it from the start."""
    with store.session() as s:
        if not s.execute(update(Job).where(Job.id == job_id, Job.status == "running").values(
                status="queued", worker_id=None, progress=0.0, started_at=None, message=message)).rowcount:
            return False
        exp_id = s.scalar(select(Job.experiment_id).where(Job.id == job_id))
        s.execute(update(Experiment).where(Experiment.id == exp_id).values(status="queued"))
        return True


def _has_runs(job_id: int) -> bool:
    with store.session() as s:
        exp_id = s.scalar(select(Job.experiment_id).where(Job.id == job_id))
        return bool(s.scalar(select(exists().where(Run.experiment_id == exp_id))))


# --- liveness ------------------------------------------------------------------------------------------
@store.retried("marking dead workers' jobs failed")
def reap_dead() -> int:
    """Mark running jobs of dead workers as failed, with the reason, and free their leases.
    Returns how many jobs were reaped. Writes only when something is dead (pages and CLIs call it often)."""
    now, reaped = utcnow(), 0
    with store.session() as s:
        # leases first: a worker registers before it takes a lease, so every holder read here is found below
        held = list(s.scalars(select(Lease)))
        running = list(s.scalars(select(Job).where(Job.status == "running")))
        ids = {lease.worker_id for lease in held} | {job.worker_id for job in running if job.worker_id}
        workers = {w.id: w for w in s.scalars(select(Worker).where(
            (Worker.stopped.is_(False)) | (Worker.id.in_(ids))))}
    dead = {wid for wid in ids if wid not in workers or _worker_dead(workers[wid], now)}
    for job in running:
        if job.worker_id is None or job.worker_id in dead:
            w = workers.get(job.worker_id)
            pid = w.pid if w else "?"
            since = job.heartbeat_at.strftime("%H:%M:%S") if job.heartbeat_at else "never"
            reaped += _finish_if(job.id, "running", "failed",
                                 f"the worker (pid {pid}) died while running this job; last heartbeat {since} "
                                 f"UTC. No results were stored; submit it again.", "worker died")
    newly_dead = [w.id for w in workers.values() if not w.stopped and _worker_dead(w, now)]
    stale = [lease for lease in held if lease.worker_id in dead]
    if newly_dead or stale:
        with store.session() as s:
            if newly_dead:
                s.execute(update(Worker).where(Worker.id.in_(newly_dead)).values(stopped=True))
            for lease in stale:  # compare-and-set: a live worker may have taken it over meanwhile
                s.execute(delete(Lease).where(Lease.resource == lease.resource,
                                              Lease.worker_id == lease.worker_id))
    return reaped


def fits(kind: str, device: str) -> bool:
    """Whether a worker on `device` ("cpu", "cuda:0") runs a job asking for `kind` ("auto", "cpu", "cuda")."""
    return kind == "auto" or device.split(":")[0] == kind


def worker_alive(kind: str = "auto") -> bool:
    """Whether a live worker would run a job asking for `kind`."""
    now = utcnow()
    with store.session() as s:
        return any(not _worker_dead(w, now) and fits(kind, w.device)
                   for w in s.scalars(select(Worker).where(Worker.stopped.is_(False))))


def ensure_worker(idle_exit: float = 600.0, kind: str = "auto") -> bool:
    """Start a detached worker for jobs asking for `kind` when no live one would run them. Returns True if one
    was started.

    Callers on this host take turns (a file lock), so twelve CLIs started at once start one worker, not
    twelve. Extra workers could not measure side by side anyway (the device lease), but each costs memory."""
    with _spawn_lock():
        reap_dead()
        if worker_alive(kind) or (kind == "cuda" and not cuda_usable()):
            return False  # a GPU job on a machine without one waits for a worker on another machine
        log = open(data_dir() / "worker.log", "ab")
        subprocess.Popen([sys.executable, "-m", "lab", "worker", "--idle-exit", str(idle_exit), "--device", kind],
                         cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                         start_new_session=True, env=child_env())
        deadline = time.time() + 20  # wait until it has announced itself, so the next caller sees it alive
        while time.time() < deadline and not worker_alive(kind):
            time.sleep(0.2)
    return True


@contextmanager
def _spawn_lock():
    try:
        # optional: POSIX only
        import fcntl
    except ImportError:  # no flock (Windows): the device lease still keeps runs apart
        yield
        return
    with open(_spawn_lock_path(), "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _spawn_lock_path() -> Path:
    """One lock per database: next to a SQLite file, else in the data folder named by the URL's hash."""
    url = store.database_url()
    database = make_url(url).database
    if url.startswith("sqlite") and database and database != ":memory:":
        return Path(database + "-worker-start.lock")  # next to lab.db-wal: git-ignored alike
    return data_dir() / f"worker-start-{hashlib.sha1(url.encode()).hexdigest()[:12]}.lock"
