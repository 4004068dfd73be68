"""Score a shipped denoiser: classifier accuracy of generated digits per guidance scale.

`python -m lab.diffusion.evaluate digits-dit --per-class 20 --guidance 1 2 3`
Images come from seeds 10_000 + batch index (not the seeds experiments use by default); 50 DDIM steps.
"""
from __future__ import annotations

import argparse
import json
import time

import torch

from lab.diffusion.models import load_denoiser
from lab.diffusion.sampler import DenoiserCall, sample


def accuracy(name: str, guidance: float, per_class: int, steps: int = 50, sampler: str = "ddim",
             batch: int = 50) -> dict:
    loaded = load_denoiser(name, "cpu")
    labels = torch.arange(10).repeat(per_class)
    correct, started = 0, time.time()
    per_digit = torch.zeros(10)
    for b, start in enumerate(range(0, len(labels), batch)):
        chunk = labels[start:start + batch]
        call = DenoiserCall(loaded.model, steps, guidance, sampler, model_name=name)
        images = sample(call, chunk, seed=10_000 + b).images
        with torch.no_grad():
            hits = loaded.classifier(images).argmax(-1) == chunk
        correct += int(hits.sum())
        per_digit.index_add_(0, chunk, hits.float())
    return {"model": name, "guidance": guidance, "steps": steps, "sampler": sampler, "images": len(labels),
            "accuracy": round(correct / len(labels), 4),
            "per_digit": [round(float(x) / per_class, 3) for x in per_digit],
            "seconds": round(time.time() - started, 1)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", choices=("digits-dit", "digits-unet"))
    parser.add_argument("--per-class", type=int, default=20)
    parser.add_argument("--guidance", type=float, nargs="+", default=[1.5])
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--sampler", default="ddim")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    for g in args.guidance:
        print(json.dumps(accuracy(args.model, g, args.per_class, args.steps, args.sampler)), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
