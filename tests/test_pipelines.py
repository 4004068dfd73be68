"""Diffusers pipelines the user points the lab at, on tiny randomly initialised Flux, PixArt, Stable
Diffusion and SD3 pipelines saved to folders (test data only; tests/tiny_pipelines.py): the spec accepts a folder
with a model_index.json, every caching technique that fits the denoiser computes fewer blocks than the
baseline through the pipeline's own loop, its 'off' setting reproduces the baseline bit for bit, and a whole
experiment runs, stores images and scores them."""
from __future__ import annotations

import types

import pytest
import torch
from test_diffusion import OFF, SKIPPING, denoiser_techniques
from tiny_pipelines import save_tiny_pipeline

from lab.bench.validate import validate
from lab.diffusion.variant import DiffusionVariant, image_batches
from lab.errors import SpecError
from lab.techniques import build

STEPS = 8
KINDS = ("flux", "pixart", "sd", "sd3")


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("pipelines")
    return {kind: str(save_tiny_pipeline(kind, root / kind)) for kind in KINDS}


@pytest.fixture(scope="module")
def loaded(folders):
    from lab.diffusion.pipelines import load_pipeline
    return {kind: load_pipeline(folder, "cpu") for kind, folder in folders.items()}


@pytest.fixture(autouse=True)
def isolated_data(tmp_path, monkeypatch):
    monkeypatch.setenv("LAB_DATA_DIR", str(tmp_path / "data"))  # MagCache calibrations land here


def spec_for(folder: str, **fields) -> dict:
    return validate({"model": folder, "steps": STEPS, "guidance": 4.0, "image_size": 32, "prompts": 2,
                     "batch_size": 2, **fields})


def generate(pipeline, techniques: list[dict], **fields):
    spec = spec_for(pipeline.name, **fields)
    variant = DiffusionVariant(spec, pipeline, build(techniques, model_kind="diffusion"))
    variant.prepare()
    result, per_step, computed = variant.generate(image_batches(spec)[0], seed=5, device="cpu")
    return result.images, per_step, computed


DENOISERS = {"flux": ("dit", "FluxTransformer2DModel"), "pixart": ("dit", "PixArtTransformer2DModel"),
             "sd": ("unet", "UNet2DConditionModel"), "sd3": ("dit", "SD3Transformer2DModel")}


def fitting(kind: str, supported: bool = True) -> list[tuple[str, str]]:
    """(kind, technique) for each technique declared for the pipeline's denoiser architecture, and (or, with
    supported=False, only) not declared unsupported on its class."""
    architecture, denoiser_class = DENOISERS[kind]
    return [(kind, name) for name, cls in sorted(denoiser_techniques().items())
            if (not cls.denoisers or architecture in cls.denoisers)
            and (denoiser_class not in cls.unsupported_denoisers) == supported]


MATRIX = [case for kind in KINDS for case in fitting(kind)]
REFUSED = [case for kind in KINDS for case in fitting(kind, supported=False)]


def test_the_denoiser_classes_the_matrix_assumes_are_the_pipelines(folders):
    from lab.diffusion.pipelines import pipeline_info
    for kind, folder in folders.items():
        info = pipeline_info(folder)
        assert (info.architecture, info.denoiser_class) == DENOISERS[kind]


@pytest.mark.parametrize("kind,name", REFUSED)
def test_a_technique_declared_unsupported_on_a_denoiser_is_refused_before_the_run(folders, kind, name):
    with pytest.raises(SpecError, match=f"'{name}' does not work on {DENOISERS[kind][1]}"):
        spec_for(folders[kind], variants=[{"techniques": [{"name": name}]}])


def test_a_pipeline_folder_is_a_diffusion_model_with_its_own_workload_and_scheduler(folders):
    spec = spec_for(folders["flux"])
    assert (spec.workload, spec.sampler, spec.pipeline) == ("image_prompts", "pipeline", True)
    with pytest.raises(SpecError, match="'digits' does not fit the diffusers pipeline.*allowed: image_prompts"):
        spec_for(folders["flux"], workload="digits")
    with pytest.raises(SpecError, match=r"'ddim' does not fit.*own scheduler\); allowed: pipeline"):
        spec_for(folders["flux"], sampler="ddim")
    with pytest.raises(SpecError, match="'pipeline' does not fit model 'digits-dit'; allowed: ddim, dpmsolver"):
        validate({"model": "digits-dit", "sampler": "pipeline"}, check_model_exists=False)
    with pytest.raises(SpecError, match="cannot replace the scheduler of a diffusers pipeline; allowed: same"):
        spec_for(folders["pixart"], variants=[{"techniques": [{"name": "step_reduction", "steps": 4,
                                                               "sampler": "ddim"}]}])
    with pytest.raises(SpecError, match="first_block_cache' works on dit denoisers; model .* is a unet"):
        spec_for(folders["sd"], variants=[{"techniques": [{"name": "first_block_cache"}]}])
    with pytest.raises(SpecError, match="prompts': 13 is more than the image_prompts workload has"):
        spec_for(folders["sd"], prompts=13)


