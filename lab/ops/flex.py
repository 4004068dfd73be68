"""FlexAttention for the sparse-attention patterns: a pattern becomes a BlockMask, and a compiled flex_attention
kernel (inductor on the CPU) skips every key block the mask leaves empty. Each pattern compiles its own kernel and
never falls back to eager flex_attention (unfused) in silence: FlexFallback says why instead.

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
from torch._dynamo.exc import FailOnRecompileLimitHit
from torch.nn.attention.flex_attention import BlockMask, create_block_mask, flex_attention

from lab.paths import data_dir

# Distinct shapes (queries, keys, dtype, heads) one pattern may compile in a process. One torch.compile serves each
# pattern (isolate_recompiles: other patterns' shapes do not count against it); past this many Dynamo would hand
# the call to eager flex_attention, which computes the whole score matrix, unfused, with only a warning. fullgraph
# turns that fallback into an error instead, raised here as FlexFallback with its cause.
SHAPES_PER_PATTERN = 64


class FlexFallback(RuntimeError):
    """The compiled FlexAttention kernel cannot serve a call (torch.compile's recompile limit reached): the call
    is refused rather than run unfused."""


def compiled_flex(max_shapes: int = SHAPES_PER_PATTERN):
    """flex_attention compiled for one pattern: its own compiled shapes, at most `max_shapes` of them, and no
    silent fallback to eager (fullgraph: a graph break or the recompile limit raises)."""
    # inductor's compiled kernels kept on disk, so the next run of the lab reuses them
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(data_dir() / "cache" / "inductor"))
    return torch.compile(flex_attention, dynamic=False, fullgraph=True, isolate_recompiles=True,
                         recompile_limit=max_shapes)


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


def computed_pairs(block_mask: BlockMask, queries: int, keys: int, heads: int) -> int:
    """Causal pairs inside the blocks `block_mask` makes the kernel compute (partial and full), summed over `heads`
    query heads (a mask shared by all heads counts once per head). A block below the diagonal counts
    block_size x block_size pairs, one crossing it only its causal ones (dense causal attention computes those
    blocks too), one at the end only the positions inside the sequence: dense causal attention counts as all
    causal pairs, and a pattern pays for every pair of a block it touches."""
    # lazy: block_select's per-shape layout (the causal pairs of every block), shared with block top-k
    from lab.ops.block_select import causal_layout

    pairs = causal_layout(queries, keys, block_mask.BLOCK_SIZE[1])[2]
    computed = _listed_pairs(block_mask.kv_num_blocks, block_mask.kv_indices, pairs)
    if block_mask.full_kv_num_blocks is not None:
        computed = computed + _listed_pairs(block_mask.full_kv_num_blocks, block_mask.full_kv_indices, pairs)
    return int(computed.sum()) * (heads // computed.shape[0])


def _listed_pairs(num: torch.Tensor, indices: torch.Tensor, pairs: torch.Tensor) -> torch.Tensor:
    """Per head: the causal pairs of the blocks a BlockMask lists, the first num[h, q] entries of indices[h, q]
    for each query block q (what the kernel visits). Counted inside the prefill, so only the listed columns are
    read (to_dense() costs 100x more)."""
    rows, cols = pairs.shape
    num = num[0, :, :rows].long().cpu()  # batch 1; padding query blocks dropped; counted where pairs lives
    width = int(num.max()) if num.numel() else 0
    indices = indices[0, :, :rows, :width].long().cpu()
    listed = (torch.arange(width) < num[..., None]) & (indices < cols)
    flat = torch.arange(rows)[:, None] * cols + indices.clamp(max=cols - 1)  # (query block, key block) in pairs
    return (pairs.flatten()[flat] * listed).sum((-2, -1))


class FlexPattern:
    """A pattern's compiled attention, remembering which shapes it has compiled and how long their first calls
    took (compile included)."""

    def __init__(self, block_size: int, max_shapes: int = SHAPES_PER_PATTERN):
        self.block_size = block_size
        self.max_shapes = max_shapes
        self.compiled_shapes: set = set()
        self.compile_seconds = 0.0
        self._kernel = compiled_flex(max_shapes)
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
        try:
            out = self._kernel(query, key, value, block_mask=block_mask, scale=scaling,
                               enable_gqa=query.shape[1] != key.shape[1])
        except FailOnRecompileLimitHit as e:
            raise FlexFallback(
                f"FlexAttention refused a call of {queries} queries x {keys} keys ({query.dtype}, {query.shape[1]} "
                f"query heads): this pattern has compiled its kernel for {len(self.compiled_shapes)} shapes and "
                f"torch.compile's recompile limit ({self.max_shapes}) stops a new one; torch would run flex_attention "
                f"unfused (the whole score matrix), so nothing it measured would be the sparse kernel. Run fewer "
                f"distinct lengths per experiment, or raise SHAPES_PER_PATTERN in lab/ops/flex.py") from e
        if shape not in self.compiled_shapes:
            self.compiled_shapes.add(shape)
            self.compile_seconds += time.perf_counter() - start
        return out.transpose(1, 2).contiguous()
