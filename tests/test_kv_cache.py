"""KV-cache family on a tiny random Llama: each knob moves its metric the way the method says."""
import pytest
import torch

from lab.llm.engine import Engine
from lab.ops.sampling import GenerationSettings
from lab.techniques import all_techniques, build
from lab.techniques.kv_cache.base import KVPress
from lab.techniques.kv_cache.hooks import n_kept
from lab.techniques.kv_cache.quant import dequantize, quantize
from tests.conftest import build_byte_tokenizer, build_tiny_llama

PROMPT = list(range(10, 110))  # 100 context tokens
PRESSES = sorted(n for n, c in all_techniques().items() if issubclass(c, KVPress))
CACHE_TECHNIQUES = sorted(n for n, c in all_techniques().items() if c.slot == "cache")


@pytest.fixture(scope="module")
def tiny():
    return build_tiny_llama(layers=3), build_byte_tokenizer()


def run(tiny, techniques, new_tokens=8, question=None):
    model, tok = tiny
    return Engine(model, tok, build(techniques)).generate(PROMPT, GenerationSettings(new_tokens), question)


def test_the_family_is_complete():
    assert set(PRESSES) == {"streaming_llm", "h2o", "snapkv", "tova", "knorm", "scissorhands", "mikv"}
    assert {"quantized_kv", "fp8_kv"} <= set(CACHE_TECHNIQUES)


@pytest.mark.parametrize("name", PRESSES)
def test_ratio_zero_is_identical_to_the_baseline(tiny, name):
    base = run(tiny, [])
    same = run(tiny, [{"name": name, "compression_ratio": 0.0}])
    assert same.token_ids == base.token_ids and same.kv_bytes == base.kv_bytes


@pytest.mark.parametrize("name", sorted(set(PRESSES) - {"mikv"}))
def test_higher_ratio_holds_fewer_kv_bytes_and_keeps_the_kvpress_budget(tiny, name):
    held = []
    for ratio in (0.0, 0.25, 0.5, 0.75):
        gen = run(tiny, [{"name": name, "compression_ratio": ratio}], new_tokens=1)
        positions = gen.extra["kept_positions"]
        # one new token was sampled without a further forward, so the cache holds exactly the kept context
        assert all(p.shape[-1] == n_kept(len(PROMPT), ratio) for p in positions.values())
        held.append(gen.kv_bytes)
    assert held == sorted(held, reverse=True) and len(set(held)) == 4


@pytest.mark.parametrize("name", sorted(set(PRESSES) - {"mikv"}))
def test_compressing_during_decoding_holds_fewer_bytes_than_after_prefill_only(tiny, name):
    once = run(tiny, [{"name": name, "compression_ratio": 0.5}], new_tokens=24)
    every = run(tiny, [{"name": name, "compression_ratio": 0.5, "compress_every": 4}], new_tokens=24)
    assert every.kv_bytes < once.kv_bytes


def test_streaming_llm_keeps_sinks_and_the_recent_window(tiny):
    gen = run(tiny, [{"name": "streaming_llm", "compression_ratio": 0.5, "n_sink": 4}], new_tokens=1)
    kept = n_kept(len(PROMPT), 0.5)
    expected = list(range(4)) + list(range(len(PROMPT) - (kept - 4), len(PROMPT)))
    for positions in gen.extra["kept_positions"].values():
        for head in positions[0]:
            assert sorted(head.tolist()) == expected


def test_knorm_keeps_the_lowest_norm_keys(tiny):
    model, tok = tiny
    from transformers import DynamicCache
    cache = DynamicCache(config=model.config)
    with torch.no_grad():
        model(input_ids=torch.tensor([PROMPT]), past_key_values=cache)
    gen = run(tiny, [{"name": "knorm", "compression_ratio": 0.75}], new_tokens=1)
    for layer, positions in gen.extra["kept_positions"].items():
        norms = cache.layers[layer].keys.norm(dim=-1)[0]  # [kv_heads, n]
        for head in range(norms.shape[0]):
            lowest = norms[head].topk(n_kept(len(PROMPT), 0.75), largest=False).indices
            assert sorted(positions[0, head].tolist()) == sorted(lowest.tolist())


