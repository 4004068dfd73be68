"""Shared plumbing of the techniques that are diffusers 0.42 cache hooks (model.enable_cache(config)).

A subclass only says which diffusers config its knobs make. The hooks are enabled for one generation and
removed after it, so no state crosses generations (the sampler also resets stateful hooks before each).
"""
from __future__ import annotations

import contextlib
from typing import ClassVar

from lab.techniques.slots import DenoiserTechnique

# Denoisers whose last block returns None for a stream it no longer updates, which the block-level hooks of
# diffusers 0.42 (first-block cache, TaylorSeer) try to cache and fail on
DROPS_A_STREAM = {"SD3Transformer2DModel": "its last block returns no text stream (None), which diffusers 0.42's "
                                           "hook cannot cache"}


class DenoiserCache(DenoiserTechnique):
    """Base of the diffusion caching family: the denoiser slot, for the denoiser architectures named."""
    family: ClassVar[str] = "diffusion_cache"
    applies_to: ClassVar[tuple[str, ...]] = ("diffusion",)
    denoisers: ClassVar[tuple[str, ...]] = ("dit",)


class DiffusersCacheHook(DenoiserCache):

    def cache_config(self, call):
        """The diffusers config for one generation; `call` is the sampler's DenoiserCall."""
        raise NotImplementedError

    @contextlib.contextmanager
    def wrap_denoiser(self, call):
        from lab.ops.blocks import make_cacheable  # lazy: torch stays out of page start-up
        model = make_cacheable(call.model)  # e.g. the digits UNet, which diffusers gives no CacheMixin
        model.enable_cache(self.cache_config(call))
        try:
            yield
        finally:
            model.disable_cache()
