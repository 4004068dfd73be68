"""Diffusers pipelines the user points the lab at, on tiny randomly initialised Flux, PixArt and Stable
Diffusion pipelines saved to folders (test data only; tests/tiny_pipelines.py): the spec accepts a folder
with a model_index.json, every caching technique that fits the denoiser computes fewer blocks than the
baseline through the pipeline's own loop, its 'off' setting reproduces the baseline bit for bit, and a whole
experiment runs, stores images and scores them."""
from __future__ import annotations

import types

import pytest
import torch
from test_diffusion import OFF, SKIPPING, denoiser_techniques
from tiny_pipelines import save_tiny_pipeline

from lab.diffusion.runner import DiffusionVariant, image_batches
from lab.experiment import validate
from lab.techniques import SpecError, build

STEPS = 8
KINDS = ("flux", "pixart", "sd")


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
    result, per_step, computed, _mem = variant.generate(image_batches(spec)[0], seed=5, device="cpu")
    return result.images, per_step, computed


def fitting(kind: str) -> list[tuple[str, str]]:
    architecture = "unet" if kind == "sd" else "dit"
    return [(kind, name) for name, cls in sorted(denoiser_techniques().items())
            if not cls.denoisers or architecture in cls.denoisers]


MATRIX = [case for kind in KINDS for case in fitting(kind)]


def test_a_pipeline_folder_is_a_diffusion_model_with_its_own_workload_and_scheduler(folders):
    spec = spec_for(folders["flux"])
    assert (spec["workload"], spec["sampler"]) == ("image_prompts", "pipeline")
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
