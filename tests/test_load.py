"""Load: 20 browser sessions at once (Debian chromium, one playwright context each) each queue a small run from the
LLM Lab form against one Streamlit server and one worker. Every run must complete, in submission order, none lost
or duplicated, and the pages must keep answering while the runs go: every page load is timed and the count,
median, p95 and max are printed (pytest -s) and written to test-artifacts/load_test.json."""
from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import random
import re
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pytest
from sqlalchemy import select
from sqlalchemy.orm import selectinload

from lab import store
from lab.store import Experiment, Job
from tests.conftest import ROOT
from tests.test_browser import ARTIFACTS, CHROMIUM, streamlit_server

pytestmark = [pytest.mark.browser]
SESSIONS = 20
LOAD_LIMIT_S = 60  # "pages keep answering": a generous bound, not a speed target (a 2-core machine runs all this)
STEP_TIMEOUT_MS = 90_000  # one form step (a rerun on a busy server)
RELOAD_PAUSE_S = 30.0  # between a session's checks on its queued run: a person checking, not a hammer
RUN_WATCH_S = 120  # how long a session watches its running run's page before it reloads it
OTHER_MODEL = "other (local folder or cached hub id)"  # pages/1_LLM_Lab.py's OTHER_MODEL


def tiny_fields(seed: int) -> dict[str, str]:
    """The number inputs a session sets besides the name and the model: the preset's workload stays (on the tiny
    model a job is ~9 s either way, mostly the job process importing torch, and every field set is one more rerun
    in twenty browsers). One thread leaves the other core to the server. The seed differs per session: the spec hash
    ignores the name, and the page joins an identical spec already queued instead of queueing another
    (lab/jobs/reuse.py)."""
    return {"threads": "1", "seed": str(seed)}


@pytest.fixture
def server(isolated_db):
    """The app without a worker of its own (LAB_WORKER_AUTOSTART=0): the test's worker is the only one."""
    if not Path(CHROMIUM).exists():  # as tests/test_browser.py: fail, do not skip
        pytest.fail(f"Debian chromium is not installed at {CHROMIUM}: run `make chromium` (make test runs it), "
                    f"or `sudo apt-get install chromium`")
    with streamlit_server(isolated_db, autostart=False) as url:
        yield url


@pytest.fixture
def worker(isolated_db, tmp_path):
    """One `python -m lab worker` on the test's store; its process group (it and its job's child) is killed after."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "LAB_DATABASE_URL": f"sqlite:///{isolated_db}",
           "LAB_WORKER_AUTOSTART": "0"}
    log = (tmp_path / "worker.log").open("w")
    proc = subprocess.Popen([sys.executable, "-m", "lab", "worker"], cwd=ROOT, env=env, stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)
    yield proc
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            break
        try:
            proc.wait(timeout=15)
            break
        except subprocess.TimeoutExpired:
            continue
    log.close()


# --- one browser session ---------------------------------------------------------------------------------
class Clock:
    """Page loads of all sessions, timed from goto to the page's last-drawn content being visible."""

    def __init__(self):
        self.start = time.perf_counter()
        self.start_utc = store.utcnow()  # the store's clock (jobs' started_at, finished_at)
        self.loads: list[dict] = []

    def now(self) -> float:
        return time.perf_counter() - self.start

    async def load(self, page, url: str, ready, session: int, what: str) -> float:
        t0 = self.now()
        entry = {"session": session, "page": what, "at_s": round(t0, 2), "seconds": None}
        self.loads.append(entry)  # a load that times out stays here, unfinished (seconds None)
        await page.goto(url, timeout=LOAD_LIMIT_S * 1000)
        left_ms = max(1.0, LOAD_LIMIT_S - (self.now() - t0)) * 1000
        await ready.first.wait_for(state="visible", timeout=left_ms)
        entry["seconds"] = round(self.now() - t0, 3)
        return entry["seconds"]


async def fill(page, label: str, value: str) -> None:
    """A Streamlit text or number input takes its value on Enter (a rerun)."""
    box = page.get_by_label(label, exact=True)
    await box.fill(value)
    await box.press("Enter")


