"""The queue and the worker process: jobs run, survive restarts, fail with a reason when the worker dies,
and can be cancelled. The CLI on top of it. (Leases, the job's own process, autostart and machine load:
tests/test_jobs_lease.py.)"""
import os
import signal
import subprocess
import sys
import time

import pytest
from sqlalchemy import func, select

from lab import jobs, store
from lab.bench.validate import validate
from lab.cli import main
from lab.jobs import leases as lab_leases
from tests.conftest import ROOT


def start_worker(idle_exit=None):
    args = [sys.executable, "-m", "lab", "worker"] + (["--idle-exit", str(idle_exit)] if idle_exit else [])
    return subprocess.Popen(args, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def wait_for(predicate, timeout=120, what="condition"):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def status(job_id):
    return jobs.get_job(job_id).status


def count(model):
    with store.session() as s:
        return s.scalar(select(func.count()).select_from(model))


@pytest.mark.both_databases
def test_queued_jobs_run_after_a_worker_restart(tiny_spec):
    spec = validate(tiny_spec)
    ids = [jobs.submit(spec)[1] for _ in range(2)]  # no worker alive: they wait in the store
    assert [status(j) for j in ids] == ["queued", "queued"]
    worker = start_worker(idle_exit=3)
    try:
        wait_for(lambda: all(status(j) == "done" for j in ids), what="both jobs done")
    finally:
        worker.wait(timeout=60)
    assert count(store.Run) == 4 and jobs.get_job(ids[0]).progress == 1.0
    with store.session() as s:  # every run records the machine's load while it measured
        env = s.scalars(select(store.Run)).first().environment
    assert {"load_avg_start", "load_avg_max", "other_cpu_share", "cores"} <= set(env)
    assert lab_leases.leases() == {}


@pytest.mark.both_databases
def test_killed_worker_leaves_job_failed_with_reason_and_nothing_stored(tiny_spec):
    spec = validate({**tiny_spec, "repeats": 100, "max_new_tokens": 64})  # long enough to kill mid-run
    exp_id, job_id = jobs.submit(spec)
    worker = start_worker()
    wait_for(lambda: status(job_id) == "running" and jobs.get_job(job_id).progress > 0.1, what="job running")
    os.kill(worker.pid, signal.SIGKILL)
    worker.wait()
    wait_for(lambda: status(job_id) == "failed", timeout=10, what="job failed")
    job = jobs.get_job(job_id)
    assert f"worker (pid {worker.pid}) died" in job.error
    with store.session() as s:
        assert s.get(store.Experiment, exp_id).status == "failed"
    assert count(store.Run) == 0 and not jobs.worker_alive()


@pytest.mark.both_databases
def test_cancel_queued_and_running_jobs(tiny_spec):
    spec = validate({**tiny_spec, "repeats": 100, "max_new_tokens": 64})
    _, queued = jobs.submit(spec)
    assert jobs.cancel(queued) == "cancelled"
    _, running = jobs.submit(spec)
    worker = start_worker(idle_exit=2)
    try:
        wait_for(lambda: status(running) == "running", what="job running")
        jobs.cancel(running)
        wait_for(lambda: status(running) == "cancelled", timeout=60, what="job cancelled")
    finally:
        worker.wait(timeout=60)
    assert count(store.Run) == 0


def test_cli_run_wait_prints_the_table_and_stores_the_run(tiny_spec, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("LAB_WORKER_AUTOSTART", "1")  # conftest turns it off; this test wants the CLI to start one
    lines = [f'{k} = {v!r}' if not isinstance(v, str) else f'{k} = "{v}"'
             for k, v in tiny_spec.items() if k != "variants"]
    lines += ['[[variants]]', 'name = "bf16"', 'techniques = [{ name = "weight_dtype", dtype = "bf16" }]']
    path = tmp_path / "spec.toml"
    path.write_text("\n".join(lines) + "\n")
    try:
        assert main(["run", str(path), "--wait"]) == 0
    finally:
        _stop_workers()
    out = capsys.readouterr().out
    assert "baseline" in out and "bf16" in out and "TTFT [s]" in out and "Perplexity [ppl]" in out
    assert count(store.Run) == 2
    assert main(["list"]) == 0 and "tiny" in capsys.readouterr().out
    assert main(["show", "1"]) == 0 and "bf16" in capsys.readouterr().out


@pytest.mark.parametrize("body, message", [
    ('model = "no-such-model"', "unknown model 'no-such-model'"),
    ('[[variants]]\ntechniques = [{ name = "nope" }]', "unknown technique 'nope'"),
    ('repeats = 1000', "field 'repeats': 1000 is out of range; allowed: 1 to 100"),
    ('[[variants]]\ntechniques = [{ name = "weight_dtype", dtype = "int2" }]', "knob 'dtype'"),
    ('name = ', "not valid TOML"),
])
def test_cli_bad_spec_is_a_clear_error_and_stores_nothing(tmp_path, capsys, body, message):
    path = tmp_path / "bad.toml"
    path.write_text(body + "\n")
    assert main(["run", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and "Traceback" not in err
    assert count(store.Experiment) == 0 and count(store.Job) == 0


def test_cli_lists_techniques_and_models(capsys):
    assert main(["techniques"]) == 0
    out = capsys.readouterr().out
    assert "weight_dtype" in out and "bf16, fp16" in out and "paper:" in out
    assert main(["models"]) == 0
    assert "smollm2-135m-instruct" in capsys.readouterr().out


def _stop_workers():
    with store.session() as s:
        pids = [w.pid for w in s.scalars(select(store.Worker).where(store.Worker.stopped.is_(False)))]
    for pid in pids:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass


@pytest.mark.both_databases
def test_stopping_a_worker_mid_run_puts_its_job_back_in_the_queue(tiny_spec):
    spec = validate({**tiny_spec, "repeats": 100, "max_new_tokens": 64})
    _, job_id = jobs.submit(spec)
    worker = start_worker()
    wait_for(lambda: status(job_id) == "running", what="job running")
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(timeout=60) == 0
    job = jobs.get_job(job_id)
    assert job.status == "queued" and "re-queued" in job.message and count(store.Run) == 0


def test_run_only_queues_the_named_runs_and_refuses_an_unknown_name(tiny_spec, tmp_path, capsys):
    """A benchmark file holds several [[runs]]; --only reproduces one table without queuing the rest."""
    lines = [f'{k} = {v!r}' if not isinstance(v, str) else f'{k} = "{v}"'
             for k, v in tiny_spec.items() if k not in ("variants", "name")]
    lines += ['[[runs]]', 'name = "short"', '[[runs]]', 'name = "long"', 'max_new_tokens = 6']
    path = tmp_path / "runs.toml"
    path.write_text("\n".join(lines) + "\n")
    assert main(["run", str(path), "--only", "long"]) == 0
    out = capsys.readouterr().out
    assert "(long)" in out and "(short)" not in out and count(store.Job) == 1
    assert main(["run", str(path), "--only", "middle"]) != 0
    assert "--only middle: the file has no run of that name; allowed: short, long" in capsys.readouterr().err
    assert count(store.Job) == 1
