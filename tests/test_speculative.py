"""Speculative decoding on tiny random Llamas: greedy output equals plain greedy (batch 1 and a ragged batch),
sampled output is distributed as the target's, and the acceptance metrics move the way drafting says."""
from collections import Counter

import pytest
import torch

from lab.llm.engine import Engine
from lab.llm.speculative import AdaptiveK, speculative_generate, verify
from lab.ops.drafting import (
    ModelDrafter,
    NullDrafter,
    PromptLookupDrafter,
    Proposal,
    lookup_continuation,
    truncated_copy,
)
from lab.ops.sampling import GenerationSettings, warped_probs
from lab.techniques import all_techniques, build
from tests.conftest import build_byte_tokenizer, build_tiny_llama

SPECULATIVE = sorted(n for n, cls in all_techniques().items() if cls.family == "speculative")
# the shipped distilled draft is SmolLM2's; on the tiny model the draft is a truncated copy
TINY_PARAMS = {"draft_model": {"draft": "truncated", "draft_layers": 2}, "layer_skip": {"draft_layers": 2}}
PROMPTS = [list(range(40, 60)), list(range(70, 75)) * 3, [100, 101, 102, 103, 104, 105, 106, 107, 100, 101, 102],
           list(range(120, 150))]


@pytest.fixture(scope="module")
def tiny():
    # untied: a tied random model mostly predicts its input token, and every draft would agree with it
    return build_tiny_llama(layers=4, tied=False), build_byte_tokenizer()


def engine_for(tiny, name, **params):
    model, tok = tiny
    return Engine(model, tok, build([{"name": name, **TINY_PARAMS.get(name, {}), **params}]))


def test_every_speculative_technique_is_covered():
    assert {"prompt_lookup", "draft_model", "layer_skip"} <= set(SPECULATIVE)


@pytest.mark.parametrize("name", SPECULATIVE)
@pytest.mark.parametrize("adaptive", [False, True])
def test_greedy_equals_plain_greedy_batch_1(tiny, name, adaptive):
    plain = Engine(*tiny)
    spec = engine_for(tiny, name, adaptive=adaptive)
    settings = GenerationSettings(max_new_tokens=40)
    for prompt in PROMPTS:
        expected = plain.generate(prompt, settings).token_ids
        got = spec.generate(prompt, settings)
        assert got.token_ids == expected
        assert got.extra["target_forwards"] + 1 <= len(expected)  # never more target forwards than plain decoding


@pytest.mark.parametrize("name", SPECULATIVE + ["baseline"])
def test_greedy_batch_of_ragged_prompts_equals_batch_1(tiny, name):
    plain = Engine(*tiny)
    engine = plain if name == "baseline" else engine_for(tiny, name)
    settings = GenerationSettings(max_new_tokens=32)
    expected = [plain.generate(p, settings).token_ids for p in PROMPTS]
    got = engine.generate_batch(PROMPTS, settings)
    assert [g.token_ids for g in got] == expected


def test_sequences_stop_on_their_own_eos(tiny):
    model, tok = tiny
    plain = Engine(model, tok)
    settings = GenerationSettings(max_new_tokens=24)
    outs = [plain.generate(p, settings).token_ids for p in PROMPTS]
    # make a token that one sequence generates mid-way an end-of-sequence token
    stop = outs[0][5]
    plain.eos_ids = {stop}
    spec = engine_for(tiny, "layer_skip")
    spec.eos_ids = {stop}
    expected = [plain.generate(p, settings) for p in PROMPTS]
    got = spec.generate_batch(PROMPTS, settings)
    assert [g.token_ids for g in got] == [e.token_ids for e in expected]
    assert got[0].stopped_by == "eos" and got[0].token_ids[-1] == stop


def test_prompt_lookup_accepts_copies_and_saves_target_forwards(tiny):
    engine = engine_for(tiny, "prompt_lookup", k=4)
    # a random tiny model soon repeats itself, so lookup in its own output finds continuations
    gen = engine.generate(PROMPTS[1], GenerationSettings(max_new_tokens=48))
    x = gen.extra
    assert x["drafted"] > 0 and x["accepted"] > 0
    assert x["target_forwards"] + 1 < len(gen.token_ids)  # more than one token per target forward
    spans = sum(1 + r["accepted"] for r in x["spec_rounds"]) + 1
    assert spans >= len(gen.token_ids)  # every token is accounted for by a round


def test_a_draft_equal_to_the_target_is_always_accepted(tiny):
    model, tok = tiny
    full = engine_for(tiny, "layer_skip", draft_layers=4, k=3)  # all 4 layers: the draft *is* the target
    gen = full.generate(PROMPTS[0], GenerationSettings(max_new_tokens=33))
    assert gen.extra["accepted"] == gen.extra["drafted"] > 0
    assert gen.extra["target_forwards"] == 8  # 32 tokens after the prefill's, 4 per round
    weak = engine_for(tiny, "layer_skip", draft_layers=1, k=3).generate(PROMPTS[0], GenerationSettings(33))
    assert weak.extra["accepted"] < weak.extra["drafted"]  # a one-layer draft of a random model disagrees


def test_lookup_continuation_prefers_the_longest_ngram():
    tokens = torch.tensor([1, 2, 3, 9, 9, 5, 2, 3, 7, 8, 4, 2, 3])
    assert lookup_continuation(tokens, 2, 2, 1) == [9, 9]  # "2 3" first seen at 1, followed by 9 9
    assert lookup_continuation(torch.tensor([5, 6, 7]), 3, 3, 2) == []
    assert lookup_continuation(torch.tensor([4, 8, 1, 2, 5, 3, 1, 2]), 3, 3, 1) == [5, 3, 1]