async def queue_run(page, url: str, clock: Clock, session: int, name: str, model: Path) -> int:
    """Open the LLM Lab, build the quick start's run on the tiny model in the form, click Run experiment; returns the
    experiment id the page puts in its URL."""
    from playwright.async_api import expect
    await clock.load(page, url + "/LLM_Lab", page.get_by_text("Build an experiment"), session, "llm_lab")
    await page.get_by_text("Build an experiment").click()
    await page.wait_for_function(  # the expander's form is drawn (tests/test_browser.py: experiment_name_shows)
        "() => { const els = document.querySelectorAll(\"input[aria-label='Experiment name']\");"
        " return els.length === 1 && els[0].value === 'quickstart'; }", timeout=STEP_TIMEOUT_MS)
    await fill(page, "Experiment name", name)
    await page.get_by_test_id("stSelectbox").filter(has=page.get_by_text("Model", exact=True)).click()
    await page.get_by_role("option", name=OTHER_MODEL, exact=True).click()
    path_box = page.get_by_label("Model path or hub id", exact=True)
    await path_box.wait_for(state="visible", timeout=STEP_TIMEOUT_MS)
    await fill(page, "Model path or hub id", str(model))
    fields = tiny_fields(seed=session)
    for label, value in fields.items():
        await fill(page, label, value)
    # every value made it through its rerun before the click (a lost one would queue another spec)
    for label, value in {"Experiment name": name, "Model path or hub id": str(model), **fields}.items():
        await expect(page.get_by_label(label, exact=True)).to_have_value(value, timeout=STEP_TIMEOUT_MS)
    await page.get_by_role("button", name="Run experiment").click()
    deadline = time.time() + STEP_TIMEOUT_MS / 1000
    while time.time() < deadline:  # the page sets ?experiment=<id> (st.query_params) once the job is queued
        found = re.search(r"[?&]experiment=(\d+)", page.url)
        if found:
            return int(found.group(1))
        await asyncio.sleep(0.2)
    raise AssertionError(f"session {session}: no ?experiment= in the URL {STEP_TIMEOUT_MS // 1000} s after "
                         f"Run experiment")


async def follow_run(page, url: str, clock: Clock, session: int, name: str, exp_id: int, deadline: float) -> dict:
    """Check on the run now and then, loading its experiment page (every third time the Compare page first) and
    timing each load. While the run is queued the tab is left blank between checks: twenty open pages polling
    their progress would take the run's CPU on a 2-core machine. Once it runs, the page stays open: it must redraw
    itself with the results when the run ends (its progress fragment polls)."""
    done = page.get_by_text(f"Experiment {exp_id}: {name}", exact=True)
    waiting = page.get_by_text(re.compile(rf"^Experiment {exp_id} (queued|running):"))
    running = page.get_by_text(re.compile(rf"^Experiment {exp_id} running:"))
    compare_ready = page.locator("[data-testid='stTable']").or_(page.get_by_text("No runs yet"))
    rng = random.Random(session)
    pause_s = RELOAD_PAUSE_S * rng.uniform(0.75, 1.25)
    # sessions out of step: forms sent together would otherwise reload together, every time (a browser's first
    # load of the app compiles its script bundle: twenty at once take a 2-core machine ~20 s)
    await page.goto("about:blank")
    await asyncio.sleep(rng.uniform(0, RELOAD_PAUSE_S))
    checks = 0
    while time.time() < deadline:
        checks += 1
        if checks % 3 == 0:
            await clock.load(page, url + "/Compare", compare_ready, session, "compare")
        await clock.load(page, f"{url}/LLM_Lab?experiment={exp_id}", done.or_(waiting), session, "experiment")
        if await running.is_visible():
            await _wait_visible(done, min(RUN_WATCH_S, deadline - time.time()))
        if await done.is_visible():
            return await _shown_done(page, clock, checks)
        await page.goto("about:blank")
        await asyncio.sleep(pause_s)
    raise AssertionError(f"session {session}: experiment {exp_id} not shown done before the deadline")