@pytest.mark.parametrize("kind,name", MATRIX)
def test_every_fitting_cache_computes_fewer_blocks_through_the_pipeline(loaded, kind, name):
    _, base_steps, base = generate(loaded[kind], [])
    assert base == pytest.approx(1.0) and len(base_steps) == STEPS
    images, per_step, computed = generate(loaded[kind], [{"name": name, **SKIPPING.get(name, {})}])
    assert computed < 0.95, f"{name} on {kind} computed {computed:.0%} of the blocks"
    assert images.shape == (2, 3, 32, 32)


@pytest.mark.parametrize("kind,name", [case for case in MATRIX if case[1] in OFF])
def test_caching_switched_off_equals_the_pipeline_baseline_bit_for_bit(loaded, kind, name):
    base, _, _ = generate(loaded[kind], [])
    images, _, computed = generate(loaded[kind], [{"name": name, **OFF[name]}])
    assert computed == pytest.approx(1.0)
    assert torch.equal(images, base)


def test_a_pipeline_experiment_runs_stores_thumbnails_and_draws_the_comparison(folders, isolated_db):
    from lab import jobs
    from lab.jobs import worker
    from lab.views import diffusion as diffusion_views
    from lab.views import results

    variants = [{"name": "fbc", "techniques": [{"name": "first_block_cache", "threshold": 2.0}]},
                {"name": "bf16", "techniques": [{"name": "weight_dtype", "dtype": "bf16"}]},
                {"name": "4 steps", "techniques": [{"name": "step_reduction", "steps": 4}]}]
    spec = spec_for(folders["pixart"], repeats=2, warmup=0, prompts=3, variants=variants)
    exp_id, job_id = jobs.submit(spec)
    worker.run_job(worker.claim(job_id, worker_id=None))  # what a worker does: claim, run, score, store at once
    exp = results.load_experiment(exp_id)
    m = {run.variant: results.metric_values(run) for run in exp.runs}
    assert next(x for x in exp.runs[0].metrics if x.name == "s_per_image").n == 2 * 2  # 2 batches, 2 repeats
    assert m["baseline"]["blocks_computed"] == 100.0 and m["fbc"]["blocks_computed"] < 95
    assert m["4 steps"]["blocks_computed"] == 50.0  # 4 of the baseline's 8 steps
    assert m["bf16"]["weight_mb"] == pytest.approx(m["baseline"]["weight_mb"] / 2)
    assert m["baseline"]["image_exact"] == 100.0 and m["baseline"].get("class_accuracy") is None
    assert m["4 steps"]["image_exact"] == 0.0 and m["4 steps"]["ssim"] < 1  # fewer steps change every image
    assert [o.item_key for o in exp.runs[1].outputs] == ["lighthouse", "cat-window", "city-rain"]
    rows = diffusion_views.comparison_rows(exp, "fbc")
    assert rows["baseline"].shape == (96, 3 * 96 + 2 * 2, 3)  # 32 px thumbnails zoomed 3x, RGB
    assert rows["captions"] == ["lighthouse", "cat-window", "city-rain"]
    assert rows["difference"].min() < 255  # the cache changed something visible
    assert {r["variant"] for r in diffusion_views.step_strip(exp)} == {"baseline", "fbc", "bf16", "4 steps"}
    from lab.views.compare import comparison_table
    table = comparison_table([run.id for run in exp.runs])
    assert table.loc["image_size"].tolist() == ["32"] * 4 and "classes" not in table.index
    at = page("pages/2_Diffusion_Lab.py", experiment=str(exp_id))
    assert not at.exception
    assert len(at.get("image")) == 3 * 3  # baseline, variant, difference per variant
    assert "the prompts' keys" in " ".join(m.value for m in at.markdown)


def test_a_pipeline_runs_from_the_cli(folders, tmp_path):
    import os
    import subprocess
    import sys

    from tests.conftest import ROOT
    spec = tmp_path / "pipeline.toml"
    spec.write_text(f'name = "flux tiny"\nmodel = "{folders["flux"]}"\nsteps = 6\nimage_size = 32\nprompts = 2\n'
                    'repeats = 1\nwarmup = 0\nthreads = 2\n[[variants]]\ntechniques = [{ name = "taylorseer", '
                    'interval = 2, warmup_steps = 1 }]\n')
    env = {**os.environ, "PYTHONPATH": str(ROOT), "LAB_DATA_DIR": str(tmp_path / "data"), "LAB_WORKER_AUTOSTART": "1"}
    out = subprocess.run([sys.executable, "-m", "lab", "run", str(spec), "--wait"], cwd=ROOT, capture_output=True,
                         text=True, timeout=600, env=env)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "taylorseer" in out.stdout and "Blocks computed [%]" in out.stdout


