"""Diffusion lab on tiny randomly initialised denoisers (test data only): every caching technique computes
fewer blocks than the baseline, its 'off' setting reproduces the baseline bit for bit, hooks leave no state
behind, and the sampler, metrics and spec checks behave."""
from __future__ import annotations

import math
import types

import pytest
import torch

from lab.diffusion.variant import DiffusionVariant
from lab.errors import SpecError
from lab.spec import Spec
from lab.techniques import all_techniques, build

STEPS = 12


def tiny_dit(seed: int = 0):
    from lab.diffusion.nets import CachedDiT
    torch.manual_seed(seed)
    model = CachedDiT(num_attention_heads=2, attention_head_dim=8, in_channels=1, out_channels=1, num_layers=3,
                      sample_size=16, patch_size=4, num_embeds_ada_norm=10, norm_num_groups=1)
    return model.eval().requires_grad_(False)


def tiny_unet(seed: int = 0):
    from diffusers import UNet2DModel
    torch.manual_seed(seed)
    model = UNet2DModel(sample_size=16, in_channels=1, out_channels=1, layers_per_block=1,
                        block_out_channels=(8, 16, 16), norm_num_groups=4,
                        down_block_types=("DownBlock2D", "DownBlock2D", "AttnDownBlock2D"),
                        up_block_types=("AttnUpBlock2D", "UpBlock2D", "UpBlock2D"), num_class_embeds=11)
    return model.eval().requires_grad_(False)


@pytest.fixture(scope="module")
def denoisers():
    return {"dit": tiny_dit(), "unet": tiny_unet()}


@pytest.fixture(autouse=True)
def isolated_data(tmp_path, monkeypatch):
    monkeypatch.setenv("LAB_DATA_DIR", str(tmp_path / "data"))  # MagCache calibrations land here


def generate(model, techniques: list[dict], steps: int = STEPS, guidance: float = 3.0, sampler: str = "ddim"):
    spec = Spec(steps=steps, guidance=guidance, sampler=sampler, model_kind="diffusion")
    loaded = types.SimpleNamespace(model=model, name="tiny", pipeline=None)
    variant = DiffusionVariant(spec, loaded, build(techniques, model_kind="diffusion"))
    variant.prepare()
    result, per_step, computed = variant.generate([0, 3, 7], seed=5, device="cpu")
    return result.images, per_step, computed


def denoiser_techniques():
    """The caches of the denoiser slot (they skip blocks, which these matrices check); DiT sparse attention
    computes every block and is tested in tests/test_dit_sparse_attention.py."""
    return {n: c for n, c in all_techniques().items() if c.slot == "denoiser" and c.family == "diffusion_cache"}


def cases(names) -> list[tuple[str, str]]:
    """(technique, architecture) for every denoiser architecture each technique declares."""
    techniques = all_techniques()
    return [(n, a) for n in sorted(names) for a in (techniques[n].denoisers or ("dit", "unet"))]


# Knobs that make each technique skip within 12 steps of a random model; a new technique is tested with
# its defaults unless it needs an entry here.
SKIPPING = {"first_block_cache": {"threshold": 2.0}, "mag_cache": {"threshold": 2.0, "retention_ratio": 0.1},
            "taylorseer": {"interval": 3, "warmup_steps": 2}}
# The setting at which a technique never reuses anything, so it must reproduce the baseline exactly.
OFF = {"first_block_cache": {"threshold": 0.0}, "mag_cache": {"threshold": 0.0}, "taylorseer": {"interval": 1},
       "block_cache": {"interval": 1}, "deep_cache": {"interval": 1},
       "pyramid_attention_broadcast": {"t_low": 0, "t_high": 1}}


