"""The what-if calculator: its formulas against hand-computed cases (SmolLM2-135M), each technique family moving
its number the right way, bad shapes refused, the device table, the machine cache (timing stood in for: these
tests never time anything), the measured number found in a stored run, and the page under AppTest."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import replace

import pytest
from streamlit.testing.v1 import AppTest

from lab import store
from lab.errors import SpecError
from lab.views import whatif as views
from lab.whatif import estimate as est
from lab.whatif import machine
from lab.whatif.devices import Device, device_from_dict, load_devices
from lab.whatif.model import read_config, shape_from_config, shape_from_numbers
from lab.whatif.techniques import (
    Knobs,
    all_effects,
    amdahl,
    baseline,
    expected_tokens,
    kv_compression,
    kv_quantization,
    sparse_attention,
    speculative,
    weight_quantization,
)
from tests.conftest import ROOT

SMOLLM2_CONFIG = {"num_hidden_layers": 30, "hidden_size": 576, "num_attention_heads": 9, "num_key_value_heads": 3,
                  "head_dim": 64, "intermediate_size": 1536, "vocab_size": 49152, "tie_word_embeddings": True,
                  "max_position_embeddings": 8192, "model_type": "llama"}
SMOLLM2 = shape_from_config(SMOLLM2_CONFIG, "smollm2")
# A made-up device with round numbers, so the floors below can be worked out by hand.
ROUND = Device(name="round", kind="cpu", bandwidth_gbs=100.0, peak_tflops={"fp32": 1.0, "bf16": 2.0})


# --- the model --------------------------------------------------------------------------------------------------

def test_smollm2_parameters_by_hand():
    attention = 576 * 64 * (2 * 9 + 2 * 3)  # q, o: 576 x 576; k, v: 576 x 192 -> 884,736
    mlp = 3 * 576 * 1536  # gate, up, down -> 2,654,208
    per_layer = attention + mlp + 2 * 576  # two RMSNorms -> 3,540,096
    embedding = 49152 * 576  # tied: the LM head is this matrix -> 28,311,552
    assert SMOLLM2.params == embedding + 30 * per_layer + 576 == 134_515_008  # ~134.5M, as the GGUF says
    from lab.llm.models import BUILTIN_MODELS
    assert SMOLLM2.params == BUILTIN_MODELS["smollm2-135m-instruct"].shape.parameters


def test_untied_embeddings_count_twice_but_a_decode_step_reads_the_input_table_only_by_rows():
    untied = replace(SMOLLM2, tied=False)
    assert untied.params - SMOLLM2.params == 49152 * 576
    assert untied.read_params == SMOLLM2.read_params == SMOLLM2.params  # the extra table is gathered, not read
    assert untied.matmul_params == SMOLLM2.matmul_params == 30 * (884_736 + 2_654_208) + 49152 * 576


def test_a_config_fills_defaults_as_transformers_does(tmp_path):
    gpt2_like = {"n_layer": 2, "n_embd": 64, "n_head": 4, "vocab_size": 100}
    shape = shape_from_config(gpt2_like)
    assert (shape.kv_heads, shape.head_dim, shape.intermediate) == (4, 16, 256)  # heads, hidden/heads, 4*hidden
    (tmp_path / "config.json").write_text(json.dumps(SMOLLM2_CONFIG))
    assert read_config(tmp_path) == read_config(tmp_path / "config.json") == SMOLLM2_CONFIG
    assert views.shape_from_path(tmp_path).params == 134_515_008


@pytest.mark.parametrize("change, words", [
    ({"layers": 0}, "layers must be a whole number from 1 to 1,000, got 0"),
    ({"hidden": "576"}, "hidden must be a whole number from 1 to 1,000,000, got '576'"),
    ({"heads": True}, "heads must be a whole number"),
    ({"kv_heads": 4}, "kv_heads must divide heads (9)"),
    ({"vocab": 10**9}, "vocab must be a whole number from 1 to 10,000,000"),
])
def test_bad_typed_shapes_are_refused_naming_the_field_and_range(change, words):
    sizes = {**views.SMOLLM2_SHAPE, **change}
    with pytest.raises(SpecError) as err:
        shape_from_numbers(**sizes)
    assert words in str(err.value)


@pytest.mark.parametrize("config, words", [
    ({"hidden_size": 64, "num_attention_heads": 4, "vocab_size": 10}, "no layers (num_hidden_layers"),
    ({**SMOLLM2_CONFIG, "num_local_experts": 8}, "mixture-of-experts configs are not modelled"),
    ([1, 2], "a config must be a JSON object"),
])
def test_bad_configs_are_refused(config, words):
    with pytest.raises(SpecError, match=words.replace("(", r"\(")):
        shape_from_config(config)


def test_a_missing_or_broken_config_file_is_refused(tmp_path):
    with pytest.raises(SpecError, match="no config.json"):
        read_config(tmp_path)
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(SpecError, match="not a readable JSON config"):
        read_config(tmp_path)


@pytest.mark.parametrize("change, words", [({"context": 0}, "context must be a whole number from 1"),
                                           ({"batch": 2.5}, "batch must be a whole number"),
                                           ({"weight_dtype": "int3"}, "weight_dtype must be one of"),
                                           ({"kv_dtype": "fp64"}, "kv_dtype must be one of"),
                                           ({"kv_ratio": 0.5}, "kv_ratio must be from 1"),
                                           ({"attended_share": 0}, "attended_share must be above 0")])
def test_bad_scenarios_are_refused(change, words):
    with pytest.raises(SpecError, match=words):
        est.Scenario(**{"shape": SMOLLM2, "context": 1024, **change})


@pytest.mark.parametrize("change, words", [({"kv_bits": 3}, "kv_bits must be 8 or 4"),
                                           ({"acceptance": 1.5}, "acceptance must be from 0 to 1"),
                                           ({"drafts": 0}, "drafts must be from 1 to 64"),
                                           ({"attention_share": -0.1}, "attention_share must be from 0 to 1")])
def test_bad_knobs_are_refused(change, words):
    with pytest.raises(SpecError, match=words):
        Knobs(**change)


# --- the formulas -----------------------------------------------------------------------------------------------

def test_kv_bytes_by_hand():
    assert est.kv_bytes_per_token(SMOLLM2, "bf16") == 2 * 30 * 3 * 64 * 2 == 23_040  # K and V, L, G, d, 2 bytes
    assert est.kv_bytes_per_token(SMOLLM2, "fp32") == 46_080
    s = est.Scenario(SMOLLM2, context=4096, batch=2)
    assert est.kv_bytes(s) == 23_040 * 4096 * 2 == 188_743_680
    assert est.weight_bytes(SMOLLM2, "bf16") == 134_515_008 * 2
    assert est.memory_needed(s) == 134_515_008 * 2 + 188_743_680


def test_decode_floor_is_bytes_over_bandwidth_by_hand():
    s = est.Scenario(SMOLLM2, context=4096)
    step = est.decode_step(s, ROUND)
    weights = 134_515_008 * 2  # every parameter read once, bf16
    cache = 23_040 * 4096  # the whole cache read
    written = 23_040  # the new token's K and V
    assert step.bytes == weights + cache + written == 363_424_896
    assert step.memory_s == pytest.approx(363_424_896 / 100e9)  # 3.63 ms at 100 GB/s
    matmuls = 2 * SMOLLM2.matmul_params  # one token through every projection and the LM head
    attention = 2 * 2 * 30 * 9 * 64 * 4096  # QK^T and PV over 4096 keys
    assert step.flops == matmuls + attention
    assert step.compute_s == pytest.approx((matmuls + attention) / 2e12)  # bf16 peak 2 TFLOP/s
    assert step.bound == "memory" and step.floor_s == step.memory_s
    assert step.intensity == pytest.approx(step.flops / step.bytes)  # about 1.5 FLOP/B: far below the ridge
    assert est.ridge(ROUND, "bf16") == pytest.approx(2e12 / 100e9) == 20


def test_prefill_floor_is_flops_over_peak_by_hand():
    n = 1024
    phase = est.prefill(est.Scenario(SMOLLM2, context=n, weight_dtype="fp32", kv_dtype="fp32"), ROUND)
    flops = 2 * SMOLLM2.matmul_params * n + 2 * 2 * 30 * 9 * 64 * n**2 / 2  # causal: n^2 / 2 query-key pairs
    assert phase.flops == pytest.approx(flops)
    assert phase.compute_s == pytest.approx(flops / 1e12)  # fp32 peak 1 TFLOP/s
    assert phase.bytes == 134_515_008 * 4 + 46_080 * n  # weights once, the cache written
    assert phase.bound == "compute" and phase.peak_dtype == "fp32"


def test_large_batches_turn_decode_compute_bound():
    short = est.Scenario(SMOLLM2, context=1, batch=1)
    assert est.decode_step(short, ROUND).bound == "memory"
    # intensity grows about as the batch (weights read once for all sequences): past the ridge of 20 FLOP/B
    wide = replace(short, batch=64)
    assert est.decode_step(wide, ROUND).intensity > est.ridge(ROUND, "bf16")
    assert est.decode_step(wide, ROUND).bound == "compute"


def test_sequences_that_fit_beside_the_weights():
    h100 = load_devices()["NVIDIA H100 SXM 80GB"]
    s = est.Scenario(SMOLLM2, context=8192)
    assert est.max_batch(s, h100) == (80e9 - 134_515_008 * 2) // (23_040 * 8192)  # 422 sequences
    assert est.max_batch(s, ROUND) is None  # memory unknown


def test_speculative_expectation():
    assert expected_tokens(4, 0.7) == pytest.approx((1 - 0.7**5) / 0.3) == pytest.approx(2.7731)
    assert expected_tokens(4, 0.7) == pytest.approx(sum(0.7**i for i in range(5)))  # 1 + a + ... + a^k
    assert expected_tokens(4, 0.0) == 1  # every draft rejected: the verify step still yields one token
    assert expected_tokens(4, 1.0) == 5  # every draft accepted: k + 1


def test_speculative_cost_per_token_by_hand():
    s = est.Scenario(SMOLLM2, context=1024)
    one = est.decode_step(s, ROUND).floor_s
    verify = est.decode_step(s, ROUND, tokens=5).floor_s
    assert verify == pytest.approx(one, rel=0.01)  # memory-bound: 5 tokens read the weights once, as 1 does
    effect = speculative(s, ROUND, drafts=4, acceptance=0.7, draft_cost=0.05)
    assert effect.decode_s == pytest.approx((4 * 0.05 * one + verify) / expected_tokens(4, 0.7))
    assert speculative(s, ROUND, 4, 0.0, 0.05).decode_s > one  # nothing accepted: the drafts are pure cost


def test_amdahl():
    assert amdahl(10.0, 0.6, 0.25) == pytest.approx(10 * (0.4 + 0.6 * 0.25)) == pytest.approx(5.5)
    assert amdahl(10.0, 0.0, 0.25) == 10.0 and amdahl(10.0, 1.0, 0.25) == 2.5


def test_sparse_attention_in_a_memory_bound_step_is_amdahl_on_the_kv_share():
    s = est.Scenario(SMOLLM2, context=8192)
    step = est.decode_step(s, ROUND)
    kv_share = est.kv_bytes(s) / step.bytes  # the part of the step attention's reads take
    modelled = sparse_attention(s, ROUND, 0.25).decode_s
    assert modelled == pytest.approx(amdahl(step.floor_s, kv_share, 0.25))
    assert est.decode_attention_share(s, ROUND) == pytest.approx(kv_share)
    prefill = est.prefill(s, ROUND)
    assert est.prefill_attention_share(s, ROUND) == pytest.approx(2 * 2 * 30 * 9 * 64 * 8192**2 / 2 / prefill.flops)
    assert sparse_attention(s, ROUND, 0.25).prefill_s == pytest.approx(
        amdahl(prefill.floor_s, est.prefill_attention_share(s, ROUND), 0.25))  # compute-bound: Amdahl on FLOPs
    typed = sparse_attention(s, ROUND, 0.25, attention_share=0.62)
    assert typed.decode_s == pytest.approx(step.floor_s * (0.38 + 0.62 * 0.25))
    assert typed.prefill_s == pytest.approx(est.prefill(s, ROUND).floor_s * (0.38 + 0.62 * 0.25))


def test_each_technique_moves_its_number_the_right_way():
    s = est.Scenario(SMOLLM2, context=8192)
    base = baseline(s, ROUND)
    int4 = replace(s, kv_dtype="int4")
    assert est.kv_bytes(int4) == est.kv_bytes(s) / 4  # int4 is half a byte; bf16 is two
    assert est.kv_bytes(replace(s, kv_ratio=4)) == est.kv_bytes(s) / 4
    assert est.weight_bytes(SMOLLM2, "int8") == est.weight_bytes(SMOLLM2, "bf16") / 2
    for effect in (kv_compression(s, ROUND, 4), kv_quantization(s, ROUND, 4), kv_quantization(s, ROUND, 8),
                   weight_quantization(s, ROUND, 4), weight_quantization(s, ROUND, 8),
                   speculative(s, ROUND, 4, 0.7, 0.05), sparse_attention(s, ROUND, 0.25)):
        assert effect.decode_s < base.decode_s, effect  # every family cuts the memory-bound decode step
    assert kv_quantization(s, ROUND, 4).decode_s < kv_quantization(s, ROUND, 8).decode_s
    assert weight_quantization(s, ROUND, 4).decode_s < weight_quantization(s, ROUND, 8).decode_s
    # prefill is compute-bound here: fewer bytes do not shorten it, fewer attention FLOPs do
    for effect in (kv_compression(s, ROUND, 4), weight_quantization(s, ROUND, 4)):
        assert effect.prefill_s == pytest.approx(base.prefill_s)
    assert sparse_attention(s, ROUND, 0.25).prefill_s < base.prefill_s
    assert [e.family for e in all_effects(s, ROUND, Knobs())] == [
        "Baseline", "KV compression", "KV quantization", "Weight quantization", "Speculative decoding",
        "Sparse attention"]


def test_weight_only_quantization_computes_in_bf16_and_falls_back_where_a_device_lacks_it():
    devices = load_devices()
    assert est.compute_dtype("int4") == "bf16" and est.compute_dtype("fp32") == "fp32"
    assert devices["NVIDIA T4 16GB"].peak("bf16") == ("fp16", 65e12)  # Turing has no bf16
    intel = devices["Cloud CPU, 2 cores of an Intel Xeon (Ice Lake)"]
    assert intel.peak("bf16") == ("fp32", pytest.approx(0.371e12))


# --- devices ----------------------------------------------------------------------------------------------------

def test_the_device_table_is_sourced_and_matches_datasheets():
    devices = load_devices()
    for name in ("NVIDIA H100 SXM 80GB", "NVIDIA A100 SXM 80GB", "NVIDIA L4 24GB", "NVIDIA GeForce RTX 4090 24GB",
                 "NVIDIA T4 16GB", "Apple M2 (10-core GPU, 24GB)"):
        assert name in devices
    assert all(d.source and d.bandwidth_gbs > 0 and "fp32" in d.peak_tflops for d in devices.values())
    assert any(d.kind == "cpu" for d in devices.values())
    h100 = devices["NVIDIA H100 SXM 80GB"]
    assert (h100.bandwidth_gbs, h100.peak_tflops["bf16"], h100.memory_gb) == (3350, 989.4, 80)
    assert est.ridge(h100, "bf16") == pytest.approx(295, abs=1)  # FLOP/B where H100 bf16 turns compute-bound


@pytest.mark.parametrize("row, words", [
    ({"name": "x", "bandwidth_gbs": -1, "peak_tflops": {"fp32": 1}}, "bandwidth_gbs must be a positive number"),
    ({"name": "x", "bandwidth_gbs": 1, "peak_tflops": {"fp32": 1, "fp64": 2}}, "unknown dtype fp64"),
    ({"name": "x", "bandwidth_gbs": 1, "peak_tflops": {"bf16": 1}}, "needs fp32"),
])
def test_bad_device_rows_are_refused(row, words):
    with pytest.raises(SpecError, match=words):
        device_from_dict(row)


# --- this machine, measured once (timing stood in for) ----------------------------------------------------------

@pytest.fixture
def fake_timing(monkeypatch):
    calls = []
    monkeypatch.setattr(machine, "read_bandwidth_gbs", lambda threads=None: calls.append("read") or 12.5)
    peaks = {"fp32": 0.1, "bf16": 0.2}
    monkeypatch.setattr(machine, "matmul_tflops", lambda dtype: calls.append(dtype) or peaks[dtype])
    return calls


def test_the_machine_measurement_round_trips_through_its_cache(data_in_tmp, fake_timing):
    assert machine.load_measured() is None and not views.machine_measured()
    assert machine.THIS_MACHINE not in views.devices()
    measured = views.measure_this_machine()
    assert fake_timing == ["read", "fp32", "bf16"]  # measured once, on request
    path = data_in_tmp / "cache" / "machine.json"
    stored = json.loads(path.read_text())
    assert stored["bandwidth_gbs"] == 12.5 and stored["peak_tflops"] == {"fp32": 0.1, "bf16": 0.2}
    assert stored["measured_at"].endswith("UTC")
    assert machine.load_measured() == measured
    assert views.devices()[machine.THIS_MACHINE] == measured and views.machine_measured()
    assert fake_timing == ["read", "fp32", "bf16"]  # reading it back times nothing
    path.write_text("{damaged")
    assert machine.load_measured() is None


# --- the measured number beside the estimate --------------------------------------------------------------------

def _store_run(spec: dict, tpot: float, outputs: list[dict], origin: str = store.ORIGIN_LOCAL) -> int:
    """A finished experiment with one baseline run holding a tpot_ms metric and outputs, as tests/test_report.py
    builds them."""
    with store.session() as s:
        exp = store.Experiment(name=spec["workload"], spec=spec, spec_hash="h", status="done", origin=origin)
        run = store.Run(position=0, variant="baseline", is_baseline=True, params={},
                        environment={"dtype": "float32", "device_name": "Test CPU"})
        run.metrics = [store.Metric(name="tpot_ms", value=tpot, p10=tpot, p90=tpot, n=6, unit="ms")]
        run.outputs = [store.Output(item_index=i, item_key=f"k{i}", prompt="p", text="t", token_ids=[1], extra=extra)
                       for i, extra in enumerate(outputs)]
        exp.runs.append(run)
        s.add(exp)
        s.flush()
        return exp.id


def _timed(prompt_tokens: int, step_s: float, **more) -> dict:
    # 5 tokens: the first at 1 s (after prefill), then one every step_s -> TPOT = step_s
    return {"prompt_tokens": prompt_tokens, "token_times": [1.0 + i * step_s for i in range(5)], **more}


@pytest.fixture
def stored_runs():
    chat = _store_run({"model": "m", "workload": "chat", "batch_size": 1}, 20.0,
                      [_timed(40, 0.019), _timed(60, 0.021)])
    needle = _store_run({"model": "m", "workload": "needle", "batch_size": 1, "needle_lengths": [1024, 4096]}, 30.0,
                        [_timed(1030, 0.025, length=1024), _timed(1050, 0.027, length=1024),
                         _timed(4100, 0.040, length=4096), _timed(4120, 0.044, length=4096)])
    _store_run({"model": "m", "workload": "chat", "batch_size": 1}, 1.0, [_timed(1000, 0.001)],
               origin=store.ORIGIN_IMPORTED)  # someone else's machine: never the measured number here
    _store_run({"model": "other", "workload": "chat", "batch_size": 1}, 1.0, [_timed(50, 0.001)])
    return chat, needle


def test_measured_decode_takes_the_run_metric_at_a_short_context(stored_runs):
    chat, _ = stored_runs
    m = views.measured_decode("m", context=50)
    assert (m.experiment_id, m.workload, m.prompt_tokens, m.tpot_ms, m.n, m.near) == (chat, "chat", 50, 20.0, 6, True)
    assert (m.dtype, m.device) == ("float32", "Test CPU")
    assert m.ratio(0.005) == pytest.approx(20.0 / 5.0)  # measured 20 ms against a 5 ms floor


def test_measured_decode_takes_the_needle_length_nearest_the_context(stored_runs):
    _, needle = stored_runs
    m = views.measured_decode("m", context=4096)
    # the 4096-token needles' own TPOT from their token times: median of 40 and 44 ms
    assert (m.experiment_id, m.prompt_tokens, m.tpot_ms, m.n, m.near) == (needle, 4110, pytest.approx(42.0), 2, True)
    far = views.measured_decode("m", context=32768)
    assert far.prompt_tokens == 4110 and not far.near  # none near: the closest, its length stated


def test_measured_decode_finds_nothing_for_another_batch_or_model(stored_runs):
    assert views.measured_decode("m", context=4096, batch=8) is None
    assert views.measured_decode("nobody", context=4096) is None


# --- the page ---------------------------------------------------------------------------------------------------

def _page() -> AppTest:
    return AppTest.from_file(str(ROOT / "pages/5_What_if.py"), default_timeout=60).run()


def test_page_with_a_typed_shape_shows_the_estimate_and_the_technique_table(data_in_tmp):
    at = _page()
    assert not at.exception and not at.error
    assert at.title[0].value == "What-if calculator"
    estimate, techniques = at.table[0].value, at.table[1].value
    assert estimate.loc["Parameters", "Value"] == "134,515,008"
    assert estimate.loc["KV per token", "Value"] == "23.0" and estimate.loc["KV per token", "Unit"] == "KB"
    assert "memory-bound" in estimate.loc["Decode step: floor", "How"]
    assert list(techniques.index) == ["Baseline", "KV compression", "KV quantization", "Weight quantization",
                                      "Speculative decoding", "Sparse attention"]
    assert any("Estimate, not a measurement" in c.value for c in at.caption)
    assert any("Diffusion caching is out of scope" in c.value for c in at.caption)


def test_page_knobs_reach_the_technique_rows(data_in_tmp):
    at = _page()
    assert len(at.get("vega_lite_chart")) == 1  # the decode floor per technique
    before = at.table[1].value
    at.selectbox(key="whatif_kvbits").set_value(8).run()
    at.toggle(key="whatif_f_on").set_value(True).run()
    after = at.table[1].value
    assert not at.exception
    assert (before.loc["KV quantization", "Setting"], after.loc["KV quantization", "Setting"]) == ("int4", "int8")
    assert float(after.loc["KV quantization", "Decode floor [ms/token]"]) > float(
        before.loc["KV quantization", "Decode floor [ms/token]"])  # int8 keeps twice the bytes of int4
    assert after.loc["Sparse attention", "Setting"] == "s=0.25, f=0.5"  # Amdahl on the typed share


def test_page_refuses_a_bad_shape_with_the_field_named(data_in_tmp):
    at = _page()
    at.number_input(key="whatif_kv_heads").set_value(4).run()
    assert not at.exception and "kv_heads must divide heads" in at.error[0].value


def test_page_shows_the_measured_number_of_a_built_in_beside_the_floor(data_in_tmp):
    folder = data_in_tmp / "cache" / "models" / "tiny-builtin"
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps(SMOLLM2_CONFIG))
    exp = _store_run({"model": "tiny-builtin", "workload": "chat", "batch_size": 1}, 40.0, [_timed(4000, 0.04)])
    at = _page()
    assert not at.exception and not at.error
    measured = next(m.value for m in at.markdown if "Measured here" in m.value)
    assert f"experiment {exp}" in measured and "TPOT 40 ms" in measured and "x the estimated floor" in measured


def test_page_measures_this_machine_on_request(data_in_tmp, fake_timing):
    at = _page()
    assert fake_timing == []  # opening the page times nothing
    at.button(key="whatif_measure").click().run()
    assert not at.exception and fake_timing == ["read", "fp32", "bf16"]
    assert at.selectbox(key="whatif_device").value == machine.THIS_MACHINE


def test_the_page_opens_without_torch(data_in_tmp):
    code = ("import sys\nfrom streamlit.testing.v1 import AppTest\n"
            "at = AppTest.from_file('pages/5_What_if.py', default_timeout=60).run()\n"
            "assert not at.exception, at.exception\nassert 'torch' not in sys.modules\n")
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
