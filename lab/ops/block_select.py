"""Block selection for block top-k attention (Quest / MInference block-sparse / HiP's idea): each query block
estimates its score with every key block from block means, and keeps the sink block, the blocks it touches
causally at its end, and the top_k others.

Shapes: query [1, q_heads, queries, dim], key [1, kv_heads, keys, dim] (GQA: q_heads a multiple of kv_heads);
queries sit at the last positions of the keys. A block's score is mean(q in the query block) . mean(k in the key
block), which equals the mean of all q.k pair scores of the two blocks (the product of means is the mean of
products for a bilinear form): the block's average logit, a cheap estimate of where attention mass is.
"""
from __future__ import annotations

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


def causal_layout(queries: int, keys: int, block: int):
    """Per (query block, key block): whether some pair is causal (visible), whether every pair is (whole), and
    how many causal pairs it holds."""
    offset = keys - queries
    q_first = offset + torch.arange(0, queries, block)
    q_last = torch.clamp(q_first + block - 1, max=keys - 1)
    k_first = torch.arange(0, keys, block)
    k_last = torch.clamp(k_first + block - 1, max=keys - 1)
    visible = k_first[None] <= q_last[:, None]
    whole = k_last[None] <= q_first[:, None]
    # causal pairs of query p with keys k_first..k_last: clamp(p - k_first + 1, 0, block size), summed over p
    positions = torch.arange(offset, keys)
    per_query = torch.clamp(positions[:, None] - k_first[None] + 1, min=0)
    per_query = torch.minimum(per_query, (k_last - k_first + 1)[None])
    pairs = torch.nn.functional.pad(per_query, (0, 0, 0, -queries % block)).view(-1, block, len(k_first)).sum(1)
    return visible, whole, pairs


def select_blocks(query: torch.Tensor, key: torch.Tensor, block: int, top_k: int) -> Blocks:
    """For every query head and query block: the sink block (0), the blocks crossing the diagonal, the last whole
    block before them, and the top_k other whole blocks by estimated score."""
    q_heads, queries, keys = query.shape[1], query.shape[2], key.shape[2]
    visible, whole, pairs = causal_layout(queries, keys, block)
    groups = q_heads // key.shape[1]
    q_means = block_means(query[0], block)  # [q_heads, query_blocks, dim]
    k_means = block_means(key[0], block).repeat_interleave(groups, 0)  # each KV head serves `groups` query heads
    scores = q_means @ k_means.transpose(1, 2)  # [q_heads, query_blocks, key_blocks]

    crossing = visible & ~whole
    last_whole = torch.zeros_like(whole)
    rows = torch.arange(whole.shape[0])
    n_whole = whole.sum(1)
    last_whole[rows[n_whole > 0], n_whole[n_whole > 0] - 1] = True
    forced = crossing | last_whole
    forced[:, 0] |= visible[:, 0]
    candidates = whole & ~forced
    scores = scores.masked_fill(~candidates[None], float("-inf"))
    chosen = forced[None].expand_as(scores).clone()
    k = min(top_k, scores.shape[-1])
    if k > 0:
        best = scores.topk(k, dim=-1)
        chosen.scatter_(-1, best.indices, best.values > float("-inf"))
        chosen |= forced[None]
    return Blocks(partial=chosen & crossing[None], full=chosen & whole[None], pairs=pairs)


def token_mask(blocks: Blocks, queries: int, keys: int, block: int) -> torch.Tensor:
    """The blocks as a boolean [q_heads, queries, keys] mask (causal inside), for SDPA."""
    q_blocks = torch.arange(queries) // block
    k_blocks = torch.arange(keys) // block
    chosen = blocks.chosen[:, q_blocks][:, :, k_blocks]
    causal = torch.arange(keys - queries, keys)[:, None] >= torch.arange(keys)[None]
    return chosen & causal[None]
