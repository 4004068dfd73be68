"""W8A8 dynamic on the tiny random Llama (test data): the int8 weights are the definition's symmetric quantization
(up to rounding ties), the weight bytes counted are the bytes the packed layers hold, and what cannot run is refused
before the run."""
from __future__ import annotations

import pytest
import torch

from lab.bench.validate import validate
from lab.errors import SpecError
from lab.llm.engine import Engine
from lab.ops.nbytes import model_bytes
from lab.ops.sampling import GenerationSettings
from lab.techniques import build
from tests.conftest import build_byte_tokenizer, build_tiny_llama


@pytest.fixture(scope="module")
def tiny():
    return build_tiny_llama().eval(), build_byte_tokenizer()


def w8a8(**knobs):
    return build([{"name": "w8a8_dynamic", **knobs}])[0]


def reference_int8(weight: torch.Tensor, per_channel: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric int8 by the definition: scale = max|w| / 127.5 (per output row or per tensor), q = round(w / s)
    clamped to [-128, 127]. Returns the dequantized weight and the scale per row."""
    amax = weight.abs().amax(dim=1, keepdim=True) if per_channel else weight.abs().amax().expand(weight.shape[0], 1)
    scale = amax.double() / 127.5
    q = torch.clamp(torch.round(weight.double() / scale), -128, 127)
    return (q * scale).float(), scale.float()


@pytest.mark.parametrize("weight_scale", ["per_tensor", "per_channel"])
def test_int8_weights_are_the_symmetric_quantization_of_the_originals(tiny, weight_scale):
    model, tok = tiny
    quantized = Engine(model, tok, [w8a8(weight_scale=weight_scale)]).model
    originals = dict(model.named_modules())
    checked = 0
    for name, module in quantized.named_modules():
        if not isinstance(module, torch.ao.nn.quantized.dynamic.Linear):
            continue
        weight = originals[name].weight.detach()
        expected, scale = reference_int8(weight, weight_scale == "per_channel")
        got = module.weight().dequantize()
        off = (got - expected).abs() > 1e-4 * scale
        # a mismatch is allowed only where w / scale sits on a rounding tie (x.5)
        ratio = (weight.double() / scale.double())[off]
        assert torch.all((ratio - ratio.floor() - 0.5).abs() < 1e-3), name
        assert (got - weight).abs().max() <= scale.max() / 2 + 1e-6  # within half a step of the original
        checked += 1
    assert checked == sum(isinstance(m, torch.nn.Linear) for m in model.modules()) - 1  # all but the LM head


def test_the_lm_head_is_quantized_only_when_asked(tiny):
    model, tok = tiny
    kept = Engine(model, tok, [w8a8()]).model.get_output_embeddings()
    quantized = Engine(model, tok, [w8a8(lm_head=True)]).model.get_output_embeddings()
    dynamic = torch.ao.nn.quantized.dynamic.Linear
    assert isinstance(kept, torch.nn.Linear) and not isinstance(kept, dynamic) and isinstance(quantized, dynamic)
    assert not any(isinstance(m, dynamic) for m in model.modules())  # the shared original is untouched


def test_weight_bytes_are_the_bytes_the_packed_layers_hold(tiny):
    model, tok = tiny
    engine = Engine(model, tok, [w8a8(weight_scale="per_channel")])
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear) and m is not model.get_output_embeddings()]
    fp32_linear = sum(m.weight.numel() * 4 + (m.bias.numel() * 4 if m.bias is not None else 0) for m in linears)
    # int8 codes, and per output row one float64 scale and one int64 zero point
    int8_linear = sum(m.weight.numel() + m.out_features * 16 + (m.bias.numel() * 4 if m.bias is not None else 0)
                      for m in linears)
    assert engine.weight_bytes() == model_bytes(model) - fp32_linear + int8_linear
    assert engine.weight_bytes() < model_bytes(model)


def test_w8a8_generates_greedily_on_the_cpu(tiny):
    model, tok = tiny
    gen = Engine(model, tok, [w8a8()]).generate(tok("hello").input_ids, GenerationSettings(max_new_tokens=6))
    assert len(gen.token_ids) == 6 or gen.stopped_by == "eos"


def test_w8a8_on_a_gpu_is_refused_before_the_run(tiny_spec):
    with pytest.raises(SpecError, match="w8a8_dynamic.*CPU only; allowed devices: cpu, auto"):
        validate({**tiny_spec, "device": "cuda", "variants": [{"techniques": [{"name": "w8a8_dynamic"}]}]})
    with pytest.raises(SpecError, match="knob 'weight_scale': 'per_row' is not allowed; allowed: per_tensor, "
                                       "per_channel"):
        validate({**tiny_spec, "variants": [{"techniques": [{"name": "w8a8_dynamic", "weight_scale": "per_row"}]}]})


def test_int8_embeddings_hold_a_byte_per_weight_plus_row_scales_and_the_tied_head_stays_float(tiny):
    model, tok = tiny
    plain = Engine(model, tok, [w8a8()])
    with_embeddings = Engine(model, tok, [w8a8(embeddings=True)])
    rows, dim = model.get_input_embeddings().weight.shape
    # int8 codes, one float scale and one float zero point per row (torch.ao's float qparams; 4 bytes each);
    # the tied LM head keeps the float weight it shared, so the float bytes stay
    assert with_embeddings.weight_bytes() == plain.weight_bytes() + rows * dim + rows * 2 * 4
    quantized = with_embeddings.model.get_input_embeddings()
    assert type(quantized) is torch.ao.nn.quantized.Embedding
    ids = torch.tensor([[1, 2, 3]])
    assert (quantized(ids) - model.get_input_embeddings()(ids)).abs().max() < 0.05
    gen = with_embeddings.generate(tok("hello").input_ids, GenerationSettings(max_new_tokens=4))
    assert len(gen.token_ids) == 4 or gen.stopped_by == "eos"
