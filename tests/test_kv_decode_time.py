"""Decode-time compression (compress_every > 0) on a tiny random Llama: the cache stays in text order, so
methods that reason by slot (sinks, recent window, pooling over neighbours) stay right after every prune;
Scissorhands keeps its importance history while decoding; perplexity sees the decode-time prunes; and
techniques that cannot attach to a model refuse before the run."""
import pytest
import torch

from lab.errors import SpecError
from lab.llm.engine import Engine
from lab.ops.sampling import GenerationSettings
from lab.techniques import build
from lab.techniques.kv_cache.hooks import n_kept
from tests.conftest import build_byte_tokenizer, build_tiny_llama

PROMPT = list(range(10, 110))  # 100 context tokens
NEW = 24


@pytest.fixture(scope="module")
def tiny():
    return build_tiny_llama(layers=3), build_byte_tokenizer()


def run(tiny, technique, new_tokens=NEW):
    model, tok = tiny
    return Engine(model, tok, build([technique])).generate(PROMPT, GenerationSettings(new_tokens))


def seen_tokens(new_tokens=NEW) -> int:
    return len(PROMPT) + new_tokens - 1  # the last sampled token is never fed


@pytest.mark.parametrize("technique", [
    {"name": "streaming_llm", "compression_ratio": 0.5, "compress_every": 1},
    {"name": "h2o", "compression_ratio": 0.5, "compress_every": 4, "window": 8},
    {"name": "scissorhands", "compression_ratio": 0.5, "compress_every": 4, "window": 8},
    {"name": "snapkv", "compression_ratio": 0.5, "compress_every": 4, "window_size": 8},
    {"name": "tova", "compression_ratio": 0.5, "compress_every": 4},
    {"name": "knorm", "compression_ratio": 0.5, "compress_every": 4},
])
def test_cache_slots_stay_in_text_order_after_decode_time_prunes(tiny, technique):
    gen = run(tiny, technique)
    for layer, positions in gen.extra["kept_positions"].items():
        for head in positions[0]:
            held = head.tolist()
            assert held == sorted(held), f"layer {layer}: slots out of text order"
            assert held[-1] == seen_tokens() - 1  # the newest token is held in the last slot


def test_streaming_llm_while_decoding_holds_the_sinks_and_the_most_recent_tokens(tiny):
    gen = run(tiny, {"name": "streaming_llm", "compression_ratio": 0.5, "compress_every": 1, "n_sink": 4})
    seen = seen_tokens()
    budget = n_kept(seen, 0.5)
    expected = list(range(4)) + list(range(seen - (budget - 4), seen))
    for positions in gen.extra["kept_positions"].values():
        for head in positions[0]:
            assert head.tolist() == expected


@pytest.mark.parametrize("name", ["h2o", "scissorhands"])
def test_recent_window_protects_the_most_recent_tokens_while_decoding(tiny, name):
    gen = run(tiny, {"name": name, "compression_ratio": 0.75, "compress_every": 4, "window": 8})
    recent = set(range(seen_tokens() - 8, seen_tokens()))
    for positions in gen.extra["kept_positions"].values():
        for head in positions[0]:
            assert recent <= set(head.tolist())


def test_scissorhands_counts_importance_over_its_history_of_queries():
    """Reference: per KV head, the number of the last `history` queries (over several forwards) that gave a
    key more than the uniform share 1/visible of their attention, summed over the head's query group."""
    from lab.techniques.kv_cache.scissorhands import Scissorhands

    class Module:
        class config:
            num_key_value_heads = 1
    press = Scissorhands(compression_ratio=0.5, history=3, window=0)
    state = {}
    # forward 1: two queries over 2 keys (causal), 2 query heads sharing one KV head
    prefill = torch.tensor([[[[1.0, 0.0], [0.9, 0.1]], [[1.0, 0.0], [0.2, 0.8]]]])
    press.observe(state, Module, prefill)
    for step in ([0.1, 0.1, 0.8], [0.6, 0.2, 0.1, 0.1]):  # decode steps: one query, one more key each
        row = torch.tensor(step)[None, None, None].expand(1, 2, 1, len(step))
        press.observe(state, Module, row)
    scores = press.score(Module, None, torch.zeros(1, 1, 4, 2), None, None, {"state": state})
    # history 3 = prefill query 2 and both decode steps; uniform shares 1/2, 1/3, 1/4; x2 heads
    # key 0: (0.9 yes, 0.2 no) + (0.1 no) + (0.6 yes) = 1 + 0 + 2 = 3
    # key 1: (0.1 no, 0.8 yes) + (0.1 no) + (0.2 no) = 1
    # key 2: (0.8 yes) x2 + (0.1 no) = 2;  key 3: 0.1 < 0.25 = 0
    assert scores[0, 0].tolist() == [3.0, 1.0, 2.0, 0.0]


