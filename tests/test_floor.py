"""The memory-bound floor (lab/bench/floor.py): bytes read per decoded token counted by hand, fewer with halved
weights (bf16, end to end through the runner) and with fewer target forwards (speculative decoding), and the
machine's bandwidth measured once and stored."""
import json

import pytest
import torch

from lab.bench import floor, run
from lab.bench.floor import bandwidth_gbs, decode_floor, weights_read
from lab.bench.measure import MB
from lab.bench.validate import validate
from lab.llm.engine import Engine
from lab.ops.generation import Generation
from lab.ops.sampling import GenerationSettings
from lab.techniques import build
from tests.conftest import build_byte_tokenizer, build_tiny_llama

# 5 tokens after a 10-token prompt, 10 ms apart after the first; the cache grows 1 MB per token seen
TIMES = [0.05, 0.06, 0.07, 0.08, 0.09]
TRACE = [(10 + i, (10 + i) * MB) for i in range(5)]  # after the prefill, then after each of 4 decode forwards


def plain_generation(trace=TRACE) -> Generation:
    return Generation(prompt_len=10, token_ids=[1, 2, 3, 4, 5], token_times=TIMES, kv_bytes=14 * MB,
                      kv_trace=list(trace))


def test_plain_decoding_reads_the_weights_and_the_cache_once_per_token():
    values = decode_floor(plain_generation(), 100 * MB, 100.0)
    # 4 decode forwards (the prefill made token 1), each reading 100 MB of weights and the cache as it stood
    # before it (10, 11, 12, 13 MB): (400 + 46) MB over 4 tokens
    assert values["decode_mb_per_token"] == pytest.approx(111.5)
    floor_s = 111.5 * MB / 100e9  # 100 GB/s
    assert values["floor_ms"] == pytest.approx(1000 * floor_s)  # 1.169 ms
    assert values["tpot_over_floor"] == pytest.approx(0.010 / floor_s)  # TPOT 10 ms: 8.55x the floor


def test_without_a_trace_the_cache_is_taken_to_grow_evenly():
    # transformers' generate() leaves no trace: 14 MB at the end over 14 tokens seen is the same 1 MB per token
    untraced = decode_floor(plain_generation(trace=[]), 100 * MB, 100.0)
    assert untraced == pytest.approx(decode_floor(plain_generation(), 100 * MB, 100.0))


def test_no_floor_without_decoded_tokens_or_bandwidth():
    one = Generation(prompt_len=10, token_ids=[1], token_times=[0.05], kv_trace=[(10, 10 * MB)])
    assert decode_floor(one, 100 * MB, 100.0) == {}
    assert decode_floor(plain_generation(), 100 * MB, None) == {}


def test_fewer_target_forwards_read_fewer_bytes_per_token():
    # the same 5 tokens in 2 verify rounds of 2 tokens each (1 draft accepted + the target's own)
    rounds = [{"accepted": 1}, {"accepted": 1}]
    spec = Generation(prompt_len=10, token_ids=[1, 2, 3, 4, 5], token_times=TIMES, kv_bytes=14 * MB,
                      kv_trace=[(10, 10 * MB), (12, 12 * MB), (14, 14 * MB)],
                      extra={"target_forwards": 2, "spec_rounds": rounds, "drafted": 4})
    values = decode_floor(spec, 100 * MB, 100.0)
    # forwards start at 10 and 12 tokens seen: (200 + 22) MB over 4 tokens, half the plain loop's 111.5
    assert values["decode_mb_per_token"] == pytest.approx(55.5)
    # a draft model's own 10 MB per drafted token (4 drafted) come on top: (222 + 40) / 4
    with_draft = decode_floor(spec, 100 * MB, 100.0, draft_weight_bytes=10 * MB)
    assert with_draft["decode_mb_per_token"] == pytest.approx(65.5)
    # rounds not recorded: the verify forwards are spread evenly over the tokens, the weights still counted twice
    spread = Generation(**{**spec.__dict__, "extra": {"target_forwards": 2}})
    assert decode_floor(spread, 100 * MB, 100.0)["decode_mb_per_token"] == pytest.approx(55.5)


@pytest.fixture(scope="module")
def tiny():
    # untied, 4 layers: the random model repeats itself, so prompt lookup finds drafts (tests/test_speculative.py)
    return build_tiny_llama(layers=4, tied=False), build_byte_tokenizer()


def test_prompt_lookup_on_a_real_model_reads_fewer_bytes_per_token_than_plain_decoding(tiny):
    model, tok = tiny
    plain, lookup = Engine(model, tok, build([])), Engine(model, tok, build([{"name": "prompt_lookup", "k": 4}]))
    assert weights_read(lookup) == weights_read(plain) == (plain.weight_bytes(), 0)  # lookup has no weights
    prompt, settings = list(range(70, 75)) * 3, GenerationSettings(max_new_tokens=48)
    a, b = plain.generate(prompt, settings), lookup.generate(prompt, settings)
    assert a.token_ids == b.token_ids  # greedy: the same tokens either way
    assert b.extra["target_forwards"] + 1 < len(b.token_ids)  # more than one token per verify forward
    per_token = [decode_floor(g, plain.weight_bytes(), 20.0)["decode_mb_per_token"] for g in (a, b)]
    assert per_token[1] < per_token[0]
    # every plain decode forward reads all the weights: at least the weights per token
    assert per_token[0] > plain.weight_bytes() / MB


