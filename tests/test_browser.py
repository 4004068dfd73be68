"""Real-browser tests: Debian's chromium, driven by playwright, against a real Streamlit server. The quick starts
run from the LLM and diffusion pages with a worker and the real default models; the experiment form is checked
to submit the preset last chosen, whole (the stored spec against the preset's file)."""
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from sqlalchemy import select

from lab import store
from tests.conftest import ROOT

pytestmark = [pytest.mark.browser, pytest.mark.real_model]
CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = ROOT / "test-artifacts"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(autouse=True)
def chromium_installed():
    """`make test` installs Debian's chromium (make chromium): without it these tests fail, they do not skip."""
    if not Path(CHROMIUM).exists():
        pytest.fail(f"Debian chromium is not installed at {CHROMIUM}: run `make chromium` (make test runs it), "
                    f"or `sudo apt-get install chromium`")


@contextlib.contextmanager
def streamlit_server(db: Path, autostart: bool):
    """The app served on a free port against the test's database; with autostart the page starts a worker,
    which is stopped afterwards."""
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "LAB_DATABASE_URL": f"sqlite:///{db}",
           "LAB_WORKER_AUTOSTART": "1" if autostart else "0"}
    proc = subprocess.Popen([sys.executable, "-m", "streamlit", "run", "app.py", "--server.port", str(port),
                             "--server.address", "127.0.0.1", "--server.headless", "true"],
                            cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 60
    while time.time() < deadline:
        try:
            urllib.request.urlopen(url + "/_stcore/health", timeout=2)
            break
        except OSError:
            time.sleep(0.5)
    else:
        proc.kill()
        pytest.fail("streamlit did not start within 60 s")
    try:
        yield url
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)
        with store.session() as s:  # stop the worker the page started
            for w in s.scalars(select(store.Worker).where(store.Worker.stopped.is_(False))):
                try:
                    os.kill(w.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass


@pytest.fixture
def server(isolated_db):
    with streamlit_server(isolated_db, autostart=True) as url:
        yield url


@pytest.fixture
def server_without_worker(isolated_db):
    """Experiments submitted from the page stay queued: for tests that read what was stored, not the run."""
    with streamlit_server(isolated_db, autostart=False) as url:
        yield url


def launch(p):
    return p.chromium.launch(executable_path=CHROMIUM, headless=True, args=[
        "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--no-first-run"])


def test_quickstart_from_the_llm_lab_page(server):
    from playwright.sync_api import expect, sync_playwright
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as p:
        browser = launch(p)
        page = browser.new_page(viewport={"width": 1500, "height": 1100})
        page.goto(server + "/LLM_Lab")
        page.get_by_role("button", name="Run quickstart").click()
        expect(page.get_by_text("Experiment 1: quickstart")).to_be_visible(timeout=420_000)
        table = page.locator("[data-testid='stTable']").first
        expect(table).to_contain_text("bf16")
        text = table.inner_text()
        page.screenshot(path=str(ARTIFACTS / "llm_lab_quickstart.png"), full_page=True)
        browser.close()
    for column in ("TTFT", "TPOT", "Tokens/s", "Peak memory", "Agreement", "Perplexity", "baseline"):
        assert column in text


def test_diffusion_quickstart_draws_the_images(server):
    from playwright.sync_api import expect, sync_playwright
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as p:
        browser = launch(p)
        page = browser.new_page(viewport={"width": 1500, "height": 1100})
        page.goto(server + "/Diffusion_Lab")
        page.get_by_role("button", name="Run diffusion quickstart").click()
        expect(page.get_by_text("Experiment 1: diffusion quickstart")).to_be_visible(timeout=420_000)
        expect(page.get_by_text("Against fewer steps at equal compute")).to_be_visible()
        images = page.locator("[data-testid='stImage'] img")
        expect(images.first).to_be_visible()
        loaded = images.evaluate_all("els => els.filter(e => e.complete && e.naturalWidth > 0).length")
        text = page.locator("[data-testid='stTable']").first.inner_text()
        page.screenshot(path=str(ARTIFACTS / "diffusion_lab_quickstart.png"), full_page=True)
        browser.close()
    assert loaded >= 3  # the first variant's expander is open: baseline, variant, difference
    for column in ("Blocks computed", "PSNR", "SSIM", "Class accuracy", "25 steps"):
        assert column in text


def experiment_name_shows(page, value: str, timeout_ms: int = 30_000) -> None:
    """Wait until the form's one "Experiment name" input holds the value: the rerun for a preset is drawn (while
    it runs, the previous run's input is still on the page beside the new one)."""
    page.wait_for_function("value => { const els = document.querySelectorAll(\"input[aria-label='Experiment name']\");"
                           " return els.length === 1 && els[0].value === value; }", arg=value, timeout=timeout_ms)


def test_form_submits_the_last_preset_chosen_whole(server_without_worker):
    """Two presets picked in a row in the LLM Lab form, then Run experiment: the queued experiment's spec must be
    kv_quick.toml's, field by field (the run itself is not waited for: no worker runs here)."""
    from playwright.sync_api import expect, sync_playwright

    from lab.bench.validate import load_toml
    from lab.views import results
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as p:
        browser = launch(p)
        page = browser.new_page(viewport={"width": 1500, "height": 1100})
        page.goto(server_without_worker + "/LLM_Lab")
        page.get_by_text("Build an experiment").click()
        experiment_name_shows(page, "quickstart")
        for preset in ("bench_overhead", "kv_quick"):
            page.get_by_test_id("stSelectbox").filter(has_text="Start from preset").click()
            page.get_by_role("option", name=preset, exact=True).click()
            experiment_name_shows(page, preset)
        expect(page.get_by_label("Variant name").first).to_have_value("streaming_llm@0.5", timeout=30_000)
        page.get_by_role("button", name="Run experiment").click()
        deadline, exp = time.time() + 180, None  # generous: a loaded CI machine, not a speed target
        while exp is None and time.time() < deadline:
            exp = results.load_experiment(1)
            time.sleep(0.5)
        page.screenshot(path=str(ARTIFACTS / "llm_lab_form_preset.png"), full_page=True)
        browser.close()
    assert exp is not None, "no experiment was stored within 180 s of clicking Run experiment"
    stored, expected = exp.spec, load_toml(ROOT / "experiments" / "kv_quick.toml").to_dict()
    assert sorted(stored) == sorted(expected)
    for field in expected:  # nothing ignored: both sides went through validate(), no field is derived differently
        assert stored[field] == expected[field], f"field {field!r}"
