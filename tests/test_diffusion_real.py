"""End to end on the shipped digits models (real weights from data/models): the DiT draws digits a classifier
recognises, every caching method runs through the runner and computes fewer blocks, and the pages show it."""
from __future__ import annotations

import math

import pytest

from lab.views import results
from tests.test_pages import all_text, page, run_and_store

DIT_TECHNIQUES = [{"name": "block_cache", "interval": 2}, {"name": "first_block_cache", "threshold": 0.1},
                  {"name": "taylorseer"}, {"name": "mag_cache", "threshold": 0.3},
                  {"name": "faster_cache"}, {"name": "pyramid_attention_broadcast"},
                  {"name": "step_reduction", "steps": 25}]


@pytest.fixture(autouse=True)
def isolated_data(tmp_path, monkeypatch):
    monkeypatch.setenv("LAB_DATA_DIR", str(tmp_path / "data"))


@pytest.fixture(scope="module")
def dit_experiment(tmp_path_factory):
    import os

    from lab import store
    folder = tmp_path_factory.mktemp("dit-run")
    old = {k: os.environ.get(k) for k in ("LAB_DATABASE_URL", "LAB_DATA_DIR")}
    os.environ["LAB_DATABASE_URL"] = f"sqlite:///{folder / 'lab.db'}"
    os.environ["LAB_DATA_DIR"] = str(folder / "data")
    store.reset_engines()
    exp_id = run_and_store({"name": "dit all methods", "model": "digits-dit", "steps": 50, "guidance": 1.5,
                            "batch_size": 10, "repeats": 1, "warmup": 0, "threads": 2,
                            "variants": [{"techniques": [t]} for t in DIT_TECHNIQUES]})
    yield folder / "lab.db", exp_id
    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
    store.reset_engines()


def _use(db, monkeypatch):
    from lab import store
    monkeypatch.setenv("LAB_DATABASE_URL", f"sqlite:///{db}")
    store.reset_engines()


def test_shipped_dit_draws_digits_the_classifier_recognises(dit_experiment, monkeypatch):
    db, exp_id = dit_experiment
    _use(db, monkeypatch)
    exp = results.load_experiment(exp_id)
    metrics = {run.variant: results.metric_values(run) for run in exp.runs}
    assert metrics["baseline"]["class_accuracy"] is not None
    baseline_acc = sum(m.value for m in exp.runs[0].metrics if m.name == "class_accuracy")
    assert baseline_acc >= 90.0, f"baseline class accuracy {baseline_acc}"
    for run in exp.runs[1:]:
        m = metrics[run.variant]
        assert m["blocks_computed"] < 100.0, run.variant
        # every image differs from its baseline twin, so PSNR is finite and SSIM below 1 (identical: inf and 1)
        assert m["image_exact"] == 0.0 and math.isfinite(m["psnr_db"]) and m["ssim"] < 1, run.variant


def test_diffusion_page_shows_table_strip_and_image_grids(dit_experiment, monkeypatch):
    db, exp_id = dit_experiment
    _use(db, monkeypatch)
    at = page("pages/2_Diffusion_Lab.py", experiment=str(exp_id))
    assert not at.exception
    text = all_text(at)
    for label in ("Blocks computed [%]", "PSNR [dB]", "SSIM", "Class accuracy [%]", "Time per image [s]",
                  "Per step: computed or reused"):
        assert label in text
    assert len(at.get("image")) == 3 * (len(DIT_TECHNIQUES))  # baseline, variant, difference per variant
    assert len(at.get("vega_lite_chart")) == 5  # speedup, quality, memory, the Pareto front, the per-step strip


def _queued_spec(at):
    from lab import jobs
    value = at.query_params["experiment"]
    exp_id = int(value[0] if isinstance(value, list) else value)
    assert jobs.job_for_experiment(exp_id).status == "queued"
    return results.load_experiment(exp_id).spec


def test_diffusion_quickstart_button_queues_the_preset():
    at = page("pages/2_Diffusion_Lab.py")
    next(b for b in at.button if b.label == "Run diffusion quickstart").click().run()
    assert not at.exception and not at.error
    spec = _queued_spec(at)
    assert spec["model"] == "digits-dit" and spec["steps"] == 50 and len(spec["variants"]) == 4


