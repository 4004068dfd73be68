"""Engine 'hf_generate' with a decoding technique: transformers' assisted generation (prompt lookup, an assistant
model, an early exit) gets the technique's options, validation takes what has a counterpart and refuses the rest
by name; and the lab's adaptive k (AdaptiveK) keeps k_max while a wider round costs nothing and shrinks when it
does."""
import pytest
import torch

from lab.bench.validate import validate
from lab.errors import SpecError
from lab.llm.engine import Engine
from lab.llm.speculative import AdaptiveK
from lab.ops.distilled_draft import build_draft
from lab.ops.sampling import GenerationSettings
from lab.techniques import build
from lab.techniques.speculative.draft_model import _full_vocab_view
from tests.conftest import build_byte_tokenizer, build_tiny_llama

PROMPTS = [list(range(40, 60)), list(range(70, 75)) * 3, [100, 101, 102, 103, 104, 105, 106, 107, 100, 101, 102]]
TINY_DRAFT = {"draft_model": {"draft": "truncated", "draft_layers": 2},
              "layer_skip": {"draft_layers": 2, "pattern": "first"}}


@pytest.fixture(scope="module")
def tiny():
    # untied: a tied random model mostly predicts its input token, and every draft would agree with it
    return build_tiny_llama(layers=4, tied=False), build_byte_tokenizer()


def _spy(monkeypatch, model) -> list[dict]:
    """Record the keyword arguments of every model.generate() call (and what the assistant's generation_config
    held during it), still running the real generate()."""
    calls, real = [], model.generate

    def spy(*args, **kwargs):
        assistant = kwargs.get("assistant_model", model if "assistant_early_exit" in kwargs else None)
        seen = {} if assistant is None else {
            key: getattr(assistant.generation_config, key)
            for key in ("num_assistant_tokens", "num_assistant_tokens_schedule", "assistant_confidence_threshold")}
        calls.append({**kwargs, "assistant_config": seen})
        return real(*args, **kwargs)

    monkeypatch.setattr(model, "generate", spy)
    return calls


@pytest.mark.parametrize("name", ["prompt_lookup", "draft_model", "layer_skip"])
def test_hf_assisted_greedy_equals_plain_greedy(tiny, name):
    model, tok = tiny
    plain = Engine(model, tok)
    engine = Engine(model, tok, build([{"name": name, "k": 5, **TINY_DRAFT.get(name, {})}]))
    settings = GenerationSettings(max_new_tokens=40)
    for prompt in PROMPTS:
        expected = plain.generate(prompt, settings).token_ids
        got = engine.generate_hf(prompt, settings)
        assert got.token_ids == expected
        assert len(got.token_times) == len(got.token_ids)
        assert all(b >= a for a, b in zip(got.token_times, got.token_times[1:]))
        assert got.extra["target_forwards"] + 1 <= len(got.token_ids)
        values = engine.techniques[0].measure(got)  # no KeyError on what transformers does not report
        assert values["tokens_per_forward"] >= 1.0 and "acceptance_rate" not in values


def test_prompt_lookup_options_reach_generate_and_save_forwards(tiny, monkeypatch):
    model, tok = tiny
    engine = Engine(model, tok, build([{"name": "prompt_lookup", "k": 10, "ngram_size": 3}]))
    calls = _spy(monkeypatch, model)
    gen = engine.generate_hf(PROMPTS[1], GenerationSettings(max_new_tokens=48))
    assert len(calls) == 1
    assert calls[0]["prompt_lookup_num_tokens"] == 10 and calls[0]["max_matching_ngram_size"] == 3
    # a random tiny model soon repeats itself: lookup finds copies, so forwards bring several tokens at once
    assert gen.extra["target_forwards"] + 1 < len(gen.token_ids)
    assert gen.extra["accepted"] > 0


