"""SmoothQuant, weight-only int8/int4 and the weight budget on the tiny random Llama: each layer against a slow
re-implementation of its definition, smoothing exact in float, calibration stored and reused and never scored,
budgets met, and what cannot run refused before the run."""
from __future__ import annotations

import types

import pytest
import torch

from lab.errors import SpecError
from lab.llm.engine import Engine
from lab.ops.nbytes import model_bytes
from lab.ops.quantize import Int8DynamicLinear, WeightOnlyLinear, decoder_linears, fake_quantize
from lab.ops.sampling import GenerationSettings
from lab.prompts import calibration_text, heldout_text
from lab.techniques import build
from lab.techniques.quantization.base import smooth
from lab.techniques.quantization.weight_budget import allocate, layer_bytes
from tests.conftest import build_byte_tokenizer, build_tiny_llama

MB = 2 ** 20


pytestmark = pytest.mark.usefixtures("data_in_tmp")  # calibrations land in a temp folder

@pytest.fixture(scope="module")
def tok():
    return build_byte_tokenizer()


def with_outlier_channel(model, channel: int = 3, factor: float = 60.0):
    """One huge activation channel into q, k and v of every layer, as SmolLM2 has (the random model's function
    changes, which does not matter here)."""
    with torch.no_grad():
        for layer in model.model.layers:
            layer.input_layernorm.weight[channel] *= factor
    return model


def logits(model, ids):
    with torch.no_grad():
        return model(input_ids=torch.tensor([ids])).logits[0].float()


def engine(model, tok, **technique):
    return Engine(model, tok, build([technique] if technique else [], model_kind="llm"))


IDS = list(b"The quick brown fox jumps over the lazy dog, then naps in the sun.")


# --- SmoothQuant ----------------------------------------------------------------------------------------------

def test_smoothing_alone_leaves_the_float_model_unchanged(tok):
    """Folding s into the norms, up_proj and v_proj (GQA: 4 heads share 2 kv heads) is exact maths."""
    model = with_outlier_channel(build_tiny_llama())
    calibration = engine(model, tok).calibration
    smoothed = build_tiny_llama()
    smoothed.load_state_dict(model.state_dict())
    after = smooth(smoothed, calibration.input_stats(smoothed), alpha=0.5)
    torch.testing.assert_close(logits(smoothed, IDS), logits(model, IDS), rtol=1e-4, atol=1e-4)
    q_proj = "model.layers.0.self_attn.q_proj"
    assert after[q_proj] < calibration.input_stats(model)[q_proj]["absmax"].max() / 3  # the outlier shrank


def test_smoothing_cuts_the_int8_error_that_an_outlier_channel_causes(tok):
    """The layers reading the outlier channel (q, k, v) lose far less to int8 once it is smoothed."""
    model = with_outlier_channel(build_tiny_llama())
    error = {}
    for alpha in (0.0, 0.5):
        for scale in ("per_token", "per_tensor"):
            technique = build([{"name": "smoothquant", "alpha": alpha, "activation_scale": scale}])[0]
            Engine(model, tok, [technique])
            error[alpha, scale] = sum(r["int8_error"] for r in technique.details()["layers"]
                                      if r["module"] in ("q_proj", "k_proj", "v_proj"))
    assert error[0.5, "per_token"] < error[0.0, "per_token"] / 2
    assert error[0.5, "per_tensor"] < error[0.0, "per_tensor"] / 2


def test_int8_dynamic_linear_is_per_token_int8_times_per_channel_int8():
    torch.manual_seed(0)
    linear = torch.nn.Linear(48, 24)
    x = torch.randn(5, 48) * torch.tensor([1.0, 10, 0.1, 3, 100]).view(5, 1)  # rows on very different scales
    got = Int8DynamicLinear(linear)(x)
    for t in range(5):  # the definition, one token at a time, in float64
        sx = x[t].abs().max().double() / 127
        xq = torch.round(x[t].double() / sx)
        sw = linear.weight.abs().amax(1).double() / 127
        wq = torch.clamp(torch.round(linear.weight.double() / sw[:, None]), -127, 127)
        expected = (wq @ xq) * sx * sw + linear.bias.double()
        assert torch.allclose(got[t].double(), expected, rtol=1e-4, atol=1e-4 * float(expected.abs().max()))


