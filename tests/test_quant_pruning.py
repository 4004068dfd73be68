"""Pruning (magnitude / Wanda, unstructured / 2:4) on the tiny random Llama (test data): the kept weights are the
definition re-implemented with plain loops, the measured sparsity is the knob, the error grows with it, Wanda's input
norms change the choice, what cannot run is refused before anything runs, and the shared model stays untouched."""
from __future__ import annotations

import math
import re

import pytest
import torch

from lab.errors import SpecError
from lab.llm.engine import Engine
from lab.ops.nbytes import model_bytes
from lab.ops.sampling import GenerationSettings
from lab.techniques import build

LAYERS = ["model.layers.0.self_attn.q_proj", "model.layers.0.self_attn.k_proj", "model.layers.1.self_attn.o_proj",
          "model.layers.1.mlp.down_proj"]  # 64 and 128 input columns, 32 to 128 rows


pytestmark = pytest.mark.usefixtures("data_in_tmp")  # calibrations land in a temp folder


@pytest.fixture(scope="module")
def tiny(tiny_llama_and_tokenizer):
    return tiny_llama_and_tokenizer


def pruned(tiny, **knobs):
    """(engine, technique, {layer name: details row}) of the tiny model pruned with `knobs`."""
    model, tok = tiny
    technique = build([{"name": "pruning", **knobs}])[0]
    engine = Engine(model, tok, [technique])
    return engine, technique, {row["name"]: row for row in technique.details()["layers"]}


def decoder_linears(model) -> dict:
    return {n: m for n, m in model.named_modules()
            if isinstance(m, torch.nn.Linear) and m is not model.get_output_embeddings()}


class FixedStats:
    """A calibration stand-in that hands out the given per-Linear sum of x^2 (and fails if magnitude asks)."""

    def __init__(self, sqsum_of=None):
        self.sqsum_of = sqsum_of

    def input_stats(self, model):
        assert self.sqsum_of is not None, "magnitude pruning must not read calibration statistics"
        return {n: {"sqsum": self.sqsum_of(m), "absmax": torch.ones(m.in_features)}
                for n, m in decoder_linears(model).items()}


# --- the definition, with plain loops ---------------------------------------------------------------------------
def slow_scores(weight: torch.Tensor, sqsum: list[float] | None) -> list[list[float]]:
    rows = weight.tolist()
    return [[abs(w) * (math.sqrt(sqsum[j]) if sqsum is not None else 1.0) for j, w in enumerate(row)] for row in rows]


def slow_kept_scores(scores: list[float], pattern: str, sparsity: float) -> list[float]:
    """The scores a row keeps by the definition: its largest (cols - floor(sparsity * cols)), or per group of 4
    consecutive columns its 2 largest."""
    if pattern == "2:4":
        kept = []
        for g in range(0, len(scores), 4):
            kept += sorted(scores[g:g + 4], reverse=True)[:2]
        return sorted(kept)
    n_pruned = int(sparsity * len(scores) + 1e-9)
    return sorted(sorted(scores, reverse=True)[:len(scores) - n_pruned])


@pytest.mark.parametrize("method,pattern,sparsity", [("magnitude", "unstructured", 0.5), ("wanda", "unstructured", 0.5),
                                                     ("wanda", "unstructured", 0.3), ("magnitude", "2:4", 0.5),
                                                     ("wanda", "2:4", 0.5)])
def test_kept_weights_are_the_definition(tiny, method, pattern, sparsity):
    """Compared as the multiset of kept scores per row (per group for 2:4), so equal scores may swap places; scores
    computed here in float64 may order two nearly equal float32 scores differently, hence approx."""
    model, _ = tiny
    engine, _, _ = pruned(tiny, method=method, pattern=pattern, sparsity=sparsity)
    stats = engine.calibration.input_stats(model) if method == "wanda" else None  # stored by the run: reused
    for name in LAYERS:
        original = model.get_submodule(name).weight.detach()
        got = engine.model.get_submodule(name).weight.detach()
        sqsum = stats[name]["sqsum"].tolist() if stats is not None else None
        for r, (scores, row) in enumerate(zip(slow_scores(original, sqsum), got.tolist())):
            kept = sorted(s for s, w in zip(scores, row) if w != 0)
            assert kept == pytest.approx(slow_kept_scores(scores, pattern, sparsity), rel=1e-6), (name, r)
            for w, w0 in zip(row, original[r].tolist()):
                assert w == 0 or w == w0  # a kept weight is the original value, untouched


# --- the numbers move --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("sparsity", [0.0, 0.3, 0.5, 0.7, 0.95])
def test_each_row_loses_floor_of_sparsity_times_its_width(tiny, sparsity):
    engine, _, rows = pruned(tiny, method="magnitude", sparsity=sparsity)
    for name, linear in decoder_linears(engine.model).items():
        cols = linear.in_features
        expected = math.floor(sparsity * cols + 1e-9)  # 0.3 * 64 -> 19, 0.3 * 128 -> 38
        zeros_per_row = (linear.weight == 0).sum(dim=1)
        assert zeros_per_row.tolist() == [expected] * linear.out_features, name
        assert rows[name]["sparsity"] == pytest.approx(expected / cols)
        assert rows[name]["kernel"] == "dense"  # CPU: the zeros stay in a dense weight


