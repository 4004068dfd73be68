"""One real-browser test of the main flow: Debian's chromium, driven by playwright, runs the quickstart from
the LLM Lab page against a real Streamlit server, worker and the real default model, and reads the table."""
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


@pytest.fixture
def server(isolated_db):
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "LAB_DATABASE_URL": f"sqlite:///{isolated_db}",
           "LAB_WORKER_AUTOSTART": "1"}
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
    yield url
    os.killpg(proc.pid, signal.SIGTERM)
    proc.wait(timeout=30)
    with store.session() as s:  # stop the worker the page started
        for w in s.scalars(select(store.Worker).where(store.Worker.stopped.is_(False))):
            try:
                os.kill(w.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass


def launch(p):
    return p.chromium.launch(executable_path=CHROMIUM, headless=True, args=[
        "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--no-first-run"])


@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Debian chromium not installed (make test installs it)")
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


@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Debian chromium not installed (make test installs it)")
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
