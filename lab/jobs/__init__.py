"""The job queue (in the store) and the worker process that runs it.

A page or the CLI submits a validated spec: the experiment and its job are written in one transaction. A worker
(`python -m lab worker`) takes the device's lease (lab/jobs/leases.py) before it claims a job, so one job measures
on a device at a time however many workers run. Each job runs in its own process (lab/jobs/process.py) that
saves all results in one transaction; the worker heartbeats, watches the cancel flag and its own stop signal,
and ends that process within seconds on either, even mid-forward. A job whose worker died is marked failed
with the reason by whoever looks next (a worker, the page, the CLI), and its lease is freed.
"""
from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import delete, exists, select, update
from sqlalchemy.engine import make_url
from sqlalchemy.exc import OperationalError

from lab import store
from lab.bench.validate import validate
from lab.jobs.leases import _release_lease, acquire_lease, device_key, release_leases
from lab.jobs.liveness import HOST
from lab.jobs.liveness import worker_dead as _worker_dead
from lab.paths import ROOT, child_env, data_dir
from lab.spec import Spec, spec_hash
from lab.store import Experiment, Job, Lease, Run, Worker, utcnow

HEARTBEAT_S = 2.0
WATCH_S = 0.5  # how often the worker looks at its child, the cancel flag and its stop signal
KILL_AFTER_S = 3.0  # SIGTERM first (lets the child's interpreter exit); SIGKILL if it is still there after this
NO_WORKER_HINT = ("no worker is running and LAB_WORKER_AUTOSTART=0, so none was started: the job waits in the "
                  "queue until one runs. Start one with `python -m lab worker` (in another terminal).")


def autostart_enabled() -> bool:
    """LAB_WORKER_AUTOSTART=0 means: never start a worker on the user's behalf (the CLI and the pages)."""
    return os.environ.get("LAB_WORKER_AUTOSTART", "1") != "0"


# --- submitting and inspecting -----------------------------------------------------------------------
def submit(spec: Spec) -> tuple[int, int]:
    """Store a validated spec as a queued experiment with its job; returns (experiment id, job id)."""
    with store.session() as s:
        exp = Experiment(name=spec.name, spec=spec.to_dict(), spec_hash=spec_hash(spec), status="queued")
        s.add(exp)
        s.flush()
        job = Job(experiment_id=exp.id, status="queued", message="queued")
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


def worker_alive() -> bool:
    now = utcnow()
    with store.session() as s:
        return any(not _worker_dead(w, now) for w in s.scalars(select(Worker).where(Worker.stopped.is_(False))))


def ensure_worker(idle_exit: float = 600.0) -> bool:
    """Start a detached worker process when none is alive. Returns True if one was started.

    Callers on this host take turns (a file lock), so twelve CLIs started at once start one worker, not
    twelve. Extra workers could not measure side by side anyway (the device lease), but each costs memory."""
    with _spawn_lock():
        reap_dead()
        if worker_alive():
            return False
        log = open(data_dir() / "worker.log", "ab")
        subprocess.Popen([sys.executable, "-m", "lab", "worker", "--idle-exit", str(idle_exit)], cwd=ROOT,
                         stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
                         env=child_env())
        deadline = time.time() + 20  # wait until it has announced itself, so the next caller sees it alive
        while time.time() < deadline and not worker_alive():
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


# --- the worker ----------------------------------------------------------------------------------------
def _claim_next(worker_id: int) -> Job | None:
    """Claim the oldest queued job whose device is free: its device's lease first, then the job itself."""
    with store.session() as s:
        queued = s.execute(select(Job.id, Experiment.spec).join(Experiment, Experiment.id == Job.experiment_id)
                           .where(Job.status == "queued").order_by(Job.id)).all()
    busy: set[str] = set()
    for job_id, spec in queued:
        key = device_key(spec)
        if key in busy:
            continue  # its device is taken: the job stays queued, in order
        if not acquire_lease(key, worker_id, job_id):
            busy.add(key)
            continue
        job = _claim(job_id, worker_id)
        if job is not None:
            return job
        _release_lease(key, worker_id)  # cancelled or taken in between
    return None


def _claim(job_id: int, worker_id: int) -> Job | None:
    with store.session() as s:
        now = utcnow()
        # compare-and-set: of two workers racing for a job, exactly one sees rowcount 1
        if not s.execute(update(Job).where(Job.id == job_id, Job.status == "queued").values(
                status="running", worker_id=worker_id, started_at=now, heartbeat_at=now,
                message="starting")).rowcount:
            return None
        job = s.get(Job, job_id)
        s.execute(update(Experiment).where(Experiment.id == job.experiment_id).values(status="running"))
        return job


