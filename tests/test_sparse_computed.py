"""What the sparse-attention columns measure, on the tiny random Llama: the computed share is the causal pairs of
the blocks each BlockMask makes the FlexAttention kernel compute (counted here by hand from the mask's own block
lists), the masked-SDPA path computes every pair, the kept share is the pattern's own pairs, counts start afresh
with every sequence (warm-up drops out), the Amdahl ceiling follows from the computed share of each unit's
prefill, and the compiled kernel refuses to fall back to unfused attention."""
from __future__ import annotations

import math

import pytest
import torch
from torch.nn.attention.flex_attention import create_block_mask

from lab.bench.validate import validate
from lab.llm.engine import Engine
from lab.ops.flex import FlexFallback, FlexPattern, blocks_to_mask, causal_mod
from lab.ops.sampling import GenerationSettings
from lab.techniques import build

pytestmark = pytest.mark.usefixtures("data_in_tmp")  # inductor's kernel cache lands in a temp folder

IDS = list(b"Attention sinks hold the mass; the window holds the recent words. " * 4)  # 268 tokens: 5 blocks of 64
BLOCK = 64


@pytest.fixture(scope="module")
def tiny(tiny_llama_and_tokenizer):
    return tiny_llama_and_tokenizer


def pattern(name, **knobs):
    return build([{"name": name, **knobs}], model_kind="llm")


def causal(start: int, end: int) -> int:
    """Causal pairs of queries at positions start..end-1 over keys 0..end-1, pair by pair."""
    return sum(p + 1 for p in range(start, end))


def block_pairs(qb: int, kb: int, queries: int, keys: int) -> int:
    """Causal pairs in one (query block, key block) of a call whose queries sit at the last positions of the keys."""
    offset = keys - queries
    return sum(1 for r in range(qb * BLOCK, min((qb + 1) * BLOCK, queries))
               for k in range(kb * BLOCK, min((kb + 1) * BLOCK, keys)) if k <= offset + r)


def computed_by_hand(block_mask, queries: int, keys: int, heads: int) -> int:
    """Causal pairs of every block the kernel visits: per head and query block, the first kv_num_blocks entries of
    kv_indices (partial blocks) and of full_kv_indices (full blocks)."""
    total = 0
    for h in range(heads):
        hm = h if block_mask.kv_num_blocks.shape[1] > 1 else 0  # a mask shared by the heads has one row
        for qb in range(math.ceil(queries / BLOCK)):
            blocks = set()
            for num, idx in ((block_mask.kv_num_blocks, block_mask.kv_indices),
                             (block_mask.full_kv_num_blocks, block_mask.full_kv_indices)):
                if num is not None:
                    blocks |= {int(i) for i in idx[0, hm, qb, :int(num[0, hm, qb])]}
            total += sum(block_pairs(qb, kb, queries, keys) for kb in blocks)
    return total


def sink_window_mask(n_sink: int, window: int, queries: int, keys: int):
    """The BlockMask of sink + window built here from its definition, straight through torch."""
    offset = keys - queries

    def mask_mod(_b, _h, q, k):
        return (k <= q + offset) & ((k < n_sink) | (q + offset - k < window))
    return create_block_mask(mask_mod, None, None, queries, keys, device="cpu", BLOCK_SIZE=BLOCK)


def test_the_computed_share_is_what_the_block_mask_makes_the_kernel_compute(tiny):
    model, tok = tiny
    technique = pattern("sink_window", n_sink=4, window=40, block_size=BLOCK)
    gen = Engine(model, tok, technique).generate(IDS, GenerationSettings(max_new_tokens=4))
    shares = technique[0].measure(gen)
    heads = model.config.num_attention_heads  # every layer computes the same blocks: counted for one
    n, fed = len(IDS), len(IDS) + len(gen.token_ids) - 1
    prefill = computed_by_hand(sink_window_mask(4, 40, n, n), n, n, heads)
    decode = causal(n, fed) * heads  # each decode step runs the masked SDPA: every causal pair of its row
    assert shares["attended_share"] == pytest.approx(100 * (prefill + decode) / (causal(0, fed) * heads))
    assert prefill < causal(0, n) * heads  # the window skips whole blocks far back
    kept = sum(1 for q in range(fed) for k in range(q + 1) if k < 4 or q - k < 40)
    assert shares["kept_share"] == pytest.approx(100 * kept / causal(0, fed))
    assert shares["kept_share"] < shares["attended_share"] < 100  # a touched block is computed whole


def test_block_topk_counts_the_block_masks_it_hands_the_kernel(tiny, monkeypatch):
    model, tok = tiny
    seen = []
    original = FlexPattern.__call__

    def recording(self, query, key, value, block_mask, scaling=None):
        seen.append((block_mask, query.shape[2], key.shape[2], query.shape[1]))
        return original(self, query, key, value, block_mask, scaling)
    monkeypatch.setattr(FlexPattern, "__call__", recording)
    technique = pattern("block_topk", top_k=1, window=1, block_size=BLOCK)
    gen = Engine(model, tok, technique).generate(IDS, GenerationSettings(max_new_tokens=1))  # the prefill alone
    assert len(seen) == model.config.num_hidden_layers and seen[0][0].kv_num_blocks.shape[1] > 1  # per head
    computed = sum(computed_by_hand(*call) for call in seen)
    all_pairs = causal(0, len(IDS)) * model.config.num_attention_heads * len(seen)
    shares = technique[0].measure(gen)
    assert shares["attended_share"] == pytest.approx(100 * computed / all_pairs) and computed < all_pairs
    assert shares["kept_share"] == pytest.approx(shares["attended_share"])  # it keeps whole blocks


