"""FasterCache: diffusers' FasterCacheConfig, which skips the unconditional half of the guidance batch on most
steps and reuses attention outputs."""
from __future__ import annotations

from dataclasses import dataclass

from lab.techniques.base import knob
from lab.techniques.diffusion_cache.base import DiffusersCacheHook


@dataclass
class FasterCache(DiffusersCacheHook):
    name = "faster_cache"
    title = "FasterCache"
    summary = ("Below a timestep, skips the unconditional half of the guidance batch on most steps and rebuilds "
               "its output from the conditional one plus the cached low/high-frequency difference; attention is "
               "extrapolated from its last two outputs on those steps.")
    paper = "Lv et al. 2024, FasterCache: Training-Free Video Diffusion Model Acceleration (arXiv:2410.19355)"
    idea = ("Classifier-free guidance runs the model twice per step, once with the prompt and once without, and the "
            "difference between the two changes slowly over the steps. FasterCache computes the unconditional half "
            "only every few steps and rebuilds it in between from the conditional output plus a cached difference, and "
            "reuses attention outputs extrapolated from recent steps. That skips a large part of the guidance batch on "
            "most steps. The rebuilt outputs are approximations, so details can shift.")
    paper_claim = ("1.67x faster video generation on Vchitect-2.0 with video quality comparable to the baseline, "
                   "training-free; also applied to Open-Sora 1.2, Open-Sora-Plan, Latte and CogVideoX (latency "
                   "measured on a single A100 GPU).")
    picture = "block_reuse"

    uncond_skip_range: int = knob(5, min=2, max=20, unit="steps",
                                  help="Compute the unconditional half every this many steps inside the range.")
    attention_skip_range: int = knob(2, min=2, max=20, unit="steps",
                                     help="Compute attention every this many steps inside the range.")
    t_high: int = knob(681, min=1, max=1000, unit="timestep",
                       help="Caching applies below this training timestep (0-1000); earlier steps all compute.")

    def cache_config(self, call):
        # lazy: torch loads only when a technique runs; pages import every technique to build their forms
        from diffusers import FasterCacheConfig
        from diffusers.hooks.faster_cache import _UNCOND_COND_INPUT_KWARGS_IDENTIFIERS
        return FasterCacheConfig(
            spatial_attention_block_skip_range=self.attention_skip_range,
            spatial_attention_timestep_skip_range=(-1, self.t_high),
            unconditional_batch_skip_range=self.uncond_skip_range,
            unconditional_batch_timestep_skip_range=(-1, self.t_high),
            attention_weight_callback=lambda _module: 0.5,  # the paper's default, said aloud to avoid a warning
            tensor_format="BCHW",  # our images; the default describes video (B, C, F, H, W)
            # without guidance there is no unconditional half to skip: the hook must not split the batch
            is_guidance_distilled=not call.guidance_batched,
            current_timestep_callback=lambda: call.timestep,
            # the sampler passes [uncond; cond] by keyword; class_labels (digits) must be split with the batch, as
            # must what a pipeline passes (diffusers' defaults, and SD3's pooled text); only the names a call
            # carries are split
            _unconditional_conditional_input_kwargs_identifiers=[*_UNCOND_COND_INPUT_KWARGS_IDENTIFIERS,
                                                                 "class_labels", "pooled_projections"])
