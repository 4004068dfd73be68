"""What the diffusion page draws, computed from stored outputs without torch: image grids with the
difference against the baseline, and the per-step computed/reused strip."""
from __future__ import annotations

import numpy as np

SIDE = 16
ZOOM = 4  # 16x16 pixels drawn as 64x64
GAP = 2


def is_diffusion(exp) -> bool:
    return exp.spec.get("workload") == "digits"


def _image(pixels: list[int]) -> np.ndarray:
    return np.asarray(pixels, dtype=np.uint8).reshape(SIDE, SIDE)


def grid(images: list[np.ndarray]) -> np.ndarray:
    """A row of images, zoomed with nearest-neighbour (each pixel stays a visible square), on a white gap."""
    big = [np.kron(img, np.ones((ZOOM, ZOOM), dtype=np.uint8)) for img in images]
    height = SIDE * ZOOM
    row = np.full((height, len(big) * (height + GAP) - GAP), 255, dtype=np.uint8)
    for i, img in enumerate(big):
        row[:, i * (height + GAP): i * (height + GAP) + height] = img
    return row


def difference(a: np.ndarray, b: np.ndarray, gain: float = 4.0) -> np.ndarray:
    """|a - b| amplified `gain` times and inverted (white = identical, dark = differs)."""
    diff = np.abs(a.astype(np.int16) - b.astype(np.int16)) * gain
    return (255 - np.clip(diff, 0, 255)).astype(np.uint8)


def outputs_by_variant(exp) -> dict[str, list]:
    return {run.variant: sorted(run.outputs, key=lambda o: o.item_index) for run in exp.runs}


def comparison_rows(exp, variant: str, limit: int = 10) -> dict:
    """Images (baseline, variant, difference) of the first `limit` items, with their captions."""
    outputs = outputs_by_variant(exp)
    base, ours = outputs[exp.runs[0].variant][:limit], outputs[variant][:limit]
    base_imgs = [_image(o.extra["pixels"]) for o in base]
    our_imgs = [_image(o.extra["pixels"]) for o in ours]
    return {
        "baseline": grid(base_imgs),
        "variant": grid(our_imgs),
        "difference": grid([difference(a, b) for a, b in zip(base_imgs, our_imgs)]),
        "captions": [f"{o.extra['label']}→{o.extra['predicted']}" for o in ours],
    }


def step_strip(exp) -> list[dict]:
    """Per variant and sampler step: the share of the step's blocks computed (first image batch)."""
    rows = []
    for run in exp.runs:
        if not run.outputs:
            continue
        first = min(run.outputs, key=lambda o: o.item_index)
        for step, share in enumerate(first.extra.get("step_compute", [])):
            state = "computed" if share >= 0.999 else ("reused" if share <= 0.001 else "partly")
            rows.append({"variant": run.variant, "step": step + 1, "computed": round(100 * share, 1),
                         "state": state})
    return rows