def test_the_masked_sdpa_path_computes_every_pair_whatever_the_pattern_keeps(tiny):
    model, tok = tiny
    for name, knobs in (("sink_window", {"n_sink": 2, "window": 8}),
                        ("block_topk", {"top_k": 0, "window": 1, "block_size": 64})):
        technique = pattern(name, kernel="sdpa_mask", **knobs)
        gen = Engine(model, tok, technique).generate(IDS, GenerationSettings(max_new_tokens=3))
        shares = technique[0].measure(gen)
        assert shares["attended_share"] == 100.0 and shares["kept_share"] < 90, name


def test_each_sequence_counts_its_own_calls_so_warm_up_drops_out(tiny):
    model, tok = tiny
    settings = GenerationSettings(max_new_tokens=3)
    warmed = pattern("block_topk", top_k=0, window=1, block_size=64, kernel="sdpa_mask")
    engine = Engine(model, tok, warmed)
    engine.generate(IDS[:150], settings)  # a warm-up: never measured, a different share
    gen = engine.generate(IDS, settings)
    fresh = pattern("block_topk", top_k=0, window=1, block_size=64, kernel="sdpa_mask")
    Engine(model, tok, fresh).generate(IDS, settings)
    assert warmed[0].measure(gen) == fresh[0].measure(gen)


def test_the_ceiling_follows_from_each_windows_computed_share(tiny_spec, tiny):
    """Perplexity windows of 400 tokens: the timed unit feeds 200 tokens, then 199 more after them. The computed
    share of that prefill is counted here from BlockMasks built by torch from the pattern's definition; the ceiling
    must be 1 / (1 - s (1 - a)) with it, and exactly 1 for the masked path, which computes every pair."""
    from lab.bench import run
    model, _ = tiny
    spec = validate({**tiny_spec, "workload": "perplexity", "prompts": 1, "perplexity_window": 400, "repeats": 1,
                     "warmup": 1, "variants": [
                         {"name": "flex", "techniques": [{"name": "sink_window", "n_sink": 4, "window": 32,
                                                          "block_size": BLOCK}]},
                         {"name": "masked", "techniques": [{"name": "sink_window", "n_sink": 4, "window": 32,
                                                            "kernel": "sdpa_mask"}]}]})
    by_name = {r.name: r.samples for r in run.execute(spec)}
    heads = model.config.num_attention_heads
    computed = sum(computed_by_hand(sink_window_mask(4, 32, q, k), q, k, heads) for q, k in ((200, 200), (199, 399)))
    a = computed / (causal(0, 399) * heads)
    flex, masked = by_name["flex"], by_name["masked"]
    assert flex["attended_share"] == [pytest.approx(100 * a)] and a < 0.7
    s = flex["attention_share"][0] / 100
    assert 0 < s < 1 and masked["attention_share"] == flex["attention_share"] == by_name["baseline"]["attention_share"]
    assert flex["amdahl_ceiling"] == [pytest.approx(1 / (1 - s * (1 - a)))] and flex["amdahl_ceiling"][0] > 1
    assert masked["amdahl_ceiling"] == [1.0] and by_name["baseline"]["amdahl_ceiling"] == [1.0]
    assert masked["kept_share"] == pytest.approx(flex["kept_share"]) and masked["attended_share"] == [100.0]


def test_the_compiled_kernel_refuses_to_fall_back_to_unfused_attention():
    """One compiled shape allowed: a new mask (new content, a new closure) at that shape reuses the kernel; a
    second shape would make torch run flex_attention unfused, so the call raises and names the cause."""
    kernel = FlexPattern(BLOCK, max_shapes=1)

    def call(queries: int, keys: int, seed: int):
        g = torch.Generator().manual_seed(seed)
        q, k = torch.randn(1, 2, queries, 16, generator=g), torch.randn(1, 2, keys, 16, generator=g)
        qb, kb = math.ceil(queries / BLOCK), math.ceil(keys / BLOCK)
        visible = torch.ones(qb, kb, dtype=torch.bool).tril()[None]
        full = (torch.rand(2, qb, kb, generator=g) < 0.5) & torch.ones(qb, kb, dtype=torch.bool).tril(-1)[None]
        mask = blocks_to_mask(visible & ~full, full, causal_mod(keys - queries), BLOCK, queries, keys)
        return kernel(q, k, k, mask)

    assert call(128, 128, 0).shape == (1, 128, 2, 16)
    call(128, 128, 1)  # another mask at the same shape: no new kernel, so no limit reached
    assert len(kernel.compiled_shapes) == 1
    with pytest.raises(FlexFallback, match=r"recompile limit \(1\).*unfused"):
        call(192, 192, 2)