def test_a_draft_models_own_weights_are_split_from_the_targets(tiny):
    model, tok = tiny
    engine = Engine(model, tok, build([{"name": "draft_model", "draft": "truncated", "draft_layers": 2}]))
    target, draft = weights_read(engine)
    assert target == Engine(model, tok, build([])).weight_bytes() and draft > 0
    assert target + draft == engine.weight_bytes()


def test_bandwidth_is_measured_once_per_process_stored_per_host_and_threads_and_never_lowered(data_in_tmp,
                                                                                               monkeypatch):
    measured = {1: [10.0, 7.0], 2: [20.0, 30.0]}  # what each new process would measure, per thread count
    calls = []
    monkeypatch.setattr(floor, "_measured", {})
    monkeypatch.setattr(floor.machine, "read_bandwidth_gbs", lambda threads: calls.append(threads)
                        or measured[threads][sum(c == threads for c in calls) - 1])
    assert bandwidth_gbs("cpu", 1) == bandwidth_gbs("cpu", 1) == 10.0 and calls == [1]  # once per process
    assert bandwidth_gbs("cpu", 2) == 20.0 and calls == [1, 2]  # each thread count its own
    table = json.loads(floor.cache_path().read_text())
    assert {k: v["bandwidth_gbs"] for k, v in table.items()} == {floor.device_key("cpu", 1): 10.0,
                                                                  floor.device_key("cpu", 2): 20.0}
    assert "on 2 threads" in table[floor.device_key("cpu", 2)]["source"]
    monkeypatch.setattr(floor, "_measured", {})  # a new process: 1 thread now measures weaker, 2 stronger
    assert bandwidth_gbs("cpu", 1) == 10.0  # the weaker measurement neither replaces nor lowers the stored one
    assert bandwidth_gbs("cpu", 2) == 30.0
    table = json.loads(floor.cache_path().read_text())
    assert [table[floor.device_key("cpu", t)]["bandwidth_gbs"] for t in (1, 2)] == [10.0, 30.0]
    assert floor.TRIES == 3
    measured[2].append(25.0)
    monkeypatch.setattr(floor, "_measured", {})  # a third process: a third try, weaker, so 30 stays
    assert bandwidth_gbs("cpu", 2) == 30.0 and calls.count(2) == 3
    monkeypatch.setattr(floor, "_measured", {})  # the best of TRIES tries: read, not measured, from now on
    assert bandwidth_gbs("cpu", 2) == 30.0 and calls.count(2) == 3
    assert json.loads(floor.cache_path().read_text())[floor.device_key("cpu", 2)]["tries"] == 3
    assert bandwidth_gbs("mps") is None  # a CPU measurement says nothing about another device's memory
    if not torch.cuda.is_available():
        assert bandwidth_gbs("cuda") is None


def test_the_whatif_pages_measurement_never_stands_in_for_the_floors(data_in_tmp, monkeypatch):
    """The What-if page's button may run on a busy machine; the floor measures its own on the run's threads."""
    monkeypatch.setattr(floor, "_measured", {})
    monkeypatch.setattr(floor.machine, "load_measured", lambda: type("Device", (), {"bandwidth_gbs": 3.0})())
    monkeypatch.setattr(floor.machine, "read_bandwidth_gbs", lambda threads: 31.0)
    assert bandwidth_gbs("cpu", 2) == 31.0


def test_the_stored_bandwidth_is_at_least_a_fresh_multithreaded_read(data_in_tmp, monkeypatch):
    """Measured for real: what the floor divides by is no weaker than a fresh read on every core (10% allowed for
    the machine's noise between two measurements; the single-threaded numpy copy it replaces read 35-45% low)."""
    monkeypatch.setattr(floor, "_measured", {})
    threads = torch.get_num_threads()
    stored = bandwidth_gbs("cpu", threads)
    fresh = floor.machine.read_bandwidth_gbs(threads)
    assert stored >= 0.9 * fresh, (stored, fresh)
    assert json.loads(floor.cache_path().read_text())[floor.device_key("cpu", threads)]["bandwidth_gbs"] == \
        pytest.approx(stored, abs=0.01)


def test_halved_weights_lower_the_floor_end_to_end(tiny_spec, data_in_tmp, monkeypatch):
    """fp32 baseline and bf16 weights through the real runner: every generation gets a floor, and bf16's is lower
    (half the weight and KV bytes over the same bandwidth)."""
    monkeypatch.setattr(floor, "_measured", {})  # measured for real, once, into the temp data folder
    spec = validate({**tiny_spec, "perplexity_tokens": 0})
    base, half = run.execute(spec)
    n = spec.repeats * spec.prompts
    bandwidth = base.environment["memory_bandwidth_gbs"]
    assert bandwidth > 0 and half.environment["memory_bandwidth_gbs"] == bandwidth
    assert all(v["bandwidth_gbs"] > 0 for v in json.loads(floor.cache_path().read_text()).values())
    for res in (base, half):
        assert len(res.samples["floor_ms"]) == len(res.samples["decode_mb_per_token"]) == n
        for mb, ms, tpot, ratio in zip(res.samples["decode_mb_per_token"], res.samples["floor_ms"],
                                       res.samples["tpot_ms"], res.samples["tpot_over_floor"]):
            assert ms == pytest.approx(mb * MB / (next(iter(floor._measured.values())) * 1e9) * 1000)
            assert ratio == pytest.approx(tpot / ms)
            assert mb > res.samples["weight_mb"][0]  # the weights once per token, and the cache on top
    assert max(half.samples["floor_ms"]) < min(base.samples["floor_ms"])