@pytest.mark.parametrize("name,architecture", cases(denoiser_techniques()))
def test_every_cache_computes_fewer_blocks_than_the_baseline(name, architecture, denoisers):
    model = denoisers[architecture]
    base_images, base_steps, base_computed = generate(model, [])
    images, per_step, computed = generate(model, [{"name": name, **SKIPPING.get(name, {})}])
    assert base_computed == pytest.approx(1.0) and all(s == pytest.approx(1.0) for s in base_steps)
    assert computed < 0.95, f"{name} computed {computed:.0%} of the blocks"
    assert any(s < 1 for s in per_step) and per_step[0] == pytest.approx(1.0)  # the first step always computes
    assert not torch.equal(images, base_images)  # reuse changes the result a little
    # a cached generation is a function of its inputs: nothing it stored carries over into the next one (a hook
    # state left over changes what is reused, and NaN never equals itself)
    again, per_step_again, _ = generate(model, [{"name": name, **SKIPPING.get(name, {})}])
    assert torch.equal(again, images) and per_step_again == per_step


@pytest.mark.parametrize("name,architecture", cases(denoiser_techniques()))
def test_after_a_cached_generation_the_plain_model_is_the_baseline_bit_for_bit(name, architecture, denoisers):
    model = denoisers[architecture]
    base_images, _, _ = generate(model, [])
    generate(model, [{"name": name, **SKIPPING.get(name, {})}])
    again, per_step, computed = generate(model, [])
    assert torch.equal(again, base_images) and computed == pytest.approx(1.0)


@pytest.mark.parametrize("name,architecture", cases(OFF))
def test_caching_switched_off_equals_the_baseline_bit_for_bit(name, architecture, denoisers):
    model = denoisers[architecture]
    base_images, _, _ = generate(model, [])
    images, _, computed = generate(model, [{"name": name, **OFF[name]}])
    assert computed == pytest.approx(1.0)
    assert torch.equal(images, base_images)


def test_every_cache_but_one_has_an_off_setting_in_the_matrix():
    # FasterCache cannot be told never to skip (its range always holds t=0); the test above covers it instead
    assert set(denoiser_techniques()) - set(OFF) == {"faster_cache"}


def test_faster_cache_skips_the_unconditional_half_only_with_guidance(denoisers):
    _, per_step, _ = generate(denoisers["dit"], [{"name": "faster_cache"}])
    assert min(per_step) == pytest.approx(0.25)  # half the rows and only the MLPs of those: 0.5 * 0.5
    _, per_step_nocfg, computed = generate(denoisers["dit"], [{"name": "faster_cache"}], guidance=1.0)
    assert min(per_step_nocfg) == pytest.approx(0.5) and computed < 1  # attention skipped, whole batch kept


def test_step_reduction_counts_as_less_work_and_must_reduce():
    model = tiny_dit()
    _, per_step, computed = generate(model, [{"name": "step_reduction", "steps": 3}])
    assert len(per_step) == 3 and computed == pytest.approx(3 / STEPS)
    from lab.bench.validate import validate
    with pytest.raises(SpecError, match="not fewer than the baseline's 50"):
        validate({"model": "digits-dit", "steps": 50,
                  "variants": [{"techniques": [{"name": "step_reduction", "steps": 50}]}]}, check_model_exists=False)


def test_dpm_solver_runs_and_differs_from_ddim(denoisers):
    ddim, _, _ = generate(denoisers["dit"], [], sampler="ddim")
    dpm, _, _ = generate(denoisers["dit"], [], sampler="dpmsolver++")
    assert dpm.shape == ddim.shape and not torch.equal(dpm, ddim)


class ExactDenoiser(torch.nn.Module):
    """The exact noise prediction when the data of each class is one image: the forward process gives
    x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps, so eps = (x_t - sqrt(abar_t) x0[label]) / sqrt(1 - abar_t), with
    abar_t the cumulative product of 1 - beta over the training schedule (linear betas 1e-4 .. 0.02, 1000 steps)."""

    def __init__(self, targets: torch.Tensor):
        super().__init__()
        self.targets = targets  # [classes + 1, 1, 16, 16]: one image per label, the null class included
        self.anchor = torch.nn.Parameter(torch.zeros(()))  # the sampler reads device and dtype from a parameter
        betas = torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64)
        self.abar = torch.cumprod(1 - betas, dim=0)

    def forward(self, hidden_states, timestep, class_labels):
        abar = self.abar[timestep.long()].view(-1, 1, 1, 1)
        x0 = self.targets[class_labels].double()
        eps = (hidden_states.double() - abar.sqrt() * x0) / (1 - abar).sqrt()
        return types.SimpleNamespace(sample=eps.float())