async def _wait_visible(locator, seconds: float) -> None:
    from playwright.async_api import TimeoutError as PlaywrightTimeout
    try:
        await locator.wait_for(state="visible", timeout=max(1.0, seconds) * 1000)
    except PlaywrightTimeout:
        pass  # the caller looks again


async def _shown_done(page, clock: Clock, checks: int) -> dict:
    """The finished run's results table: both of the quick start's variants."""
    from playwright.async_api import expect
    table = page.locator("[data-testid='stTable']").first
    await expect(table).to_contain_text("baseline", timeout=STEP_TIMEOUT_MS)
    await expect(table).to_contain_text("bf16", timeout=STEP_TIMEOUT_MS)
    return {"checks": checks, "shown_done_at_s": round(clock.now(), 2)}


async def one_session(browser, url: str, clock: Clock, session: int, model: Path, deadline: float) -> dict:
    context = await browser.new_context(viewport={"width": 1300, "height": 1000})
    page = await context.new_page()
    try:
        name = f"load-{session:02d}"
        exp_id = await queue_run(page, url, clock, session, name, model)
        queued_at = clock.now()
        followed = await follow_run(page, url, clock, session, name, exp_id, deadline)
        if session == 0:
            await page.screenshot(path=str(ARTIFACTS / "load_session_00.png"), full_page=True)
        return {"session": session, "name": name, "experiment_id": exp_id, "queued_at_s": round(queued_at, 2),
                **followed}
    except Exception:  # what the page showed when the session gave up
        stem = ARTIFACTS / f"load_failed_session_{session:02d}"
        with contextlib.suppress(Exception):  # a crashed page: the session's own error is the one to see
            await page.screenshot(path=f"{stem}.png", full_page=True)
            Path(f"{stem}.html").write_text(await page.content())
        raise
    finally:
        await context.close()


async def all_sessions(url: str, clock: Clock, model: Path, deadline: float) -> list:
    from playwright.async_api import async_playwright
    async with async_playwright() as p:
        browser = await p.chromium.launch(executable_path=CHROMIUM, headless=True, args=[  # as test_browser's
            "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
            "--disable-sync", "--no-first-run"])
        try:
            return await asyncio.gather(*(one_session(browser, url, clock, i, model, deadline)
                                          for i in range(SESSIONS)), return_exceptions=True)
        finally:
            await browser.close()


# --- what the store says ---------------------------------------------------------------------------------
def stored_jobs() -> list[dict]:
    """Every job with its experiment, in job id (= submission) order."""
    with store.session() as s:
        experiments = s.scalars(select(Experiment).options(selectinload(Experiment.runs))).all()
        jobs = s.scalars(select(Job).order_by(Job.id)).all()
        by_exp = {e.id: e for e in experiments}
        return [{"job": j.id, "experiment": j.experiment_id, "name": by_exp[j.experiment_id].name,
                 "status": j.status, "runs": len(by_exp[j.experiment_id].runs), "spec": by_exp[j.experiment_id].spec,
                 "started_at": j.started_at, "finished_at": j.finished_at, "error": j.error} for j in jobs]


def experiment_names() -> list[str]:
    with store.session() as s:
        return list(s.scalars(select(Experiment.name)))


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile: a value that was measured."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


def load_stats(loads: list[dict]) -> dict:
    seconds = [x["seconds"] for x in loads if x["seconds"] is not None]
    if not seconds:
        return {"n": 0, "unfinished": len(loads)}
    return {"n": len(seconds), "unfinished": len(loads) - len(seconds),
            "median_s": round(statistics.median(seconds), 3), "p95_s": round(percentile(seconds, 0.95), 3),
            "max_s": round(max(seconds), 3)}


