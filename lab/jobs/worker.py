"""The worker (`python -m lab worker --device cpu|cuda:<i>`): claims queued jobs that fit its device and runs
each in its own process (lab/jobs/process.py).

It takes its device's lease (lab/jobs/leases.py) before it claims a job, so one job measures on a device at a
time however many workers run, on however many machines share the store. It heartbeats, watches the cancel flag
and its own stop signal, and ends the job's process within seconds on either, even mid-forward.
A Ray task (`python -m lab run --ray`) runs one given job the same way: `run_assigned`.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time

from sqlalchemy import delete, exists, select, update
from sqlalchemy.exc import OperationalError

from lab import store
from lab.jobs import _finish_if, _has_runs, _requeue_if_running, reap_dead
from lab.jobs.leases import (
    acquire_lease,
    attach_job,
    child_device_env,
    device_kinds,
    lease_key,
    release_lease,
    release_leases,
    resolve_device,
)
from lab.jobs.liveness import HOST
from lab.jobs.zygote import Zygote
from lab.paths import ROOT, child_env
from lab.store import RUNNER_WORKER, Experiment, Job, Lease, Worker, utcnow

HEARTBEAT_S = 2.0
WATCH_S = 0.5  # how often the worker looks at its child, the cancel flag and its stop signal
KILL_AFTER_S = 3.0  # SIGTERM first (lets the child's interpreter exit); SIGKILL if it is still there after this


# --- claiming ------------------------------------------------------------------------------------------
def _fits(device: str):
    """The queued jobs a worker on `device` may take: a worker's job (not a Ray unit's) of its kind."""
    return (Job.status == "queued") & (Job.runner == RUNNER_WORKER) & Job.device_kind.in_(device_kinds(device))


def _claim_next(worker_id: int, device: str) -> Job | None:
    """Claim the oldest queued job that fits this worker: its device's lease first, then the job."""
    with store.session() as s:  # a read first: an idle worker polling must not churn the lease row
        if not s.scalar(select(exists().where(_fits(device)))):
            return None
    key = lease_key(device)
    if not acquire_lease(key, worker_id, None):
        return None  # another job measures on this device now
    job = _claim_oldest(worker_id, device)
    if job is None:
        release_lease(key, worker_id)  # taken or cancelled in between
        return None
    attach_job(key, worker_id, job.id)
    return job


def _claim_oldest(worker_id: int, device: str) -> Job | None:
    """One statement: UPDATE the oldest fitting job WHERE it is still queued, RETURNING it.

    On PostgreSQL the subquery takes the row with FOR UPDATE SKIP LOCKED: workers on many machines claiming at once
    each lock a different row and never wait on or take the same job. SQLite renders no FOR UPDATE and needs none:
    it runs one writer at a time, and the statement is atomic."""
    oldest = (select(Job.id).where(_fits(device)).order_by(Job.id).limit(1)
              .with_for_update(skip_locked=True).scalar_subquery())
    return _mark_running(Job.id == oldest, worker_id, device)


def claim(job_id: int, worker_id: int | None, device: str | None = None) -> Job | None:
    """Claim one given job if it is still queued (compare-and-set: of two claimers, exactly one gets it)."""
    return _mark_running(Job.id == job_id, worker_id, device)


@store.retried("claiming a job")
def _mark_running(which, worker_id: int | None, device: str | None) -> Job | None:
    now = utcnow()
    with store.session() as s:
        job_id = s.scalar(update(Job).where(which, Job.status == "queued").values(
            status="running", worker_id=worker_id, started_at=now, heartbeat_at=now, message="starting",
            device=f"{device}@{HOST}" if device else None).returning(Job.id))
        if job_id is None:
            return None
        job = s.get(Job, job_id)
        s.execute(update(Experiment).where(Experiment.id == job.experiment_id).values(status="running"))
        return job


# --- running one job -----------------------------------------------------------------------------------
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


def run_job(job: Job, stopping: threading.Event | None = None, device: str | None = None,
            zygote: Zygote | None = None) -> str:
    """Run one claimed job in a child process and record its outcome. Returns how the child ended:
    "exited" (done or failed), "cancelled" or "stopped" (the worker is stopping; the job went back to the queue).
    With a device, the child sees only that device (None: the child sees what the caller sees). With a zygote,
    the child is forked from it (imports done); without, it is a fresh `python -m lab _run-job`."""
    env = {**child_env(), "LAB_WORKER_PID": str(os.getpid()), **(child_device_env(device) if device else {})}
    child = _forked(zygote, job.id, env) if zygote is not None else None
    if child is None:
        child = subprocess.Popen([sys.executable, "-m", "lab", "_run-job", str(job.id)], cwd=ROOT,
                                 stdin=subprocess.DEVNULL, env=env)
    outcome = _watch(child, job.id, stopping or threading.Event())
    _settle(job.id, child.returncode, outcome)
    return outcome


