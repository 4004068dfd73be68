"""Real-browser tests: Debian's chromium, driven by playwright, against a real Streamlit server. The quick starts
run from the LLM and diffusion pages with a worker and the real default models; the experiment form is checked
to submit the preset last chosen, whole (the stored spec against the preset's file)."""
import contextlib
import os
import re
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
from lab.report import download
from tests.conftest import ROOT
from tests.test_real_model import check_the_stored_quickstart

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
        verdict = page.locator("li").filter(has_text=re.compile(r"^bf16: ")).first
        verdict_text = verdict.inner_text()
        verdict_first = verdict.bounding_box()["y"] < table.bounding_box()["y"]
        page.screenshot(path=str(ARTIFACTS / "llm_lab_quickstart.png"), full_page=True)
        report = download_report(page, "quickstart")
        opened = open_offline(browser, report, "report_quickstart.png")
        browser.close()
    for column in ("TTFT", "TPOT", "Tokens/s", "Peak memory", "Agreement", "Perplexity", "baseline"):
        assert column in text
    # the answer before the evidence: bf16's speedup, its weights change in MB and its perplexity change
    assert verdict_first, "the verdict is drawn below the results table"
    assert re.search(r"^bf16: \d+\.\d+x (faster|slower|as fast)", verdict_text), verdict_text
    assert re.search(r"weights \d+ MB \(−\d+%\)", verdict_text), verdict_text
    assert re.search(r"perplexity \d+\.?\d* ppl \([−+±]", verdict_text), verdict_text
    assert_every_chart_drawn(opened, at_least=3)  # speedup, quality, Pareto front
    assert report.read_bytes() == download.report_bytes("html", experiment_ids=[1])  # the same bytes again
    check_the_stored_quickstart(1)  # what the worker stored is the model's own (tests/test_real_model.py)


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
        report = download_report(page, "diffusion_quickstart")
        opened = open_offline(browser, report, "report_diffusion_quickstart.png")
        browser.close()
    assert_every_chart_drawn(opened, at_least=3)
    assert opened["images"] >= 3 and opened["images"] == opened["images_loaded"]  # grids as data: URIs
    assert report.read_bytes() == download.report_bytes("html", experiment_ids=[1])
    assert loaded >= 3  # the first variant's expander is open: baseline, variant, difference
    for column in ("Blocks computed", "PSNR", "SSIM", "Class accuracy", "25 steps"):
        assert column in text


def download_report(page, name: str) -> Path:
    """Click the page's HTML report button and keep the file under test-artifacts/."""
    with page.expect_download(timeout=120_000) as info:
        page.get_by_role("button", name=download.LABELS["html"]).click()
    path = ARTIFACTS / f"report_{name}.html"
    info.value.save_as(path)
    return path


def open_offline(browser, path: Path, screenshot: str) -> dict:
    """Open a report with the network off (every request not for the file itself is recorded and refused): how
    many chart figures it has, how many of them hold a drawn SVG, its images and whether they decoded."""
    context = browser.new_context(offline=True, viewport={"width": 1300, "height": 1000})
    requested = []
    context.route("**/*", lambda route: route.continue_() if route.request.url.startswith("file:")
                  else (requested.append(route.request.url), route.abort()))
    page = context.new_page()
    page.goto(path.as_uri())
    counts = page.evaluate("""() => ({
        figures: document.querySelectorAll('figure.chart').length,
        drawn: [...document.querySelectorAll('figure.chart svg')].filter(s => s.getBBox().width > 0
                                                                              && s.querySelector('path, text')).length,
        images: document.images.length,
        images_loaded: [...document.images].filter(i => i.complete && i.naturalWidth > 0).length})""")
    page.screenshot(path=str(ARTIFACTS / screenshot), full_page=True)
    context.close()
    return {**counts, "requested": requested}


def assert_every_chart_drawn(opened: dict, at_least: int) -> None:
    assert not opened["requested"], f"the report asked the network for {opened['requested']}"
    assert opened["figures"] >= at_least and opened["drawn"] == opened["figures"], opened