@pytest.mark.parametrize("sampler", ["ddim", "dpmsolver++"])
def test_both_samplers_land_on_the_image_an_exact_denoiser_knows(sampler):
    """DDIM and DPM-Solver++ integrate the same probability-flow ODE. When the denoiser predicts the noise exactly
    for data that is one image x0 per label, every step's predicted x0 is that image, so from any noise and in any
    number of steps both samplers end on it. Guidance mixes the predictions, eps_u + g (eps_c - eps_u); eps is
    affine in x0 with the same coefficients for both halves, so the guided run ends on x0_u + g (x0_c - x0_u)."""
    from lab.diffusion.nets import NULL_CLASS
    from lab.diffusion.sampler import DenoiserCall, sample
    torch.manual_seed(3)
    # in [-0.3, 0.3], so that even the guided images (g = 2) stay inside [-1, 1], where DDIM's clipping and
    # DPM-Solver's thresholding leave x0 alone
    targets = torch.rand(NULL_CLASS + 1, 1, 16, 16) * 0.6 - 0.3
    model = ExactDenoiser(targets)
    labels = torch.tensor([0, 3, 7])
    for steps in (STEPS, 3):
        plain = sample(DenoiserCall(model, steps, 1.0, sampler), labels, seed=5).images
        assert torch.allclose(plain, targets[labels], rtol=0, atol=1e-4), (steps, (plain - targets[labels]).abs().max())
    guided = sample(DenoiserCall(model, STEPS, 2.0, sampler), labels, seed=6).images
    expected = targets[NULL_CLASS] + 2.0 * (targets[labels] - targets[NULL_CLASS])
    assert torch.allclose(guided, expected, rtol=0, atol=1e-4), (guided - expected).abs().max()


def test_mag_cache_calibrates_once_then_reuses_the_stored_ratios(denoisers):
    from lab.diffusion.sampler import DenoiserCall
    technique = build([{"name": "mag_cache"}], model_kind="diffusion")[0]
    first = DenoiserCall(denoisers["dit"], STEPS, 3.0, "ddim", model_name="tiny")
    technique.prepare_denoiser(first)
    assert first.info["calibration"].startswith("calibrated")
    assert len(first.info["mag_ratios"]) == STEPS and first.info["mag_ratios"][0] == 1.0
    second = DenoiserCall(denoisers["dit"], STEPS, 3.0, "ddim", model_name="tiny")
    technique.prepare_denoiser(second)
    assert second.info["calibration"].startswith("reused") and second.info["mag_ratios"] == first.info["mag_ratios"]


def test_deep_cache_refuses_a_branch_deeper_than_the_unet(denoisers):
    with pytest.raises(SpecError, match="branch 5 is too deep.*allowed: 0 to 1"):
        generate(denoisers["unet"], [{"name": "deep_cache", "branch": 5}])


def test_spec_checks_name_the_model_the_denoiser_and_the_workload():
    from lab.bench.validate import validate
    with pytest.raises(SpecError, match="'deep_cache' works on unet denoisers; model 'digits-dit' is a dit"):
        validate({"model": "digits-dit", "variants": [{"techniques": [{"name": "deep_cache"}]}]},
                 check_model_exists=False)
    with pytest.raises(SpecError, match="applies to diffusion models, not to a llm model"):
        validate({"variants": [{"techniques": [{"name": "block_cache"}]}]}, check_model_exists=False)
    with pytest.raises(SpecError, match="'chat' does not fit the diffusion model 'digits-dit'; allowed: digits"):
        validate({"model": "digits-dit", "workload": "chat"}, check_model_exists=False)
    with pytest.raises(SpecError, match="field 'sampler'.*allowed: ddim, dpmsolver\\+\\+"):
        validate({"model": "digits-dit", "sampler": "euler"}, check_model_exists=False)
    spec = validate({"model": "digits-dit"}, check_model_exists=False)
    assert spec.workload == "digits"


