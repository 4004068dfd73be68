"""Runs must not disturb each other: one measuring job per device (the lease), a job's process that is killed
within seconds on cancel or SIGTERM even mid-forward, LAB_WORKER_AUTOSTART=0 honoured by the CLI, and the
machine's load recorded with every run (with a warning when it was busy).

A long forward pass is simulated by a sitecustomize.py on the workers' PYTHONPATH that wraps
lab.bench.run.execute when it is imported (LAB_TEST_RUNNER=sleep:S | raise:MESSAGE | kill): a plain sleep reaches
no progress point, exactly like a long prefill, and needs no hook in the lab's own code."""
import os
import queue
import signal
import subprocess
import sys
import threading
import time

import pytest
from sqlalchemy import func, select

from lab import jobs, store
from lab.bench.machine_load import LoadMonitor, busy_reason
from lab.bench.validate import validate
from lab.cli import main
from lab.jobs import leases as lab_leases
from lab.jobs.liveness import HOST
from lab.jobs.zygote import JOB_PROCESS_NAME
from tests.conftest import ROOT
from tests.import_hooks import hooked_environment

RUNNER_WRAPPER = '''
import signal, time


def _wrapped(real):
    def execute(spec_, progress=None, *args, **kwargs):
        action, _, arg = os.environ["LAB_TEST_RUNNER"].partition(":")
        if progress is not None:
            progress(0.01, "test hook: " + action)
        if action == "sleep":
            time.sleep(float(arg))  # a long forward: no progress point for a long time
        elif action == "raise":
            raise RuntimeError(arg)
        elif action == "kill":
            os.kill(os.getpid(), signal.SIGKILL)  # as the out-of-memory killer would
        return real(spec_, progress, *args, **kwargs) if progress is not None else real(spec_)

    return execute
'''


@pytest.fixture
def hooked_env(tmp_path):
    """The environment for a worker whose runs go through the test hook; set LAB_TEST_RUNNER in it."""
    return hooked_environment(tmp_path / "hooks", "lab.bench.run", "execute", "LAB_TEST_RUNNER", RUNNER_WRAPPER)


