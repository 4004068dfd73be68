"""Streamlit AppTest for each page, on a store filled by a tiny-model run (test data, never shown to users)."""
import os
import subprocess
import sys

import pytest
from streamlit.testing.v1 import AppTest

from lab import jobs, results, runner
from lab.experiment import validate
from tests.conftest import ROOT


def page(path: str, **query) -> AppTest:
    at = AppTest.from_file(str(ROOT / path), default_timeout=60)
    for k, v in query.items():
        at.query_params[k] = v
    return at.run()


def run_and_store(raw: dict) -> int:
    """Validate, run and save a spec as the worker would; returns the experiment id."""
    spec = validate(raw)
    exp_id, job_id = jobs.submit(spec)
    runner.save(exp_id, runner.execute(spec))
    with jobs.store.session() as s:
        jobs._finish(s, s.get(jobs.Job, job_id), "done", None, "done")
    return exp_id


@pytest.fixture
def stored_experiment(tiny_spec):
    return run_and_store(tiny_spec)


def all_text(at: AppTest) -> str:
    parts = [str(t.value) for t in at.table] + [m.value for m in at.markdown] + [c.value for c in at.caption]
    return "\n".join(parts)


def test_home_lists_recent_experiments(stored_experiment):
    at = page("app.py")
    assert not at.exception
    assert "tiny" in at.table[0].value.to_string()


def test_home_without_experiments_invites_the_quickstart():
    at = page("app.py")
    assert not at.exception and "run the quick start" in at.info[0].value


def test_llm_lab_shows_results_with_units_spread_and_outputs(stored_experiment):
    at = page("pages/1_LLM_Lab.py", experiment=str(stored_experiment))
    assert not at.exception and not at.error
    table = at.table[0].value
    assert list(table.index) == ["baseline", "bf16"]
    for column in ("Speedup [x]", "Tokens/s [tok/s]", "TTFT [s]", "TPOT [ms]", "Peak memory [MB]",
                   "Agreement [%]", "Perplexity [ppl]", "n"):
        assert column in table.columns
    assert "(" in table.loc["bf16", "Tokens/s [tok/s]"]  # median with its (p10–p90) spread
    assert any("Outputs side by side" in m.value for m in at.markdown)


def test_quickstart_button_queues_a_job_and_shows_progress():
    at = page("pages/1_LLM_Lab.py")
    at.button[0].click().run()  # "Run quickstart"
    assert not at.exception and not at.error
    exp_id = int(at.query_params["experiment"][0] if isinstance(at.query_params["experiment"], list)
                 else at.query_params["experiment"])
    job = jobs.job_for_experiment(exp_id)
    assert job.status == "queued"
    assert [v["name"] for v in results.load_experiment(exp_id).spec["variants"]] == ["baseline", "bf16"]


def test_bad_model_in_the_form_is_a_clear_error_and_nothing_is_stored():
    at = page("pages/1_LLM_Lab.py")
    next(s for s in at.selectbox if s.label == "Model").select("other (local folder or cached hub id)").run()
    next(t for t in at.text_input if t.label == "Model path or hub id").set_value("no-such-model").run()
    next(b for b in at.button if b.label == "Run experiment").click().run()
    assert not at.exception
    assert "unknown model 'no-such-model'" in at.error[0].value
    assert jobs.job_for_experiment(1) is None


def test_failed_job_shows_the_reason_not_a_bare_traceback(tiny_spec):
    exp_id, job_id = jobs.submit(validate(tiny_spec))
    with jobs.store.session() as s:
        jobs._finish(s, s.get(jobs.Job, job_id), "failed", "RuntimeError: boom\n\nTraceback (most recent...)",
                     "failed")
    at = page("pages/1_LLM_Lab.py", experiment=str(exp_id))
    assert not at.exception
    assert at.error[0].value == "The run failed: RuntimeError: boom"


def test_compare_table_diff_toggle_and_scatter(stored_experiment):
    at = page("pages/3_Compare.py")
    assert not at.exception
    full = at.table[0].value
    assert full.shape[1] == 2 and "Tokens/s [tok/s]" in full.index and "env.threads" in full.index
    at.toggle[0].set_value(True).run()
    diff = at.table[0].value
    assert "env.threads" not in diff.index and "variant" in diff.index and len(diff) < len(full)
    assert at.get("arrow_vega_lite_chart") or at.get("vega_lite_chart")


def test_compare_without_runs():
    at = page("pages/3_Compare.py")
    assert not at.exception and "No runs yet" in at.info[0].value


