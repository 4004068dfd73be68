"""Counts the denoiser work actually computed, per sampler step, with plain torch forward hooks.

diffusers' cache hooks replace a module's forward and call the original only when they compute, so a hook
on a *child* of a cached module fires exactly when real work happens. The units (lab/ops/blocks.py):
- transformers (DiT, PixArt, Flux): each attention's to_q projection and each feed-forward's output layer;
- UNet: each resnet and attention module of the down, mid and up blocks.
Each unit counts the rows it processed, so FasterCache dropping the unconditional half of the guidance
batch counts as half a unit. The whole is what the rows entering the denoiser would cost in every unit (a
pre-hook on the model counts them, and fires even when a cache replaces its forward), so the lab's sampler
and a pipeline, which decides its own guidance batching, are counted alike. The share is deterministic: no
timing is involved.
"""
from __future__ import annotations

import torch

from lab.ops.blocks import compute_units


class BlockCounter:
    """Context manager: rows computed per unit, bucketed by sampler step (call `next_step` after each)."""

    def __init__(self, model: torch.nn.Module):
        self.model = model
        self.units = compute_units(model)
        self.per_step: list[float] = []  # rows computed, all units, per step
        self.rows_in: list[int] = []  # rows entering the denoiser, per step
        self._current = 0.0
        self._rows = 0
        self._handles = []

    def _count(self, _module, args, _output):
        self._current += args[0].shape[0]

    def _count_rows(self, _module, args, kwargs):
        x = args[0] if args else kwargs.get("hidden_states", kwargs.get("sample"))
        self._rows += x.shape[0]

    def __enter__(self):
        self._handles = [u.register_forward_hook(self._count) for u in self.units]
        self._handles.append(self.model.register_forward_pre_hook(self._count_rows, with_kwargs=True))
        return self

    def next_step(self, _index: int | None = None) -> None:
        self.per_step.append(self._current)
        self.rows_in.append(self._rows)
        self._current, self._rows = 0.0, 0

    def __exit__(self, *exc):
        for h in self._handles:
            h.remove()
        return False

    def shares_of_entering_rows(self) -> list[float]:
        """Per step, the share computed of what the rows that entered the denoiser would have cost."""
        return [c / (len(self.units) * r) if r else 0.0 for c, r in zip(self.per_step, self.rows_in)]
