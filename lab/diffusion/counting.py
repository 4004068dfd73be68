"""Counts the denoiser work actually computed, per sampler step, with plain torch forward hooks.

diffusers' cache hooks replace a module's forward and call the original only when they compute, so a hook
on a *child* of a cached module fires exactly when real work happens. The units:
- DiT: each block's attention (its to_q projection) and its MLP (ff.net[2]);
- UNet: each resnet and attention module of the down, mid and up blocks.
Each unit counts the rows it processed, so FasterCache dropping the unconditional half of the guidance
batch counts as half a unit. The share is deterministic: no timing is involved.
"""
from __future__ import annotations

import torch


def compute_units(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The modules whose calls are counted (one entry per unit of work)."""
    if hasattr(model, "transformer_blocks"):
        units = []
        for block in model.transformer_blocks:
            units += [block.attn1.to_q, block.ff.net[2]]
        return units
    units = []
    for group in [*model.down_blocks, model.mid_block, *model.up_blocks]:
        units += list(group.resnets) + list(getattr(group, "attentions", None) or [])
    return units


class BlockCounter:
    """Context manager: rows computed per unit, bucketed by sampler step (call `next_step` after each)."""

    def __init__(self, model: torch.nn.Module):
        self.units = compute_units(model)
        self.per_step: list[float] = []  # rows computed, all units, per step
        self._current = 0.0
        self._handles = []

    def _count(self, _module, args, _output):
        self._current += args[0].shape[0]

    def __enter__(self):
        self._handles = [u.register_forward_hook(self._count) for u in self.units]
        return self

    def next_step(self, _index: int | None = None) -> None:
        self.per_step.append(self._current)
        self._current = 0.0

    def __exit__(self, *exc):
        for h in self._handles:
            h.remove()
        return False

    def full_rows_per_step(self, rows: int) -> float:
        """What one step computes with nothing cached: every unit over all `rows` of the call."""
        return float(len(self.units) * rows)
