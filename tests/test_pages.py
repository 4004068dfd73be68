"""Streamlit AppTest for each page, on a store filled by a tiny-model run (test data, never shown to users)."""
import os
import subprocess
import sys

import pytest
from streamlit.testing.v1 import AppTest

from lab import jobs
from lab.bench import record
from lab.bench import run as bench_run
from lab.bench.validate import load_toml, load_toml_specs, validate
from lab.views import forms, results
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
    record.save(exp_id, bench_run.execute(spec))
    finish_queued_job(job_id, "done", None, "done")
    return exp_id


def finish_queued_job(job_id: int, status: str, error: str | None, message: str) -> None:
    """Record a queued job's outcome as a worker would (compare-and-set on its status)."""
    assert jobs._finish_if(job_id, "queued", status, error, message)


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
                   "Agreement [%]", "Perplexity [ppl]", "Decode speedup [x]", "Prefill speedup [x]",
                   "Answer similarity [%]"):
        assert column in table.columns
    assert "(" in table.loc["bf16", "Tokens/s [tok/s]"]  # median with its (p10–p90) spread
    assert table.loc["bf16", "Tokens/s [tok/s]"].endswith("n=4")  # each cell its own n
    assert table.loc["bf16", "Peak memory [MB]"].endswith("n=1")
    assert any("Outputs side by side" in m.value for m in at.markdown)
    assert not at.warning  # measured on a quiet machine: no busy flag


def test_llm_lab_flags_an_experiment_measured_on_a_busy_machine(stored_experiment):
    from lab import store
    with store.session() as s:
        for run in s.get(store.Experiment, stored_experiment).runs:
            run.environment = {**run.environment, "other_cpu_share": 0.8, "cores": 2}
    at = page("pages/1_LLM_Lab.py", experiment=str(stored_experiment))
    assert not at.exception
    assert any("busy machine" in w.value and "80%" in w.value for w in at.warning)


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
    finish_queued_job(job_id, "failed", "RuntimeError: boom\n\nTraceback (most recent...)", "failed")
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
            "import glob\n"
            # pages/0_Home.py runs as app.py's default page (its page links resolve against app.py)
            "for p in ['app.py', *sorted(set(glob.glob('pages/*.py')) - {'pages/0_Home.py'})]:\n"
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
    from lab.views.kv_cache import sweep_frame
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
    from lab.views.speculative import round_summary, runs_with_rounds, timeline_rows, token_spans
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


# --- the experiment form loads the whole preset chosen (issue item 14) ----------------------------------------

def expected_spec(kind: str, preset: str) -> dict:
    """The spec a preset's file gives, validated as `python -m lab run` would (one per run for [[runs]])."""
    path, index = forms.preset_origins(kind)[preset]
    return load_toml_specs(path)[index].to_dict()


def experiment_in_url(at: AppTest) -> int:
    value = at.query_params["experiment"]
    return int(value[0] if isinstance(value, list) else value)


def assert_same_spec(stored: dict, expected: dict) -> None:
    """Field by field, nothing ignored: both went through validate(), so defaults are filled alike and there is
    no derived field to leave out (the baseline a spec without one gets is added by validate on both sides)."""
    assert sorted(stored) == sorted(expected)
    for field in expected:
        if field == "variants":
            assert [v["name"] for v in stored[field]] == [v["name"] for v in expected[field]]
            for got, want in zip(stored[field], expected[field]):
                assert got == want, f"variant {want['name']!r}"
        else:
            assert stored[field] == expected[field], f"field {field!r}"


def pick_preset_then_submit(at: AppTest, kind: str, first: str, second: str) -> int:
    selectbox = f"{kind}_preset"
    at.selectbox(key=selectbox).set_value(first).run()
    assert not at.exception and not at.error
    at.selectbox(key=selectbox).set_value(second).run()
    assert not at.exception and not at.error
    next(b for b in at.button if b.label == "Run experiment").click().run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    return experiment_in_url(at)