@pytest.mark.parametrize("method", ["magnitude", "wanda"])
def test_weight_error_grows_with_sparsity(tiny, method):
    errors = {s: pruned(tiny, method=method, sparsity=s)[2] for s in (0.0, 0.3, 0.5, 0.7)}
    for name, row in errors[0.0].items():
        assert row["weight_error"] == 0.0
        chain = [errors[s][name]["weight_error"] for s in (0.0, 0.3, 0.5, 0.7)]
        assert chain == sorted(chain) and len(set(chain)) == 4, (name, chain)  # strictly increasing


def test_wanda_keeps_a_loud_input_channel_that_magnitude_prunes(tiny):
    """Channel 0's input norm 10^6 times the others': Wanda keeps column 0 in every row, magnitude prunes it in the rows
    where |w_0| is small. With equal norms Wanda is magnitude, mask for mask."""
    model, _ = tiny

    def loud(m):
        return torch.ones(m.in_features).index_fill_(0, torch.tensor([0]), 1e12)

    wanda = build([{"name": "pruning", "method": "wanda"}])[0].transform_weights(model, FixedStats(loud))
    flat = build([{"name": "pruning", "method": "wanda"}])[0].transform_weights(
        model, FixedStats(lambda m: torch.ones(m.in_features)))
    magnitude = build([{"name": "pruning", "method": "magnitude"}])[0].transform_weights(model, FixedStats())
    for name in decoder_linears(model):
        w_wanda, w_flat, w_mag = (m.get_submodule(name).weight for m in (wanda, flat, magnitude))
        assert bool((w_wanda[:, 0] != 0).all()), name
        assert bool((w_mag[:, 0] == 0).any()), name
        assert not torch.equal(w_wanda != 0, w_mag != 0), name
        assert torch.equal(w_flat != 0, w_mag != 0), name


@pytest.mark.parametrize("method", ["magnitude", "wanda"])
def test_two_four_leaves_two_zeros_in_every_group_of_four(tiny, method):
    engine, _, rows = pruned(tiny, method=method, pattern="2:4")
    for name, linear in decoder_linears(engine.model).items():
        groups = linear.weight.reshape(linear.out_features, -1, 4)
        assert bool(((groups == 0).sum(-1) >= 2).all()), name
        assert rows[name]["sparsity"] == pytest.approx(0.5)


def test_real_calibration_makes_wanda_differ_from_magnitude(tiny):
    wanda, _, _ = pruned(tiny, method="wanda")
    magnitude, _, _ = pruned(tiny, method="magnitude")
    differ = [n for n in decoder_linears(wanda.model)
              if not torch.equal(wanda.model.get_submodule(n).weight, magnitude.model.get_submodule(n).weight)]
    assert differ  # the calibration text's channel norms are uneven, so some layer's choice changes
    assert wanda.weight_bytes() == magnitude.weight_bytes() == model_bytes(tiny[0])  # dense on CPU: bytes unchanged


# --- refusals ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("sparsity", [0.3, 0.0, 0.75])
def test_two_four_with_another_sparsity_is_refused_before_anything_runs(sparsity):
    with pytest.raises(SpecError, match=r"technique 'pruning'.*2:4.*fixed at 0\.5"):
        build([{"name": "pruning", "pattern": "2:4", "sparsity": sparsity}])


@pytest.mark.parametrize("knobs,allowed", [({"method": "sparsegpt"}, "magnitude, wanda"),
                                           ({"pattern": "4:8"}, "unstructured, 2:4"),
                                           ({"sparsity": 0.96}, "0.0 to 0.95"), ({"sparsity": -0.1}, "0.0 to 0.95")])
def test_bad_knobs_are_refused_naming_the_allowed_values(knobs, allowed):
    with pytest.raises(SpecError, match=re.escape(allowed)):
        build([{"name": "pruning", **knobs}])


def test_what_cannot_be_pruned_is_refused(tiny):
    model, _ = tiny
    with pytest.raises(SpecError, match="calibration"):
        build([{"name": "pruning", "method": "wanda"}])[0].transform_weights(model, calibration=None)
    magnitude = build([{"name": "pruning", "method": "magnitude"}])[0]
    assert magnitude.transform_weights(model, calibration=None) is not model  # magnitude needs no calibration
    with pytest.raises(SpecError, match="no nn.Linear"):
        magnitude.check_model(torch.nn.Sequential(torch.nn.ReLU()))
    with pytest.raises(SpecError, match="divisible by 4"):
        build([{"name": "pruning", "pattern": "2:4"}])[0].check_model(torch.nn.Sequential(torch.nn.Linear(6, 8)))


# --- the shared model, and a run ----------------------------------------------------------------------------------
@pytest.mark.parametrize("knobs", [{"method": "wanda"}, {"method": "magnitude", "pattern": "2:4"}])
def test_the_shared_model_is_untouched_and_greedy_generation_runs(tiny, knobs):
    model, tok = tiny
    before = {k: v.clone() for k, v in model.state_dict().items()}
    engine, _, _ = pruned(tiny, **knobs)
    gen = engine.generate(tok("hello").input_ids, GenerationSettings(max_new_tokens=6))
    assert 1 <= len(gen.token_ids) <= 6
    after = model.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    head = engine.model.get_output_embeddings().weight
    assert torch.equal(head, model.get_output_embeddings().weight)  # the LM head is never pruned
