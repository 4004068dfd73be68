"""DeepCache for UNets: the deep branch runs every N-th step and its features are reused by the shallow branch
in between (a diffusers ModelHook replacing the UNet's forward)."""
from __future__ import annotations

import contextlib
import inspect
from dataclasses import dataclass
from typing import ClassVar

from lab.errors import SpecError
from lab.techniques.base import knob
from lab.techniques.diffusion_cache.base import DenoiserCache


@dataclass
class DeepCache(DenoiserCache):
    name = "deep_cache"
    title = "DeepCache"
    denoisers: ClassVar[tuple[str, ...]] = ("unet",)
    summary = ("UNet only (the shipped digits UNet, Stable Diffusion's UNet). On every N-th step the whole UNet runs and the deep features entering the shallow "
               "up block are cached; on the steps between only the shallow branch (input conv, the first down "
               "block(s), the last up block(s)) runs, fed by the cached deep features and fresh skip connections.")
    paper = "Ma et al. 2023, DeepCache: Accelerating Diffusion Models for Free (arXiv:2312.00858)"
    idea = ("In a UNet the deep, low-resolution features that carry the image's overall layout change slowly between "
            "denoising steps, while the shallow, full-resolution layers add the fine detail. DeepCache runs the whole "
            "UNet every N-th step and caches the deep features; on the steps between only the shallow branch runs, "
            "reusing them. Most of the UNet's work lies in the deep part, so those steps are much cheaper. The reused "
            "layout is slightly stale, so quality drops as N grows.")
    paper_claim = ("Training-free: 2.3x faster Stable Diffusion v1.5 for a 0.05 drop in CLIP score, and 4.1x faster "
                   "LDM-4-G for a 0.22 rise in FID on ImageNet (on a GPU).")
    picture = "block_reuse"

    interval: int = knob(3, min=1, max=50, unit="steps", help="Run the full UNet every N-th step (1 = never reuse).")
    branch: int = knob(0, min=0, max=8, help="Depth of the shallow branch that always runs: 0 = the outermost "
                                             "down/up block pair only; higher runs more of the UNet on cached steps.")

    def wrap_denoiser(self, call):
        # lazy: torch loads only when a technique runs; pages import every technique to build their forms
        from diffusers.hooks import HookRegistry


        deepest = len(call.model.down_blocks) - 2
        if self.branch > deepest:
            raise SpecError(f"technique '{self.name}': branch {self.branch} is too deep for this UNet "
                            f"({len(call.model.down_blocks)} down blocks); allowed: 0 to {deepest}")

        @contextlib.contextmanager
        def hooked():
            registry = HookRegistry.check_if_exists_or_initialize(call.model)
            registry.register_hook(_deep_cache_hook(call, self.interval, self.branch), HOOK_NAME)
            try:
                yield
            finally:
                registry.remove_hook(HOOK_NAME, recurse=False)
        return hooked()


HOOK_NAME = "lab_deep_cache"
# what the written-out forward does not carry; a call that sets any of them is refused, not run wrongly
UNSUPPORTED = ("attention_mask", "encoder_attention_mask", "down_block_additional_residuals",
               "mid_block_additional_residual", "down_intrablock_additional_residuals")


def _deep_cache_hook(call, interval: int, branch: int):
    # A diffusers ModelHook replaces the UNet's forward, so the lab's sampler and a pipeline's own loop both
    # reach it through their plain unet(...) call.
    # lazy: torch loads only when a technique runs; pages import every technique to build their forms
    from diffusers.hooks import ModelHook

    class DeepCacheHook(ModelHook):
        def __init__(self):
            super().__init__()
            self.cache = {}

        def new_forward(self, module, *args, **kwargs):
            bound = inspect.signature(self.fn_ref.original_forward).bind(*args, **kwargs)
            bound.apply_defaults()
            given = bound.arguments
            refused = [k for k in UNSUPPORTED if given.get(k) is not None]
            if refused:
                raise ValueError(f"deep_cache does not support UNet calls with {', '.join(refused)}")
            full = call.step_index % interval == 0 or "deep" not in self.cache
            out = unet_forward(module, given, branch, self.cache, full)
            return (out,) if not given.get("return_dict", True) else _output(module)(sample=out)

    return DeepCacheHook()


