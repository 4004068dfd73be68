"""Runs a diffusion experiment: every batch of images through every variant, interleaved per repeat.

Each batch has its own seed (spec seed + batch index), the same for every variant, so a variant's image is
compared with the baseline's image from the same initial noise. Quality (PSNR, SSIM, and classifier accuracy
for the digits) is scored on the first repeat; timings and counts on every repeat. A shipped digits model
runs through the lab's sampler, a diffusers pipeline through its own loop (lab/diffusion/pipelines.py).
"""
from __future__ import annotations

import contextlib

import torch

from lab.diffusion.counting import BlockCounter
from lab.diffusion.quality import psnr, ssim, to_pixels
from lab.diffusion.sampler import DenoiserCall, sample
from lab.engine.decode import model_bytes
from lab.runner import MB


def image_batches(spec: dict) -> list[list]:
    """What each image is asked for, in batches of batch_size: digit labels (classes cycle within a batch),
    or, for a pipeline, the workload's prompts."""
    if spec["workload"] == "image_prompts":
        from lab.workloads import image_prompts
        wanted = list(image_prompts(spec["prompts"]))
    else:
        wanted = [c for _ in range(spec["images_per_class"]) for c in spec["classes"]]
    size = spec["batch_size"]
    return [wanted[i:i + size] for i in range(0, len(wanted), size)]


CALIBRATION_PROMPT = "a red bicycle leaning on a brick wall in the rain, watercolor"  # not in data/prompts/images.toml


class DiffusionVariant:
    """One variant's techniques bound to the loaded denoiser."""

    def __init__(self, spec: dict, loaded, techniques: list):
        by_slot = {t.slot: t for t in techniques}
        self.cache = by_slot.get("denoiser")
        steps, sampler = spec["steps"], spec["sampler"]
        if "decoding" in by_slot:
            steps, sampler = by_slot["decoding"].sampler_steps(steps), by_slot["decoding"].sampler_name(sampler)
        # a weights technique (e.g. bf16) gets its own transformed copy; the loaded model is shared
        model = by_slot["weights"].transform_weights(loaded.model) if "weights" in by_slot else loaded.model
        self.weight_bytes = model_bytes(model)
        self.call = DenoiserCall(model, steps, spec["guidance"], sampler, model_name=loaded.name)
        self.baseline_steps = spec["steps"]
        self.pipeline, self.image_size = loaded.pipeline, spec.get("image_size", 0)
        if self.pipeline is not None:
            from lab.diffusion.pipelines import guidance_in_batch
            self.call.guidance_batch = guidance_in_batch(self.pipeline, spec["guidance"])
            # MagCache calibrates on a prompt that is never scored, so its ratios are not fitted to the test set
            self.call.run_uncached = lambda seed: self._pipeline_images([CALIBRATION_PROMPT], seed)

    def prepare(self) -> None:
        if self.cache is not None:
            self.cache.prepare_denoiser(self.call)

    def _pipeline_images(self, prompts: list[str], seed: int, on_step=None):
        from lab.diffusion.pipelines import generate, swapped_denoiser
        # a weights technique made this variant its own denoiser copy: the pipeline runs it for this batch
        with swapped_denoiser(self.pipeline, self.call.model):
            return generate(self.pipeline, self.call, prompts, seed, self.image_size, on_step)

    def generate(self, wanted: list, seed: int, device: str):
        counter = BlockCounter(self.call.model)
        wrap = self.cache.wrap_denoiser(self.call) if self.cache else contextlib.nullcontext()
        with counter, wrap:  # no memory sampler beside a timed run: memory comes from lab/memory_probe.py
            if self.pipeline is not None:
                result = self._pipeline_images([item.text for item in wanted], seed, counter.next_step)
            else:
                result = sample(self.call, torch.tensor(wanted), seed, on_step=counter.next_step)
        per_step = counter.shares_of_entering_rows()
        # share of the *baseline's* work: fewer steps count as fewer blocks computed
        computed = sum(per_step) / self.baseline_steps
        return result, per_step, computed


