"""The worker's zygote (lab/jobs/zygote.py): a job forked from it runs in the environment its request carries,
under a name ps shows, and its exit status reaches the worker as a started process's would; a change to the lab's
code starts a new zygote, so no job runs code that is gone. (Cancel, stop and a killed job go through it in
tests/test_jobs_lease.py and tests/test_faults.py, where the worker forks every job from its zygote.)"""
import signal
import subprocess
from pathlib import Path

import pytest

from lab import jobs
from lab.bench.validate import validate
from lab.jobs import zygote as zygote_module
from lab.jobs.worker import claim
from lab.jobs.zygote import Zygote
from lab.paths import child_env
from lab.views import results

NO_SUCH_JOB = 987654


@pytest.fixture
def zygote():
    z = Zygote()
    yield z
    z.close()


def test_a_forked_job_runs_on_its_requests_store_and_returns_its_exit_code(zygote, isolated_db, capfd):
    job = zygote.fork(NO_SUCH_JOB, child_env())  # child_env() holds this test's LAB_DATABASE_URL
    assert job.wait(timeout=120) == 2  # run_job_child's answer for a job the store does not hold
    assert f"job {NO_SUCH_JOB} is not running (status: no such job)" in capfd.readouterr().err


def test_a_change_to_the_labs_code_starts_a_new_zygote(zygote, isolated_db, monkeypatch):
    assert zygote.fork(NO_SUCH_JOB, child_env()).wait(timeout=120) == 2
    first = zygote.proc.pid
    assert zygote.fork(NO_SUCH_JOB, child_env()).wait(timeout=120) == 2
    assert zygote.proc.pid == first  # unchanged code: the same warm process
    monkeypatch.setattr(zygote_module, "source_stamp", lambda: zygote.stamp + 1)
    assert zygote.fork(NO_SUCH_JOB, child_env()).wait(timeout=120) == 2
    assert zygote.proc.pid != first


def test_a_running_job_killed_by_pid_reports_the_signal_and_the_zygote_serves_the_next(zygote, isolated_db,
                                                                                       tiny_spec):
    _, job_id = jobs.submit(validate(tiny_spec))
    claim(job_id, worker_id=None)  # running, as a worker's claimed job is
    job = zygote.fork(job_id, child_env())
    with pytest.raises(subprocess.TimeoutExpired):  # loading and measuring take seconds: it is still running
        job.wait(timeout=1.0)
    job.kill()
    assert job.wait(timeout=30) == -signal.SIGKILL
    assert zygote.fork(NO_SUCH_JOB, child_env()).wait(timeout=120) == 2


def probe_servers_of(parent: int) -> dict[int, int]:
    """{pid: CPU ticks of the children it waited for} of the memory probe's servers whose parent is `parent`."""
    found = {}
    for entry in Path("/proc").iterdir():
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            command = (entry / "cmdline").read_bytes()
        except (OSError, ValueError):  # not a process, or gone meanwhile
            continue
        if int(fields[1]) == parent and b"lab.bench.probe_server" in command:
            found[int(entry.name)] = int(fields[13]) + int(fields[14])  # cutime + cstime: its forked children
    return found


def start_job(zygote, tiny_spec, seed: int):
    exp_id, job_id = jobs.submit(validate({**tiny_spec, "seed": seed}))
    claim(job_id, worker_id=None)
    return exp_id, zygote.fork(job_id, child_env())


def test_every_job_shares_the_zygotes_probe_server_and_a_killed_one_leaves_a_new_one(zygote, isolated_db,
                                                                                      tiny_spec):
    exp_id, job = start_job(zygote, tiny_spec, seed=1)
    servers = probe_servers_of(zygote.proc.pid)
    assert len(servers) == 1 and list(servers.values()) == [0]  # started with the zygote, none of its children ran
    assert job.wait(timeout=300) == 0
    after = probe_servers_of(zygote.proc.pid)
    assert after.keys() == servers.keys() and list(after.values())[0] > 0  # the job's variants forked from it
    for run in results.load_experiment(exp_id).runs:
        assert "peak_mem_mb" in {m.name for m in run.metrics}, run.environment.get("memory_probe")
    _, job = start_job(zygote, tiny_spec, seed=2)
    with pytest.raises(subprocess.TimeoutExpired):  # loading and measuring take seconds: it is still running
        job.wait(timeout=1.0)
    job.kill()
    assert job.wait(timeout=30) == -signal.SIGKILL
    renewed = probe_servers_of(zygote.proc.pid)
    assert len(renewed) == 1 and renewed.keys() != servers.keys()  # it may have been mid-request: a new one