def test_ssim_matches_scikit_image_and_psnr_is_infinite_for_identical_images():
    from lab.diffusion.quality import psnr, ssim
    torch.manual_seed(1)
    a = torch.rand(1, 16, 16) * 2 - 1
    b = (a + 0.3 * torch.randn_like(a)).clamp(-1, 1)
    # skimage.metrics.structural_similarity(a[0], b[0], data_range=2) on these arrays (scikit-image 0.26)
    assert ssim(a, b) == pytest.approx(0.8092455148722663, abs=1e-12)
    assert ssim(a, a) == 1.0 and psnr(a, a) == float("inf")
    assert psnr(a, b) < psnr(a, (a + 0.01 * (b - a)))


def test_psnr_is_the_closed_form_for_the_data_range_of_two():
    """PSNR = 10 log10(range^2 / MSE) with range 2 for images in [-1, 1]; the values below are exact in binary."""
    from lab.diffusion.quality import psnr
    a = (torch.arange(256, dtype=torch.float32).view(1, 16, 16) % 13 - 6) / 8  # in [-0.75, 0.75]
    half = a.clone()
    half[:, ::2] += 0.25  # half the pixels off by 1/4: MSE = 1/32
    assert psnr(a, half) == pytest.approx(10 * math.log10(4 * 32), abs=1e-12)
    assert psnr(half, a) == psnr(a, half)
    assert psnr(a, a - 0.125) == pytest.approx(10 * math.log10(4 * 64), abs=1e-12)  # MSE 1/64 everywhere
    # black against white is the largest error an image in range can have: MSE 4 = range^2, 0 dB
    assert psnr(-torch.ones(1, 16, 16), torch.ones(1, 16, 16)) == 0.0


def test_pixels_map_the_data_range_onto_0_255():
    from lab.diffusion.quality import to_pixels
    images = torch.tensor([-1.0, -0.5, 0.0, 0.5, 1.0, -3.0, 3.0, 0.999]).view(2, 1, 2, 2)
    # (x + 1) * 127.5 rounded half to even, out-of-range values clamped; each image flattened row by row
    assert to_pixels(images) == [[0, 64, 128, 191], [255, 0, 255, 255]]


def test_bf16_weights_run_the_denoiser_in_bf16_and_halve_its_bytes(denoisers):
    spec = Spec(steps=4, guidance=3.0, sampler="ddim", model_kind="diffusion")
    loaded = types.SimpleNamespace(model=denoisers["dit"], name="tiny", pipeline=None)
    plain = DiffusionVariant(spec, loaded, [])
    bf16 = DiffusionVariant(spec, loaded, build([{"name": "weight_dtype", "dtype": "bf16"}], model_kind="diffusion"))
    assert bf16.weight_bytes * 2 == plain.weight_bytes
    assert next(denoisers["dit"].parameters()).dtype == torch.float32  # the shared model is untouched
    a, _, _ = plain.generate([1, 2], seed=0, device="cpu")
    b, _, _ = bf16.generate([1, 2], seed=0, device="cpu")
    assert b.images.dtype == torch.float32 and not torch.equal(a.images, b.images)
    assert (a.images - b.images).abs().mean() < 0.2


def test_step_reduction_can_switch_to_dpm_solver(denoisers):
    ddim, _, _ = generate(denoisers["dit"], [{"name": "step_reduction", "steps": 4}])
    dpm, per_step, computed = generate(denoisers["dit"], [{"name": "step_reduction", "steps": 4,
                                                           "sampler": "dpmsolver++"}])
    assert len(per_step) == 4 and computed == pytest.approx(4 / STEPS) and not torch.equal(ddim, dpm)


def _run(variant: str, techniques: list, metrics: dict):
    return types.SimpleNamespace(variant=variant, params={"techniques": techniques},
                                 metrics=[types.SimpleNamespace(name=k, value=v) for k, v in metrics.items()])


