"""Reference checks for H2O, MiKV, quantized_kv and fp8_kv: what each keeps or stores is recomputed here, slowly
and from the paper's definition, on a tiny random Llama, without calling the lab's helpers for the thing under
test (no h2o.accumulate_attention, press.protect_recent, quant.quantize/dequantize).

The expected values come from a plain forward of the same model (transformers' own eager attention, which returns
the attention weights) or from the keys and values the model hands to the cache, recorded on the way in.
"""
from __future__ import annotations

import math

import pytest
import torch
from transformers import DynamicCache

from lab.llm.engine import Engine
from lab.ops.sampling import GenerationSettings
from lab.techniques import build
from tests.conftest import build_byte_tokenizer, build_tiny_llama

PROMPT = list(range(10, 110))  # 100 context tokens
DECODE = list(range(40, 53))  # 13 tokens fed one by one after the prompt
LAYERS = 3
# Kept sets may differ from the reference only between positions whose reference scores agree to this relative
# tolerance (see assert_same_kept_up_to_ties).
TIE_TOL = 1e-5


@pytest.fixture(scope="module")
def tiny():
    """The conftest Llama with sharper attention.

    At its initialisation (std 0.02, width 64) attention is nearly uniform, so every query spreads ~1/(q+1) over
    its keys and the accumulated attention of any method just decreases with position: a wrong ranking (wrong
    GQA grouping, scores summed over the wrong axis) would keep the same set. Scaling the query and key
    projections by 10 makes the heads attend to a few keys each, so the heads' kept sets differ.
    """
    model = build_tiny_llama(layers=LAYERS)
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.q_proj.weight.mul_(10)
            layer.self_attn.k_proj.weight.mul_(10)
    return model, build_byte_tokenizer()


@pytest.fixture(scope="module")
def reference(tiny):
    """The baseline's prefill of PROMPT through transformers' eager attention: per layer the attention weights
    [heads, q, k] and the keys and values [kv_heads, n, head_dim] (no technique, nothing evicted)."""
    model, _ = tiny
    previous = model.config._attn_implementation
    cache = DynamicCache(config=model.config)
    model.set_attn_implementation("eager")
    try:
        with torch.no_grad():
            out = model(input_ids=torch.tensor([PROMPT]), past_key_values=cache, use_cache=True,
                        output_attentions=True)
    finally:
        model.set_attn_implementation(previous)
    return {"attentions": [a[0] for a in out.attentions],
            "keys": [cache.layers[i].keys[0] for i in range(LAYERS)],
            "values": [cache.layers[i].values[0] for i in range(LAYERS)]}


