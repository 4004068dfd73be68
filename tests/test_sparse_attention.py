"""Sparse attention patterns on the tiny random Llama: the mask against a slow definition, dense equality when the
pattern covers everything, kept share moving with the window, decode agreeing with prefill, and refusals."""
from __future__ import annotations

import pytest
import torch

from lab.bench.validate import validate
from lab.errors import SpecError
from lab.llm.engine import Engine
from lab.ops.sampling import GenerationSettings
from lab.techniques import build

pytestmark = pytest.mark.usefixtures("data_in_tmp")  # inductor's kernel cache lands in a temp folder

IDS = list(b"Attention sinks hold the mass; the window holds the recent words. " * 2)


@pytest.fixture(scope="module")
def tiny(tiny_llama_and_tokenizer):
    return tiny_llama_and_tokenizer


def sink_window(**knobs):
    return build([{"name": "sink_window", **knobs}], model_kind="llm")


def slow_keep(length: int, n_sink: int, window: int) -> torch.Tensor:
    """The definition, pair by pair: query i sees key j when j <= i and (j < n_sink or i - j < window)."""
    keep = torch.zeros(length, length, dtype=torch.bool)
    for i in range(length):
        for j in range(i + 1):
            keep[i, j] = j < n_sink or i - j < window
    return keep


@pytest.mark.parametrize("n_sink,window", [(0, 1), (3, 7), (4, 16), (0, 100)])
def test_the_mask_is_the_sink_and_window_definition(n_sink, window):
    technique = sink_window(n_sink=n_sink, window=window)[0]
    pos = torch.arange(40)
    assert torch.equal(technique.causal_keep(pos[:, None], pos[None, :]), slow_keep(40, n_sink, window))


def all_logits(engine, ids):
    cache = engine.new_cache()
    with torch.inference_mode(), engine._prepared(cache):
        return engine.forward(torch.tensor([ids]), cache, 0, logits_to_keep=0)[0].float()


def test_a_window_covering_everything_is_dense_attention_exactly(tiny):
    model, tok = tiny
    dense, covered = Engine(model, tok), Engine(model, tok, sink_window(n_sink=0, window=len(IDS)))
    assert torch.equal(all_logits(covered, IDS), all_logits(dense, IDS))
    settings = GenerationSettings(max_new_tokens=8)
    assert covered.generate(IDS, settings).token_ids == dense.generate(IDS, settings).token_ids


def test_a_short_window_changes_the_output_and_the_kept_share_falls_with_it(tiny):
    model, tok = tiny
    dense = all_logits(Engine(model, tok), IDS)
    kept, computed = [], []
    for window in (len(IDS), 32, 8):
        technique = sink_window(n_sink=2, window=window)
        engine = Engine(model, tok, technique)
        gen = engine.generate(IDS, GenerationSettings(max_new_tokens=4))
        shares = technique[0].measure(gen)
        kept.append(shares["kept_share"])
        computed.append(shares["attended_share"])
        if window < len(IDS):
            assert not torch.allclose(all_logits(engine, IDS), dense, atol=1e-4)
    assert kept[0] > kept[1] > kept[2] > 0
    length = len(IDS) + 3  # prompt and the generated tokens fed back (all but the last)
    expected = 100 * int(slow_keep(length, 2, 8).sum()) / (length * (length + 1) // 2)
    assert kept[2] == pytest.approx(expected)
    # 134 tokens in 128-token blocks: the flex prefill touches every causal block, decode steps compute every pair
    assert computed == [100.0, 100.0, 100.0]


def test_decoding_one_token_at_a_time_matches_prefill_with_the_pattern(tiny):
    model, tok = tiny
    engine = Engine(model, tok, sink_window(n_sink=2, window=6))
    prefill = all_logits(engine, IDS)
    cache = engine.new_cache()
    with torch.inference_mode(), engine._prepared(cache):
        first = engine.forward(torch.tensor([IDS[:20]]), cache, 0, logits_to_keep=0)[0]
        steps = [engine.forward(torch.tensor([[t]]), cache, 20 + i)[0, -1] for i, t in enumerate(IDS[20:])]
    decoded = torch.cat([first, torch.stack(steps)]).float()
    torch.testing.assert_close(decoded, prefill, rtol=1e-4, atol=1e-4)


def test_what_cannot_work_is_refused_with_the_reason(tiny, tiny_spec):
    model, tok = tiny
    with pytest.raises(SpecError, match="cannot be combined: an evicting KV cache"):
        validate({**tiny_spec, "variants": [{"techniques": [{"name": "sink_window", "window": 8},
                                                             {"name": "snapkv"}]}]})
    with pytest.raises(SpecError, match=r"covers more than the model's context of 1024 tokens.*allowed: window \+ "
                                        r"n_sink <= 1024"):
        validate({**tiny_spec, "variants": [{"techniques": [{"name": "sink_window", "window": 1024}]}]})
    capped = type(model)(model.config.__class__(**{**model.config.to_dict(), "attn_logit_softcapping": 30.0}))
    with pytest.raises(SpecError, match="softcapping"):
        sink_window()[0].check_model(capped)
    from transformers import GPT2Config, GPT2LMHeadModel
    gpt2 = GPT2LMHeadModel(GPT2Config(vocab_size=260, n_embd=32, n_layer=1, n_head=2))
    with pytest.raises(SpecError, match="no rotary position embedding"):
        sink_window()[0].check_model(gpt2)


def test_the_flex_kernel_computes_what_the_masked_reference_computes(tiny):
    """The compiled FlexAttention path (prefill) against SDPA with the pattern as a mask: same maths, other
    summation order; its first call per shape is counted as compile time."""
    model, tok = tiny
    ids = IDS * 2  # 134 tokens: two 128-token query blocks, one partly empty
    flex = sink_window(n_sink=2, window=20, kernel="flex", block_size=64)
    reference = sink_window(n_sink=2, window=20, kernel="sdpa_mask")
    got = all_logits(Engine(model, tok, flex), ids)
    torch.testing.assert_close(got, all_logits(Engine(model, tok, reference), ids), rtol=1e-4, atol=1e-4)
    assert flex[0].run_metrics()["compile_s"] > 0 and reference[0].run_metrics() == {}


def test_the_perplexity_workload_reports_the_shares_of_every_window(tiny_spec):
    from lab.bench import run
    spec = validate({**tiny_spec, "workload": "perplexity", "perplexity_tokens": 96, "perplexity_window": 48,
                     "repeats": 1, "warmup": 0, "variants": [
                         {"name": "w8", "techniques": [{"name": "sink_window", "n_sink": 1, "window": 8,
                                                        "kernel": "sdpa_mask"}]}]})
    by_name = {r.name: r for r in run.execute(spec)}
    windows = len(by_name["w8"].samples["prefill_tokens_per_s"])
    assert windows == 2  # prompts 2: two windows, each timed, each profiled
    expected = 100 * int(slow_keep(47, 1, 8).sum()) / (47 * 48 // 2)  # a window's last token is never fed
    assert by_name["w8"].samples["kept_share"] == [pytest.approx(expected)] * windows
    assert by_name["w8"].samples["attended_share"] == [100.0] * windows  # the masked SDPA computes every pair
    assert len(by_name["w8"].samples["attention_share"]) == windows
    assert by_name["w8"].samples["attention_share"] == by_name["baseline"].samples["attention_share"]
    assert by_name["w8"].samples["amdahl_ceiling"] == [1.0] * windows  # nothing skipped, nothing to gain
    assert by_name["baseline"].samples["amdahl_ceiling"] == [1.0] * windows