def run_diffusion(spec, loaded, techniques_per_variant, results, progress) -> None:
    variants = [DiffusionVariant(spec, loaded, ts) for ts in techniques_per_variant]
    for k, v in enumerate(variants):
        progress(0.03, f"preparing {results[k].name}")
        v.prepare()
        results[k].samples["weight_mb"].append(v.weight_bytes / MB)
        if "calibration" in v.call.info:
            results[k].environment["calibration"] = v.call.info["calibration"]
    batches = image_batches(spec)
    n = len(variants)
    total = (spec["warmup"] + spec["repeats"] * len(batches)) * n
    done = 0
    for w in range(spec["warmup"]):
        for k in range(n):
            progress(0.05 + 0.85 * done / total, f"warm-up {w + 1}: {results[k].name}")
            variants[k].generate(batches[0], spec["seed"], loaded.device)
            done += 1
    for r in range(spec["repeats"]):
        first_image = 0
        for b, labels in enumerate(batches):
            seconds, generated = {}, {}
            for k in [(k + r + b) % n for k in range(n)]:  # rotate who goes first
                progress(0.05 + 0.85 * done / total, f"repeat {r + 1}/{spec['repeats']}, batch {b + 1}/"
                                                     f"{len(batches)}: {results[k].name}")
                result, per_step, computed = variants[k].generate(labels, spec["seed"] + b, loaded.device)
                done += 1
                seconds[k], generated[k] = result.seconds, (result.images, per_step)
                s = results[k].samples
                s["s_per_image"].append(result.seconds / len(labels))
                s["s_per_step"].append(result.seconds / result.steps_run)
                s["images_per_s"].append(len(labels) / result.seconds)
                s["blocks_computed"].append(100.0 * computed)
            for k in range(n):  # paired per batch and repeat, adjacent in time
                results[k].samples["speedup"].append(seconds[0] / seconds[k])
                if r == 0:
                    score = _score_prompt_images if loaded.pipeline is not None else _score_images
                    score(results[k], loaded.classifier, labels, *generated[k], generated[0][0], first_image,
                          spec["seed"] + b)
            first_image += len(labels)


def _score_images(res, classifier, labels, images, per_step, baseline, first_index, seed):
    with torch.no_grad():
        probs = classifier(images.to(next(classifier.parameters()).device)).softmax(-1).cpu()
    predicted = probs.argmax(-1).tolist()
    pixels = to_pixels(images)
    for j, label in enumerate(labels):
        index, reference = first_index + j, baseline[j]
        res.samples["class_accuracy"].append(100.0 * (predicted[j] == label))
        res.samples["image_exact"].append(100.0 * bool(torch.equal(images[j], reference)))
        res.samples["psnr_db"].append(psnr(images[j], reference))
        res.samples["ssim"].append(ssim(images[j], reference))
        res.outputs.append(dict(
            item_index=index, item_key=str(label), prompt=f"digit {label}", text=f"classified as {predicted[j]}",
            token_ids=[], extra={"pixels": pixels[j], "label": label, "predicted": predicted[j],
                                 "confidence": round(float(probs[j, predicted[j]]), 4), "seed": seed,
                                 "step_compute": [round(x, 4) for x in per_step]}))


def _score_prompt_images(res, _classifier, items, images, per_step, baseline, first_index, seed):
    from lab.diffusion.pipelines import thumbnail_png
    for j, item in enumerate(items):
        reference = baseline[j]
        res.samples["image_exact"].append(100.0 * bool(torch.equal(images[j], reference)))
        res.samples["psnr_db"].append(psnr(images[j], reference))
        res.samples["ssim"].append(ssim(images[j], reference))
        res.outputs.append(dict(
            item_index=first_index + j, item_key=item.key, prompt=item.text,
            text=f"{images.shape[-1]}x{images.shape[-2]} image", token_ids=[],
            extra={"png": thumbnail_png(images[j]), "seed": seed, "step_compute": [round(x, 4) for x in per_step]}))
