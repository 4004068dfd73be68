"""TaylorSeer: diffusers' TaylorSeerCacheConfig, cached modules forecast between computed steps by a Taylor
expansion over the step index."""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from lab.techniques.base import knob
from lab.techniques.diffusion_cache.base import DROPS_A_STREAM, DiffusersCacheHook

# diffusers' default identifiers must end in "attn" and match nothing in DiT (its modules are attn1).
# module names, matched whole (re.fullmatch); Flux adds single_transformer_blocks, its MLP is ff/ff_context
TARGETS = {"blocks": [r"(single_)?transformer_blocks\.\d+"],
           "attention_mlp": [r"(single_)?transformer_blocks\.\d+\.(attn1?|ff|ff_context)"]}


@dataclass
class TaylorSeer(DiffusersCacheHook):
    name = "taylorseer"
    title = "TaylorSeer"
    summary = ("Computes the cached modules every few steps and, in between, forecasts their outputs with a "
               "Taylor expansion over the step index (finite differences of the last computed outputs) instead "
               "of reusing them unchanged.")
    paper = "Liu et al. 2025, From Reusing to Forecasting: TaylorSeers (arXiv:2503.06923)"
    idea = ("Plain caches reuse a feature unchanged, although features move in a smooth direction from step to step. "
            "TaylorSeer computes the network every few steps and, in between, predicts each feature from how it "
            "changed over the last computed steps (a Taylor series: value, slope, curvature). The prediction is closer "
            "to the true feature than a stale copy, so longer skips keep more quality. It keeps a few past outputs per "
            "module in memory, and a high order can overshoot.")
    paper_claim = ("Almost lossless 4.99x acceleration of FLUX and 5.00x of HunyuanVideo without training, and on DiT "
                   "a 3.41 lower FID than the previous best method at 4.53x acceleration (on GPUs).")
    picture = "block_reuse"
    unsupported_denoisers: ClassVar[dict[str, str]] = DROPS_A_STREAM

    interval: int = knob(4, min=1, max=50, unit="steps",
                         help="Compute every this many steps after the warm-up; forecast the steps between.")
    warmup_steps: int = knob(3, min=0, max=1000, unit="steps",
                             help="The first steps are always computed (the forecast needs history).")
    order: int = knob(1, min=1, max=3, help="Taylor order of the forecast (1 = linear extrapolation).")
    target: str = knob("blocks", choices=tuple(TARGETS),
                       help="Forecast whole transformer blocks, or each block's attention and MLP separately.")

    def cache_config(self, call):
        # lazy: torch loads only when a technique runs; pages import every technique to build their forms
        import torch
        from diffusers import TaylorSeerCacheConfig
        # fp32 factors: the bf16 default loses the small step-to-step differences on a CPU model
        return TaylorSeerCacheConfig(cache_interval=self.interval, disable_cache_before_step=self.warmup_steps,
                                     max_order=self.order, taylor_factors_dtype=torch.float32,
                                     cache_identifiers=TARGETS[self.target])