class _Heartbeat(threading.Thread):
    def __init__(self, worker_id: int):
        super().__init__(daemon=True)
        self.worker_id, self.job_id = worker_id, None
        self.stop_event = threading.Event()

    def run(self):
        while not self.stop_event.wait(HEARTBEAT_S):
            try:
                with store.session() as s:
                    now = utcnow()
                    s.execute(update(Worker).where(Worker.id == self.worker_id).values(heartbeat_at=now))
                    s.execute(update(Lease).where(Lease.worker_id == self.worker_id).values(heartbeat_at=now))
                    if self.job_id is not None:
                        s.execute(update(Job).where(Job.id == self.job_id).values(heartbeat_at=now))
            except Exception:  # a locked database for one beat is not fatal; the next beat retries
                pass


def run_job(job: Job, stopping: threading.Event | None = None) -> str:
    """Run one claimed job in a child process and record its outcome. Returns how the child ended:
    "exited" (done or failed), "cancelled" or "stopped" (the worker is stopping; the job went back to the queue)."""
    child = subprocess.Popen([sys.executable, "-m", "lab", "_run-job", str(job.id)], cwd=ROOT,
                             stdin=subprocess.DEVNULL, env={**child_env(), "LAB_WORKER_PID": str(os.getpid())})
    outcome = _watch(child, job.id, stopping or threading.Event())
    _settle(job.id, child.returncode, outcome)
    return outcome


def _watch(child: subprocess.Popen, job_id: int, stopping: threading.Event) -> str:
    """Wait for the child; kill it as soon as the worker is stopping or the user cancels the job."""
    while True:
        try:
            child.wait(timeout=WATCH_S)
            return "exited"
        except subprocess.TimeoutExpired:
            pass
        if stopping.is_set():
            _kill(child)
            return "stopped"
        if _cancel_requested(job_id):
            _kill(child)
            return "cancelled"


def _cancel_requested(job_id: int) -> bool:
    try:
        with store.session() as s:
            return bool(s.scalar(select(Job.cancel_requested).where(Job.id == job_id)))
    except OperationalError:  # a locked database: look again at the next tick
        return False


def _kill(child: subprocess.Popen) -> None:
    child.terminate()
    try:
        child.wait(timeout=KILL_AFTER_S)
    except subprocess.TimeoutExpired:
        child.kill()
        child.wait()


def _settle(job_id: int, returncode: int, outcome: str) -> None:
    """Record what the child's end means for the job. Results exist only if the child's save committed."""
    if outcome in ("stopped", "cancelled") and _has_runs(job_id):
        _finish_if(job_id, "running", "done", None, "done")  # it finished just before the kill landed
    elif outcome == "stopped":
        _requeue_if_running(job_id, "re-queued: its worker was stopped mid-run")
    elif outcome == "cancelled":
        _finish_if(job_id, "running", "cancelled", None, "cancelled by the user; nothing was stored")
    elif returncode == 0:  # the child marked it done after saving; this covers a lost final write
        if _has_runs(job_id):
            _finish_if(job_id, "running", "done", None, "done")
        else:
            _finish_if(job_id, "running", "failed", "the run's process exited without storing results", "failed")
    else:
        with store.session() as s:
            written = s.scalar(select(Job.error).where(Job.id == job_id))
        reason = _describe_exit(returncode)
        _finish_if(job_id, "running", "failed", f"{written}\n\n({reason})" if written else f"{reason}.", "failed")


def _describe_exit(returncode: int) -> str:
    if returncode < 0:
        sig = -returncode
        name = signal.Signals(sig).name if sig in signal.Signals._value2member_map_ else f"signal {sig}"
        hint = ", which is what the kernel's out-of-memory killer sends" if sig == signal.SIGKILL else ""
        return f"the run's process was killed by {name}{hint}; no results were stored"
    return f"the run's process exited with code {returncode}; no results were stored"


def worker_loop(idle_exit: float | None = None, poll_s: float = 0.5) -> None:
    """Run queued jobs until stopped (SIGTERM/SIGINT) or idle for `idle_exit` seconds."""
    with store.session() as s:
        me = Worker(pid=os.getpid(), host=HOST)
        s.add(me)
        s.flush()
        worker_id = me.id
    heartbeat = _Heartbeat(worker_id)
    heartbeat.start()
    stopping = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stopping.set())
    idle_since = time.time()
    try:
        while not stopping.is_set():
            job = _next_job(worker_id)
            if job is None:
                if idle_exit is not None and time.time() - idle_since > idle_exit:
                    break
                stopping.wait(poll_s)
                continue
            heartbeat.job_id = job.id
            print(f"[worker {os.getpid()}] running job {job.id} (experiment {job.experiment_id})", flush=True)
            try:
                run_job(job, stopping)
            finally:
                heartbeat.job_id = None
                release_leases(worker_id)
            idle_since = time.time()
    finally:
        heartbeat.stop_event.set()
        with store.session() as s:
            s.execute(update(Worker).where(Worker.id == worker_id).values(stopped=True))
            s.execute(delete(Lease).where(Lease.worker_id == worker_id))


def _next_job(worker_id: int) -> Job | None:
    try:
        reap_dead()
        return _claim_next(worker_id)
    except OperationalError as e:  # a database locked past its timeout: not fatal, the next poll retries
        print(f"[worker {os.getpid()}] store busy, retrying: {e}", file=sys.stderr, flush=True)
        return None
