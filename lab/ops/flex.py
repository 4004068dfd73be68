"""FlexAttention for the sparse-attention patterns: a pattern becomes a BlockMask, and a compiled flex_attention
kernel (inductor on the CPU) skips every key block the mask leaves empty.

Two ways to a BlockMask: a static pattern's keep() through create_block_mask (it evaluates the pattern at every
pair, ~0.5 s at 8k tokens, so the last one is kept and shared by all layers of a forward), or a pattern that
chooses blocks itself (block top-k per call, per-head static patterns per layer) hands over the chosen blocks
and BlockMask.from_kv_blocks packs them (microseconds). A new mask content or closure is no new kernel: only a
new shape compiles.

Measured on the 2-core AMD EPYC: sink 4 + window 256 over 8,192 tokens (9 query heads, 3 KV heads, dim 64) runs in
122 ms against 569 ms for causal SDPA (4.7x); 10 of 64 key blocks per query block chosen freely (top-k) in 224 ms
(2.5x). Compiling takes ~12-20 s for the first shape and ~4 s for each new one; inductor's cache lives under
data/cache so a later run reuses it, and the time of each shape's first call is reported apart from timed runs.
"""
from __future__ import annotations

import os
import time

import torch
from torch.nn.attention.flex_attention import BlockMask, create_block_mask, flex_attention

from lab.paths import data_dir

_KERNEL = None


def _kernel():
    global _KERNEL
    if _KERNEL is None:
        # inductor's compiled kernels kept on disk, so the next run of the lab reuses them
        os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(data_dir() / "cache" / "inductor"))
        _KERNEL = torch.compile(flex_attention, dynamic=False)
    return _KERNEL


def blocks_to_mask(partial: torch.Tensor, full: torch.Tensor, mask_mod, block_size: int, queries: int,
                   keys: int) -> BlockMask:
    """A BlockMask from chosen blocks [heads, query_blocks, key_blocks]: `partial` blocks run mask_mod on each
    pair, `full` blocks are computed whole (mask_mod skipped)."""

    def packed(chosen):
        # chosen block indices first in each row, then their count: the layout flex_attention reads
        order = torch.argsort((~chosen).to(torch.int8), dim=-1, stable=True).to(torch.int32)
        return chosen.sum(-1).to(torch.int32)[None], order[None]

    (n_partial, partial_idx), (n_full, full_idx) = packed(partial), packed(full)
    return BlockMask.from_kv_blocks(n_partial, partial_idx, n_full, full_idx, block_size, mask_mod,
                                    seq_lengths=(queries, keys), compute_q_blocks=False)


def causal_mod(offset: int):
    """mask_mod of plain causal attention for queries at the last positions of the keys."""
    shift = torch.tensor(offset)  # a tensor: a new offset is no new kernel

    def mask_mod(_b, _h, q_idx, kv_idx):
        return q_idx + shift >= kv_idx
    return mask_mod


class FlexPattern:
    """A pattern's compiled attention, remembering which shapes it has compiled and how long their first calls
    took (compile included)."""

    def __init__(self, block_size: int):
        self.block_size = block_size
        self.compiled_shapes: set = set()
        self.compile_seconds = 0.0
        self._mask_for, self._mask = None, None  # the last static BlockMask and the (queries, keys, device) it is for

    def static_mask(self, causal_keep, queries: int, keys: int, device) -> BlockMask:
        """The BlockMask of keep(q_pos, k_pos) for queries at the last positions of `keys`; every layer of one
        forward asks for the same one, so the last one is kept."""
        if self._mask_for != (queries, keys, device):
            offset = torch.tensor(keys - queries, device=device)

            def mask_mod(_b, _h, q_idx, kv_idx):
                return causal_keep(q_idx + offset, kv_idx)

            self._mask = create_block_mask(mask_mod, None, None, queries, keys, device=device,
                                           BLOCK_SIZE=self.block_size)
            self._mask_for = (queries, keys, device)
        return self._mask

    def __call__(self, query, key, value, block_mask: BlockMask, scaling=None) -> torch.Tensor:
        """Attention output [batch, queries, heads, dim] for queries at the last positions of the keys."""
        queries, keys = query.shape[2], key.shape[2]
        shape = (queries, keys, query.dtype, query.shape[1], key.shape[1])
        start = time.perf_counter()
        out = _kernel()(query, key, value, block_mask=block_mask, scale=scaling,
                        enable_gqa=query.shape[1] != key.shape[1])
        if shape not in self.compiled_shapes:
            self.compiled_shapes.add(shape)
            self.compile_seconds += time.perf_counter() - start
        return out.transpose(1, 2).contiguous()
