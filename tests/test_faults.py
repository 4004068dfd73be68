"""Faults the lab must survive without losing or half-writing anything: a worker killed mid-save, the Streamlit
server killed mid-run, the database locked by another writer for longer than its busy timeout, a COMMIT the
database refuses, and SIGKILL in the middle of a burst of commits.

The job's process is held at chosen points by a sitecustomize.py on the workers' PYTHONPATH that wraps
lab.bench.record.save when it is imported (LAB_TEST_SAVE=ACTION:FOLDER): `pause` waits before the save's
transaction, `pause-in-commit` waits inside it once every run, metric and output is flushed (the transaction
open, the write lock held), `exit-after-save` ends the process with code 3 right after the save committed,
`fail-commit` makes the database refuse the first save's COMMIT. A pause touches
FOLDER/ready and waits for FOLDER/go, so a test acts exactly while the job is at that point."""
import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest
from sqlalchemy import func, select, text
from sqlalchemy.exc import IntegrityError, OperationalError

from lab import jobs, store
from lab.bench.validate import validate
from lab.jobs import leases as lab_leases
from tests.conftest import ROOT
from tests.import_hooks import hooked_environment
from tests.test_jobs_cli import _stop_workers
from tests.test_jobs_lease import job_processes, stop, wait_for

CHROMIUM = "/usr/bin/chromium"

SAVE_WRAPPER = '''
import time
from pathlib import Path


def _gate(folder):
    Path(folder, "ready").touch()
    deadline = time.time() + 300
    while not Path(folder, "go").exists() and time.time() < deadline:
        time.sleep(0.05)


def _before_commit(action, folder):
    from sqlalchemy import text

    def hook(session):
        session.flush()  # every run, metric and output of the save is in the open transaction now
        if action == "pause-in-commit":
            _gate(folder)
        elif action == "fail-commit" and not Path(folder, "failed").exists():
            Path(folder, "failed").touch()  # once: the next job's save commits
            # a deferred constraint is checked only at COMMIT: the database itself refuses the commit
            session.execute(text("PRAGMA defer_foreign_keys=ON"))
            session.execute(text("INSERT INTO metrics (run_id, name, n, unit) VALUES (-1, 'orphan', 1, '')"))

    return hook


def _wrapped(real):
    def save(experiment_id, results):
        from sqlalchemy import event
        from sqlalchemy.orm import Session
        action, _, folder = os.environ["LAB_TEST_SAVE"].partition(":")
        if action == "pause":
            _gate(folder)
            return real(experiment_id, results)
        if action == "exit-after-save":
            real(experiment_id, results)
            os._exit(3)  # dies after the commit, before the process marks its job done
        hook = _before_commit(action, folder)
        event.listen(Session, "before_commit", hook)
        try:
            return real(experiment_id, results)
        finally:
            event.remove(Session, "before_commit", hook)

    return save
'''


# --- helpers -----------------------------------------------------------------------------------------------
@pytest.fixture
def gate(tmp_path) -> Path:
    """The folder a paused job's process touches `ready` in and waits for `go` in."""
    folder = tmp_path / "gate"
    folder.mkdir()
    return folder


@pytest.fixture
def save_hooked_env(tmp_path):
    """The environment for a worker whose job's save goes through the test hook; set LAB_TEST_SAVE in it."""
    return hooked_environment(tmp_path / "save-hooks", "lab.bench.record", "save", "LAB_TEST_SAVE", SAVE_WRAPPER)