def test_llm_form_after_the_quickstart_runs_kv_quick_as_its_file_says():
    """The reported case: quick start run, the form showing (and edited on) the quickstart preset, then kv_quick
    chosen: the experiment stored must be kv_quick's, all of it (3 x 32 x 1, perplexity_window 512,
    streaming_llm@0.5 in the first variant slot, no bf16)."""
    at = page("pages/1_LLM_Lab.py")
    next(b for b in at.button if b.label == "Run quickstart").click().run()
    quick_id = experiment_in_url(at)
    at.selectbox(key="llm_preset").set_value("quickstart").run()
    # edit the quickstart form too: its widgets must not leak into the next preset either
    next(n for n in at.number_input if n.label == "prompts").set_value(2).run()
    next(t for t in at.text_input if t.label == "Variant name").set_value("my bf16").run()
    exp_id = pick_preset_then_submit(at, "llm", "quickstart", "kv_quick")
    assert exp_id != quick_id
    stored = results.load_experiment(exp_id).spec
    assert_same_spec(stored, load_toml(ROOT / "experiments" / "kv_quick.toml").to_dict())
    assert [stored[k] for k in ("prompts", "max_new_tokens", "repeats", "perplexity_window")] == [3, 32, 1, 512]
    assert [v["name"] for v in stored["variants"]][:2] == ["baseline", "streaming_llm@0.5"]


@pytest.mark.parametrize("preset", list(forms.presets("llm")))
def test_llm_form_submits_every_preset_whole_after_another_one(preset):
    first = "kv_quick" if preset == "quickstart" else "quickstart"
    exp_id = pick_preset_then_submit(page("pages/1_LLM_Lab.py"), "llm", first, preset)
    assert_same_spec(results.load_experiment(exp_id).spec, expected_spec("llm", preset))


@pytest.mark.parametrize("preset", list(forms.presets("diffusion")))
def test_diffusion_form_submits_every_preset_whole_after_another_one(preset):
    first = "bench_pab_unet" if preset == "diffusion_quickstart" else "diffusion_quickstart"
    exp_id = pick_preset_then_submit(page("pages/2_Diffusion_Lab.py"), "diffusion", first, preset)
    assert_same_spec(results.load_experiment(exp_id).spec, expected_spec("diffusion", preset))


@pytest.fixture
def stored_quantization(tiny_spec, data_in_tmp):
    return run_and_store({**tiny_spec, "repeats": 1, "warmup": 0, "max_new_tokens": 4, "variants": [
        {"name": "sq", "techniques": [{"name": "smoothquant", "alpha": 0.5, "float_layers": 2}]},
        {"name": "budget small", "techniques": [{"name": "weight_budget", "budget_mb": 0.1, "group_size": 32}]},
        {"name": "budget large", "techniques": [{"name": "weight_budget", "budget_mb": 0.3, "group_size": 32}]}]})


def test_llm_lab_quantization_views_outliers_errors_bits_and_budget_curve(stored_quantization):
    from lab.views import quantization as quant
    exp = results.load_experiment(stored_quantization)
    curve = quant.budget_curve(exp)
    assert list(curve["variant"])[:2] == ["budget small", "budget large"]  # sorted by weights held
    assert curve["weight_mb"].iloc[0] < curve["weight_mb"].iloc[1] and curve["perplexity"].notna().all()
    sq = next(r for r in exp.runs if r.variant == "sq")
    assert {r["bits"] for r in quant.layer_rows(sq)} == {8, 32}
    rows = results.summary_rows(exp)
    assert "Calibration [s]" in rows[1] and "Calibration [s]" not in rows[0]
    assert "calibrated and stored" in sq.environment["calibration"] or "reused" in sq.environment["calibration"]
    at = page("pages/1_LLM_Lab.py", experiment=str(stored_quantization))
    assert not at.exception and not at.error
    assert "Quantization" in all_text(at) and "after smoothing" not in all_text(at)  # chart data, not text
    assert len(at.get("arrow_vega_lite_chart") or at.get("vega_lite_chart")) >= 3  # curve, outliers, heatmaps
    at.selectbox(key="quant_layers_run").set_value(at.selectbox(key="quant_layers_run").options[1]).run()
    assert not at.exception


