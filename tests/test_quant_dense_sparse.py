"""SqueezeLLM-style dense-and-sparse quantization on the tiny random Llama (test data): the dequantized weight is the
definition (the largest |w| kept exactly, every other weight its row's nearest codebook value), the weight bytes are
the bytes the buffers hold, the knobs move the numbers the right way, and what cannot run is refused."""
from __future__ import annotations

import re

import pytest
import torch

from lab.errors import SpecError
from lab.llm.engine import Engine
from lab.ops.codebook import DenseSparseLinear, pack_codes, unpack_codes
from lab.ops.nbytes import model_bytes
from lab.ops.sampling import GenerationSettings
from lab.techniques import build

PACKING = {3: (8, 3), 4: (2, 1)}  # bits -> (codes per group, bytes per group)


pytestmark = pytest.mark.usefixtures("data_in_tmp")  # calibrations land in a temp folder


@pytest.fixture(scope="module")
def tiny(tiny_llama_and_tokenizer):
    return tiny_llama_and_tokenizer


def quantized(tiny, **knobs):
    model, tok = tiny
    technique = build([{"name": "dense_sparse", **knobs}])[0]
    engine = Engine(model, tok, [technique])
    return engine, {row["name"]: row for row in technique.details()["layers"]}


def decoder_linears(model) -> dict:
    return {n: m for n, m in model.named_modules()
            if isinstance(m, torch.nn.Linear) and m is not model.get_output_embeddings()}


def outliers_of(layer: DenseSparseLinear) -> dict[tuple[int, int], float]:
    """The CSR part read back with plain loops: {(row, column): value}."""
    ptr, cols, vals = layer.outlier_row_ptr.tolist(), layer.outlier_columns.tolist(), layer.outlier_values.tolist()
    return {(r, cols[p]): vals[p] for r in range(layer.out_features) for p in range(ptr[r], ptr[r + 1])}


@pytest.mark.parametrize("bits,percent", [(4, 0.45), (3, 0.45), (4, 2.0)])
@pytest.mark.parametrize("name", ["model.layers.0.self_attn.q_proj", "model.layers.1.mlp.down_proj"])
def test_dequantized_weight_is_the_dense_and_sparse_definition(tiny, name, bits, percent):
    engine, _ = quantized(tiny, bits=bits, outlier_percent=percent)
    original = tiny[0].get_submodule(name).weight.detach().float()
    layer = engine.model.get_submodule(name)
    got = layer.dequantized_weight()
    codebook = layer.codebook.float()
    sparse = outliers_of(layer)
    # (a) the outliers: exactly round(share * numel) entries, stored and reproduced exactly, the largest |w|
    assert len(sparse) == round(percent / 100 * original.numel())
    for (r, c), value in sparse.items():
        assert value == original[r, c].item() and got[r, c].item() == value
    dense = torch.ones_like(original, dtype=torch.bool)
    for r, c in sparse:
        dense[r, c] = False
    if sparse:
        assert original.abs()[~dense].min() >= original.abs()[dense].max()
    # (b) every other entry is one of its row's centroids, the nearest one to the original (up to a tie)
    for r in range(original.shape[0]):
        assert len(set(got[r][dense[r]].tolist())) <= 2 ** bits  # (c)
        for c in dense[r].nonzero().flatten().tolist():
            distances = (codebook[r] - original[r, c]).abs()
            assert got[r, c].item() in codebook[r].tolist()
            assert abs(got[r, c].item() - original[r, c].item()) <= distances.min().item() + 1e-6


def test_forward_multiplies_by_the_dequantized_weight(tiny):
    engine, _ = quantized(tiny)
    layer = engine.model.get_submodule("model.layers.0.mlp.up_proj")
    x = torch.randn(3, 5, layer.in_features)
    torch.testing.assert_close(layer(x), x @ layer.dequantized_weight().t())