@pytest.fixture
def workers():
    """Start workers with `workers(env, log)`; every one left is stopped (then killed) at the end."""
    started = []

    def start(env, log: Path):
        with open(log, "ab") as out:  # the job's process inherits it: its warnings land here too
            proc = subprocess.Popen([sys.executable, "-m", "lab", "worker"], cwd=ROOT, env=env, stdout=out,
                                    stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        started.append(proc)
        return proc

    yield start
    for proc in started:
        stop(proc)


def stored(model, experiment_id: int | None = None) -> int:
    """Rows of runs, metrics or outputs (of one experiment, if given)."""
    with store.session() as s:
        q = select(func.count()).select_from(model)
        if experiment_id is not None and model is not store.Run:
            q = q.join(store.Run, model.run_id == store.Run.id)
        if experiment_id is not None:
            q = q.where(store.Run.experiment_id == experiment_id)
        return s.scalar(q)


def nothing_stored_for(experiment_id: int) -> bool:
    return all(stored(m, experiment_id) == 0 for m in (store.Run, store.Metric, store.Output))


def write_lock_held(db: Path) -> bool:
    """Whether some connection holds the database's write lock now (an open write transaction)."""
    con = sqlite3.connect(db, timeout=0, isolation_level=None)
    try:
        con.execute("BEGIN IMMEDIATE")
        con.execute("ROLLBACK")
        return False
    except sqlite3.OperationalError as e:
        if "locked" not in str(e):
            raise
        return True
    finally:
        con.close()


def integrity(db: Path) -> str:
    con = sqlite3.connect(db)
    try:
        return "\n".join(row[0] for row in con.execute("PRAGMA integrity_check"))
    finally:
        con.close()


def status(job_id: int) -> str:
    return jobs.get_job(job_id).status


# --- 1. the worker SIGKILLed while its job's process is inside the save's transaction ------------------------
@pytest.mark.timeout(120)
def test_a_worker_killed_mid_save_fails_its_job_and_stores_no_partial_results(tiny_spec, save_hooked_env, gate,
                                                                             workers, isolated_db, tmp_path):
    exp_id, job_id = jobs.submit(validate(tiny_spec))
    worker = workers({**save_hooked_env, "LAB_TEST_SAVE": f"pause-in-commit:{gate}"}, tmp_path / "worker.log")
    wait_for(lambda: (gate / "ready").exists(), what="the job's process inside its save, rows flushed")
    children = job_processes(isolated_db)
    assert len(children) == 1 and write_lock_held(isolated_db)  # the kill lands mid-transaction
    worker.send_signal(signal.SIGKILL)
    worker.wait()
    wait_for(lambda: job_processes(isolated_db) == [], timeout=10, what="the job's process gone with its worker")
    wait_for(lambda: status(job_id) == "failed", timeout=10, what="the job failed")
    assert f"the worker (pid {worker.pid}) died" in jobs.get_job(job_id).error
    assert nothing_stored_for(exp_id) and stored(store.Metric) == 0 and stored(store.Output) == 0
    with store.session() as s:
        assert s.get(store.Experiment, exp_id).status == "failed"
    assert not write_lock_held(isolated_db) and lab_leases.leases() == {}
    assert jobs.submit(validate(tiny_spec))  # the dead transaction left the store writable
    assert integrity(isolated_db) == "ok"


# --- 2. the Streamlit server SIGKILLed mid-run: its worker finishes, the restarted server shows the result -----
def free_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def servers():
    """Start the app with `servers(env)` -> (process, url), in a process group of its own; every group left is
    killed at the end, and so is every worker the servers started (they run in sessions of their own)."""
    started = []

    def start(env):
        port = free_port()
        proc = subprocess.Popen([sys.executable, "-m", "streamlit", "run", "app.py", "--server.port", str(port),
                                 "--server.address", "127.0.0.1", "--server.headless", "true",
                                 "--browser.gatherUsageStats", "false"],
                                cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                start_new_session=True)
        started.append(proc)
        url = f"http://127.0.0.1:{port}"
        wait_for(lambda: _healthy(url), timeout=90, what="the streamlit server up")
        return proc, url

    yield start
    for proc in started:
        _kill_group(proc)
    _stop_registered_workers()


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(url + "/_stcore/health", timeout=2):
            return True
    except OSError:
        return False


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait(timeout=30)


def _stop_registered_workers() -> None:
    _stop_workers()  # SIGTERM every worker the store knows as running
    wait_for(lambda: not jobs.worker_alive(), timeout=30, what="the servers' workers stopped")


def parent_pid(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as f:
        return int(f.read().rsplit(")", 1)[1].split()[1])


def open_page(browser, url: str, expected: str) -> str:
    """The page's text once `expected` shows on it (Streamlit renders in the browser)."""
    from playwright.sync_api import expect
    page = browser.new_page()
    page.goto(url)
    expect(page.get_by_text(expected).first).to_be_visible(timeout=90_000)
    body = page.locator("body").inner_text()
    page.close()
    return body


@pytest.mark.browser
@pytest.mark.timeout(300)
def test_the_server_killed_mid_run_loses_nothing_and_shows_the_result_after_a_restart(
        tiny_spec, save_hooked_env, gate, servers, isolated_db, tmp_path):
    from playwright.sync_api import sync_playwright
    if not Path(CHROMIUM).exists():
        pytest.fail(f"Debian chromium is not installed at {CHROMIUM}: run `make chromium`")
    name = "survives a server kill"
    exp_id, job_id = jobs.submit(validate({**tiny_spec, "name": name}))
    env = {**save_hooked_env, "LAB_DATABASE_URL": f"sqlite:///{isolated_db}", "LAB_DATA_DIR": str(tmp_path / "data"),
           "LAB_WORKER_AUTOSTART": "1", "LAB_TEST_SAVE": f"pause:{gate}"}
    server, url = servers(env)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True,
                                    args=["--no-sandbox", "--disable-gpu", "--no-first-run"])
        try:
            # following the queued experiment, the page starts a worker for it (autostart)
            open_page(browser, f"{url}/LLM_Lab?experiment={exp_id}", f"Experiment {exp_id}")
            wait_for(lambda: (gate / "ready").exists(), what="the job mid-run, about to save")
            with store.session() as s:
                worker_pid = s.scalar(select(store.Worker.pid).where(store.Worker.stopped.is_(False)))
            assert parent_pid(worker_pid) == server.pid  # started by the server, not by this test
            os.killpg(server.pid, signal.SIGKILL)
            server.wait(timeout=30)
            (gate / "go").touch()
            wait_for(lambda: status(job_id) != "running", timeout=120, what="the job ended")
            assert status(job_id) == "done" and stored(store.Run, exp_id) == 2 and stored(store.Metric, exp_id) > 0
            assert jobs.worker_alive()  # the worker outlived the server that started it

            _, url = servers({**env, "LAB_WORKER_AUTOSTART": "0"})
            body = open_page(browser, f"{url}/LLM_Lab?experiment={exp_id}", f"Experiment {exp_id}: {name}")
        finally:
            browser.close()
    assert "baseline" in body and "bf16" in body and f"Experiment {exp_id} running" not in body


# --- 3. another writer holds the database longer than the busy timeout: the save waits and retries -----------
OTHER_NOTE = "written by the other writer while it held the lock"


def hold_write_lock(db: Path, experiment_id: int, seconds: float, taken: threading.Event) -> None:
    """Another writer: take the write lock, write, hold it for `seconds`, commit."""
    con = sqlite3.connect(db, isolation_level=None)
    try:
        con.execute("BEGIN IMMEDIATE")  # in WAL mode the same lock as EXCLUSIVE: readers go on, writers wait
        con.execute("UPDATE experiments SET note = ? WHERE id = ?", (OTHER_NOTE, experiment_id))
        taken.set()
        time.sleep(seconds)
        con.execute("COMMIT")
    finally:
        con.close()


@pytest.mark.timeout(180)
def test_a_database_locked_past_the_busy_timeout_makes_the_save_wait_and_retry_losing_nothing(
        tiny_spec, save_hooked_env, gate, workers, isolated_db, tmp_path):
    exp_id, job_id = jobs.submit(validate(tiny_spec))
    with store.session() as s:  # the store's own wait for a lock, then it raises "database is locked"
        busy_timeout_s = s.scalar(text("PRAGMA busy_timeout")) / 1000
    lock_s = busy_timeout_s + 5  # the first attempt must give up; only the retry can carry the save
    log = tmp_path / "worker.log"
    workers({**save_hooked_env, "LAB_TEST_SAVE": f"pause:{gate}"}, log)
    wait_for(lambda: (gate / "ready").exists(), what="the job about to save")
    taken = threading.Event()
    other = threading.Thread(target=hold_write_lock, args=(isolated_db, exp_id, lock_s, taken))
    other.start()
    try:
        assert taken.wait(timeout=30)
        (gate / "go").touch()
        released = time.time() + lock_s
        wait_for(lambda: status(job_id) != "running", timeout=120, what="the job ended")
    finally:
        other.join()
    job = jobs.get_job(job_id)
    assert job.status == "done", job.error
    assert time.time() > released - 1  # it could only end once the other writer was done
    assert "retrying the whole transaction" in log.read_text() and f"saving experiment {exp_id}" in log.read_text()
    exp = store_experiment(exp_id)
    assert exp["note"] == OTHER_NOTE and exp["status"] == "done"  # both writers' work is there
    assert exp["variants"] == ["baseline", "bf16"]  # each run once: the retried transaction wrote nothing twice
    assert all(n == tiny_spec["prompts"] for n in exp["outputs"]) and exp["metrics"][0] == exp["metrics"][1] > 0
    assert integrity(isolated_db) == "ok"


def store_experiment(exp_id: int) -> dict:
    with store.session() as s:
        exp = s.get(store.Experiment, exp_id)
        return {"note": exp.note, "status": exp.status, "variants": [r.variant for r in exp.runs],
                "metrics": [len(r.metrics) for r in exp.runs], "outputs": [len(r.outputs) for r in exp.runs]}


def test_write_with_retry_reruns_lock_conflicts_only(monkeypatch, isolated_db):
    """The retry's rules without a 10 s wait: locks and serialization failures are re-run, nothing else is."""
    import psycopg
    monkeypatch.setattr(store, "_BACKOFF_FIRST_S", 0.01)
    busy = sqlite_busy_error(isolated_db)
    calls = []

    def locked_twice():
        calls.append(1)
        if len(calls) < 3:
            raise busy
        return "written"

    assert store.write_with_retry(locked_twice, "test write") == "written" and len(calls) == 3
    for error in (psycopg.errors.SerializationFailure("x"), psycopg.errors.DeadlockDetected("x"),
                  psycopg.errors.LockNotAvailable("x")):
        assert store.lock_conflict(OperationalError("COMMIT", {}, error))
    lost = OperationalError("SELECT 1", {}, psycopg.OperationalError("server closed the connection"))
    assert not store.lock_conflict(lost)  # its commit may have happened: re-running could write twice
    calls.clear()

    def refused():
        calls.append(1)
        raise IntegrityError("INSERT", {}, sqlite3.IntegrityError("NOT NULL constraint failed"))

    with pytest.raises(IntegrityError):
        store.write_with_retry(refused, "test write")
    assert len(calls) == 1
    def always_locked():
        raise busy

    monkeypatch.setattr(store, "RETRY_FOR_S", 0.2)
    with pytest.raises(OperationalError):  # bounded: a lock that never goes away is raised in the end
        store.write_with_retry(always_locked, "test write")


def sqlite_busy_error(db: Path) -> OperationalError:
    """A real "database is locked" from SQLite, wrapped as SQLAlchemy raises it."""
    holder = sqlite3.connect(db, isolation_level=None)
    waiter = sqlite3.connect(db, timeout=0, isolation_level=None)
    try:
        holder.execute("BEGIN IMMEDIATE")
        try:
            waiter.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as e:
            return OperationalError("BEGIN IMMEDIATE", {}, e)
        raise AssertionError("the second writer got the lock")
    finally:
        holder.close()
        waiter.close()


# --- 4. the database refuses the save's COMMIT -----------------------------------------------------------------
@pytest.mark.timeout(180)
def test_a_refused_commit_leaves_no_half_written_experiment_and_the_next_job_saves(
        tiny_spec, save_hooked_env, gate, workers, isolated_db, tmp_path):
    spec = validate(tiny_spec)
    failed_exp, failed_job = jobs.submit(spec)
    worker = workers({**save_hooked_env, "LAB_TEST_SAVE": f"fail-commit:{gate}"}, tmp_path / "worker.log")
    wait_for(lambda: status(failed_job) not in ("queued", "running"), what="the job ended")
    job = jobs.get_job(failed_job)
    assert (gate / "failed").exists()  # the hook did refuse a commit
    # the child's own error write after the refused commit got through: its store was still usable
    assert job.status == "failed" and "FOREIGN KEY constraint failed" in job.error and "exited with code 1" in job.error
    assert stored(store.Run) == 0 and stored(store.Metric) == 0 and stored(store.Output) == 0
    with store.session() as s:
        exp = s.get(store.Experiment, failed_exp)
        assert (exp.name, exp.spec, exp.status) == (tiny_spec["name"], spec.to_dict(), "failed")
    next_exp, next_job = jobs.submit(spec)
    wait_for(lambda: status(next_job) == "done", what="the next job done")
    assert worker.poll() is None  # the same worker ran it
    assert stored(store.Run, next_exp) == 2 and nothing_stored_for(failed_exp)
    assert stored(store.Metric) == stored(store.Metric, next_exp)  # not even the injected row survived
    assert integrity(isolated_db) == "ok"


# --- 4b. the job's process dies right after its save committed -------------------------------------------------
@pytest.mark.timeout(180)
def test_a_process_that_dies_after_its_save_committed_leaves_its_job_done_with_every_result(
        tiny_spec, save_hooked_env, gate, workers, tmp_path):
    exp_id, job_id = jobs.submit(validate(tiny_spec))
    workers({**save_hooked_env, "LAB_TEST_SAVE": f"exit-after-save:{gate}"}, tmp_path / "worker.log")
    wait_for(lambda: status(job_id) not in ("queued", "running"), what="the job ended")
    job = jobs.get_job(job_id)
    # its results are whole (one transaction), so the job is done, and the message says how the process ended
    assert (job.status, job.error) == ("done", None) and "exited with code 3 after saving" in job.message
    assert stored(store.Run, exp_id) == 2 and stored(store.Metric, exp_id) > 0


# --- 5. SIGKILL in the middle of a burst of commits ------------------------------------------------------------
RUNS, METRICS, OUTPUTS = 2, 2, 3  # what each save of the burst writes, per experiment and per run
BURST = '''
import json, sys
from lab import jobs
from lab.bench.record import VariantResult, save
from lab.bench.validate import validate

spec = validate(json.loads(sys.argv[1]))
while True:  # small transactions, back to back: submit (experiment + job), then save (runs, metrics, outputs)
    exp_id, _ = jobs.submit(spec)
    results = []
    for v in range({runs}):
        res = VariantResult(name=f"v{{v}}", engine="hf", techniques=[])
        res.record({{"ttft_s": 0.1 + v, "tokens_per_s": 10.0 + v}})
        res.outputs = [dict(item_index=i, item_key=f"k{{i}}", prompt="p", text="t", token_ids=[1, 2], extra={{}})
                       for i in range({outputs})]
        results.append(res)
    save(exp_id, results)
    print(exp_id, flush=True)
'''.format(runs=RUNS, outputs=OUTPUTS)


def burst_then_kill(tiny_spec, after_s: float) -> list[int]:
    """Run the burst, SIGKILL it `after_s` seconds after its first commit; the experiments it saw committed."""
    proc = subprocess.Popen([sys.executable, "-c", BURST, json.dumps(tiny_spec)], cwd=ROOT, stdout=subprocess.PIPE,
                            text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        committed = [int(proc.stdout.readline())]
        time.sleep(after_s)
        proc.send_signal(signal.SIGKILL)
        committed += [int(line) for line in proc.stdout.read().split()]
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    return committed


def experiment_shapes() -> dict[int, tuple]:
    """Per experiment: (jobs, runs, metrics, outputs)."""
    with store.session() as s:
        def per_experiment(q):
            return dict(s.execute(q.group_by(store.Experiment.id)).all())
        ids = list(s.scalars(select(store.Experiment.id)))
        jobs_of = per_experiment(select(store.Job.experiment_id, func.count()).join(store.Experiment))
        runs_of = per_experiment(select(store.Run.experiment_id, func.count()).join(store.Experiment))
        metrics_of = per_experiment(select(store.Experiment.id, func.count()).join(store.Run).join(store.Metric))
        outputs_of = per_experiment(select(store.Experiment.id, func.count()).join(store.Run).join(store.Output))
    return {i: (jobs_of.get(i, 0), runs_of.get(i, 0), metrics_of.get(i, 0), outputs_of.get(i, 0)) for i in ids}


@pytest.mark.timeout(180)
def test_sigkill_in_a_burst_of_commits_leaves_a_whole_store(tiny_spec, isolated_db):
    store.sessionmaker_for()  # the schema exists before the burst opens the store
    committed: list[int] = []
    for kills, after_s in enumerate((0.7, 1.0, 1.3), start=1):  # lands at different points of the transactions
        committed += burst_then_kill(tiny_spec, after_s)
        store.reset_engines()
        assert integrity(isolated_db) == "ok"
        shapes = experiment_shapes()
        saved = (1, RUNS, RUNS * METRICS, RUNS * OUTPUTS)
        assert all(shapes[i] == saved for i in committed)  # every commit it saw is there, whole
        # no row of a transaction that did not commit: every experiment has its job, and all its runs or none
        assert all(shape in (saved, (1, 0, 0, 0)) for shape in shapes.values()), shapes
        # per kill, one experiment at most beyond those it printed: cut before its save, or before its print
        assert len(committed) > kills and len(shapes) - len(committed) <= kills
    store.reset_engines()
    assert_store_opens_and_migrates(isolated_db, tiny_spec)


def assert_store_opens_and_migrates(db: Path, tiny_spec: dict) -> None:
    from alembic.script import ScriptDirectory
    url = f"sqlite:///{db}"
    head = ScriptDirectory.from_config(store.alembic_config(url)).get_current_head()
    with store.session() as s:  # opening runs the migrations (to head: nothing to do, and nothing broken)
        assert s.scalar(text("select version_num from alembic_version")) == head
        assert s.scalar(text("PRAGMA journal_mode")) == "wal"
    assert jobs.submit(validate(tiny_spec))  # and it takes writes