def _output(unet):
    # lazy: torch loads only when a technique runs; pages import every technique to build their forms
    from diffusers.models.unets.unet_2d import UNet2DOutput
    from diffusers.models.unets.unet_2d_condition import UNet2DConditionOutput
    return UNet2DConditionOutput if hasattr(unet, "get_aug_embed") else UNet2DOutput


def _embeddings(unet, given: dict):
    """The time (+ class / added) embedding and the text states, as the UNet's own forward makes them."""
    sample, timestep = given["sample"], given["timestep"]
    if not hasattr(unet, "get_aug_embed"):  # UNet2DModel: time and class embedding only
        emb = unet.time_embedding(unet.time_proj(timestep).to(dtype=unet.dtype))
        if unet.class_embedding is not None:
            emb = emb + unet.class_embedding(given["class_labels"]).to(dtype=unet.dtype)
        return emb, None
    # UNet2DConditionModel (Stable Diffusion): its own helpers, in the order its forward calls them
    emb = unet.time_embedding(unet.get_time_embed(sample=sample, timestep=timestep), given.get("timestep_cond"))
    class_emb = unet.get_class_embed(sample=sample, class_labels=given.get("class_labels"))
    if class_emb is not None:
        emb = emb + class_emb
    states, added = given.get("encoder_hidden_states"), given.get("added_cond_kwargs")
    aug = unet.get_aug_embed(emb=emb, encoder_hidden_states=states, added_cond_kwargs=added)
    emb = emb + aug if aug is not None else emb
    if unet.time_embed_act is not None:
        emb = unet.time_embed_act(emb)
    return emb, unet.process_encoder_hidden_states(encoder_hidden_states=states, added_cond_kwargs=added)


def unet_forward(unet, given: dict, branch: int, cache: dict, full: bool):
    """A UNet's forward written out so the deep part can be skipped (diffusers has no hook for this):
    UNet2DModel (the shipped digits UNet) or UNet2DConditionModel (Stable Diffusion).

    full=True runs everything and stores the input of up_blocks[-(branch + 1)] in cache["deep"]; full=False runs
    only down_blocks[:branch + 1] and up_blocks[-(branch + 1):], starting the up path from cache["deep"].
    Image sizes must divide by the UNet's total downsampling (no odd upsample sizes are forwarded).
    """
    emb, text = _embeddings(unet, given)
    # cross-attention blocks also take the text states; plain blocks take only hidden states and emb
    cross = dict(encoder_hidden_states=text, cross_attention_kwargs=given.get("cross_attention_kwargs"))

    def run(block, **kwargs):
        extra = cross if getattr(block, "has_cross_attention", False) else {}
        return block(temb=emb, **kwargs, **extra)

    hidden = unet.conv_in(given["sample"])
    skips = [hidden]
    shallow = branch + 1
    for block in unet.down_blocks if full else unet.down_blocks[:shallow]:
        hidden, res = run(block, hidden_states=hidden)
        skips += list(res)
    first_shallow_up = len(unet.up_blocks) - shallow
    if full:
        if getattr(unet.mid_block, "has_cross_attention", False):
            hidden = unet.mid_block(hidden, emb, **cross)
        else:
            hidden = unet.mid_block(hidden, emb)
        for block in unet.up_blocks[:first_shallow_up]:
            n = len(block.resnets)
            hidden = run(block, hidden_states=hidden, res_hidden_states_tuple=tuple(skips[-n:]))
            skips = skips[:-n]
        cache["deep"] = hidden
    else:
        # the skips the deep up blocks would have consumed are dropped; the shallow ones stay in order
        needed = sum(len(b.resnets) for b in unet.up_blocks[first_shallow_up:])
        skips = skips[:needed]
        hidden = cache["deep"]
    for block in unet.up_blocks[first_shallow_up:]:
        n = len(block.resnets)
        hidden = run(block, hidden_states=hidden, res_hidden_states_tuple=tuple(skips[-n:]))
        skips = skips[:-n]
    if unet.conv_norm_out is not None:
        hidden = unet.conv_act(unet.conv_norm_out(hidden))
    return unet.conv_out(hidden)