def diffusion_technique_names():
    from lab.views import forms
    return sorted(forms.techniques_for("diffusion"))


@pytest.mark.parametrize("name", diffusion_technique_names())
def test_every_diffusion_technique_can_be_queued_from_the_page(name):
    from lab.views import forms
    model = "digits-dit" if name in forms.techniques_for("diffusion", "dit") else "digits-unet"
    at = page("pages/2_Diffusion_Lab.py")
    next(s for s in at.selectbox if s.label == "Model").select(model).run()
    next(n for n in at.number_input if n.label == "Variants besides the baseline").set_value(1).run()
    next(m for m in at.multiselect if m.label == "Techniques").set_value([name]).run()  # only this technique
    next(b for b in at.button if b.label == "Run experiment").click().run()
    assert not at.exception and not at.error
    spec = _queued_spec(at)
    assert spec["model"] == model and spec["variants"][1]["techniques"][0]["name"] == name


def test_no_digits_picked_is_a_clear_error_and_nothing_is_stored():
    from lab import jobs
    at = page("pages/2_Diffusion_Lab.py")
    next(m for m in at.multiselect if m.label == "Digits").set_value([]).run()
    next(b for b in at.button if b.label == "Run experiment").click().run()
    assert not at.exception
    assert "field 'classes': expected a non-empty list" in at.error[0].value
    assert jobs.job_for_experiment(1) is None


def test_llm_page_offers_no_diffusion_technique():
    at = page("pages/1_LLM_Lab.py")
    options = next(m for m in at.multiselect if m.label == "Techniques").options
    assert options and not any(o.endswith("(denoiser)") or o.startswith("Fewer sampler steps") for o in options)


def test_every_method_runs_from_the_cli(tmp_path):
    import os
    import subprocess
    import sys

    from tests.conftest import ROOT
    spec = tmp_path / "all_methods.toml"
    dit = "\n".join(f'[[runs.variants]]\ntechniques = [{{ name = "{t["name"]}" }}]' for t in DIT_TECHNIQUES
                    if t["name"] != "step_reduction")
    spec.write_text(
        'name = "all methods"\nclasses = [0, 7]\nsteps = 10\nbatch_size = 2\nrepeats = 1\nwarmup = 0\n'
        'threads = 2\n\n[[runs]]\nmodel = "digits-dit"\n' + dit + '\n[[runs.variants]]\ntechniques = '
        '[{ name = "step_reduction", steps = 5 }]\n\n[[runs]]\nmodel = "digits-unet"\n[[runs.variants]]\n'
        'techniques = [{ name = "deep_cache", interval = 2 }]\n')
    out = subprocess.run([sys.executable, "-m", "lab", "run", str(spec), "--wait"], cwd=ROOT, capture_output=True,
                         text=True, timeout=600, env={**os.environ, "PYTHONPATH": str(ROOT), "LAB_WORKER_AUTOSTART": "1"})
    assert out.returncode == 0, out.stderr[-2000:]
    for label in ("block_cache", "first_block_cache", "taylorseer", "mag_cache", "faster_cache",
                  "pyramid_attention_broadcast", "step_reduction", "deep_cache", "Blocks computed [%]",
                  "against fewer steps at equal compute"):
        assert label in out.stdout


def test_compare_page_puts_diffusion_runs_side_by_side(dit_experiment, monkeypatch):
    db, _ = dit_experiment
    _use(db, monkeypatch)
    at = page("pages/3_Compare.py")
    assert not at.exception
    table = at.table[0].value
    assert {"steps", "guidance", "PSNR [dB]", "Blocks computed [%]"} <= set(table.index)
    assert table.shape[1] == len(DIT_TECHNIQUES) + 1


def test_shipped_classifier_scores_real_digits_and_rejects_wrong_labels():
    import torch

    from lab.diffusion.data import load_digits_16
    from lab.diffusion.models import load_classifier
    classifier = load_classifier()
    x, y = load_digits_16("test")
    with torch.no_grad():
        predicted = classifier(x).argmax(-1)
    assert (predicted == y).float().mean() >= 0.99  # held-out real digits
    assert (predicted == (y + 1) % 10).float().mean() <= 0.02  # the metric falls when the class is wrong
