"""The job queue (in the store) and the worker process that runs it.

A page or the CLI submits a validated spec: the experiment and its job are written in one transaction.
A worker (`python -m lab worker`) claims queued jobs one at a time, runs them, and heartbeats. A job whose
worker died is marked failed with the reason by whoever looks next (the worker, the page, the CLI), so
nothing stays "running" forever; its results are never half-written because they are saved in one
transaction at the end.
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
import traceback
from datetime import timedelta

from sqlalchemy import select, update

from lab import store
from lab.paths import ROOT, data_dir
from lab.store import Experiment, Job, Worker, utcnow

HEARTBEAT_S = 2.0
STALE_S = 30.0  # a heartbeat older than this means the worker is gone (checked by pid first where we can)
HOST = socket.gethostname()


# --- submitting and inspecting -----------------------------------------------------------------------
def submit(spec: dict) -> tuple[int, int]:
    """Store a validated spec as a queued experiment with its job; returns (experiment id, job id)."""
    from lab.experiment import spec_hash
    with store.session() as s:
        exp = Experiment(name=spec["name"], spec=spec, spec_hash=spec_hash(spec), status="queued")
        s.add(exp)
        s.flush()
        job = Job(experiment_id=exp.id, status="queued", message="queued")
        s.add(job)
        s.flush()
        return exp.id, job.id


def get_job(job_id: int) -> Job | None:
    reap_dead()
    with store.session() as s:
        return s.get(Job, job_id)


def job_for_experiment(experiment_id: int) -> Job | None:
    with store.session() as s:
        return s.scalars(select(Job).where(Job.experiment_id == experiment_id).order_by(Job.id.desc())).first()


def cancel(job_id: int) -> str:
    """Cancel a queued job at once; ask a running one to stop at its next progress point."""
    with store.session() as s:
        job = s.get(Job, job_id)
        if job is None:
            raise LookupError(f"no job with id {job_id}")
        if job.status == "queued":
            _finish(s, job, "cancelled", None, "cancelled before it started")
        elif job.status == "running":
            job.cancel_requested = True
        return job.status


# --- liveness ------------------------------------------------------------------------------------------
def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie (killed child not yet reaped by its parent) is dead for our purposes
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return True


def _worker_dead(w: Worker, now) -> bool:
    if w.stopped:
        return True
    if w.host == HOST and not _pid_alive(w.pid):
        return True
    return now - w.heartbeat_at > timedelta(seconds=STALE_S)


def reap_dead() -> int:
    """Mark running jobs of dead workers as failed, with the reason. Returns how many were reaped."""
    now, reaped = utcnow(), 0
    with store.session() as s:
        for job in s.scalars(select(Job).where(Job.status == "running")):
            w = s.get(Worker, job.worker_id) if job.worker_id else None
            if w is None or _worker_dead(w, now):
                pid = w.pid if w else "?"
                since = job.heartbeat_at.strftime("%H:%M:%S") if job.heartbeat_at else "never"
                _finish(s, job, "failed", f"the worker (pid {pid}) died while running this job; last heartbeat "
                                          f"{since} UTC. No results were stored; submit it again.", "worker died")
                reaped += 1
        for w in s.scalars(select(Worker).where(Worker.stopped.is_(False))):
            if _worker_dead(w, now):
                w.stopped = True
    return reaped


def worker_alive() -> bool:
    now = utcnow()
    with store.session() as s:
        return any(not _worker_dead(w, now) for w in s.scalars(select(Worker).where(Worker.stopped.is_(False))))


def ensure_worker(idle_exit: float = 600.0) -> bool:
    """Start a detached worker process when none is alive. Returns True if one was started."""
    reap_dead()
    if worker_alive():
        return False
    log = open(data_dir() / "worker.log", "ab")
    subprocess.Popen([sys.executable, "-m", "lab", "worker", "--idle-exit", str(idle_exit)], cwd=ROOT,
                     stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
                     env={**os.environ, "PYTHONPATH": str(ROOT)})
    deadline = time.time() + 20  # wait until it has announced itself, so a second caller doesn't start another
    while time.time() < deadline and not worker_alive():
        time.sleep(0.2)
    return True


# --- the worker ----------------------------------------------------------------------------------------
def _finish(s, job: Job, status: str, error: str | None, message: str) -> None:
    job.status, job.error, job.message, job.finished_at = status, error, message, utcnow()
    exp = s.get(Experiment, job.experiment_id)
    exp.status, exp.finished_at = status, job.finished_at


def _claim_next(worker_id: int) -> Job | None:
    with store.session() as s:
        for job in s.scalars(select(Job).where(Job.status == "queued").order_by(Job.id)):
            # compare-and-set: of two workers racing for a job, exactly one sees rowcount 1
            claimed = s.execute(update(Job).where(Job.id == job.id, Job.status == "queued").values(
                status="running", worker_id=worker_id, started_at=utcnow(), heartbeat_at=utcnow(),
                message="starting")).rowcount
            if claimed:
                s.get(Experiment, job.experiment_id).status = "running"
                s.flush()
                s.refresh(job)
                return job
    return None


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
                    if self.job_id is not None:
                        s.execute(update(Job).where(Job.id == self.job_id).values(heartbeat_at=now))
            except Exception:  # a locked database for one beat is not fatal; the next beat retries
                pass


class _WorkerStopping(Exception):
    """The worker was asked to stop (SIGTERM/SIGINT) mid-job: the job goes back to the queue."""


def run_job(job: Job, stopping: threading.Event | None = None) -> None:
    """Execute one claimed job and record its outcome."""
    from lab import runner

    with store.session() as s:
        spec = s.get(Experiment, job.experiment_id).spec
    last_write = [0.0]

    def progress(fraction: float, message: str) -> None:
        now = time.time()
        if stopping is not None and stopping.is_set():
            raise _WorkerStopping()
        if now - last_write[0] < 0.25 and fraction < 1.0:  # throttle writes; the page polls every 2 s
            return
        last_write[0] = now
        with store.session() as s:
            s.execute(update(Job).where(Job.id == job.id).values(progress=fraction, message=message))
            if s.get(Job, job.id).cancel_requested:
                raise runner.Cancelled()

    try:
        results = runner.execute(spec, progress)
        runner.save(job.experiment_id, results)
        status, error, message = "done", None, "done"
    except runner.Cancelled:
        status, error, message = "cancelled", None, "cancelled by the user; nothing was stored"
    except _WorkerStopping:
        with store.session() as s:  # back to the queue, untouched: the next worker runs it from the start
            s.execute(update(Job).where(Job.id == job.id).values(
                status="queued", worker_id=None, progress=0.0, started_at=None,
                message="re-queued: its worker was stopped mid-run"))
            s.get(Experiment, job.experiment_id).status = "queued"
        return
    except Exception as e:  # the job fails with its reason; the worker lives on for the next job
        status, error, message = "failed", f"{type(e).__name__}: {e}\n\n{traceback.format_exc()}", "failed"
    with store.session() as s:
        _finish(s, s.get(Job, job.id), status, error, message)
        if status == "done":
            s.get(Job, job.id).progress = 1.0


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
            reap_dead()
            job = _claim_next(worker_id)
            if job is None:
                if idle_exit is not None and time.time() - idle_since > idle_exit:
                    break
                stopping.wait(poll_s)
                continue
            heartbeat.job_id = job.id
            print(f"[worker {os.getpid()}] running job {job.id} (experiment {job.experiment_id})", flush=True)
            run_job(job, stopping)
            heartbeat.job_id = None
            idle_since = time.time()
    finally:
        heartbeat.stop_event.set()
        with store.session() as s:
            s.execute(update(Worker).where(Worker.id == worker_id).values(stopped=True))
