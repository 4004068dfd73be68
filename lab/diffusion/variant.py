"""One diffusion variant: its techniques bound to the loaded denoiser (or pipeline), generating one batch of
images with its blocks counted. What each image is asked for comes from the spec (image_batches)."""
from __future__ import annotations

import contextlib

import torch

from lab.diffusion.counting import BlockCounter
from lab.diffusion.pipelines import generate, guidance_in_batch, swapped_denoiser
from lab.diffusion.sampler import DenoiserCall, sample
from lab.ops.nbytes import model_bytes
from lab.prompts import image_prompts
from lab.techniques.slots import refuse_unused_slots


def image_batches(spec) -> list[list]:
    """What each image is asked for, in batches of batch_size: digit labels (classes cycle within a batch),
    or, for a pipeline, the workload's prompts."""
    if spec.workload == "image_prompts":
        wanted = list(image_prompts(spec.prompts))
    else:
        wanted = [c for _ in range(spec.images_per_class) for c in spec.classes]
    size = spec.batch_size
    return [wanted[i:i + size] for i in range(0, len(wanted), size)]


CALIBRATION_PROMPT = "a red bicycle leaning on a brick wall in the rain, watercolor"  # not in data/prompts/images.toml


class DiffusionVariant:
    """One variant's techniques bound to the loaded denoiser."""

    def __init__(self, spec, loaded, techniques: list):
        refuse_unused_slots(techniques, "diffusion", "a diffusion model's sampler")
        self.techniques = techniques
        by_slot = {t.slot: t for t in techniques}
        self.cache = by_slot.get("denoiser")
        steps, sampler = spec.steps, spec.sampler
        if "decoding" in by_slot:
            steps, sampler = by_slot["decoding"].sampler_steps(steps), by_slot["decoding"].sampler_name(sampler)
        # a weights technique (e.g. bf16) gets its own transformed copy; the loaded model is shared
        model = by_slot["weights"].transform_weights(loaded.model) if "weights" in by_slot else loaded.model
        self.weight_bytes = model_bytes(model)
        self.call = DenoiserCall(model, steps, spec.guidance, sampler, model_name=loaded.name)
        self.baseline_steps = spec.steps
        self.pipeline, self.image_size = loaded.pipeline, spec.image_size
        if self.pipeline is not None:
            self.call.guidance_batch = guidance_in_batch(self.pipeline, spec.guidance)
            # MagCache calibrates on a prompt that is never scored, so its ratios are not fitted to the test set
            self.call.run_uncached = lambda seed: self._pipeline_images([CALIBRATION_PROMPT], seed)
            self.call.uncached_inputs = "a held-out calibration prompt"

    def prepare(self) -> None:
        if self.cache is not None:
            self.cache.prepare_denoiser(self.call)

    def _pipeline_images(self, prompts: list[str], seed: int, on_step=None):
        # a weights technique made this variant its own denoiser copy: the pipeline runs it for this batch
        with swapped_denoiser(self.pipeline, self.call.model):
            return generate(self.pipeline, self.call, prompts, seed, self.image_size, on_step)

    def generate(self, wanted: list, seed: int, device: str):
        counter = BlockCounter(self.call.model)
        wrap = self.cache.wrap_denoiser(self.call) if self.cache else contextlib.nullcontext()
        with counter, wrap:  # no memory sampler beside a timed run: memory comes from lab/bench/memory_probe.py
            if self.pipeline is not None:
                result = self._pipeline_images([item.text for item in wanted], seed, counter.next_step)
            else:
                result = sample(self.call, torch.tensor(wanted), seed, on_step=counter.next_step)
        per_step = counter.shares_of_entering_rows()
        # share of the *baseline's* work: fewer steps count as fewer blocks computed
        computed = sum(per_step) / self.baseline_steps
        return result, per_step, computed