@pytest.mark.parametrize("adaptive, schedule", [(False, "constant"), (True, "heuristic_transient")])
def test_draft_model_assistant_config_is_set_for_the_call_and_restored(tiny, monkeypatch, adaptive, schedule):
    model, tok = tiny
    technique = build([{"name": "draft_model", "k": 6, "adaptive": adaptive, **TINY_DRAFT["draft_model"]}])[0]
    engine = Engine(model, tok, [technique])
    calls = _spy(monkeypatch, model)
    engine.generate_hf(PROMPTS[0], GenerationSettings(max_new_tokens=12))
    assistant = calls[0]["assistant_model"]
    assert assistant is technique._hf_assistant(engine)
    # transformers reads these from the assistant's generation_config: they must be there during the call
    assert calls[0]["assistant_config"] == {"num_assistant_tokens": 6, "num_assistant_tokens_schedule": schedule,
                                            "assistant_confidence_threshold": 0.0}
    assert assistant.generation_config.num_assistant_tokens != 6  # and set back after it


def test_layer_skip_is_an_early_exit_of_the_target(tiny, monkeypatch):
    model, tok = tiny
    engine = Engine(model, tok, build([{"name": "layer_skip", "k": 3, "draft_layers": 2, "pattern": "first"}]))
    calls = _spy(monkeypatch, model)
    engine.generate_hf(PROMPTS[0], GenerationSettings(max_new_tokens=8))
    assert calls[0]["assistant_early_exit"] == 2
    assert calls[0]["assistant_config"]["num_assistant_tokens"] == 3
    assert model.generation_config.num_assistant_tokens != 3  # the target's own config is set back
    assert model.config.num_hidden_layers == 4


def test_knob_values_without_a_counterpart_are_refused_by_name(tiny):
    model, tok = tiny
    for params, reason in [({"name": "prompt_lookup", "adaptive": True}, "adaptive = false"),
                           ({"name": "layer_skip", "draft_layers": 2}, "pattern = 'first'")]:
        technique = build([params])[0]
        assert reason in technique.hf_generate_refusal()
        with pytest.raises(SpecError, match=f"technique '{params['name']}' with engine 'hf_generate'"):
            technique.hf_generate_options(Engine(model, tok))
    assert build([{"name": "prompt_lookup"}])[0].hf_generate_refusal() is None


def test_trimmed_head_draft_assistant_scatters_into_the_full_vocabulary(tiny):
    model, tok = tiny
    vocab_ids = list(range(0, 260, 3))  # a head over a third of the vocabulary
    draft, vocab = build_draft(model, (0, 1), vocab_ids)
    view = _full_vocab_view(draft, vocab, model.config.vocab_size)
    ids = torch.tensor([PROMPTS[0]])
    with torch.no_grad():
        small, full = draft(ids).logits, view(ids).logits
    assert full.shape[-1] == 260 and small.shape[-1] == len(vocab_ids)
    assert torch.equal(vocab[small.argmax(-1)], full.argmax(-1))
    assert torch.isinf(full[..., 1]).all()  # a token outside the head is never proposed
    assert view.lm_head is not draft.lm_head and draft.generation_config is not view.generation_config
    # and transformers takes it as an assistant: greedy output is the target's
    plain = Engine(model, tok).generate(PROMPTS[0], GenerationSettings(max_new_tokens=24)).token_ids
    out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=24, do_sample=False,
                         assistant_model=view, eos_token_id=257, pad_token_id=257)
    assert out[0, ids.shape[1]:].tolist() == plain


# --- validation -------------------------------------------------------------------------------------------
def test_validation_takes_weights_and_prompt_lookup_with_hf_generate():
    spec = validate({"variants": [{"name": "hf lookup", "engine": "hf_generate",
                                   "techniques": [{"name": "weight_dtype"}, {"name": "prompt_lookup", "k": 10}]}]},
                    check_model_exists=False)
    variant = next(v for v in spec.variants if v.name == "hf lookup")
    assert variant.engine == "hf_generate" and [t["name"] for t in variant.techniques][-1] == "prompt_lookup"


def test_validation_refuses_a_kv_cache_technique_with_hf_generate_naming_the_allowed():
    with pytest.raises(SpecError, match=r"no counterpart of 'streaming_llm'; allowed with it: weights techniques "
                                        r"and .*draft_model.*layer_skip.*prompt_lookup"):
        validate({"variants": [{"engine": "hf_generate", "techniques": [{"name": "streaming_llm"}]}]},
                 check_model_exists=False)


