"""A static KV cache and a compiled decode step, in the style of gpt-fast: the cache is allocated once at a fixed
length, so every decode step has the same shapes and torch.compile turns the whole step (30 layers of small ops)
into one graph of fused kernels, compiled once and reused for every token.

Shapes the compiled step sees: input [1, w] for w in {1, widest} (widest = a verify block of k + 1 tokens; a
shorter block is padded up to it), cache [1, kv_heads, length, head_dim]. Padding tokens are written into cache
positions past the sequence's end; the causal mask (key position <= query position) hides them, and the next
real token overwrites them. The same holds for the drafts a verification rejects, so rolling back is only moving
the sequence's length back. The prefill runs eagerly: its length changes with every prompt.

Batch 1 only: a ragged batch would need per-row positions in one static cache.
"""
from __future__ import annotations

import os
import time

import torch
from transformers import StaticCache

from lab.paths import data_dir


def use_disk_cache() -> None:
    """Keep inductor's compiled kernels and graphs under data/cache, so a later run (another process) reuses them
    instead of compiling again; a user's own TORCHINDUCTOR_CACHE_DIR wins."""
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(data_dir() / "cache" / "inductor"))


class CompiledStep:
    """One model's static cache and its compiled step, shared by every generation of a variant (so the graph
    compiled in the warm-up serves the timed repeats)."""

    def __init__(self, model, cache_block: int, mode: str):
        self.model, self.cache_block, self.mode = model, cache_block, mode
        self.cache: StaticCache | None = None
        self.cache_len = 0
        self.compiled = None
        # (cache length, block width) -> seconds the first call of that shape took (compile + one step)
        self.compile_s: dict[tuple[int, int], float] = {}

    def cache_for(self, length: int) -> StaticCache:
        """A cleared static cache holding at least `length` tokens. Its length is rounded up to cache_block and
        only ever grows, so items of similar length share one compiled shape."""
        needed = -(-length // self.cache_block) * self.cache_block
        if self.cache is None or self.cache_len < needed:
            self.cache, self.cache_len = StaticCache(config=self.model.config, max_cache_len=needed), needed
            self.compiled = None  # new cache tensors: compile again (in the warm-up, which meets every item)
        else:
            self.cache.reset()
        return self.cache

    def _forward(self, tokens: torch.Tensor, positions: torch.Tensor, logits_to_keep: int = 0) -> torch.Tensor:
        return self.model(input_ids=tokens, position_ids=positions[None], cache_position=positions,
                          past_key_values=self.cache, use_cache=True, logits_to_keep=logits_to_keep).logits

    def eager(self, tokens: torch.Tensor, positions: torch.Tensor, logits_to_keep: int) -> torch.Tensor:
        return self._forward(tokens, positions, logits_to_keep)

    def step(self, tokens: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """The compiled forward of a block of fixed width (tokens [1, w], positions [w])."""
        if self.compiled is None:
            use_disk_cache()
            # dynamic=False: one graph per width, each specialised to its exact shapes (what makes it fast)
            self.compiled = torch.compile(self._forward, dynamic=False, fullgraph=True, mode=self.mode)
        shape = (self.cache_len, tokens.shape[1])
        if shape in self.compile_s:
            return self.compiled(tokens, positions)
        start = time.perf_counter()
        logits = self.compiled(tokens, positions)
        self.compile_s[shape] = time.perf_counter() - start
        return logits


class StaticBatch:
    """RaggedBatch's interface (lab/ops/ragged.py) over a CompiledStep, for one sequence."""

    def __init__(self, step: CompiledStep, capacity: int, widest: int, device):
        self.step, self.widest, self.device = step, widest, device
        self.cache = step.cache_for(capacity)
        self.length = 0  # tokens the sequence holds; the cache's columns past it are free or stale

    @property
    def batch(self) -> int:
        return 1

    def feed(self, tokens: torch.Tensor, valid: torch.Tensor | None = None, logits_to_keep: int = 1):
        """Append tokens [1, n]; logits of the last `logits_to_keep` of them (0: all)."""
        if tokens.shape[0] != 1 or (valid is not None and not bool(valid.all())):
            raise ValueError("a static batch holds one sequence without padding")
        n = tokens.shape[1]
        if self.length == 0 or n > self.widest:  # the prefill: its length differs for every prompt
            positions = torch.arange(self.length, self.length + n, device=self.device)
            self.length += n
            return self.step.eager(tokens, positions, logits_to_keep)
        width = 1 if n == 1 else self.widest
        padded = torch.zeros(1, width, dtype=tokens.dtype, device=self.device)
        padded[:, :n] = tokens
        positions = torch.arange(self.length, self.length + width, device=self.device)
        logits = self.step.step(padded, positions)[:, :n]
        self.length += n
        self._sync_length()  # the padding advanced the cache's own count
        return logits if logits_to_keep == 0 else logits[:, n - logits_to_keep:]

    def keep(self, n_kept: torch.Tensor, block: int) -> None:
        """Of the last `block` tokens keep the first n_kept[0]: the rest stay in the cache, past the end."""
        self.length -= block - int(n_kept[0])
        self._sync_length()

    def _sync_length(self) -> None:
        # transformers' StaticLayer writes at its own running count of the tokens it was given, not at the
        # cache_position passed in, so after padding or a rollback the count is set back to the true length
        for layer in self.cache.layers:
            layer.cumulative_length.fill_(self.length)

    def select(self, rows: torch.Tensor) -> None:
        if rows.tolist() != [0]:
            raise ValueError("a static batch holds one sequence")
