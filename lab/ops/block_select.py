"""Block selection for block top-k attention (Quest / MInference block-sparse / HiP's idea): each query block
estimates its score with every key block from block means, and keeps the sink block, the blocks it touches
causally at its end, and the top_k others.

Shapes: query [1, q_heads, queries, dim], key [1, kv_heads, keys, dim] (GQA: q_heads a multiple of kv_heads);
queries sit at the last positions of the keys. A block's score is mean(q in the query block) . mean(k in the key
block), which equals the mean of all q.k pair scores of the two blocks (the product of means is the mean of
products for a bilinear form): the block's average logit, a cheap estimate of where attention mass is.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass

import torch


@dataclass
class Blocks:
    """The blocks one call computes: [q_heads, query_blocks, key_blocks] booleans."""

    partial: torch.Tensor  # crossing the causal diagonal: the kernel applies the causal mask inside
    full: torch.Tensor  # entirely before every query of the block: computed whole
    pairs: torch.Tensor  # causal pairs in each block [query_blocks, key_blocks] (the attended-share count)

    @property
    def chosen(self) -> torch.Tensor:
        return self.partial | self.full

    def kept_pairs(self) -> int:
        return int((self.chosen * self.pairs).sum())


def block_means(x: torch.Tensor, block: int) -> torch.Tensor:
    """[heads, n, dim] -> [heads, ceil(n / block), dim]: the mean of each block (the last one may be short)."""
    heads, n, dim = x.shape
    blocks = -(-n // block)
    sums = torch.nn.functional.pad(x.float(), (0, 0, 0, blocks * block - n)).view(heads, blocks, block, dim).sum(2)
    sizes = torch.full((blocks,), float(block))
    sizes[-1] = n - (blocks - 1) * block
    return sums / sizes[:, None]


def block_edges(queries: int, keys: int, block: int):
    """(q_first, q_last, k_first, k_last): the first and last position of every query block (queries sit at the
    last positions of the keys) and of every key block."""
    q_first = (keys - queries) + torch.arange(0, queries, block)
    k_first = torch.arange(0, keys, block)
    q_last = torch.clamp(q_first + block - 1, max=keys - 1)
    k_last = torch.clamp(k_first + block - 1, max=keys - 1)
    return q_first, q_last, k_first, k_last


@functools.lru_cache(maxsize=16)
def causal_layout(queries: int, keys: int, block: int):
    """Per (query block, key block): whether some pair is causal (visible), whether every pair is (whole), and
    how many causal pairs it holds. Cached per shape: every layer of a forward asks for the same one (callers
    only read the tensors)."""
    offset = keys - queries
    q_first, q_last, k_first, k_last = block_edges(queries, keys, block)
    visible = k_first[None] <= q_last[:, None]
    whole = k_last[None] <= q_first[:, None]
    # causal pairs of query p with keys k_first..k_last: clamp(p - k_first + 1, 0, block size), summed over p
    positions = torch.arange(offset, keys)
    per_query = torch.clamp(positions[:, None] - k_first[None] + 1, min=0)
    per_query = torch.minimum(per_query, (k_last - k_first + 1)[None])
    pairs = torch.nn.functional.pad(per_query, (0, 0, 0, -queries % block)).view(-1, block, len(k_first)).sum(1)
    return visible, whole, pairs


def block_scores(query: torch.Tensor, key: torch.Tensor, block: int, score: str) -> torch.Tensor:
    """[q_heads, query_blocks, key_blocks]: "mean", the block's average logit mean(q) . mean(k); "max", the
    largest logit of the query block's mean query with any key of the block, which a single strong key (a
    needle) cannot hide behind its block's average; "mass", the attention the mean query gives the block
    (softmax over the keys up to the query block's last query, summed per key block: FlexPrefill's estimate)."""
    groups = query.shape[1] // key.shape[1]  # each KV head serves `groups` query heads
    q_means = block_means(query[0], block)  # [q_heads, query_blocks, dim]
    if score == "mean":
        k_means = block_means(key[0], block).repeat_interleave(groups, 0)
        return q_means @ k_means.transpose(1, 2)
    queries, keys = query.shape[2], key.shape[2]
    logits = q_means @ key[0].float().repeat_interleave(groups, 0).transpose(1, 2)  # [q_heads, q_blocks, keys]
    if score == "mass":
        q_last = block_edges(queries, keys, block)[1]
        future = torch.arange(keys)[None] > q_last[:, None]
        probs = torch.softmax((logits * query.shape[-1] ** -0.5).masked_fill(future[None], float("-inf")), -1)
        return torch.nn.functional.pad(probs, (0, -keys % block)).view(*probs.shape[:2], -1, block).sum(-1)
    padded = torch.nn.functional.pad(logits, (0, -keys % block), value=float("-inf"))
    return padded.view(*logits.shape[:2], -1, block).amax(-1)


def select_blocks(query: torch.Tensor, key: torch.Tensor, block: int, top_k: int, score: str = "mean",
                  window: int = 1, coverage: float = 0.0) -> Blocks:
    """For every query head and query block: the sink block (0), the blocks crossing the diagonal, the whole blocks
    reaching into the `window` tokens before the block's first query (at least the last one), and up to top_k
    other whole blocks, best estimated score first. With `coverage` (score "mass"), a head takes the next best
    block only while the estimated mass of what it keeps is below coverage, so a local head keeps few blocks and a
    head that looks far keeps many (FlexPrefill's query-aware budget)."""
    queries, keys = query.shape[2], key.shape[2]
    visible, whole, pairs = causal_layout(queries, keys, block)
    scores = block_scores(query, key, block, score)

    crossing = visible & ~whole
    q_first, _, _, k_last = block_edges(queries, keys, block)
    recent = whole & (k_last[None] >= q_first[:, None] - max(window, 1))
    forced = crossing | recent
    forced[:, 0] |= visible[:, 0]
    candidates = whole & ~forced
    chosen = forced[None].expand_as(scores).clone()
    ranked = scores.masked_fill(~candidates[None], float("-inf")).sort(-1, descending=True)
    rank = torch.arange(scores.shape[-1])
    take = (ranked.values > float("-inf")) & (rank < top_k)
    if coverage > 0:
        # The sink block draws most of every head's attention (that is what sinks are), so the budget counts the
        # mass beyond it: share = mass / mass of all blocks but the first. Mass kept before the block of each
        # rank is taken: the forced blocks' (sink aside) and the better-ranked ones'.
        beyond_sink = scores[..., 1:].sum(-1, keepdim=True).clamp(min=1e-30)
        forced_mass = (scores * forced)[..., 1:].sum(-1, keepdim=True)
        ranked_mass = ranked.values.clamp(min=0)
        kept_before = (forced_mass + ranked_mass.cumsum(-1) - ranked_mass) / beyond_sink
        take &= kept_before < coverage
    chosen.scatter_(-1, ranked.indices, take | chosen.gather(-1, ranked.indices))
    return Blocks(partial=chosen & crossing[None], full=chosen & whole[None], pairs=pairs)


def token_mask(blocks: Blocks, queries: int, keys: int, block: int) -> torch.Tensor:
    """The blocks as a boolean [q_heads, queries, keys] mask (causal inside), for SDPA."""
    q_blocks = torch.arange(queries) // block
    k_blocks = torch.arange(keys) // block
    chosen = blocks.chosen[:, q_blocks][:, :, k_blocks]
    causal = torch.arange(keys - queries, keys)[:, None] >= torch.arange(keys)[None]
    return chosen & causal[None]