def test_llm_lab_draws_the_mask_of_a_sparse_pattern(tiny_spec, data_in_tmp):
    from lab.views import sparse_attention as sparse
    exp_id = run_and_store({**tiny_spec, "repeats": 1, "warmup": 0, "max_new_tokens": 4, "variants": [
        {"name": "window 8", "techniques": [{"name": "sink_window", "n_sink": 2, "window": 8,
                                              "kernel": "sdpa_mask"}]}]})
    exp = results.load_experiment(exp_id)
    window = next(r for r in exp.runs if r.variant == "window 8")
    frame = sparse.mask_frame(window, 128, cells=16)  # blocks of 8 tokens
    diagonal = frame[frame["query"] == frame["key"]]["kept"]
    assert (diagonal == 1).all()  # a block on the diagonal lies inside the window
    far = frame[(frame["query"] == 120) & (frame["key"] == 64)]["kept"].iloc[0]
    assert far == 0  # 56+ tokens back, past the window and not a sink
    assert frame[(frame["query"] == 120) & (frame["key"] == 0)]["kept"].iloc[0] == pytest.approx(2 / 8)  # sinks
    row = results.summary_rows(exp)[1]
    assert "Computed share [%]" in row and "Kept share [%]" in row
    metrics = {r.variant: {m.name: m.value for m in r.metrics} for r in exp.runs}
    share = metrics["baseline"]["attention_share"]
    assert 0 < share < 100 and metrics["window 8"]["attention_share"] == share  # measured once, on the baseline
    assert metrics["baseline"]["amdahl_ceiling"] == 1.0  # dense: nothing to skip
    # SDPA with the pattern as a mask computes every pair, however few the pattern keeps: its ceiling is 1, not
    # the bound of the kept pairs (a flex row's ceiling above 1: tests/test_sparse_computed.py)
    assert metrics["window 8"]["kept_share"] < 100 and metrics["window 8"]["attended_share"] == 100.0
    assert metrics["window 8"]["amdahl_ceiling"] == 1.0
    at = page("pages/1_LLM_Lab.py", experiment=str(exp_id))
    assert not at.exception and not at.error
    assert "Sparse attention" in all_text(at)
    assert len(at.get("arrow_vega_lite_chart") or at.get("vega_lite_chart")) >= 2  # the mask beside dense attention
    at.selectbox(key="sparse_head").set_value(3).run()
    assert not at.exception


def test_the_mask_of_a_layer_and_head_sits_beside_the_dense_attention_of_the_same_text(tiny_spec, data_in_tmp):
    import numpy as np

    from lab.views import sparse_attention as sparse
    exp_id = run_and_store({**tiny_spec, "repeats": 1, "warmup": 0, "max_new_tokens": 2, "variants": [
        {"name": "window 8", "techniques": [{"name": "sink_window", "n_sink": 2, "window": 8,
                                              "kernel": "sdpa_mask"}]},
        {"name": "top-k", "techniques": [{"name": "block_topk", "top_k": 0, "block_size": 64}]}]})
    exp = results.load_experiment(exp_id)
    window = next(r for r in exp.runs if r.variant == "window 8")
    assert sparse.map_choices(exp, window) == ([0, 1], 4)  # the tiny Llama: 2 layers, 4 query heads
    frame = sparse.maps_frame(exp, window, 1, 3)
    length = sparse.recorded_maps(window)["length"]
    assert frame.groupby("query")["dense"].sum().to_numpy() == pytest.approx(np.ones(min(64, length)), abs=1e-2)
    by_knobs = sparse.mask_frame(window, length, cells=64)  # the static pattern from its knobs, same cells
    assert frame["kept"].to_numpy() == pytest.approx(by_knobs["kept"].to_numpy(), abs=1e-3, nan_ok=True)
    top_k = next(r for r in exp.runs if r.variant == "top-k")
    assert sparse.map_choices(exp, top_k) == ([0, 1], 4)