# --- H2O's ranking, from the paper ----------------------------------------------------------------------------
def h2o_reference_scores(attention: torch.Tensor, kv_heads: int, window: int) -> torch.Tensor:
    """H2O (Zhang et al. 2023, arXiv:2306.14048): a key's score is the attention it has received, summed over
    every query so far; with GQA the query heads sharing a KV head add up (transformers' repeat_kv: KV head j
    serves query heads j*groups .. j*groups+groups-1). The last `window` tokens are always kept (score inf).

    attention: [heads, q, n] -> scores [kv_heads, n] in float64.
    """
    heads, _, n = attention.shape
    groups = heads // kv_heads
    scores = torch.zeros(kv_heads, n, dtype=torch.float64)
    for head in range(heads):
        for key in range(n):
            scores[head // groups, key] += attention[head, :, key].double().sum()
    for key in range(n - window, n):
        scores[:, key] = math.inf
    return scores


def assert_same_kept_up_to_ties(ours, scores, budget: int, tol: float = TIE_TOL) -> None:
    """`ours` (the positions kept for one KV head) must be the `budget` highest of `scores`, up to ties.

    Ties are allowed because the lab's scores and the reference's are summed in a different order, and rounding
    differs between machines: the same 2-core kind is sometimes an Intel Xeon and sometimes an AMD EPYC with
    avx512_bf16, and a golden kept set that passes on one fails on the other where two scores are equal up to
    rounding. So: every position scoring clearly above the budget-th best score (by more than `tol`, relative)
    must be kept, and every kept position must score at least that boundary score (less `tol`); the two sets
    can then differ only by positions whose reference scores agree within 2 * tol.
    """
    ours = [int(p) for p in ours]
    assert len(ours) == budget, f"kept {len(ours)} tokens, the budget is {budget}"
    assert len(set(ours)) == budget, f"a position is kept twice: {sorted(ours)}"
    scores = [float(s) for s in scores]
    boundary = sorted(scores, reverse=True)[budget - 1]
    band = tol * abs(boundary) if math.isfinite(boundary) else 0.0
    must = {p for p, s in enumerate(scores) if s > boundary + band}
    may = {p for p, s in enumerate(scores) if s >= boundary - band}
    missing, extra = must - set(ours), set(ours) - may
    assert not missing and not extra, (
        f"boundary score {boundary:.7g}; not kept though above it: "
        f"{ {p: round(scores[p], 7) for p in sorted(missing)} }; kept though below it: "
        f"{ {p: round(scores[p], 7) for p in sorted(extra)} }")


def test_the_tie_helper_accepts_ties_and_nothing_else():
    scores = [5.0, 3.0, 3.0 * (1 + 1e-7), 2.0, 1.0, math.inf]
    assert_same_kept_up_to_ties([5, 0, 2], scores, 3)
    assert_same_kept_up_to_ties([5, 0, 1], scores, 3)  # 1 and 2 tie within the tolerance
    with pytest.raises(AssertionError, match="not kept though above"):
        assert_same_kept_up_to_ties([5, 1, 2], scores, 3)  # 0 (score 5) dropped for 1 (score 3)
    with pytest.raises(AssertionError, match="kept though below"):
        assert_same_kept_up_to_ties([5, 0, 1, 4], scores, 4)  # 4 (score 1) kept instead of 2 (score 3)
    with pytest.raises(AssertionError, match="budget"):
        assert_same_kept_up_to_ties([5, 0], scores, 3)


def run(tiny, techniques):
    model, tok = tiny
    return Engine(model, tok, build(techniques)).generate(PROMPT, GenerationSettings(1))


@pytest.mark.parametrize("ratio, window", [(0.5, 8), (0.75, 16), (0.6, 0)])
def test_h2o_keeps_the_heavy_hitters_of_the_paper(tiny, reference, ratio, window):
    model, _ = tiny
    kv_heads = model.config.num_key_value_heads
    # one new token is sampled after the prefill without a further forward: the kept set is the prefill's
    gen = run(tiny, [{"name": "h2o", "compression_ratio": ratio, "window": window, "compress_every": 0}])
    kept = gen.extra["kept_positions"]
    assert sorted(kept) == list(range(LAYERS))
    budget = int(len(PROMPT) * (1 - ratio))
    for layer in range(LAYERS):
        scores = h2o_reference_scores(reference["attentions"][layer], kv_heads, window)
        assert kept[layer].shape == (1, kv_heads, budget)
        for head in range(kv_heads):
            assert_same_kept_up_to_ties(kept[layer][0, head], scores[head], budget)


def test_the_heads_rank_differently_here_so_the_check_can_tell_them_apart(reference, tiny):
    """Guards the fixture: with near-uniform attention any ranking would keep the same set (see `tiny`)."""
    kv_heads = tiny[0].config.num_key_value_heads
    scores = h2o_reference_scores(reference["attentions"][0], kv_heads, 0)
    top = [set(s.topk(50).indices.tolist()) for s in scores]
    assert top[0] != top[1] and top[0] != set(range(50))


# --- per-vector asymmetric min-max quantization, from the definition ------------------------------------------
def reference_roundtrip(vector: torch.Tensor, bits: int):
    """Quantize then dequantize one group of values sharing a scale (KIVI, arXiv:2402.02750, and MiKV):
    low = min, step = (max - min) / (2^bits - 1), code = clamp(round((x - low) / step), 0, 2^bits - 1),
    x' = code * step + low. Returns x', the step, and (x - low) / step (to spot rounding ties)."""
    x = [float(v) for v in vector]
    low, high = min(x), max(x)
    levels = 2 ** bits - 1
    step = (high - low) / levels
    if step == 0:  # a constant group is held exactly
        return torch.tensor(x, dtype=torch.float64), 0.0, [0.0] * len(x)
    ratios = [(v - low) / step for v in x]
    codes = [min(max(round(r), 0), levels) for r in ratios]
    return torch.tensor([c * step + low for c in codes], dtype=torch.float64), step, ratios


def assert_matches_reference_quantization(held: torch.Tensor, original: torch.Tensor, bits: int, what: str):
    """held, original: [groups, m], each row the m values sharing one scale. The held (dequantized) values must be
    within half a step of the original, and on the reference's grid point, except where the original lies on a
    rounding tie (x - low) / step = k + 1/2 (within 1e-3), where either neighbour is acceptable."""
    assert held.shape == original.shape, what
    for row, (h, x) in enumerate(zip(held.double(), original.double())):
        expected, step, ratios = reference_roundtrip(x, bits)
        eps = 1e-5 * float(x.abs().max()) + 1e-12  # float32 arithmetic of q * scale + low
        err = (h - x).abs()
        assert (err <= step / 2 + eps).all(), (
            f"{what}, group {row}: error {err.max().item():.4g} beyond half a step {step / 2:.4g}")
        near_tie = torch.tensor([abs(r - math.floor(r) - 0.5) < 1e-3 for r in ratios])
        off_grid = ((h - expected).abs() > 1e-4 * step + eps) & ~near_tie
        assert not off_grid.any(), (
            f"{what}, group {row}: {int(off_grid.sum())} values off the reference grid, e.g. held "
            f"{h[off_grid][0].item():.6g} where the reference rounds to {expected[off_grid][0].item():.6g}")


def cache_contents(layer, config):
    """What the next attention would read from this cache layer: update() with no new token."""
    head_dim = config.hidden_size // config.num_attention_heads
    empty = torch.zeros(1, config.num_key_value_heads, 0, head_dim)
    return type(layer).update(layer, empty, empty)


def record_cache_inputs(cache):
    """Wrap each cache layer's update() to record the fp32 keys and values the model hands it (what the
    technique then quantizes): layer -> list of (keys, values) [b, kv_heads, new, head_dim]."""
    seen = {i: [] for i in range(len(cache.layers))}
    for i, layer in enumerate(cache.layers):
        def update(keys, values, *args, _layer=layer, _i=i, **kwargs):
            seen[_i].append((keys.clone(), values.clone()))
            return type(_layer).update(_layer, keys, values, *args, **kwargs)
        layer.update = update
    return seen


def prefill_then_decode(tiny, techniques, prompt=PROMPT):
    """Drive the Engine by hand (to keep the cache): the prompt, then DECODE one token at a time."""
    model, tok = tiny
    engine = Engine(model, tok, build(techniques))
    cache = engine.new_cache()
    seen = record_cache_inputs(cache)
    with torch.inference_mode():
        engine.forward(torch.tensor([prompt]), cache, 0)
        for i, token in enumerate(DECODE):
            engine.forward(torch.tensor([[token]]), cache, len(prompt) + i)
    inputs = {i: tuple(torch.cat([s[j] for s in seen[i]], dim=-2)[0] for j in (0, 1)) for i in seen}
    return cache, inputs


# --- MiKV -----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("low_bits", [8, 4])
def test_mikv_demotes_the_complement_of_h2o_s_ranking_to_per_token_codes(tiny, reference, low_bits):
    """MiKV (Yang et al. 2024, arXiv:2402.18096): H2O's ranking picks the tokens kept in full precision; the others
    are kept too, as per-token low-bit asymmetric integer codes (one min/max per token vector over head_dim)."""
    model, tok = tiny
    ratio, window = 0.75, 8
    budget, n = int(len(PROMPT) * (1 - ratio)), len(PROMPT)
    kv_heads = model.config.num_key_value_heads
    engine = Engine(model, tok, build([{"name": "mikv", "compression_ratio": ratio, "window": window,
                                        "low_bits": low_bits}]))
    cache = engine.new_cache()
    with torch.inference_mode(), engine._prepared(cache) as tracker:
        engine.forward(torch.tensor([PROMPT]), cache, 0)
    for layer in range(LAYERS):
        state = tracker.state[layer]
        kept, demoted = state["positions"][0], state["demoted_positions"][0]
        assert kept.shape == (kv_heads, budget) and demoted.shape == (kv_heads, n - budget)
        scores = h2o_reference_scores(reference["attentions"][layer], kv_heads, window)
        # MixedPrecisionLayer.update returns the dequantized demoted tokens first (in the order of
        # demoted_positions), then the full-precision ones (in the order of positions)
        keys, values = (t[0] for t in cache_contents(cache.layers[layer], model.config))
        order = torch.cat([demoted, kept], dim=-1)
        for head in range(kv_heads):
            # (a) the high-precision set is H2O's ranking
            assert_same_kept_up_to_ties(kept[head], scores[head], budget)
            # (b) the demoted tokens are exactly the others: nothing dropped, nothing held twice
            assert sorted(demoted[head].tolist() + kept[head].tolist()) == list(range(n))
            assert keys.shape[-2] == n
            for got, original, what in ((keys, reference["keys"][layer], "keys"),
                                        (values, reference["values"][layer], "values")):
                x = original[head, order[head]]  # the baseline's vectors, in the order the cache holds them
                # (c) the demoted ones as per-token codes of the original vectors, the others untouched
                assert_matches_reference_quantization(got[head, : n - budget], x[: n - budget], low_bits,
                                                      f"layer {layer} head {head} demoted {what}")
                assert torch.allclose(got[head, n - budget:], x[n - budget:], rtol=1e-5, atol=1e-5), \
                    f"layer {layer} head {head}: full-precision {what} differ from the baseline's"


# --- quantized_kv ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("bits, axis, group", [(8, "per_token", 32), (4, "per_token", 32),
                                               (8, "per_channel", 16), (4, "per_channel", 32)])
