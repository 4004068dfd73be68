"""Block top-k and vertical + slash on the tiny random Llama: each mask against a slow definition written here,
dense equality when the pattern covers everything, the flex kernel against the masked reference, decode against
prefill for the static per-head pattern, and the kept share moving with the knob."""
from __future__ import annotations

import math

import pytest
import torch

from lab.llm.engine import Engine
from lab.ops.block_select import select_blocks, token_mask
from lab.ops.sampling import GenerationSettings
from lab.ops.vertical_slash import HeadPatterns
from lab.techniques import build

pytestmark = pytest.mark.usefixtures("data_in_tmp")  # calibration and inductor's cache land in a temp folder

IDS = list(b"Attention sinks hold the mass; the window holds the recent words. " * 2)  # 134 tokens


@pytest.fixture(scope="module")
def tiny(tiny_llama_and_tokenizer):
    return tiny_llama_and_tokenizer


def technique(name, **knobs):
    return build([{"name": name, **knobs}], model_kind="llm")


def all_logits(engine, ids):
    cache = engine.new_cache()
    with torch.inference_mode(), engine._prepared(cache):
        return engine.forward(torch.tensor([ids]), cache, 0, logits_to_keep=0)[0].float()


def slow_block_topk(query, key, block, top_k, score="mean", window=1, coverage=0.0):
    """Block top-k pair by pair: query block i keeps key block j when j is 0, crosses i's causal diagonal, is
    wholly before i's first query and holds one of the `window` keys before it, or is among the top_k other
    wholly-before blocks by score: "mean", the mean of all q.k scores between the two blocks; "max", the largest
    score of the block's mean query with one of its keys; "mass", the softmax attention of the block's mean query
    (over the keys up to its last query) summed over the block's keys. With coverage, blocks are taken best first
    only while the mass kept (forced blocks included), as a share of the mass beyond the first (sink) block, is
    below coverage."""
    heads, queries, keys = query.shape[1], query.shape[2], key.shape[2]
    offset, groups = keys - queries, heads // key.shape[1]
    keep = torch.zeros(heads, queries, keys, dtype=torch.bool)
    n_blocks = math.ceil(keys / block)
    for h in range(heads):
        for i in range(math.ceil(queries / block)):
            q_rows = list(range(i * block, min((i + 1) * block, queries)))
            first, last = offset + q_rows[0], offset + q_rows[-1]
            whole = [j for j in range(n_blocks) if min((j + 1) * block, keys) - 1 <= first]
            crossing = [j for j in range(n_blocks) if j * block <= last and j not in whole]
            recent = {j for j in whole if min((j + 1) * block, keys) - 1 >= first - window}
            forced = set(crossing) | {0} | recent
            mean_query = query[0, h, q_rows].mean(0)
            probs = torch.softmax(mean_query @ key[0, h // groups, :last + 1].T * query.shape[-1] ** -0.5, -1)
            scores = {}
            for j in range(n_blocks):
                k_rows = list(range(j * block, min((j + 1) * block, keys)))
                if score == "mean":
                    scores[j] = float((query[0, h, q_rows] @ key[0, h // groups, k_rows].T).mean())
                elif score == "max":
                    scores[j] = float((mean_query @ key[0, h // groups, k_rows].T).max())
                else:
                    scores[j] = float(probs[[r for r in k_rows if r <= last]].sum())
            beyond_sink = sum(scores[j] for j in range(1, n_blocks))
            chosen, kept = set(forced), sum(scores[j] for j in forced if j != 0)
            for j in sorted((j for j in whole if j not in forced), key=scores.get, reverse=True):
                if len(chosen - forced) < top_k and (coverage == 0 or kept / beyond_sink < coverage):
                    chosen.add(j)
                    kept += scores[j]
            for r in q_rows:
                for j in chosen:
                    for c in range(j * block, min((j + 1) * block, keys)):
                        keep[h, r, c] = c <= offset + r
    return keep


@pytest.mark.parametrize("score,window,top_k,coverage", [("mean", 1, 2, 0), ("max", 1, 2, 0), ("mean", 12, 2, 0),
                                                         ("mass", 1, 2, 0), ("mass", 1, 4, 0.5), ("mass", 1, 4, 0.8)])
@pytest.mark.parametrize("queries,keys", [(40, 40), (1, 37), (5, 37), (33, 33), (64, 64)])
def test_block_topk_keeps_the_blocks_its_definition_names(queries, keys, score, window, top_k, coverage):
    torch.manual_seed(queries + keys)
    query, key = torch.randn(1, 4, queries, 8) * 2, torch.randn(1, 2, keys, 8)
    blocks = select_blocks(query, key, 8, top_k, score, window, coverage)
    got = token_mask(blocks, queries, keys, 8)
    assert torch.equal(got, slow_block_topk(query, key, 8, top_k, score, window, coverage))
    assert blocks.kept_pairs() == int(got.sum())


def test_block_topk_with_every_block_is_dense_attention_exactly(tiny):
    model, tok = tiny
    dense = Engine(model, tok)
    covered = Engine(model, tok, technique("block_topk", top_k=2, block_size=64))  # 134 tokens: 3 blocks
    assert torch.equal(all_logits(covered, IDS), all_logits(dense, IDS))
    settings = GenerationSettings(max_new_tokens=6)
    assert covered.generate(IDS, settings).token_ids == dense.generate(IDS, settings).token_ids


def test_block_topk_flex_kernel_matches_the_masked_reference_and_fewer_blocks_attend_less(tiny):
    model, tok = tiny
    ids = IDS * 3  # 402 tokens: 7 blocks of 64, the last one short
    dense = all_logits(Engine(model, tok), ids)
    shares = []
    for top_k in (3, 1, 0):
        flex = technique("block_topk", top_k=top_k, block_size=64, window=1)
        reference = technique("block_topk", top_k=top_k, block_size=64, window=1, kernel="sdpa_mask")
        got = all_logits(Engine(model, tok, flex), ids)
        torch.testing.assert_close(got, all_logits(Engine(model, tok, reference), ids), rtol=1e-4, atol=1e-4)
        assert not torch.allclose(got, dense, atol=1e-4)
        shares.append(flex[0].kept_share(len(ids)))
        assert shares[-1] == pytest.approx(reference[0].kept_share(len(ids)))
        # block top-k keeps whole blocks, so the flex kernel computes what it keeps; the mask path every pair
        assert flex[0].sequence_shares(len(ids))["attended_share"] == pytest.approx(shares[-1])
        assert reference[0].sequence_shares(len(ids))["attended_share"] == 100.0
    assert 100 > shares[0] > shares[1] > shares[2] > 0


def slow_vertical_slash(slashes, verticals, length):
    keep = torch.zeros(slashes.shape[0], length, length, dtype=torch.bool)
    for h in range(slashes.shape[0]):
        for i in range(length):
            for j in range(i + 1):
                d = i - j
                keep[h, i, j] = bool((d < slashes.shape[1] and slashes[h, d]) or
                                     (j < verticals.shape[1] and verticals[h, j]))
    return keep


def random_patterns(seed=0, layers=2, heads=4):
    g = torch.Generator().manual_seed(seed)
    offsets, columns = torch.rand(layers, heads, 24, generator=g), torch.rand(layers, heads, 6, generator=g)
    return HeadPatterns.choose(offsets, columns, n_slashes=7, n_verticals=2)


def test_vertical_slash_mask_blocks_and_counts_follow_the_definition():
    patterns = random_patterns()
    assert patterns.slashes.sum(-1).le(8).all() and patterns.slashes[..., 0].all()  # top 7, plus distance 0
    for layer in range(2):
        slow = slow_vertical_slash(patterns.slashes[layer], patterns.verticals[layer], 40)
        assert torch.equal(patterns.token_mask(layer, 40, 40), slow)
        assert torch.equal(patterns.token_mask(layer, 3, 40), slow[:, -3:])
        assert torch.equal(patterns.kept_pairs(40)[layer], slow.sum((1, 2)))
        partial, full = patterns.blocks(layer, 40, 40, 8)
        by_block = slow.view(4, 5, 8, 5, 8).any(4).any(2)
        assert torch.equal(partial | full, by_block)
        every = slow.view(4, 5, 8, 5, 8).all(4).all(2)
        assert (full <= every).all()  # a block computed whole keeps every pair of it


def test_vertical_slash_calibrates_once_and_runs_flex_like_the_reference_and_decode_like_prefill(tiny):
    model, tok = tiny
    flex = technique("vertical_slash", slashes=24, verticals=2, block_size=64)
    engine = Engine(model, tok, flex)
    assert any("calibrated and stored" in n for n in engine.calibration.notes)
    again = Engine(model, tok, technique("vertical_slash", slashes=24, verticals=2, kernel="sdpa_mask"))
    assert any("reused" in n for n in again.calibration.notes)
    assert torch.equal(again.slots["attention"]._patterns.slashes, flex[0]._patterns.slashes)
    ids = IDS * 2
    prefill = all_logits(again, ids)
    torch.testing.assert_close(all_logits(engine, ids), prefill, rtol=1e-4, atol=1e-4)
    assert not torch.allclose(prefill, all_logits(Engine(model, tok), ids), atol=1e-4)
    cache = again.new_cache()
    with torch.inference_mode(), again._prepared(cache):
        first = again.forward(torch.tensor([ids[:50]]), cache, 0, logits_to_keep=0)[0]
        steps = [again.forward(torch.tensor([[t]]), cache, 50 + i)[0, -1] for i, t in enumerate(ids[50:])]
    torch.testing.assert_close(torch.cat([first, torch.stack(steps)]).float(), prefill, rtol=1e-4, atol=1e-4)
    details = flex[0].details()["vertical_slash"]
    assert len(details["coverage"]) == 2 and 0 < details["coverage"][0][0] <= 1


def test_vertical_slash_attends_less_with_fewer_slashes(tiny):
    model, tok = tiny
    shares = []
    for slashes in (64, 16, 4):
        t = technique("vertical_slash", slashes=slashes, verticals=1)
        Engine(model, tok, t)
        shares.append(t[0].kept_share(200))
    assert shares[0] > shares[1] > shares[2] > 0


def test_a_pattern_stacks_on_a_quantized_cache_and_refuses_an_evicting_one(tiny, tiny_spec):
    from lab.bench.validate import validate
    from lab.errors import SpecError
    model, tok = tiny
    settings = GenerationSettings(max_new_tokens=6)
    ids = IDS * 2
    quantized = Engine(model, tok, technique("quantized_kv")).generate(ids, settings)
    covered = Engine(model, tok, build([{"name": "block_topk", "top_k": 8, "block_size": 64},
                                        {"name": "quantized_kv"}], model_kind="llm")).generate(ids, settings)
    assert covered.token_ids == quantized.token_ids  # the pattern covers every block: the quantized cache alone
    stacked = build([{"name": "block_topk", "top_k": 0, "block_size": 64}, {"name": "quantized_kv"}],
                    model_kind="llm")
    gen = Engine(model, tok, stacked).generate(ids, settings)
    assert stacked[0].measure(gen)["attended_share"] < 100
    for pattern in ("block_topk", "vertical_slash"):
        with pytest.raises(SpecError, match="cannot be combined: an evicting KV cache"):
            validate({**tiny_spec, "variants": [{"techniques": [{"name": pattern}, {"name": "snapkv"}]}]})


def test_a_block_size_the_kernel_does_not_offer_is_refused_with_the_allowed_ones(tiny_spec):
    from lab.bench.validate import validate
    from lab.errors import SpecError
    with pytest.raises(SpecError, match=r"block_size.*100.*64, 128, 256"):
        validate({**tiny_spec, "variants": [{"techniques": [{"name": "block_topk", "block_size": 100}]}]})
    with pytest.raises(SpecError, match=r"slashes.*allowed|slashes.*between|slashes.*<= 512|slashes.*512"):
        validate({**tiny_spec, "variants": [{"techniques": [{"name": "vertical_slash", "slashes": 1000}]}]})


def test_a_lower_coverage_keeps_fewer_blocks_and_the_technique_refuses_coverage_without_mass():
    from lab.errors import SpecError
    torch.manual_seed(0)
    query, key = torch.randn(1, 4, 128, 8) * 2, torch.randn(1, 2, 128, 8)
    kept = [select_blocks(query, key, 8, 16, "mass", 1, c).kept_pairs() for c in (0.0, 0.95, 0.5)]
    assert kept[0] > kept[1] > kept[2]
    with pytest.raises(SpecError, match='coverage 0.5 needs score = "mass"'):
        technique("block_topk", coverage=0.5)
