"""Where the work of a denoiser sits, for any diffusers transformer or UNet: the transformer blocks a cache
hooks, and the units of work the block counter counts.

Transformer denoisers keep their blocks in top-level ModuleLists (DiT and PixArt: transformer_blocks; Flux:
transformer_blocks then single_transformer_blocks), which is also where diffusers' own cache hooks look.
"""
from __future__ import annotations

import torch
from diffusers.models.attention import FeedForward
from diffusers.models.cache_utils import CacheMixin

BLOCK_LIST_NAMES = ("transformer_blocks", "single_transformer_blocks", "blocks", "layers")


def transformer_blocks(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The blocks of a transformer denoiser in the order they run (lists in registration order)."""
    blocks = []
    for name, child in model.named_children():
        if name in BLOCK_LIST_NAMES and isinstance(child, torch.nn.ModuleList):
            blocks += list(child)
    return blocks


def _is_linear(module: torch.nn.Module) -> bool:
    """An nn.Linear, or a quantized layer that replaced one (torch.ao's dynamic Linear, lab/ops/quantize.py's
    layers): all carry in_features and out_features."""
    return isinstance(module, torch.nn.Linear) or (hasattr(module, "in_features") and hasattr(module, "out_features"))


def _last_linear(module: torch.nn.Module) -> torch.nn.Module | None:
    linears = [m for m in module.modules() if _is_linear(m)]
    return linears[-1] if linears else None


def block_units(block: torch.nn.Module) -> list[torch.nn.Module]:
    """Per block: each attention's query projection and each feed-forward's output projection.

    A hook on these children fires only when the work really runs: diffusers' hooks replace the forward of
    a block (first-block cache, MagCache, TaylorSeer) or an attention (PAB, FasterCache) and skip its children.
    """

    units = []
    for module in block.modules():
        if hasattr(module, "to_q") and _is_linear(module.to_q):
            units.append(module.to_q)
        elif isinstance(module, FeedForward):
            units.append(_last_linear(module))
    return [u for u in units if u is not None]


def compute_units(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The modules whose calls are counted, one entry per unit of work. A resnet is counted whole: no cache
    here skips inside one."""
    blocks = transformer_blocks(model)
    if blocks:
        return [u for block in blocks for u in block_units(block)]
    if hasattr(model, "down_blocks"):  # UNet: each resnet and each attention of the down, mid and up blocks
        units = []
        for group in [*model.down_blocks, model.mid_block, *model.up_blocks]:
            if group is None:
                continue
            units += list(group.resnets)
            for attention in getattr(group, "attentions", None) or []:
                # SD's attentions are small transformers (attention, cross-attention, MLP); the digits UNet's
                # are one attention layer (its to_q)
                inner = getattr(attention, "transformer_blocks", [])
                units += [u for b in inner for u in block_units(b)] if inner else block_units(attention)
        return units
    raise ValueError(f"{type(model).__name__} has neither transformer blocks ({', '.join(BLOCK_LIST_NAMES)}) nor "
                     f"UNet down/up blocks; the lab cannot count its work")


def make_cacheable(denoiser):
    """Give a denoiser diffusers' CacheMixin (enable_cache / cache_context) when its class lacks it.

    diffusers 0.42 mixes CacheMixin into Flux, Wan, HunyuanVideo... but not PixArt, SD3 or the SD UNet,
    although its hooks only need the blocks and attention modules, which those have. Swapping in a subclass
    adds the methods without copying or reloading the weights.
    """

    if not isinstance(denoiser, CacheMixin):
        cls = type(denoiser)
        denoiser.__class__ = type(f"Cached{cls.__name__}", (cls, CacheMixin), {})
    return denoiser
