"""A static vertical + slash pattern per layer and head (MInference's shape, chosen offline): a head keeps the
keys at a few fixed early positions (vertical lines: the sinks it favours) and at a set of distances from the
query (slash lines: the diagonals it favours, the most recent tokens among them). Under RoPE a distance means the
same at any position, which is why slashes chosen on one text carry over to another.

Tables per layer: slashes [heads, span_s] (distance d kept) and verticals [heads, span_v] (position kept).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class HeadPatterns:
    slashes: torch.Tensor  # [layers, heads, span_s] bool
    verticals: torch.Tensor  # [layers, heads, span_v] bool

    @classmethod
    def choose(cls, offsets: torch.Tensor, columns: torch.Tensor, n_slashes: int, n_verticals: int):
        """Per layer and head the n_slashes distances and n_verticals early positions holding the most
        calibration attention mass; distance 0 (a token's own key) is always kept."""
        slashes = torch.zeros(offsets.shape, dtype=torch.bool)
        slashes.scatter_(-1, offsets.topk(min(n_slashes, offsets.shape[-1]), dim=-1).indices, True)
        slashes[..., 0] = True
        verticals = torch.zeros(columns.shape, dtype=torch.bool)
        if n_verticals:
            verticals.scatter_(-1, columns.topk(min(n_verticals, columns.shape[-1]), dim=-1).indices, True)
        return cls(slashes, verticals)

    def coverage(self, offsets: torch.Tensor) -> torch.Tensor:
        """[layers, heads]: share of the calibration mass on the chosen slashes (a lower bound of what the
        pattern keeps: vertical lines add to it)."""
        return (offsets * self.slashes).sum(-1) / offsets.sum(-1)

    def token_mask(self, layer: int, queries: int, keys: int) -> torch.Tensor:
        """[heads, queries, keys] for queries at the last positions of the keys."""
        slashes, verticals = self.slashes[layer], self.verticals[layer]
        distance = torch.arange(keys - queries, keys)[:, None] - torch.arange(keys)[None]
        on_slash = slashes[:, distance.clamp(0, slashes.shape[-1] - 1)] & (distance < slashes.shape[-1])[None]
        k_pos = torch.arange(keys)
        on_vertical = verticals[:, k_pos.clamp(max=verticals.shape[-1] - 1)] & (k_pos < verticals.shape[-1])
        return (on_slash | on_vertical[:, None]) & (distance >= 0)[None]

    def mask_mod(self, layer: int, offset: int):
        """The same rule for FlexAttention, pair by pair."""
        slashes, verticals = self.slashes[layer], self.verticals[layer]
        span_s, span_v = slashes.shape[-1], verticals.shape[-1]
        shift = torch.tensor(offset)

        def mask_mod(_b, h, q_idx, kv_idx):
            distance = q_idx + shift - kv_idx
            on_slash = slashes[h, distance.clamp(0, span_s - 1)] & (distance < span_s)
            on_vertical = verticals[h, kv_idx.clamp(0, span_v - 1)] & (kv_idx < span_v)
            return (distance >= 0) & (on_slash | on_vertical)
        return mask_mod

    def blocks(self, layer: int, queries: int, keys: int, block: int):
        """(partial, full) [heads, query_blocks, key_blocks]: blocks holding some kept pair, and those whose every
        pair is kept (a run of kept distances covering the block, all of it causal)."""
        # lazy: block_select's causal layout is shared with block top-k
        from lab.ops.block_select import block_edges, causal_layout

        slashes, verticals = self.slashes[layer], self.verticals[layer]
        span_s, span_v = slashes.shape[-1], verticals.shape[-1]
        visible, whole, _ = causal_layout(queries, keys, block)
        q_first, q_last, k_first, k_last = block_edges(queries, keys, block)
        # distances met in a block: q_first - k_last .. q_last - k_first; counted through a running sum
        lo = torch.clamp(q_first[:, None] - k_last[None], min=0)
        hi = q_last[:, None] - k_first[None]
        running = torch.nn.functional.pad(slashes.cumsum(-1), (1, 0))  # [heads, span_s + 1]
        lo_c, hi_c = lo.clamp(max=span_s), (hi + 1).clamp(0, span_s)
        on_slash = (running[:, hi_c] - running[:, lo_c]) > 0
        cols = torch.nn.functional.pad(verticals.cumsum(-1), (1, 0))
        v_hi = torch.minimum(k_last[None], q_last[:, None]).clamp(max=span_v - 1) + 1
        v_lo = k_first.clamp(max=span_v)[None].expand_as(v_hi)
        on_vertical = (cols[:, v_hi.clamp(min=0)] - cols[:, torch.minimum(v_lo, v_hi.clamp(min=0))]) > 0
        touched = (on_slash | on_vertical) & visible[None]
        every = (running[:, hi_c] - running[:, lo_c]) == (hi - lo + 1)[None]
        full = touched & whole[None] & (hi < span_s)[None] & every
        return touched & ~full, full

    def kept_pairs(self, length: int) -> torch.Tensor:
        """[layers, heads]: pairs kept over a `length`-token sequence, counted from the tables."""
        span_s, span_v = self.slashes.shape[-1], self.verticals.shape[-1]
        d = torch.arange(span_s)
        on_slashes = (self.slashes * torch.clamp(length - d, min=0)).sum(-1)
        # a vertical at position v keeps (length - v) pairs, less those already on a slash (distance <= length-1-v)
        running = self.slashes.cumsum(-1)
        v = torch.arange(span_v)
        reach = torch.clamp(length - 1 - v, max=span_s - 1)
        already = torch.where(reach >= 0, running[..., reach.clamp(min=0)], 0)
        on_verticals = (self.verticals * torch.clamp(length - v - already, min=0) * (v < length)).sum(-1)
        return on_slashes + on_verticals