def test_tova_ranks_by_the_last_tokens_attention(tiny):
    gen = run(tiny, [{"name": "tova", "compression_ratio": 0.5}], new_tokens=1)
    for positions in gen.extra["kept_positions"].values():
        assert (positions[0] == len(PROMPT) - 1).any(dim=-1).all()  # the last token is always kept
        assert torch.equal(positions[0, 0].sort().values, positions[0, 1].sort().values)  # one ranking for all heads


@pytest.mark.parametrize("name, knob", [("h2o", "window"), ("scissorhands", "window"), ("snapkv", "window_size")])
def test_protected_recent_window_is_always_kept(tiny, name, knob):
    gen = run(tiny, [{"name": name, "compression_ratio": 0.75, knob: 16}], new_tokens=1)
    recent = set(range(len(PROMPT) - 16, len(PROMPT)))
    for positions in gen.extra["kept_positions"].values():
        for head in positions[0]:
            assert recent <= set(head.tolist())


def test_mikv_holds_more_than_eviction_and_less_than_full(tiny):
    full = run(tiny, []).kv_bytes
    evicted = run(tiny, [{"name": "h2o", "compression_ratio": 0.75}]).kv_bytes
    mixed4 = run(tiny, [{"name": "mikv", "compression_ratio": 0.75, "low_bits": 4}]).kv_bytes
    mixed8 = run(tiny, [{"name": "mikv", "compression_ratio": 0.75, "low_bits": 8}]).kv_bytes
    assert evicted < mixed4 < mixed8 < full


def test_mikv_refuses_decode_time_compression():
    from lab.errors import SpecError
    with pytest.raises(SpecError, match="compress_every.*allowed: 0"):
        build([{"name": "mikv", "compress_every": 4}])


@pytest.mark.parametrize("spec, max_share", [
    ({"name": "quantized_kv", "bits": 8}, 0.40),
    ({"name": "quantized_kv", "bits": 4}, 0.27),
    ({"name": "quantized_kv", "bits": 8, "axis": "per_channel", "group_size": 16}, 0.50),  # + fp32 residual
    ({"name": "fp8_kv"}, 0.26),
])
def test_quantized_caches_hold_fewer_bytes(tiny, spec, max_share):
    full = run(tiny, [])
    quant = run(tiny, [spec])
    seen = min(full.tokens_seen, quant.tokens_seen)  # compared when both caches had seen as many tokens
    assert quant.kv_bytes_at(seen) < max_share * full.kv_bytes_at(seen)


def test_fewer_bits_fewer_bytes(tiny):
    assert run(tiny, [{"name": "quantized_kv", "bits": 4}]).kv_bytes < \
        run(tiny, [{"name": "quantized_kv", "bits": 8}]).kv_bytes


@pytest.mark.parametrize("bits", [8, 4])
def test_quantize_roundtrip_error_is_within_half_a_step(bits):
    x = torch.randn(2, 3, 40, 16)
    q, scale, low = quantize(x, bits, dim=-1)
    assert q.dtype == torch.uint8 and q.shape[-1] == (16 if bits == 8 else 8)
    err = (dequantize(q, scale, low, bits) - x).abs()
    assert (err <= scale / 2 + 1e-6).all()


def test_kv_methods_stack_with_bf16_weights(tiny):
    base = run(tiny, [{"name": "weight_dtype", "dtype": "bf16"}])
    both = run(tiny, [{"name": "weight_dtype", "dtype": "bf16"}, {"name": "snapkv", "compression_ratio": 0.5}])
    assert both.kv_bytes < base.kv_bytes
    # int4 codes + bf16 per-token scale and offset: 12 bytes per 16-wide head vector against 32 in bf16
    assert run(tiny, [{"name": "weight_dtype"}, {"name": "quantized_kv", "bits": 4}]).kv_bytes < base.kv_bytes / 2