def test_scissorhands_prunes_while_decoding_count_the_decode_queries(tiny):
    """Every prune scores with the last `history` queries, the decode steps' own among them (before, a decode
    prune saw only the current query's attention)."""
    model, tok = tiny
    engine = Engine(model, tok, build([{"name": "scissorhands", "compression_ratio": 0.75, "compress_every": 4,
                                        "history": 110, "window": 0}]))
    press, rows = engine.slots["cache"], []
    score = press.score
    object.__setattr__(press, "score", lambda *a: rows.append(a[-1]["state"]["history"].shape[2]) or score(*a))
    engine.generate(PROMPT, GenerationSettings(NEW))
    layers = len(model.model.layers)
    per_prune = rows[::layers]  # one score per layer per prune
    # the prefill's 100 queries, then 4 more decode queries per prune, capped at the history of 110
    assert per_prune == [min(110, len(PROMPT) + 4 * i) for i in range(len(per_prune))]
    assert len(per_prune) == 1 + (NEW - 1) // 4


def nll(tiny, techniques, prefix=PROMPT, continuation=tuple(range(120, 160))):
    model, tok = tiny
    return Engine(model, tok, build(techniques)).continuation_nll(list(prefix), list(continuation))[0]


def test_perplexity_sees_decode_time_compression(tiny):
    once = nll(tiny, [{"name": "streaming_llm", "compression_ratio": 0.5}])
    every = nll(tiny, [{"name": "streaming_llm", "compression_ratio": 0.5, "compress_every": 1}])
    assert every != pytest.approx(once, rel=1e-6)


def test_token_by_token_scoring_equals_one_forward_when_nothing_is_evicted(tiny):
    """Ratio 0 with compress_every: scored token by token, the same sum as one teacher-forced forward."""
    one = nll(tiny, [])
    steps = nll(tiny, [{"name": "knorm", "compression_ratio": 0.0, "compress_every": 1}])
    assert steps == pytest.approx(one, rel=1e-4)


def tiny_gpt2():
    from transformers import GPT2Config, GPT2LMHeadModel
    return GPT2LMHeadModel(GPT2Config(vocab_size=260, n_embd=32, n_layer=2, n_head=2, n_positions=256)).eval()


def tiny_gemma2():
    from transformers import Gemma2Config, Gemma2ForCausalLM
    return Gemma2ForCausalLM(Gemma2Config(vocab_size=260, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                          num_attention_heads=2, num_key_value_heads=1, head_dim=16,
                                          sliding_window=16, attn_logit_softcapping=50.0)).eval()


def tiny_qwen3():
    from transformers import Qwen3Config, Qwen3ForCausalLM
    return Qwen3ForCausalLM(Qwen3Config(vocab_size=260, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                        num_attention_heads=2, num_key_value_heads=1, head_dim=16)).eval()


PRESSES = ["streaming_llm", "h2o", "snapkv", "tova", "knorm", "scissorhands", "mikv"]


@pytest.mark.parametrize("name", PRESSES)
def test_presses_refuse_gpt2_whose_attention_they_cannot_find(name):
    with pytest.raises(SpecError, match=f"'{name}' cannot run on GPT2LMHeadModel.*Llama-style"):
        Engine(tiny_gpt2(), build_byte_tokenizer(), build([{"name": name}]))


@pytest.mark.parametrize("name", PRESSES)
def test_presses_refuse_sliding_window_models(name):
    with pytest.raises(SpecError, match="sliding-window"):
        Engine(tiny_gemma2(), build_byte_tokenizer(), build([{"name": name}]))


@pytest.mark.parametrize("name, refused", [("snapkv", True), ("tova", True), ("knorm", False),
                                           ("streaming_llm", False), ("h2o", False)])
def test_query_recomputing_presses_refuse_q_norm(name, refused):
    model = tiny_qwen3()
    if refused:
        with pytest.raises(SpecError, match="q_norm"):
            Engine(model, build_byte_tokenizer(), build([{"name": name}]))
    else:
        engine = Engine(model, build_byte_tokenizer(), build([{"name": name, "compression_ratio": 0.5}]))
        gen = engine.generate(list(range(10, 50)), GenerationSettings(2))
        assert gen.kv_bytes < Engine(model, build_byte_tokenizer()).generate(
            list(range(10, 50)), GenerationSettings(2)).kv_bytes