# --- the adaptive schedule ----------------------------------------------------------------------------------
def _feed(schedule, rounds: int, accepted, draft_s, verify_s) -> list[int]:
    """Run `rounds` synthetic rounds at the schedule's current k; returns k after each."""
    ks = []
    for r in range(rounds):
        w = schedule.k
        schedule.update(torch.tensor([min(accepted(r, w), w)]), torch.tensor([w]), draft_s(w), verify_s(w))
        ks.append(schedule.k)
    return ks


def test_adaptive_k_reaches_k_max_and_keeps_it_while_width_is_free():
    # prompt lookup on a memory-bound CPU: drafting free, verifying w+1 tokens costs what 1 does (with a little
    # jitter), and a copy is either taken whole or wrong from its first token: every other round is rejected
    schedule = AdaptiveK(4, True, 10)
    jitter = iter([1.0, 1.03, 0.98, 1.01] * 100)
    ks = _feed(schedule, 60, lambda r, w: w if r % 2 == 0 else 0,
               lambda w: 1e-4, lambda w: 0.02 * next(jitter) * (1 + 0.002 * w))
    assert ks[0] == 10 and set(ks) == {10}  # transformers' heuristic would drop to 9 after the first rejection
    all_accepted = AdaptiveK(1, True, 6)
    assert _feed(all_accepted, 20, lambda r, w: w, lambda w: 1e-4, lambda w: 0.02)[-10:] == [6] * 10


def test_adaptive_k_shrinks_when_width_costs_and_drafts_are_rejected():
    # verification that grows linearly with the width (a compute-bound target) and drafts mostly rejected; the
    # width cost shows as the first rounds (the start k, then the argmax) differ in width
    expensive = AdaptiveK(4, True, 8)
    ks = _feed(expensive, 40, lambda r, w: 1 if r % 4 == 0 else 0, lambda w: 1e-4, lambda w: 0.01 * (1 + w))
    assert ks[-1] <= 2
    # a draft model: one draft forward per drafted token (verification free), from k_max, one width only
    draft_model = AdaptiveK(8, True, 8)
    ks = _feed(draft_model, 40, lambda r, w: 0, lambda w: 0.004 * w, lambda w: 0.02)
    assert ks[-1] == 1
    # and the same draft model accepted everywhere keeps a long k
    good = AdaptiveK(4, True, 8)
    assert _feed(good, 40, lambda r, w: w, lambda w: 0.004 * w, lambda w: 0.02)[-1] == 8


def test_fixed_k_never_moves():
    fixed = AdaptiveK(3, False, 8)
    assert set(_feed(fixed, 10, lambda r, w: 0, lambda w: 0.004 * w, lambda w: 0.02 * (1 + w))) == {3}


@pytest.mark.real_model
def test_smollm2_hf_prompt_lookup_and_distilled_draft_equal_the_lab_greedy():
    from lab.bench.loader import load
    from lab.llm.workloads import grounded_items
    loaded = load("smollm2-135m-instruct", device="cpu", kind="llm")
    plain = Engine(loaded.model, loaded.tokenizer)
    lookup = Engine(loaded.model, loaded.tokenizer, build([{"name": "prompt_lookup", "k": 10}]))
    settings = GenerationSettings(max_new_tokens=16)
    distilled = Engine(loaded.model, loaded.tokenizer, build([{"name": "draft_model", "k": 4}]))  # trimmed head
    for item in grounded_items(loaded.tokenizer, 2):
        expected = plain.generate(item.prompt_ids, settings).token_ids
        assert lookup.generate_hf(item.prompt_ids, settings).token_ids == expected
        assert lookup.generate(item.prompt_ids, settings).token_ids == expected
        drafted = distilled.generate_hf(item.prompt_ids, settings)
        assert drafted.token_ids == expected
        assert drafted.extra["accepted"] > 0  # the scattered head proposes target ids the target agrees with