def start_worker(env, idle_exit=None):
    args = [sys.executable, "-m", "lab", "worker"] + (["--idle-exit", str(idle_exit)] if idle_exit else [])
    return subprocess.Popen(args, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def stop(worker):
    if worker.poll() is None:
        worker.send_signal(signal.SIGTERM)
        try:
            worker.wait(timeout=30)
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.wait()


def wait_for(predicate, timeout=120, what="condition"):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def count(model):
    with store.session() as s:
        return s.scalar(select(func.count()).select_from(model))


def live_workers():
    jobs.reap_dead()
    with store.session() as s:
        return s.scalar(select(func.count()).select_from(store.Worker).where(store.Worker.stopped.is_(False)))


def in_hook(job_id):
    job = jobs.get_job(job_id)
    return job.status == "running" and job.message.startswith("test hook")


def job_processes(db_path) -> list[int]:
    """Pids of job processes (`_run-job`, or forked from a worker's zygote: named lab-job) that work on this test's
    database (other tests may run at once)."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmd = f.read().split(b"\0")
            with open(f"/proc/{entry}/environ", "rb") as f:
                env = f.read()
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
            zombie = stat.split(")")[-1].split()[0] == "Z"
            forked = stat.split("(", 1)[1].rsplit(")", 1)[0] == JOB_PROCESS_NAME
        except OSError:
            continue
        if (b"_run-job" in cmd or forked) and str(db_path).encode() in env and not zombie:
            pids.append(int(entry))
    return pids


@pytest.mark.both_databases
def test_two_workers_never_measure_side_by_side_on_one_device(tiny_spec, hooked_env):
    spec = validate(tiny_spec)
    ids = [jobs.submit(spec)[1] for _ in range(2)]
    env = {**hooked_env, "LAB_TEST_RUNNER": "sleep:3"}  # each job measures for seconds
    workers = [start_worker(env, idle_exit=3) for _ in range(2)]
    most_running, holders = 0, set()
    try:
        wait_for(lambda: live_workers() == 2, timeout=60, what="two workers")
        deadline = time.time() + 180
        while time.time() < deadline:
            statuses = [jobs.get_job(j).status for j in ids]
            most_running = max(most_running, statuses.count("running"))
            # a lease is taken before its job is chosen: (key, None) for that moment
            holders.update((key, job) for key, job in lab_leases.leases().items() if job is not None)
            if all(s == "done" for s in statuses):
                break
            time.sleep(0.1)
    finally:
        for w in workers:
            stop(w)
    assert [jobs.get_job(j).status for j in ids] == ["done", "done"]
    assert most_running == 1, "two jobs measured side by side on one device"
    assert holders <= {(f"cpu:{HOST}", ids[0]), (f"cpu:{HOST}", ids[1])} and holders
    assert lab_leases.leases() == {}  # released when the jobs ended


def test_sigterm_stops_a_worker_mid_forward_within_seconds_and_requeues_the_job(tiny_spec, hooked_env,
                                                                              isolated_db):
    _, job_id = jobs.submit(validate(tiny_spec))
    worker = start_worker({**hooked_env, "LAB_TEST_RUNNER": "sleep:300"})
    try:
        wait_for(lambda: in_hook(job_id), what="the job in its long forward")
        started = time.time()
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(timeout=15) == 0
        assert time.time() - started < 10
    finally:
        if worker.poll() is None:
            worker.kill()
    job = jobs.get_job(job_id)
    assert job.status == "queued" and "re-queued" in job.message and count(store.Run) == 0
    assert job_processes(isolated_db) == [] and lab_leases.leases() == {}


@pytest.mark.both_databases
def test_cancel_mid_forward_ends_within_seconds_and_stores_nothing(tiny_spec, hooked_env, isolated_db):
    exp_id, job_id = jobs.submit(validate(tiny_spec))
    worker = start_worker({**hooked_env, "LAB_TEST_RUNNER": "sleep:300"})
    try:
        wait_for(lambda: in_hook(job_id), what="the job in its long forward")
        started = time.time()
        jobs.cancel(job_id)
        wait_for(lambda: jobs.get_job(job_id).status == "cancelled", timeout=10, what="job cancelled")
        assert time.time() - started < 10
        wait_for(lambda: job_processes(isolated_db) == [], timeout=5, what="the job's process gone")
        assert worker.poll() is None and jobs.worker_alive()  # the worker lives on for the next job
    finally:
        stop(worker)
    assert count(store.Run) == 0 and "nothing was stored" in jobs.get_job(job_id).message
    with store.session() as s:
        assert s.get(store.Experiment, exp_id).status == "cancelled"


def test_a_killed_worker_takes_its_job_process_with_it(tiny_spec, hooked_env, isolated_db):
    _, job_id = jobs.submit(validate(tiny_spec))
    worker = start_worker({**hooked_env, "LAB_TEST_RUNNER": "sleep:300"})
    try:
        wait_for(lambda: in_hook(job_id), what="the job in its long forward")
        assert len(job_processes(isolated_db)) == 1
        worker.kill()
        worker.wait()
        # an orphan would measure on (and could store results) after its job was marked failed
        wait_for(lambda: job_processes(isolated_db) == [], timeout=5, what="the job's process gone")
    finally:
        if worker.poll() is None:
            worker.kill()
    wait_for(lambda: jobs.get_job(job_id).status == "failed", timeout=10, what="job failed")
    assert f"worker (pid {worker.pid}) died" in jobs.get_job(job_id).error and lab_leases.leases() == {}


@pytest.mark.parametrize("hook, reason", [
    ("raise:out of memory", "RuntimeError: out of memory"),
    ("kill", "killed by SIGKILL"),
])
@pytest.mark.both_databases
def test_a_failing_run_fails_its_job_with_the_reason_and_the_worker_lives_on(tiny_spec, hooked_env, hook, reason):
    _, job_id = jobs.submit(validate(tiny_spec))
    worker = start_worker({**hooked_env, "LAB_TEST_RUNNER": hook})
    try:
        wait_for(lambda: jobs.get_job(job_id).status not in ("queued", "running"), what="job ended")
        job = jobs.get_job(job_id)
        assert job.status == "failed" and reason in job.error and "no results were stored" in job.error
        assert worker.poll() is None and jobs.worker_alive()
    finally:
        stop(worker)
    if hook.startswith("raise"):
        assert job.error.startswith(reason) and "exited with code 1" in job.error
    assert count(store.Run) == 0 and lab_leases.leases() == {}


@pytest.mark.both_databases
def test_a_stale_lease_of_a_dead_worker_is_taken_over_and_a_live_one_is_not():
    with store.session() as s:
        alive = store.Worker(pid=os.getpid(), host=HOST)
        dead = store.Worker(pid=2 ** 22 + 7, host=HOST)  # above pid_max's default: no such process
        s.add_all([alive, dead])
        s.flush()
        alive_id, dead_id = alive.id, dead.id
    assert lab_leases.acquire_lease("cpu:test", dead_id, job_id=None)
    assert lab_leases.acquire_lease("cpu:test", alive_id, job_id=None)  # its holder is dead: taken over
    assert lab_leases.acquire_lease("gpu:test", alive_id, job_id=None)
    assert not lab_leases.acquire_lease("gpu:test", dead_id + 1, job_id=None)  # a live holder keeps it
    assert lab_leases.acquire_lease("x:test", dead_id, job_id=None)
    jobs.reap_dead()  # frees what dead workers hold, nothing else
    assert lab_leases.leases() == {"cpu:test": None, "gpu:test": None}
    with store.session() as s:
        assert {lease.worker_id for lease in s.scalars(select(store.Lease))} == {alive_id}


def test_a_workers_lease_names_the_host_and_the_physical_gpu(monkeypatch):
    assert lab_leases.lease_key("cpu") == f"cpu:{HOST}"
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,5")
    assert lab_leases.lease_key("cuda:0") == f"cuda:{HOST}:3"  # torch's cuda:0 is physical GPU 3 here
    assert lab_leases.child_device_env("cuda:1") == {"CUDA_VISIBLE_DEVICES": "5"}
    assert lab_leases.child_device_env("cpu") == {"CUDA_VISIBLE_DEVICES": ""}  # "auto" runs on the cpu there
    lab_leases.cuda_usable.cache_clear()
    try:
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
        assert lab_leases.resolve_device("auto") == "cpu"
        with pytest.raises(ValueError, match="no usable CUDA GPU here"):
            lab_leases.resolve_device("cuda:0")
        with pytest.raises(ValueError, match="allowed: auto, cpu, cuda or cuda:<index>"):
            lab_leases.resolve_device("tpu")
    finally:
        lab_leases.cuda_usable.cache_clear()


def test_ensure_worker_from_many_processes_at_once_starts_one_worker():
    store.sessionmaker_for()  # the schema exists before the racers open the store
    code = "from lab import jobs; jobs.ensure_worker(idle_exit=120)"  # long: a slow racer must not find it gone
    racers = [subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
              for _ in range(4)]
    try:
        for r in racers:
            assert r.wait(timeout=120) == 0
        assert count(store.Worker) == 1
    finally:
        with store.session() as s:
            pids = [w.pid for w in s.scalars(select(store.Worker))]
        for pid in pids:
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        wait_for(lambda: not jobs.worker_alive(), timeout=30, what="the worker stopped")


def write_spec(tiny_spec, path):
    lines = [f'{k} = {v!r}' if not isinstance(v, str) else f'{k} = "{v}"'
             for k, v in tiny_spec.items() if k != "variants"]
    lines += ['[[variants]]', 'name = "bf16"', 'techniques = [{ name = "weight_dtype", dtype = "bf16" }]']
    path.write_text("\n".join(lines) + "\n")
    return path


def test_autostart_off_cli_run_starts_no_worker(tiny_spec, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("LAB_WORKER_AUTOSTART", "0")
    assert main(["run", str(write_spec(tiny_spec, tmp_path / "spec.toml"))]) == 0
    assert "python -m lab worker" in capsys.readouterr().err
    time.sleep(1.0)
    assert count(store.Worker) == 0 and jobs.get_job(1).status == "queued"


def test_autostart_off_run_wait_says_so_and_waits_for_a_worker(tiny_spec, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "LAB_WORKER_AUTOSTART": "0"}
    cli = subprocess.Popen([sys.executable, "-m", "lab", "run", str(write_spec(tiny_spec, tmp_path / "s.toml")),
                            "--wait"], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in cli.stderr], daemon=True).start()
    worker = None
    try:
        deadline, seen = time.time() + 60, ""
        while "no worker is running" not in seen and time.time() < deadline:
            try:
                seen += lines.get(timeout=1)
            except queue.Empty:
                pass
        assert "no worker is running" in seen and "python -m lab worker" in seen
        assert cli.poll() is None and count(store.Worker) == 0  # still waiting, nothing started
        worker = start_worker(env, idle_exit=2)
        assert cli.wait(timeout=120) == 0
        assert "baseline" in cli.stdout.read()
    finally:
        if cli.poll() is None:
            cli.kill()
        if worker is not None:
            stop(worker)


def test_busy_reason_flags_a_busy_machine_and_passes_a_quiet_one():
    quiet = {"other_cpu_share": 0.02, "load_avg_max": 1.1, "cores": 2, "threads": 2}
    assert busy_reason(quiet) is None
    reason = busy_reason({**quiet, "other_cpu_share": 0.8})
    assert reason and "80%" in reason and "other processes" in reason
    assert "load average reached 8.5" in busy_reason({**quiet, "load_avg_max": 8.5})
    assert busy_reason({"device": "cpu"}) is None  # stored before load was recorded: unknown, not busy
    # the memory probe's two variants side by side, 2 threads each, raised the load to 4.07 on a quiet machine
    probed = {**quiet, "load_avg_max": 4.07, "memory_probe_threads": 4}
    assert busy_reason(probed) is None and "load average" in busy_reason({**probed, "memory_probe_threads": 2})


def _burn(seconds):
    return subprocess.Popen([sys.executable, "-c",
                             f"import time\nend = time.time() + {seconds}\nwhile time.time() < end: pass"])


def test_load_monitor_notices_a_cpu_burning_sibling():
    with LoadMonitor() as idle:
        time.sleep(2.0)
    burner = _burn(2.0)
    with LoadMonitor() as busy:
        time.sleep(2.0)
    burner.wait()  # waited only now: its CPU time must count as another process's, not ours
    quiet, loaded = idle.summary(), busy.summary()
    assert set(quiet) >= {"load_avg_start", "load_avg_max", "other_cpu_share", "cores", "wall_s"}
    assert loaded["cores"] >= 1 and loaded["load_avg_max"] is not None
    # the burner adds up to a core's worth of others' time, unless others already filled the machine (shared
    # test machines do): then the share is near 1 in both windows, which is also the right answer
    capacity = loaded["wall_s"] * loaded["cores"]
    assert loaded["other_cpu_s"] > min(quiet["other_cpu_s"] + 0.5, 0.85 * capacity)
    assert loaded["other_cpu_share"] > 0.2


def test_load_monitor_does_not_count_its_own_process_as_others():
    with LoadMonitor() as own:
        end = time.time() + 1.5
        while time.time() < end:  # our own busy work: it is the run being measured, not a disturbance
            pass
    summary = own.summary()
    assert summary["own_cpu_s"] > 0.5
    assert summary["other_cpu_s"] <= summary["wall_s"] * summary["cores"] - summary["own_cpu_s"] + 0.1


def test_show_warns_when_a_run_was_measured_on_a_busy_machine(capsys):
    env = {"device": "cpu", "threads": 2, "cores": 2, "other_cpu_share": 0.8, "load_avg_start": 3.0,
           "load_avg_max": 8.5}
    with store.session() as s:
        exp = store.Experiment(name="busy", spec={"model": "m", "workload": "chat"}, spec_hash="x", status="done")
        exp.runs.append(store.Run(position=0, variant="baseline", is_baseline=True, params={}, environment=env))
        s.add(exp)
        s.flush()
        exp_id = exp.id
    assert main(["show", str(exp_id)]) == 0
    out = capsys.readouterr().out
    assert "WARNING: measured on a busy machine: other processes used 80%" in out
    assert "timings may be wrong" in out and "load average 3.0 at the start, up to 8.5" in out