def test_two_cache_techniques_are_refused():
    from lab.errors import SpecError
    with pytest.raises(SpecError, match="both use the cache slot"):
        build([{"name": "knorm"}, {"name": "quantized_kv"}])


def test_weight_returning_attention_matches_sdpa_and_gets_its_mask(tiny):
    """Registered with AttentionMaskInterface too, so the causal mask arrives (without it, mask is None)."""
    model, _ = tiny
    from lab.ops.attention import WEIGHTS_ATTENTION
    x = torch.tensor([PROMPT[:30]])
    with torch.no_grad():
        ref = model(input_ids=x).logits
        model.set_attn_implementation(WEIGHTS_ATTENTION)
        try:
            out = model(input_ids=x, output_attentions=True)
        finally:
            model.set_attn_implementation("sdpa")
    assert torch.allclose(out.logits, ref, atol=1e-4)
    weights = out.attentions[0][0]  # [heads, q, k]
    assert torch.allclose(weights.sum(-1), torch.ones(weights.shape[:2]), atol=1e-5)
    assert weights.triu(diagonal=1).abs().max() == 0  # causal: no weight on future tokens


def test_attention_switch_is_undone_after_a_run(tiny):
    model, _ = tiny
    before = model.config._attn_implementation
    run(tiny, [{"name": "h2o", "compression_ratio": 0.5}])
    assert model.config._attn_implementation == before


def test_question_after_compressed_context_sees_true_positions(tiny):
    """With ratio 0 the context+question split changes nothing: positions are passed explicitly."""
    model, tok = tiny
    whole = Engine(model, tok).generate(PROMPT + [40, 41, 42], GenerationSettings(6))
    split = run(tiny, [{"name": "knorm", "compression_ratio": 0.0}], new_tokens=6, question=[40, 41, 42])
    assert split.token_ids == whole.token_ids


def test_needle_items_place_the_key_at_the_requested_depth():
    from lab.llm.workloads import needle_items
    tok = build_byte_tokenizer()
    items = needle_items(tok, [600], [0, 50, 100])
    texts = [tok.decode(i.prompt_ids) for i in items]
    where = [t.index(i.answer) / len(t) for t, i in zip(texts, items)]
    assert where[0] < 0.3 < where[1] < 0.7 < where[2]
    assert all(tok.decode(i.question_ids).strip().startswith("What is the pass key?") for i in items)


def test_context_qa_items_put_the_question_after_the_context():
    from lab.llm.workloads import QA, context_qa_items
    tok = build_byte_tokenizer()
    items = context_qa_items(tok, 3)
    assert len(items) == 3
    for item, (topic, question) in zip(items, QA):
        assert tok.decode(item.question_ids).startswith(question)
        assert "<|user|>" in tok.decode(item.prompt_ids[:20]) and item.info == {"topic": topic}


@pytest.mark.parametrize("spec", [{"name": "quantized_kv", "bits": 4},
                                  {"name": "quantized_kv", "bits": 4, "axis": "per_channel", "group_size": 16}])
def test_quantized_kv_prefill_attends_in_full_precision(tiny, spec):
    """As KIVI and transformers' QuantizedCache: the prefill sees its own keys and values; only what is held for
    later steps is quantized (before, the prefill already attended to int4 keys)."""
    model, tok = tiny
    from transformers import DynamicCache
    engine = Engine(model, tok, build([spec]))
    with torch.no_grad():
        plain = model(input_ids=torch.tensor([PROMPT]), past_key_values=DynamicCache(config=model.config)).logits
        quant = model(input_ids=torch.tensor([PROMPT]), past_key_values=engine.new_cache()).logits
    assert torch.equal(plain, quant)
