"""The job's own process (`python -m lab _run-job <id>`): a worker runs each job here, so it can end the job
within seconds (cancel, SIGTERM) even mid-forward, and a killed job leaves nothing half-written: the results
are saved in one transaction at the end."""
from __future__ import annotations

import os
import signal
import sys
import threading
import time
import traceback

from sqlalchemy import update
from sqlalchemy.exc import OperationalError

from lab import store
from lab.bench.machine_load import LoadMonitor
from lab.bench.record import save
from lab.bench.run import execute
from lab.bench.validate import stored_spec
from lab.jobs import _finish_if
from lab.paths import set_parent_death_signal
from lab.store import Experiment, Job


def run_job_child(job_id: int) -> int:
    """Body of `python -m lab _run-job <id>`: execute the spec under a LoadMonitor, save the results in one
    transaction, mark the job done. On an error, write its text into the job and exit 1; the worker
    records the outcome. Returns the exit code."""

    _die_with_parent()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole process group; the worker decides
    with store.session() as s:
        job = s.get(Job, job_id)
        if job is None or job.status != "running":  # only a worker's claimed job runs: no duplicate results
            print(f"job {job_id} is not running (status: {job.status if job else 'no such job'}); "
                  f"a worker runs queued jobs", file=sys.stderr)
            return 2
        exp_id, spec = job.experiment_id, s.get(Experiment, job.experiment_id).spec
    try:
        with LoadMonitor() as load:
            results = execute(stored_spec(spec), _progress_writer(job_id))
        for res in results:
            res.environment.update(load.summary())
        save(exp_id, results)
    except Exception as e:  # the job fails with its reason; the worker lives on for the next job
        text = f"{type(e).__name__}: {e}\n\n{traceback.format_exc()}"
        print(text, file=sys.stderr, flush=True)
        _write_error(job_id, text)
        return 1
    try:
        _finish_if(job_id, "running", "done", None, "done")  # re-run on a lock conflict (store.retried)
    except OperationalError as e:  # the results are stored: exit 0, and the worker marks it done on seeing them
        print(f"could not mark job {job_id} done ({e}); its worker will", file=sys.stderr, flush=True)
    return 0


@store.retried("recording a job's error")
def _write_error(job_id: int, text: str) -> None:
    with store.session() as s:  # only while running: a dying child must not overwrite "cancelled"
        s.execute(update(Job).where(Job.id == job_id, Job.status == "running").values(error=text))


def _progress_writer(job_id: int):
    last_write = [0.0]

    def progress(fraction: float, message: str) -> None:
        now = time.time()
        if now - last_write[0] < 0.25 and fraction < 1.0:  # throttle writes; the page polls every 2 s
            return
        last_write[0] = now
        try:
            with store.session() as s:  # only while running: a dying child must not overwrite "cancelled"
                s.execute(update(Job).where(Job.id == job_id, Job.status == "running").values(
                    progress=fraction, message=message))
        except OperationalError:  # progress is for display; a locked database must not fail the run
            pass

    return progress


def _die_with_parent() -> None:
    """A child must not outlive its worker (it would measure on after its job was reaped or re-queued)."""
    parent = int(os.environ.get("LAB_WORKER_PID") or os.getppid())
    set_parent_death_signal()
    if os.getppid() != parent:  # it died before prctl took effect
        os._exit(1)

    def watch() -> None:  # elsewhere (and as a second guard): notice being re-parented
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(1)

    threading.Thread(target=watch, daemon=True, name="parent-watch").start()