def test_pages_do_not_import_torch():
    """Every page renders in a fresh interpreter without torch being imported (pages must open fast)."""
    code = ("import sys\n"
            "from streamlit.testing.v1 import AppTest\n"
            "for p in ['app.py', 'pages/1_LLM_Lab.py', 'pages/2_Diffusion_Lab.py', 'pages/3_Compare.py']:\n"
            "    at = AppTest.from_file(p, default_timeout=60).run()\n"
            "    assert not at.exception, (p, at.exception)\n"
            "    assert 'torch' not in sys.modules, p + ' imported torch'\n")
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, env={**os.environ, "PYTHONPATH": str(ROOT)})


@pytest.fixture
def stored_kv_sweep(tiny_spec):
    return run_and_store({**tiny_spec, "workload": "needle", "needle_lengths": [300], "needle_depths": [0, 100],
                          "repeats": 1, "warmup": 0, "max_new_tokens": 4, "variants": [
                              {"name": f"snapkv@{r}", "techniques": [{"name": "snapkv", "compression_ratio": r,
                                                                     "window_size": 8}]} for r in (0.25, 0.5)]})


def test_llm_lab_kv_views_needle_table_curves_and_kept_tokens(stored_kv_sweep):
    at = page("pages/1_LLM_Lab.py", experiment=str(stored_kv_sweep))
    assert not at.exception and not at.error
    needles = next(t.value for t in at.table if "300 tok @ 0%" in t.value.columns)
    assert list(needles.index) == ["baseline", "snapkv@0.25", "snapkv@0.5"]
    assert at.get("arrow_vega_lite_chart") or at.get("vega_lite_chart")  # the accuracy-vs-compression curve
    html = "".join(h.proto.body for h in at.get("html"))
    assert "line-through" in html and "kept by" in html  # evicted tokens struck through
    at.slider(key="kv_kept_layer").set_value(1).run()
    assert not at.exception


def test_sweep_frame_starts_every_curve_at_the_baseline(stored_kv_sweep):
    from lab.kv_views import sweep_frame
    frame = sweep_frame(results.load_experiment(stored_kv_sweep))
    assert list(frame["compression_ratio"]) == [0.0, 0.25, 0.5] and set(frame["method"]) == {"snapkv"}
    assert frame["kv_compression"].iloc[2] > frame["kv_compression"].iloc[1] > 1.0


@pytest.fixture
def stored_speculative(tiny_spec):
    return run_and_store({**tiny_spec, "prompts": 2, "max_new_tokens": 16, "repeats": 1, "warmup": 0,
                          "batch_size": 2, "perplexity_tokens": 0, "variants": [
                              {"name": "lookup", "techniques": [{"name": "prompt_lookup", "min_ngram": 1}]},
                              {"name": "skip", "techniques": [{"name": "layer_skip", "draft_layers": 1}]}]})


def test_llm_lab_speculative_table_token_colours_and_timeline(stored_speculative):
    at = page("pages/1_LLM_Lab.py", experiment=str(stored_speculative))
    assert not at.exception and not at.error
    table = at.table[0].value
    for column in ("Acceptance [%]", "Tokens per target forward [tok]", "Draft time [ms]", "Verify time [ms]",
                   "Exact match [%]", "Batch tokens/s [tok/s]"):
        assert column in table.columns
    assert table.loc["lookup", "Exact match [%]"].startswith("100")  # greedy verification is exact
    html = "".join(h.proto.body for h in at.get("html"))
    assert "accepted draft" in html and "first token" in html
    assert at.get("arrow_vega_lite_chart") or at.get("vega_lite_chart")  # the per-round timeline
    at.selectbox(key="spec_run").set_value(at.selectbox(key="spec_run").options[1]).run()
    assert not at.exception


def test_token_spans_rebuild_the_output_with_rejected_drafts_apart(stored_speculative):
    from lab.spec_views import round_summary, runs_with_rounds, timeline_rows, token_spans
    exp = results.load_experiment(stored_speculative)
    for run in runs_with_rounds(exp):
        for out in run.outputs:
            spans = token_spans(out.extra, len(out.token_ids))
            kept = [text for kind, text in spans if kind != "rejected"]
            assert kept == out.extra["token_texts"]
            summary = round_summary(out.extra)
            assert sum(kind == "accepted" for kind, _ in spans) <= summary["accepted"]
            rows = timeline_rows(out.extra)
            assert all(r["end"] >= r["start"] >= 0 for r in rows) and len(rows) == 1 + 2 * summary["rounds"]
