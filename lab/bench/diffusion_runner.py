"""Runs a diffusion experiment: every batch of images through every variant, interleaved per repeat.

Each batch has its own seed (spec seed + batch index), the same for every variant, so a variant's image is
compared with the baseline's image from the same initial noise. Quality (PSNR, SSIM, and classifier accuracy
for the digits) is scored on the first repeat; timings and counts on every repeat. A shipped digits model
runs through the lab's sampler, a diffusers pipeline through its own loop (lab/diffusion/pipelines.py).
"""
from __future__ import annotations

import torch

from lab.bench.engines import variant_threads
from lab.bench.measure import MB
from lab.bench.protocol import run_interleaved, scaled
from lab.bench.provenance import WEIGHTS_KEY, weights_fingerprint
from lab.diffusion.pipelines import thumbnail_png
from lab.diffusion.quality import psnr, ssim, to_pixels
from lab.diffusion.variant import DiffusionVariant, image_batches
from lab.spec import Spec
from lab.techniques import build


def run_diffusion(spec: Spec, loaded, results, progress) -> None:
    variants = [DiffusionVariant(spec, loaded, build(v.techniques, model_kind="diffusion")) for v in spec.variants]
    for k, v in enumerate(variants):
        progress(0.03, f"preparing {results[k].name}")
        v.prepare()
        results[k].samples["weight_mb"].append(v.weight_bytes / MB)
        results[k].environment[WEIGHTS_KEY] = weights_fingerprint(spec.model)  # what a reused result must match
        if "calibration" in v.call.info:
            results[k].environment["calibration"] = v.call.info["calibration"]
    batches = image_batches(spec)
    score = _score_prompt_images if loaded.pipeline is not None else _score_images
    first_image = [sum(len(b) for b in batches[:i]) for i in range(len(batches))]

    def run(k: int, b: int, repeat: int | None):
        seed = spec.seed + b  # each batch its own seed, the same for every variant
        with variant_threads(spec.variants[k].threads) as threads:  # a variant may run on threads of its own
            result, per_step, computed = variants[k].generate(batches[b], seed, loaded.device)
        results[k].environment["threads"] = threads  # what torch ran with, not what the spec asked for
        if repeat is not None:
            n = len(batches[b])
            results[k].record({"s_per_image": result.seconds / n, "s_per_step": result.seconds / result.steps_run,
                               "images_per_s": n / result.seconds, "blocks_computed": 100.0 * computed})
            for t in variants[k].techniques:  # the metrics a technique declares beside its knobs
                results[k].record(t.measure(result))
        return result, per_step

    def pair(r: int, b: int, outcomes: dict) -> None:
        for k, (result, per_step) in outcomes.items():  # paired per batch and repeat, adjacent in time
            results[k].samples["speedup"].append(outcomes[0][0].seconds / result.seconds)
            if r == 0:
                score(results[k], loaded.classifier, batches[b], result.images, per_step, outcomes[0][0].images,
                      first_image[b], spec.seed + b)

    run_interleaved(len(variants), len(batches), spec.repeats, spec.warmup, run, pair,
                    scaled(progress, 0.05, 0.85), lambda k: results[k].name)


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
    for j, item in enumerate(items):
        reference = baseline[j]
        res.samples["image_exact"].append(100.0 * bool(torch.equal(images[j], reference)))
        res.samples["psnr_db"].append(psnr(images[j], reference))
        res.samples["ssim"].append(ssim(images[j], reference))
        res.outputs.append(dict(
            item_index=first_index + j, item_key=item.key, prompt=item.text,
            text=f"{images.shape[-1]}x{images.shape[-2]} image", token_ids=[],
            extra={"png": thumbnail_png(images[j]), "seed": seed, "step_compute": [round(x, 4) for x in per_step]}))