def test_quantized_kv_holds_the_reference_quantization(tiny, bits, axis, group):
    """Per token: each token's head_dim vector has its own min/max. Per channel (KIVI): each channel's min/max
    over a block of `group` consecutive tokens (blocks counted from the first token); the tokens of an
    incomplete block stay in full precision (the residual), bit for bit."""
    model, _ = tiny
    cache, inputs = prefill_then_decode(tiny, [{"name": "quantized_kv", "bits": bits, "axis": axis,
                                                "group_size": group}])
    total = len(PROMPT) + len(DECODE)
    quantized = total if axis == "per_token" else total // group * group
    # The lab's cache attends to the dequantized keys already in the prefill, so from layer 1 on the keys it is
    # given are not the baseline's; layer 0's depend only on token and position and must be the baseline's.
    _, baseline = prefill_then_decode(tiny, [])
    assert torch.equal(inputs[0][0], baseline[0][0]) and torch.equal(inputs[0][1], baseline[0][1])
    for layer in range(LAYERS):
        held = cache_contents(cache.layers[layer], model.config)
        for got, x, what in zip(held, inputs[layer], ("keys", "values")):
            got = got[0]
            assert got.shape == x.shape == (model.config.num_key_value_heads, total, x.shape[-1])
            if axis == "per_token":
                groups_got, groups_x = got.flatten(0, 1), x.flatten(0, 1)  # one row per token vector
            else:  # one row per (head, block, channel): the `group` values of a channel in a block
                def blocks(t):
                    h, _, d = t.shape
                    return t[:, :quantized].reshape(h, quantized // group, group, d).transpose(-1, -2).flatten(0, 2)
                groups_got, groups_x = blocks(got), blocks(x)
            assert_matches_reference_quantization(groups_got, groups_x, bits, f"layer {layer} {what}")
            residual = cache.layers[layer].keys if what == "keys" else cache.layers[layer].values
            assert residual.shape[-2] == total - quantized
            assert torch.equal(got[:, quantized:], x[:, quantized:]) and torch.equal(residual[0], x[:, quantized:])
        if layer == 0:  # the residual is the baseline's, bit for bit
            assert torch.equal(cache.layers[0].keys[0], baseline[0][0][:, quantized:])
            assert torch.equal(cache.layers[0].values[0], baseline[0][1][:, quantized:])


# --- fp8_kv ---------------------------------------------------------------------------------------------------
E4M3_MAX = 448.0  # largest finite float8_e4m3fn


@pytest.mark.parametrize("prompt_len", [len(PROMPT), 3])
def test_fp8_kv_holds_e4m3_with_one_scale_per_tensor_frozen_after_the_prefill(tiny, prompt_len):
    """transformers' Fp8QuantizedLayer: scale = max |x| of the prefill's tensor / 448 (one per layer, for keys and
    for values), frozen; every token, prefill and decode, is held as e4m3(x / scale) and read back times scale.
    e4m3 has 3 mantissa bits: a normal value is off by at most 2^-4 of itself, a subnormal (|x / scale| < 2^-6)
    by at most half its spacing 2^-9; a decode token beyond the frozen range saturates at +-448 * scale.
    The backend keeps no full-precision residual: nothing is held unquantized. After a 3-token prompt some decode
    tokens do exceed the frozen range, so the saturation is exercised too."""
    model, _ = tiny
    prompt = PROMPT[:prompt_len]
    cache, inputs = prefill_then_decode(tiny, [{"name": "fp8_kv"}], prompt)
    _, baseline = prefill_then_decode(tiny, [], prompt)
    n, saturated_somewhere = len(prompt), False
    for layer in range(LAYERS):
        held = cache_contents(cache.layers[layer], model.config)
        assert cache.layers[layer].keys.numel() == 0 and cache.layers[layer].values.numel() == 0  # no residual
        for got, x, base, what in zip(held, inputs[layer], baseline[layer], ("keys", "values")):
            got = got[0]
            # the prefill is attended in full precision, so its keys are the baseline's
            assert torch.equal(x[:, :n], base[:, :n]), f"layer {layer} {what}"
            scale = x[:, :n].abs().max().float() / E4M3_MAX
            expected = (x.float() / scale).to(torch.float8_e4m3fn).float() * scale
            assert torch.equal(got, expected), f"layer {layer} {what}: not e4m3 with the prefill's scale"
            # and that cast is e4m3 rounding: half an ulp (3 mantissa bits) or saturation
            y, back = x.double() / float(scale), got.double() / float(scale)  # in units of the scale
            in_range = y.abs() <= E4M3_MAX * (1 + 1e-6)  # the prefill's max is 448 up to the rounding of the scale
            bound = torch.maximum(y.abs() * 2.0 ** -4, torch.full_like(y, 2.0 ** -10)) * (1 + 1e-6)
            assert ((back - y).abs() <= bound)[in_range].all(), f"layer {layer} {what}"
            saturated = E4M3_MAX * y[~in_range].sign()
            assert torch.allclose(back[~in_range], saturated, rtol=1e-6, atol=0), f"layer {layer} {what}"
            saturated_somewhere |= bool((~in_range).any())
            assert (back - y).abs().max() > 1e-3  # it is quantized at all
    assert saturated_somewhere == (prompt_len < 10)