def page(path: str, **query):
    from streamlit.testing.v1 import AppTest

    from tests.conftest import ROOT
    at = AppTest.from_file(str(ROOT / path), default_timeout=60)
    for k, v in query.items():
        at.query_params[k] = v
    return at.run()


def test_the_diffusion_page_queues_a_pipeline_with_the_techniques_that_fit_its_denoiser(folders, isolated_db):
    from lab import jobs
    from lab.views import results
    at = page("pages/2_Diffusion_Lab.py")
    next(s for s in at.selectbox if s.label == "Model").select("a diffusers pipeline folder…").run()
    next(t for t in at.text_input if t.label == "Pipeline folder").input(folders["sd"]).run()
    options = next(m for m in at.multiselect if m.label == "Techniques").options
    assert any(o.startswith("DeepCache") for o in options) and not any(o.startswith("TaylorSeer") for o in options)
    next(n for n in at.number_input if n.label == "Variants besides the baseline").set_value(1).run()
    next(m for m in at.multiselect if m.label == "Techniques").set_value(["deep_cache"]).run()  # only this technique
    next(b for b in at.button if b.label == "Run experiment").click().run()
    assert not at.exception and not at.error
    exp_id = int(at.query_params["experiment"][0])
    spec = results.load_experiment(exp_id).spec
    assert (spec["model"], spec["workload"], spec["sampler"]) == (folders["sd"], "image_prompts", "pipeline")
    assert spec["variants"][1]["techniques"][0]["name"] == "deep_cache"
    assert jobs.job_for_experiment(exp_id).status == "queued"


def test_the_diffusion_page_names_what_is_wrong_with_a_folder(tmp_path, isolated_db):
    (tmp_path / "model_index.json").write_text('{"_class_name": "SomePipeline", "vae": ["diffusers", "AutoencoderKL"]}')
    at = page("pages/2_Diffusion_Lab.py")
    next(s for s in at.selectbox if s.label == "Model").select("a diffusers pipeline folder…").run()
    next(t for t in at.text_input if t.label == "Pipeline folder").input(str(tmp_path)).run()
    assert not at.exception
    assert "has no denoiser component; the lab hooks one of: transformer, unet" in at.error[0].value


def test_an_image_to_image_pipeline_is_refused_with_the_reason(folders):
    from diffusers import StableDiffusionImg2ImgPipeline

    from lab.diffusion.pipelines import check_text_to_image
    check_text_to_image(types.SimpleNamespace(__call__=lambda prompt=None, steps=50: None))
    with pytest.raises(SpecError, match="StableDiffusionImg2ImgPipeline needs image besides a prompt; the lab "
                                        "runs text-to-image pipelines"):
        check_text_to_image(StableDiffusionImg2ImgPipeline.__new__(StableDiffusionImg2ImgPipeline))


def test_mag_cache_calibrates_a_pipeline_on_a_prompt_it_never_scores(loaded, monkeypatch):
    """Before, the calibration ran on the spec's first prompts, the very images it was then scored on."""
    from lab.diffusion.variant import CALIBRATION_PROMPT
    from lab.prompts import image_prompts
    assert CALIBRATION_PROMPT not in [item.text for item in image_prompts()]
    spec = spec_for(loaded["flux"].name)
    variant = DiffusionVariant(spec, loaded["flux"], build([{"name": "mag_cache"}], model_kind="diffusion"))
    seen = []
    original = variant._pipeline_images
    monkeypatch.setattr(variant, "_pipeline_images", lambda prompts, *a, **k: seen.append(prompts) or
                        original(prompts, *a, **k))
    variant.prepare()
    assert seen == [[CALIBRATION_PROMPT]]


def test_mag_cache_calibration_is_keyed_by_the_weights_not_only_the_name(loaded):
    """A retrained checkpoint under the same name must not reuse the old calibration."""
    import copy

    import torch

    from lab.ops.calibration import weights_fingerprint
    spec = spec_for(loaded["flux"].name)
    variant = DiffusionVariant(spec, loaded["flux"], build([{"name": "mag_cache"}], model_kind="diffusion"))
    technique = variant.cache
    before = technique.calibration_path(variant.call)
    retrained = copy.deepcopy(variant.call.model)
    with torch.no_grad():
        next(retrained.parameters()).add_(0.01)
    assert weights_fingerprint(retrained) != weights_fingerprint(variant.call.model)
    variant.call.model = retrained
    assert technique.calibration_path(variant.call) != before
    assert technique.calibration_path(variant.call).name.startswith(before.name.split("-")[0])
