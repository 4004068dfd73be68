"""Compiled decode (a static KV cache and torch.compile of the step): greedy tokens equal the eager loop's at the
same dtype (alone and under prompt lookup, whose rejected drafts stay in the static cache past the sequence's end),
the compile happens once per shape and is counted, and what cannot stack with it is refused with the reason."""
import os

import pytest
import torch

from lab.bench.validate import validate
from lab.errors import SpecError
from lab.llm.engine import Engine
from lab.ops.sampling import GenerationSettings
from lab.ops.static_batch import use_disk_cache
from lab.techniques import build
from tests.conftest import build_byte_tokenizer, build_tiny_llama

PROMPTS = [list(range(40, 60)), [100, 101, 102, 103, 104, 105, 106, 107, 100, 101, 102] * 2]
# the largest logit gap, relative to the logits' scale, that float rounding in a reordered kernel could flip
TIE = 1e-4


@pytest.fixture(scope="module")
def tiny():
    return build_tiny_llama(layers=2, tied=False), build_byte_tokenizer()


def first_disagreement_is_a_tie(model, prompt: list[int], expected: list[int], got: list[int]) -> bool:
    """Equal tokens, or the first differing token is where the eager model's top two logits tie to rounding."""
    if got == expected:
        return True
    i = next(j for j, (a, b) in enumerate(zip(expected, got)) if a != b)
    with torch.inference_mode():
        logits = model(torch.tensor([prompt + expected[:i]])).logits[0, -1].float()
    top = logits.topk(2).values
    return bool(top[0] - top[1] <= TIE * logits.abs().max())


def test_compiled_greedy_equals_eager_greedy(tiny):
    model, tok = tiny
    eager, compiled = Engine(model, tok), Engine(model, tok, build([{"name": "compiled_decode", "cache_block": 64}]))
    settings = GenerationSettings(max_new_tokens=24)
    for prompt in PROMPTS:
        expected = eager.generate(prompt, settings).token_ids
        got = compiled.generate(prompt, settings)
        assert len(got.token_ids) == len(expected)
        assert first_disagreement_is_a_tie(model, prompt, expected, got.token_ids)
        assert got.token_times == sorted(got.token_times)


def test_compiled_prompt_lookup_equals_eager_greedy(tiny):
    model, tok = tiny
    eager = Engine(model, tok)
    stacked = Engine(model, tok, build([{"name": "prompt_lookup", "k": 4, "min_ngram": 1},
                                        {"name": "compiled_decode", "cache_block": 64}]))
    settings = GenerationSettings(max_new_tokens=24)
    rounds = 0
    for prompt in PROMPTS:
        expected = eager.generate(prompt, settings).token_ids
        got = stacked.generate(prompt, settings)
        assert first_disagreement_is_a_tie(model, prompt, expected, got.token_ids)
        rounds += sum(1 for r in got.extra["spec_rounds"] if r["proposed"])
    assert rounds > 0  # drafts were verified through the compiled block (else the stack tested nothing)


def test_each_shape_compiles_once_and_is_counted(tiny):
    model, tok = tiny
    engine = Engine(model, tok, build([{"name": "compiled_decode", "cache_block": 64}]))
    technique = engine.slots["runtime"]
    assert technique.run_metrics() == {}
    settings = GenerationSettings(max_new_tokens=8)
    engine.generate(PROMPTS[0], settings)
    first = technique.run_metrics()["decode_compile_s"]
    assert first > 0
    engine.generate(PROMPTS[0], settings)  # same cache length, same width: the compiled graph is reused
    assert technique.run_metrics()["decode_compile_s"] == first
    engine.generate(list(range(40, 120)), settings)  # needs a longer static cache: one more shape
    assert technique.run_metrics()["decode_compile_s"] > first
    assert technique.compiles_per_shape()  # so the runner's warm-up meets every item


def test_kv_bytes_are_the_static_cache(tiny):
    """The static cache holds its whole length from the first token: the KV column reports that, not the tokens."""
    model, tok = tiny
    eager = Engine(model, tok).generate(PROMPTS[0], GenerationSettings(max_new_tokens=8))
    compiled = Engine(model, tok, build([{"name": "compiled_decode", "cache_block": 512}])).generate(
        PROMPTS[0], GenerationSettings(max_new_tokens=8))
    assert compiled.kv_bytes > eager.kv_bytes
    assert compiled.kv_trace[0][1] == compiled.kv_trace[-1][1]  # allocated once


def test_disk_cache_lives_under_data(monkeypatch, data_in_tmp):
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR", raising=False)
    use_disk_cache()
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == str(data_in_tmp / "cache" / "inductor")
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", "/somewhere/else")
    use_disk_cache()  # a user's own setting wins
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == "/somewhere/else"


@pytest.mark.parametrize("change, message", [
    ({"techniques": [{"name": "compiled_decode"}, {"name": "snapkv"}]}, "static cache of fixed size"),
    ({"techniques": [{"name": "compiled_decode"}, {"name": "sink_window"}]}, "attention function of its own"),
    ({"techniques": [{"name": "compiled_decode"}], "workload": "perplexity"}, "allowed workloads: chat"),
    ({"techniques": [{"name": "compiled_decode"}], "warmup": 0}, "allowed warmup: 1 to 10"),
    ({"techniques": [{"name": "compiled_decode"}], "batch_size": 2}, "runs batch 1"),
    ({"techniques": [{"name": "compiled_decode", "mode": "reduce-overhead"}], "device": "cpu"}, "CUDA graphs"),
])
def test_what_cannot_stack_is_refused_with_the_reason(tiny_spec, change, message):
    variant = {"name": "x", "techniques": change.pop("techniques")}
    with pytest.raises(SpecError, match=message):
        validate({**tiny_spec, **change, "variants": [variant]})


def test_stacks_with_weights_and_drafts(tiny_spec):
    spec = validate({**tiny_spec, "variants": [{"techniques": [
        {"name": "weight_dtype"}, {"name": "prompt_lookup", "k": 10}, {"name": "compiled_decode"}]}]})
    assert [t["name"] for t in spec.variants[1].techniques] == ["weight_dtype", "prompt_lookup", "compiled_decode"]


@pytest.mark.real_model
def test_smollm2_compiled_greedy_equals_eager_greedy():
    """On the real model, fp32: compiled decode alone and stacked with prompt lookup give the eager tokens."""
    from lab.bench.loader import load
    from lab.llm.workloads import grounded_items
    loaded = load("smollm2-135m-instruct", device="cpu")
    eager = Engine(loaded.model, loaded.tokenizer)
    compiled = Engine(loaded.model, loaded.tokenizer, build([{"name": "compiled_decode"}]))
    stacked = Engine(loaded.model, loaded.tokenizer, build([{"name": "prompt_lookup", "k": 10},
                                                            {"name": "compiled_decode"}]))
    settings = GenerationSettings(max_new_tokens=32)
    item = grounded_items(loaded.tokenizer, 1)[0]
    expected = eager.generate(item.prompt_ids, settings).token_ids
    assert len(expected) >= 16
    for engine in (compiled, stacked):
        got = engine.generate(item.prompt_ids, settings).token_ids
        assert first_disagreement_is_a_tie(loaded.model, item.prompt_ids, expected, got)