def _forked(zygote: Zygote, job_id: int, env: dict):
    """The job's process forked from the zygote, or None when the zygote could not give one (it died importing,
    or hung): the job then runs in a fresh process, which reports an import error as the job's own error."""
    try:
        return zygote.fork(job_id, env)
    except (EOFError, TimeoutError, OSError, ValueError) as e:
        print(f"[worker {os.getpid()}] the job zygote failed ({e}); starting job {job_id}'s process afresh",
              file=sys.stderr, flush=True)
        zygote.close()
        return None


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
    elif _has_runs(job_id):  # the save committed (one transaction): the results are whole whatever came after
        ending = "" if returncode == 0 else f" ({_describe_exit(returncode).split(';')[0]} after saving its results)"
        _finish_if(job_id, "running", "done", None, "done" + ending)
    elif returncode == 0:
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


# --- the worker's life -----------------------------------------------------------------------------------
@store.retried("registering a worker")
def _register(device: str) -> int:
    with store.session() as s:
        me = Worker(pid=os.getpid(), host=HOST, device=device)
        s.add(me)
        s.flush()
        return me.id


@store.retried("unregistering a worker")
def _unregister(worker_id: int) -> None:
    with store.session() as s:
        s.execute(update(Worker).where(Worker.id == worker_id).values(stopped=True))
        s.execute(delete(Lease).where(Lease.worker_id == worker_id))


def worker_loop(idle_exit: float | None = None, poll_s: float = 0.5, device: str = "auto") -> None:
    """Run queued jobs that fit `device` until stopped (SIGTERM/SIGINT) or idle for `idle_exit` seconds.
    ValueError (before anything is written) when the device is not one this machine has."""
    device = resolve_device(device)
    worker_id = _register(device)
    heartbeat = _Heartbeat(worker_id)
    heartbeat.start()
    stopping = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stopping.set())
    print(f"[worker {os.getpid()}] measuring on {device} ({lease_key(device)})", flush=True)
    zygote = Zygote()
    zygote.start()  # imports while the queue is read: the first job need not wait for them
    idle_since = time.time()
    try:
        while not stopping.is_set():
            job = _next_job(worker_id, device)
            if job is None:
                if idle_exit is not None and time.time() - idle_since > idle_exit:
                    break
                stopping.wait(poll_s)
                continue
            heartbeat.job_id = job.id
            print(f"[worker {os.getpid()}] running job {job.id} (experiment {job.experiment_id})", flush=True)
            try:
                run_job(job, stopping, device, zygote)
            finally:
                heartbeat.job_id = None
                release_leases(worker_id)
            idle_since = time.time()
    finally:
        zygote.close()
        heartbeat.stop_event.set()
        _unregister(worker_id)


def _next_job(worker_id: int, device: str) -> Job | None:
    try:
        reap_dead()
        return _claim_next(worker_id, device)
    except OperationalError as e:  # a database locked past its timeout: not fatal, the next poll retries
        print(f"[worker {os.getpid()}] store busy, retrying: {e}", file=sys.stderr, flush=True)
        return None


def run_assigned(job_id: int, device: str = "auto", poll_s: float = 0.5) -> str:
    """Run one given job as a worker of its own, then leave: what a Ray task does on the node Ray chose.
    It waits for the device's lease (a local worker may be measuring there). Returns the job's final status."""
    device = resolve_device(device)
    worker_id = _register(device)
    heartbeat = _Heartbeat(worker_id)
    heartbeat.start()
    key = lease_key(device)
    try:
        while not acquire_lease(key, worker_id, job_id):
            if _status(job_id) != "queued":
                return _status(job_id)  # cancelled while it waited
            time.sleep(poll_s)
        job = claim(job_id, worker_id, device)
        if job is not None:
            heartbeat.job_id = job.id
            run_job(job, device=device)
    finally:
        heartbeat.stop_event.set()
        _unregister(worker_id)
    return _status(job_id)


def _status(job_id: int) -> str:
    with store.session() as s:
        return s.scalar(select(Job.status).where(Job.id == job_id))