@pytest.mark.parametrize("bits", [3, 4])
@pytest.mark.parametrize("cols", [64, 13])
def test_codes_pack_into_the_bits_they_claim_and_back(bits, cols):
    codes = torch.randint(0, 2 ** bits, (5, cols), generator=torch.Generator().manual_seed(cols))
    packed = pack_codes(codes, bits)
    per_group, group_bytes = PACKING[bits]
    assert packed.dtype == torch.uint8 and packed.shape == (5, -(-cols // per_group) * group_bytes)
    assert torch.equal(unpack_codes(packed, bits, cols), codes)


def expected_layer_bytes(linear: torch.nn.Linear, bits: int, percent: float) -> int:
    """What a DenseSparseLinear must hold: packed codes, a float16 codebook per row, CSR outliers (float32 values,
    int16 columns, int32 row pointers)."""
    rows, cols = linear.weight.shape
    per_group, group_bytes = PACKING[bits]
    nnz = round(percent / 100 * rows * cols)
    codes = rows * -(-cols // per_group) * group_bytes
    return codes + rows * 2 ** bits * 2 + nnz * (4 + 2) + (rows + 1) * 4


@pytest.mark.parametrize("bits,percent", [(4, 0.45), (3, 2.0)])
def test_weight_bytes_are_the_bytes_the_buffers_hold(tiny, bits, percent):
    model, _ = tiny
    engine, _ = quantized(tiny, bits=bits, outlier_percent=percent)
    linears = decoder_linears(model)
    fp32 = sum(m.weight.numel() * 4 for m in linears.values())  # the tiny Llama's Linears have no bias
    claimed = sum(expected_layer_bytes(m, bits, percent) for m in linears.values())
    assert engine.weight_bytes() == model_bytes(model) - fp32 + claimed
    assert engine.weight_bytes() < model_bytes(model)
    assert sum(isinstance(m, DenseSparseLinear) for m in engine.model.modules()) == len(linears)
    assert isinstance(engine.model.get_output_embeddings(), torch.nn.Linear)  # the LM head stays float


def test_more_outliers_cost_bytes_and_lower_the_error(tiny):
    few, few_rows = quantized(tiny, outlier_percent=0.45)
    many, many_rows = quantized(tiny, outlier_percent=3.0)
    assert many.weight_bytes() > few.weight_bytes()
    for name, row in few_rows.items():
        assert many_rows[name]["outliers"] > row["outliers"]
        assert many_rows[name]["weight_error"] < row["weight_error"], name


def test_three_bits_err_more_than_four(tiny):
    four, four_rows = quantized(tiny, bits=4)
    three, three_rows = quantized(tiny, bits=3)
    assert three.weight_bytes() < four.weight_bytes()
    for name, row in four_rows.items():
        assert three_rows[name]["weight_error"] > row["weight_error"], name


def test_sensitivity_weighting_lowers_the_calibration_weighted_error(tiny):
    """k-means weighted by sqsum minimises sum_ij sqsum_j (Q(W) - W)_ij^2, the layer's output error on the
    calibration text in diagonal form; plain k-means does not aim at it. Compared over the whole model."""
    model, _ = tiny
    weighted, _ = quantized(tiny, sensitivity=True)
    plain, _ = quantized(tiny, sensitivity=False)
    stats = weighted.calibration.input_stats(model)

    def output_error(engine):
        return sum(float((stats[n]["sqsum"] * (engine.model.get_submodule(n).dequantized_weight() - m.weight.detach()) ** 2)
                         .sum()) for n, m in decoder_linears(model).items())

    assert output_error(weighted) < output_error(plain)


def test_the_shared_model_is_untouched_and_greedy_generation_runs(tiny):
    model, tok = tiny
    before = {k: v.clone() for k, v in model.state_dict().items()}
    engine, _ = quantized(tiny)
    gen = engine.generate(tok("hello").input_ids, GenerationSettings(max_new_tokens=6))
    assert 1 <= len(gen.token_ids) <= 6
    assert not any(isinstance(m, DenseSparseLinear) for m in model.modules())
    after = model.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)


@pytest.mark.parametrize("knobs,allowed", [({"bits": 5}, "3, 4"), ({"bits": 8}, "3, 4"),
                                           ({"outlier_percent": 11}, "0.0 to 10.0"),
                                           ({"outlier_percent": -1}, "0.0 to 10.0")])
def test_out_of_range_knobs_are_refused_naming_the_allowed_values(knobs, allowed):
    with pytest.raises(SpecError, match=re.escape(allowed)):
        build([{"name": "dense_sparse", **knobs}])


def test_what_cannot_be_quantized_is_refused(tiny):
    technique = build([{"name": "dense_sparse"}])[0]
    with pytest.raises(SpecError, match="no nn.Linear"):
        technique.check_model(torch.nn.Sequential(torch.nn.ReLU()))
    with pytest.raises(SpecError, match="calibration"):
        technique.transform_weights(tiny[0], calibration=None)