def test_float_layers_keeps_the_layers_with_the_largest_int8_error(tok):
    model = with_outlier_channel(build_tiny_llama())
    technique = build([{"name": "smoothquant", "alpha": 0.0, "float_layers": 3}], model_kind="llm")[0]
    quantized = Engine(model, tok, [technique]).model
    rows = technique.details()["layers"]
    kept = {r["name"] for r in rows if r["bits"] == 32}
    worst = {r["name"] for r in sorted(rows, key=lambda r: r["int8_error"], reverse=True)[:3]}
    assert kept == worst and len(kept) == 3
    assert all(type(quantized.get_submodule(n)) is torch.nn.Linear for n in kept)
    assert sum(isinstance(m, Int8DynamicLinear) for m in quantized.modules()) == len(rows) - 3
    assert all(r["outlier_before"] > 0 and r["int8_error"] > 0 for r in rows)


def test_calibration_is_stored_then_reused_and_never_scored(tok):
    model = build_tiny_llama()
    first = engine(model, tok, name="smoothquant")
    second = engine(model, tok, name="smoothquant", alpha=0.8)
    assert first.calibration.notes[0].startswith("calibrated and stored")
    assert second.calibration.notes[0].startswith("reused") and second.calibration.seconds > 0
    assert calibration_text() not in heldout_text() and calibration_text()[:200] not in heldout_text()
    assert not engine(model, tok, name="weight_dtype").calibration.notes  # no calibration, no time reported


def test_smoothquant_refuses_a_model_it_cannot_fold_into(tok):
    from transformers import GPT2Config, GPT2LMHeadModel
    gpt2 = GPT2LMHeadModel(GPT2Config(vocab_size=260, n_embd=32, n_layer=1, n_head=2)).eval()
    with pytest.raises(SpecError, match="supports Llama-style decoders"):
        engine(gpt2, tok, name="smoothquant")


# --- weight-only int8 / int4 ----------------------------------------------------------------------------------

def slow_int4(w: torch.Tensor, group: int) -> torch.Tensor:
    """Min-max 4-bit per group, one group at a time: step = (max - min) / 15, w ~ min + step * round((w - min) / step)."""
    out = torch.empty_like(w, dtype=torch.float64)
    for r in range(w.shape[0]):
        for g in range(0, w.shape[1], group):
            part = w[r, g:g + group].double()
            step = (part.max() - part.min()) / 15
            out[r, g:g + group] = part.min() + step * torch.clamp(torch.round((part - part.min()) / step), 0, 15)
    return out


def test_int4_dequantized_weights_are_the_min_max_grid_per_group():
    torch.manual_seed(1)
    w = torch.randn(8, 64)
    expected = slow_int4(w, 32)
    got = fake_quantize(w, 4, 32).double()
    step = (w.reshape(8, 2, 32).amax(-1) - w.reshape(8, 2, 32).amin(-1)).double() / 15
    off = (got - expected).abs() > 1e-5
    assert (got - expected).abs().max() <= step.max() + 1e-6  # a rounding tie may land one level over
    assert off.float().mean() < 0.01  # ...which happens only on ties


@pytest.mark.parametrize("bits,group", [(8, 0), (4, 32)])
def test_weight_only_layers_multiply_by_the_dequantized_weight(bits, group):
    torch.manual_seed(2)
    linear = torch.nn.Linear(64, 48)
    x = torch.randn(3, 64)
    got = WeightOnlyLinear(linear, bits, group)(x).float()
    reference = x.bfloat16().float() @ fake_quantize(linear.weight.detach(), bits, group).t() + linear.bias
    assert float((got - reference).norm() / reference.norm()) < 0.02  # bf16 activations and scales


def test_weight_only_bytes_are_what_the_packed_layers_hold(tok):
    model = build_tiny_llama()
    linears = decoder_linears(model)
    rest = (model_bytes(model) - sum(m.weight.numel() * 4 for m in linears.values())) // 2  # bf16, no biases
    sizes = {}
    for bits, group in ((8, 0), (4, 32)):
        e = engine(model, tok, name="weight_only", bits=bits, group_size=group)
        sizes[bits] = e.weight_bytes()
        assert sizes[bits] == rest + sum(layer_bytes(m, bits, group) for m in linears.values())
        assert next(e.model.parameters()).dtype == torch.bfloat16
        gen = e.generate(tok("hi").input_ids, GenerationSettings(max_new_tokens=4))
        assert len(gen.token_ids) == 4 or gen.stopped_by == "eos"
    assert sizes[4] < sizes[8] < model_bytes(model) // 2
    assert next(model.parameters()).dtype == torch.float32  # the shared original is untouched


