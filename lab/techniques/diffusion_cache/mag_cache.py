"""MagCache: diffusers' MagCacheConfig, whole steps skipped while the error predicted from calibrated residual
magnitude ratios stays small; the ratios are calibrated once per model and stored under data/cache/magcache."""
from __future__ import annotations

import contextlib
import io
import json
import re
from dataclasses import dataclass

from lab.paths import data_dir
from lab.techniques.base import knob
from lab.techniques.diffusion_cache.base import DiffusersCacheHook

CALIBRATION_SEED = 1_000_003  # not a seed any measured run uses by default: calibrate on other images


@dataclass
class MagCache(DiffusersCacheHook):
    name = "mag_cache"
    title = "MagCache"
    summary = ("Skips whole steps (all blocks) while the accumulated error predicted from the magnitude ratio of "
               "successive residuals stays under a threshold. The ratios come from one calibration run per model, "
               "sampler, steps and guidance, stored and reused.")
    paper = "Ma et al. 2025, MagCache: Fast Video Generation with Magnitude-Aware Cache (arXiv:2506.09045)"
    idea = ("The size of what the model adds at each step (its residual's magnitude) shrinks in a smooth, predictable "
            "way that is nearly the same for every prompt. MagCache measures that curve once per model and sampler in "
            "a calibration run, then skips whole steps while the predicted error of reusing the last residual stays "
            "under a threshold. A skipped step costs almost nothing. The calibration costs one run, and a threshold "
            "set too high lets errors add up.")
    paper_claim = ("2.1x and 2.68x faster video generation on Open-Sora and Wan 2.1, with better visual fidelity "
                   "(LPIPS, SSIM, PSNR) than earlier caching methods at similar compute, calibrated on a single "
                   "sample.")
    picture = "block_reuse"

    threshold: float = knob(0.06, min=0.0, max=2.0, unit="acc. error",
                            help="Skip while the accumulated |1 - ratio| error stays below this; higher skips more.")
    max_skip_steps: int = knob(3, min=1, max=20, unit="steps", help="At most this many consecutive skipped steps.")
    retention_ratio: float = knob(0.2, min=0.0, max=1.0, unit="share",
                                  help="This share of the first steps is always computed.")

    def calibration_path(self, call):
        # lazy: torch loads only when a technique runs; pages import every technique to build their forms
        from lab.ops.calibration import weights_fingerprint

        folder = data_dir() / "cache" / "magcache"
        folder.mkdir(parents=True, exist_ok=True)
        model = re.sub(r"[^\w.-]+", "_", call.model_name).strip("_")[-80:]  # a pipeline's name is its folder path
        # keyed by the weights themselves too: a retrained checkpoint under the same name calibrates afresh
        return folder / f"{model}-{weights_fingerprint(call.model)}-{call.sampler}-{call.steps}steps-g{call.guidance:g}.json"

    def prepare_denoiser(self, call) -> None:
        """Load the stored magnitude ratios, or calibrate once (one uncached generation) and store them."""
        path = self.calibration_path(call)
        if path.exists():
            call.info["mag_ratios"] = json.loads(path.read_text())["ratios"]
            call.info["calibration"] = f"reused {path.name}"
            return
        ratios = calibrate(call)
        tmp = path.with_suffix(".partial")
        tmp.write_text(json.dumps({"ratios": ratios, "seed": CALIBRATION_SEED, "inputs": call.uncached_inputs}))
        tmp.replace(path)  # atomic: never a half-written calibration
        call.info["mag_ratios"] = ratios
        call.info["calibration"] = f"calibrated and stored {path.name}"

    def cache_config(self, call):
        # lazy: torch loads only when a technique runs; pages import every technique to build their forms
        from diffusers import MagCacheConfig
        if "mag_ratios" not in call.info:
            self.prepare_denoiser(call)
        return MagCacheConfig(threshold=self.threshold, max_skip_steps=self.max_skip_steps,
                              retention_ratio=self.retention_ratio, num_inference_steps=call.steps,
                              mag_ratios=call.info["mag_ratios"])


def calibrate(call) -> list[float]:
    """Run one generation with MagCache in calibration mode and capture its per-step ratios.

    diffusers only prints them and then clears its list, so the tail block's calibration step is wrapped to
    copy each ratio as it is computed. The generation is the call's own uncached run (a pipeline: a
    calibration prompt; the digits: one image per class).
    """

    # lazy: torch loads only when a technique runs; pages import every technique to build their forms
    from diffusers import MagCacheConfig

    from lab.ops.blocks import transformer_blocks

    model = call.model
    model.enable_cache(MagCacheConfig(calibrate=True, num_inference_steps=call.steps))
    ratios: list[float] = []
    tail = transformer_blocks(model)[-1]._diffusers_hook.get_hook("mag_cache_block_hook")
    original = tail._perform_calibration_step

    def capture(state, residual):
        original(state, residual)
        ratios.append(float(state.calibration_ratios[-1]))

    tail._perform_calibration_step = capture
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # diffusers print()s the ratios; we store them instead
            call.run_uncached(CALIBRATION_SEED)
    finally:
        model.disable_cache()
    return ratios