def test_greedy_verify_counts_the_leading_agreements():
    logits = torch.full((2, 4, 10), -1.0)
    for row, best in enumerate([[1, 2, 3, 4], [1, 5, 3, 6]]):
        logits[row, torch.arange(4), torch.tensor(best)] = 1.0
    proposal = Proposal(torch.tensor([[1, 2, 3], [1, 2, 3]]), torch.ones(2, 3, dtype=torch.long))
    n, own = verify(logits, proposal, GenerationSettings(), None)
    assert n.tolist() == [3, 1] and own.tolist() == [4, 5]
    short = Proposal(torch.tensor([[1, 2, 3]]), torch.tensor([[1, 0, 0]]))  # only one real draft
    n, own = verify(logits[:1], short, GenerationSettings(), None)
    assert n.tolist() == [1] and own.tolist() == [2]


# --- sampling: the output must be distributed as the target's -------------------------------------------
N_SAMPLES, PROMPT = 3000, [65, 66, 67, 68, 69, 70]
COLD = GenerationSettings(max_new_tokens=3, temperature=0.02, seed=0)  # a random tiny model is nearly flat


def _exact_probability(model, triples, settings):
    """P(t1, t2, t3) under the target for each observed triple, from its conditional distributions."""
    prefixes = {(): None}
    for t in triples:
        prefixes[t[:1]] = prefixes[t[:2]] = None
    keys = list(prefixes)
    with torch.no_grad():
        for key in keys:
            logits = model(input_ids=torch.tensor([PROMPT + list(key)])).logits[0, -1]
            prefixes[key] = warped_probs(logits[None], settings)[0]
    return {t: float(prefixes[()][t[0]] * prefixes[t[:1]][t[1]] * prefixes[t[:2]][t[2]]) for t in triples}


def _total_variation(samples: list[tuple], model, settings) -> float:
    counts = Counter(samples)
    exact = _exact_probability(model, list(counts), settings)
    seen = sum(abs(c / len(samples) - exact[t]) for t, c in counts.items())
    return 0.5 * (seen + max(0.0, 1.0 - sum(exact.values())))  # unseen triples: all their mass is the error


def test_speculative_sampling_matches_the_target_distribution():
    # a draft related to the target (its first layer) agrees often enough, unlike an independent random model
    target = build_tiny_llama(seed=0, layers=2, tied=False)
    draft = truncated_copy(target, 1)
    engine = Engine(target, build_byte_tokenizer())
    engine.eos_ids = set()
    prompts = [PROMPT] * N_SAMPLES

    def sample(drafter, k, settings=COLD):
        gens = speculative_generate(engine, drafter, prompts, settings, AdaptiveK(k, False, k))
        return [tuple(g.token_ids) for g in gens], gens

    with torch.inference_mode():
        plain, _ = sample(NullDrafter(), 1)
        spec, gens = sample(ModelDrafter(draft), 2)
        lookup, lookup_gens = sample(PromptLookupDrafter(2, 1), 2)
        # what the draft alone would produce: the output if every draft were accepted
        draft_only = [tuple(g.token_ids) for g in Engine(draft, build_byte_tokenizer()).generate_batch(prompts, COLD)]
    accepted = sum(g.extra["accepted"] for g in gens) / sum(g.extra["drafted"] for g in gens)
    assert 0.05 < accepted < 0.95  # the rejection rule was exercised both ways
    assert sum(g.extra["drafted"] for g in lookup_gens) > 100
    noise = _total_variation(plain, target, COLD)  # sampling error of plain sampling with this many samples
    assert noise < 0.1
    assert _total_variation(spec, target, COLD) < noise + 0.05
    assert _total_variation(lookup, target, COLD) < noise + 0.05
    assert _total_variation(draft_only, target, COLD) > noise + 0.3  # the test can tell a wrong distribution


def test_truncated_copy_is_a_separate_model_with_the_first_layers(tiny):
    model, _ = tiny
    draft = truncated_copy(model, 2)
    assert len(draft.model.layers) == 2 and len(model.model.layers) == 4
    assert draft.model.layers[0].mlp.up_proj.weight.data_ptr() != model.model.layers[0].mlp.up_proj.weight.data_ptr()
    torch.testing.assert_close(draft.model.layers[1].mlp.up_proj.weight, model.model.layers[1].mlp.up_proj.weight)


def test_speculative_refuses_a_cache_technique_beside_it():
    from lab.errors import SpecError
    with pytest.raises(SpecError, match="rolls the KV cache back"):
        build([{"name": "prompt_lookup"}, {"name": "streaming_llm"}])


def test_unknown_draft_model_is_refused_by_name():
    from lab.bench.validate import validate
    from lab.errors import SpecError
    with pytest.raises(SpecError, match="knob 'draft'.*no-such-model.*smollm2-distilled"):
        validate({"variants": [{"techniques": [{"name": "draft_model", "draft": "no-such-model"}]}]})


def test_a_draft_models_weights_are_counted_and_layer_skip_adds_none(tiny):
    plain = Engine(*tiny).weight_bytes()
    with_draft = engine_for(tiny, "draft_model").weight_bytes()
    layer = tiny[0].model.layers[0]
    per_layer = sum(p.numel() * p.element_size() for p in layer.parameters())
    assert with_draft >= plain + 2 * per_layer  # the truncated copy holds two layers of its own (and more)
    assert engine_for(tiny, "layer_skip").weight_bytes() == plain  # a view of the target's own layers


def test_distilled_draft_refuses_a_target_it_was_not_made_for(tiny):
    engine = engine_for(tiny, "draft_model", draft="smollm2-distilled")
    with pytest.raises(ValueError, match="made for SmolLM2-135M.*use draft = 'truncated'"):
        engine.generate(PROMPTS[0], GenerationSettings(4))