def summary(clock: Clock, wall_s: float, sessions: list, jobs: list[dict]) -> dict:
    def offset(when) -> float | None:  # seconds since the clock started
        return round((when - clock.start_utc).total_seconds(), 2) if when else None

    order = [{"job": j["job"], "name": j["name"], "status": j["status"], "started_s": offset(j["started_at"]),
              "finished_s": offset(j["finished_at"])} for j in jobs]
    starts = [o["started_s"] for o in order if o["started_s"] is not None]
    ends = [o["finished_s"] for o in order if o["finished_s"] is not None]
    # "while runs go": loads begun between the first run's start and the last run's end (the first loads of the
    # app, all twenty at once before any run, are the other part of the overall numbers)
    during = [x for x in clock.loads if starts and ends and min(starts) <= x["at_s"] <= max(ends)]
    return {"sessions": SESSIONS, "runs": len(jobs), "runs_done": sum(j["status"] == "done" for j in jobs),
            "wall_s": round(wall_s, 1), "runs_span_s": round(max(ends) - min(starts), 1) if starts and ends else None,
            "page_loads": {**load_stats(clock.loads),
                           "by_page": {p: len([x for x in clock.loads if x["page"] == p])
                                       for p in ("llm_lab", "experiment", "compare")}},
            "page_loads_while_runs_go": load_stats(during),
            "queue_order": order,
            "sessions_detail": [s if isinstance(s, dict) else {"error": repr(s)} for s in sessions],
            "cpu": _cpu_model(), "loads": clock.loads}


def _cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "?"


def report(result: dict) -> None:
    (ARTIFACTS / "load_test.json").write_text(json.dumps(result, indent=1, default=str))
    print(f"\nload test: {result['sessions']} sessions, {result['runs_done']}/{result['runs']} runs done, "
          f"wall {result['wall_s']} s (runs {result['runs_span_s']} s) on {result['cpu']} ({os.cpu_count()} CPUs)")
    for title, key in (("page loads", "page_loads"), ("  while runs go", "page_loads_while_runs_go")):
        x = result[key]
        print(f"{title}: n={x['n']} unfinished={x['unfinished']} median={x.get('median_s')} s "
              f"p95={x.get('p95_s')} s max={x.get('max_s')} s")
    print(f"  by page: {result['page_loads']['by_page']}")
    print("queue order (job, name, started-finished s): " + ", ".join(
        f"#{o['job']} {o['name']} {o['started_s']}-{o['finished_s']}" for o in result["queue_order"]))


# --- the test --------------------------------------------------------------------------------------------
@pytest.mark.timeout(600)
def test_twenty_sessions_queue_runs_at_once(server, worker, tiny_model_dir):
    ARTIFACTS.mkdir(exist_ok=True)
    clock = Clock()
    deadline = time.time() + 530  # leaves the 600 s timeout room to report and clean up
    sessions = asyncio.run(all_sessions(server, clock, tiny_model_dir, deadline))
    wall_s = clock.now()
    jobs = stored_jobs()
    result = summary(clock, wall_s, sessions, jobs)
    report(result)

    failed = [f"session {i}: {s!r}" for i, s in enumerate(sessions) if isinstance(s, BaseException)]
    assert not failed, "\n".join(failed)
    # none lost, none duplicated: each session's name once, as one experiment with one job
    expected = sorted(f"load-{i:02d}" for i in range(SESSIONS))
    assert sorted(experiment_names()) == expected
    assert sorted(j["name"] for j in jobs) == expected
    # each session's page showed its own run done (its name in the results' heading, follow_run)
    names_by_exp = {j["experiment"]: j["name"] for j in jobs}
    assert {s["experiment_id"]: s["name"] for s in sessions} == names_by_exp
    for j in jobs:  # the form's values reached the spec (the run is the tiny one the session asked for)
        assert j["status"] == "done" and j["runs"] == 2, j  # the quick start's baseline and bf16
        session = int(j["name"].split("-")[1])
        assert (j["spec"]["model"], j["spec"]["seed"], j["spec"]["threads"]) == (str(tiny_model_dir), session, 1)
    # one worker, one device: in submission order, one at a time
    for before, after in zip(jobs, jobs[1:]):
        assert after["started_at"] >= before["finished_at"], (before, after)
        assert after["finished_at"] > before["finished_at"], (before, after)
    # pages kept answering: every load finished (a timeout fails its session above), each within the bound
    assert result["page_loads"]["by_page"]["experiment"] >= SESSIONS
    slow = [x for x in clock.loads if x["seconds"] is None or x["seconds"] >= LOAD_LIMIT_S]
    assert not slow, slow