def test_equal_compute_reads_each_cache_against_the_fewer_steps_curve():
    from lab.views.diffusion import equal_compute_rows
    runs = [_run("baseline", [], {"blocks_computed": 100.0, "psnr_db": None, "ssim": 1.0, "speedup": 1.0}),
            _run("25 steps", [{"name": "step_reduction", "steps": 25, "sampler": "same"}],
                 {"blocks_computed": 50.0, "psnr_db": 20.0, "ssim": 0.80, "speedup": 2.0}),
            _run("10 steps", [{"name": "step_reduction", "steps": 10, "sampler": "same"}],
                 {"blocks_computed": 20.0, "psnr_db": 14.0, "ssim": 0.60, "speedup": 5.0}),
            _run("good cache", [{"name": "block_cache"}], {"blocks_computed": 35.0, "psnr_db": 25.0, "ssim": 0.9,
                                                           "speedup": 2.0}),
            _run("bad cache", [{"name": "block_cache"}], {"blocks_computed": 50.0, "psnr_db": 18.0, "ssim": 0.7,
                                                          "speedup": 1.5}),
            _run("dpm 10", [{"name": "step_reduction", "steps": 10, "sampler": "dpmsolver++"}],
                 {"blocks_computed": 20.0, "psnr_db": 16.0, "ssim": 0.5, "speedup": 4.0}),
            # a cache stacked on fewer steps is a method to read against the curve, not a point of it
            _run("cache + 25 steps", [{"name": "taylorseer"}, {"name": "step_reduction", "steps": 25}],
                 {"blocks_computed": 20.0, "psnr_db": 19.0, "ssim": 0.75, "speedup": 4.2})]
    exp = types.SimpleNamespace(runs=runs, spec={"sampler": "ddim"})
    rows = {r["Variant"]: r for r in equal_compute_rows(exp)}
    assert set(rows) == {"good cache", "bad cache", "dpm 10", "cache + 25 steps"}
    assert rows["cache + 25 steps"]["fewer steps: PSNR"] == 14.0  # the 10-step point, not its own
    assert rows["cache + 25 steps"]["At equal compute"] == "beats fewer steps"
    assert rows["good cache"]["fewer steps: PSNR"] == 17.0  # halfway between 14 (20%) and 20 (50%)
    assert rows["good cache"]["At equal compute"] == "beats fewer steps"
    assert rows["bad cache"]["At equal compute"] == "loses to fewer steps"
    assert rows["dpm 10"]["At equal compute"] == "mixed"
    # by speed the good cache (2.0x) meets the 25-step point (2.0x, 20 dB): 25 dB still beats it
    assert rows["good cache"]["fewer steps at this speedup: PSNR"] == 20.0
    assert rows["good cache"]["At equal speed"] == "beats fewer steps"
    # 1.5x lies between the baseline (1.0x, capped at 20 dB) and 25 steps (2.0x, 20 dB): 18 dB loses
    assert rows["bad cache"]["At equal speed"] == "loses to fewer steps"


def test_per_item_scores_are_summarised_by_their_mean():
    from lab.bench.measure import summarize
    from lab.metrics import definition
    assert definition("class_accuracy").share and definition("image_exact").share
    assert not definition("psnr_db").share
    summary = summarize([100.0, 100.0, 0.0, 100.0], share=definition("class_accuracy").share)
    assert summary.median == 75.0 and summary.p10 == summary.p90 == 75.0  # a median would say 100


def test_image_grid_and_difference_for_the_page():
    import numpy as np

    from lab.views.diffusion import SIDE, ZOOM, difference, grid
    a = np.zeros((SIDE, SIDE), dtype=np.uint8)
    b = a.copy()
    b[3, 4] = 50
    assert difference(a, a).min() == 255  # identical: all white
    assert difference(a, b)[3, 4] == 255 - 200  # 50 grey levels apart, amplified 4x
    row = grid([a, b, a])
    assert row.shape == (SIDE * ZOOM, 3 * SIDE * ZOOM + 2 * 2)