def test_a_kv_sweep_report_draws_its_pareto_front_offline(tiny_spec, isolated_db):
    """A sweep over compression_ratio (tiny test model: checks the report, not the model) exported as HTML and
    opened with the network off: every chart drawn, the Pareto front among them."""
    from playwright.sync_api import sync_playwright

    from tests.test_pages import run_and_store
    ARTIFACTS.mkdir(exist_ok=True)
    exp_id = run_and_store({**tiny_spec, "name": "kv sweep", "workload": "needle", "needle_lengths": [300],
                            "needle_depths": [0, 100], "repeats": 1, "warmup": 0, "max_new_tokens": 4,
                            "variants": [{"name": "snapkv", "techniques": [
                                {"name": "snapkv", "compression_ratio": [0.25, 0.5, 0.75], "window_size": 8}]}]})
    report = ARTIFACTS / "report_kv_sweep.html"
    report.write_bytes(download.report_bytes("html", experiment_ids=[exp_id]))
    with sync_playwright() as p:
        browser = launch(p)
        opened = open_offline(browser, report, "report_kv_sweep.png")
        browser.close()
    assert_every_chart_drawn(opened, at_least=2)
    assert f'id="experiment-{exp_id}-pareto"' in report.read_text()
    assert "snapkv (compression_ratio=0.75)" in report.read_text()


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


def test_a_newcomers_path_home_techniques_workshop_result_calculator(server):
    """Home -> Techniques -> a workshop preset in the LLM Lab form (its questions) -> its result -> the what-if
    calculator, in Debian chromium, a screenshot at each step."""
    from playwright.sync_api import expect, sync_playwright
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as p:
        browser = launch(p)
        page = browser.new_page(viewport={"width": 1500, "height": 1100})
        page.goto(server)
        expect(page.get_by_text("A tour, in the order you will need it")).to_be_visible(timeout=60_000)
        expect(page.get_by_test_id("stSidebarNav").get_by_role("link", name="Home")).to_be_visible()
        page.screenshot(path=str(ARTIFACTS / "newcomer_1_home.png"), full_page=True)

        page.get_by_test_id("stSidebarNav").get_by_role("link", name="Techniques").click()
        expect(page.get_by_role("heading", name="Techniques")).to_be_visible(timeout=60_000)
        expect(page.get_by_text("SnapKV").first).to_be_attached()
        page.screenshot(path=str(ARTIFACTS / "newcomer_2_techniques.png"), full_page=True)

        page.get_by_test_id("stSidebarNav").get_by_role("link", name="LLM Lab").click()
        page.get_by_text("Build an experiment").click()
        experiment_name_shows(page, "quickstart")
        page.get_by_test_id("stSelectbox").filter(has_text="Start from preset").click()
        page.get_by_role("option", name="workshop/3_quantization", exact=True).click()
        experiment_name_shows(page, "workshop 3: quantization")
        expect(page.get_by_text("Questions to discuss").first).to_be_visible()
        page.screenshot(path=str(ARTIFACTS / "newcomer_3_workshop_preset.png"), full_page=True)
        page.get_by_role("button", name="Run experiment").click()
        expect(page.get_by_text("Experiment 1: workshop 3: quantization")).to_be_visible(timeout=420_000)
        expect(page.get_by_text("Questions to discuss (workshop)")).to_be_visible()
        page.get_by_text("Experiment 1: workshop 3: quantization").scroll_into_view_if_needed()
        page.screenshot(path=str(ARTIFACTS / "newcomer_4_workshop_result.png"))
        rows = page.locator("[data-testid='stTable']").first.locator("tbody tr").count()
        chart = page.get_by_test_id("stVegaLiteChart").first
        chart.scroll_into_view_if_needed()
        # each variant keeps a row of its own in the speedup chart: the rows' height plus title, axis and legend
        # (squeezed into the rows' height, the labels were drawn on top of each other)
        assert rows >= 2 and chart.bounding_box()["height"] >= 28 * rows + 60

        page.get_by_test_id("stSidebarNav").get_by_role("link", name="What-if calculator").click()
        expect(page.get_by_role("heading", name="What-if calculator")).to_be_visible(timeout=60_000)
        expect(page.get_by_text("Estimate", exact=True).first).to_be_visible()
        page.screenshot(path=str(ARTIFACTS / "newcomer_5_calculator.png"), full_page=True)
        browser.close()