def test_weight_only_refuses_group_sizes_that_cannot_work(tok):
    model = build_tiny_llama()  # every layer has 64 or 128 input columns
    with pytest.raises(SpecError, match="group_size 128 does not divide the 64 input columns.*divide every layer "
                                        "of this model: 32, 64"):
        engine(model, tok, name="weight_only", bits=4, group_size=128)
    with pytest.raises(SpecError, match="allowed group_size for bits=8: 0"):
        build([{"name": "weight_only", "bits": 8, "group_size": 32}])
    with pytest.raises(SpecError, match="allowed for bits=4: 32, 64, 128, 256"):
        build([{"name": "weight_only", "bits": 4}])


# --- the weight budget ----------------------------------------------------------------------------------------

def test_allocation_upgrades_the_most_error_per_byte_first():
    errors = {"a": {4: 10.0, 8: 1.0, 16: 0.0}, "b": {4: 100.0, 8: 2.0, 16: 0.0}, "c": {4: 0.0, 8: 0.0, 16: 0.0}}
    sizes = {n: {4: 10, 8: 20, 16: 40} for n in errors}
    assert allocate(errors, sizes, budget=30) == {"a": 4, "b": 4, "c": 4}  # no upgrade fits
    assert allocate(errors, sizes, budget=40) == {"a": 4, "b": 8, "c": 4}
    assert allocate(errors, sizes, budget=50) == {"a": 8, "b": 8, "c": 4}
    assert allocate(errors, sizes, budget=10 ** 6) == {"a": 16, "b": 16, "c": 4}  # c gains nothing: stays small


def test_the_budget_is_met_and_a_larger_budget_buys_bits(tok):
    model = build_tiny_llama()
    smallest = build([{"name": "weight_budget", "budget_mb": 0.02, "group_size": 32}])[0]
    with pytest.raises(SpecError, match=r"budget_mb 0.02 is below the smallest this model can take \(0\.\d+ MB.*"
                                        r"allowed: budget_mb >= 0\.\d+"):
        smallest.check_model(model)
    full = model_bytes(model) / 2 / MB  # all bf16
    previous_bits, previous_error = 0, float("inf")
    for share in (0.45, 0.6, 0.8, 1.0):
        technique = build([{"name": "weight_budget", "budget_mb": full * share, "group_size": 32}])[0]
        e = Engine(model, tok, [technique])
        assert e.weight_bytes() <= full * share * MB  # the budget is met, counting every byte held
        rows = technique.details()["layers"]
        bits, error = sum(r["bits"] for r in rows), sum(r["sensitivity"] for r in rows)
        assert bits >= previous_bits and error <= previous_error
        previous_bits, previous_error = bits, error
    assert {r["bits"] for r in rows} == {16}  # the whole bf16 size affords 16 bits everywhere


# --- the DiT denoiser -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("technique", [{"name": "w8a8_dynamic"}, {"name": "weight_only", "bits": 8}])
def test_the_dit_runs_int8_and_holds_fewer_bytes(technique):
    from lab.diffusion.variant import DiffusionVariant
    from lab.spec import Spec
    from tests.test_diffusion import tiny_dit

    dit = tiny_dit()
    spec = Spec(steps=3, guidance=3.0, sampler="ddim", model_kind="diffusion")
    loaded = types.SimpleNamespace(model=dit, name="tiny", pipeline=None)
    plain = DiffusionVariant(spec, loaded, [])
    quantized = DiffusionVariant(spec, loaded, build([technique], model_kind="diffusion"))
    assert quantized.weight_bytes < plain.weight_bytes / 2
    a, _, _ = plain.generate([1, 2], seed=0, device="cpu")
    b, _, _ = quantized.generate([1, 2], seed=0, device="cpu")
    assert b.images.shape == a.images.shape and not torch.equal(a.images, b.images)
    assert (a.images - b.images).abs().mean() < 0.3  # close to the float images, not noise


def test_group_sizes_and_budgets_that_cannot_work_are_refused_before_anything_loads(tiny_spec):
    from lab.bench.validate import validate

    def variant(technique):
        return {**tiny_spec, "variants": [{"name": "v", "techniques": [technique]}]}

    with pytest.raises(SpecError, match="group_size 128 does not divide the 64 input columns of q_proj; group sizes "
                                        "that divide every layer of this model: 32, 64"):
        validate(variant({"name": "weight_only", "bits": 4, "group_size": 128}))
    with pytest.raises(SpecError, match=r"budget_mb 0.02 is below the smallest this model can take \(at least "):
        validate(variant({"name": "weight_budget", "budget_mb": 0.02, "group_size": 32}))
    validate(variant({"name": "weight_budget", "budget_mb": 0.3, "group_size": 32}))  # a budget that fits passes
