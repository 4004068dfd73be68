"""What the diffusion page draws, computed from stored outputs without torch: image grids with the
difference against the baseline, and the per-step computed/reused strip."""
from __future__ import annotations

import base64
import io

import numpy as np

from lab.views.results import metric_values

SIDE = 16
ZOOM = 6  # 16x16 pixels drawn as 96x96
DRAWN = SIDE * ZOOM  # small images are zoomed up to about this side
GAP = 2


def is_diffusion(exp) -> bool:
    return exp.spec.get("workload") in ("digits", "image_prompts")


def _image(extra: dict) -> np.ndarray:
    """A stored image: the digits' grey pixels (H x W), or a pipeline's PNG thumbnail (H x W x 3)."""
    if "png" in extra:
        # lazy: only to draw images; pages read this module
        from PIL import Image
        return np.asarray(Image.open(io.BytesIO(base64.b64decode(extra["png"]))).convert("RGB"))
    return np.asarray(extra["pixels"], dtype=np.uint8).reshape(SIDE, SIDE)


def grid(images: list[np.ndarray]) -> np.ndarray:
    """A row of same-sized images, small ones zoomed with nearest-neighbour (each pixel stays a visible
    square), on a white gap."""
    zoom = max(1, DRAWN // images[0].shape[0])
    big = [img.repeat(zoom, axis=0).repeat(zoom, axis=1) for img in images]
    height, width = big[0].shape[:2]
    row = np.full((height, len(big) * (width + GAP) - GAP, *big[0].shape[2:]), 255, dtype=np.uint8)
    for i, img in enumerate(big):
        row[:, i * (width + GAP): i * (width + GAP) + width] = img
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
    base_imgs = [_image(o.extra) for o in base]
    our_imgs = [_image(o.extra) for o in ours]
    return {
        "baseline": grid(base_imgs),
        "variant": grid(our_imgs),
        "difference": grid([difference(a, b) for a, b in zip(base_imgs, our_imgs)]),
        "captions": [f"{o.extra['label']}→{o.extra['predicted']}" if "label" in o.extra else o.item_key
                     for o in ours],
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


def _interpolate(points: list[tuple[float, float]], x: float) -> tuple[float, bool]:
    """Linear interpolation through (x, y) points sorted by x; outside their range the nearest end is used
    (the second value says whether x was inside)."""
    if x <= points[0][0]:
        return points[0][1], x == points[0][0]
    if x >= points[-1][0]:
        return points[-1][1], x == points[-1][0]
    for (x0, y0), (x1, y1) in zip(points, points[1:]):
        if x0 <= x <= x1:
            return y0 + (y1 - y0) * (x - x0) / (x1 - x0), True
    raise AssertionError("unreachable")


def equal_compute_rows(exp) -> list[dict]:
    """Each caching variant (and fewer steps with another solver) against plain fewer steps, twice: at the same
    share of blocks computed (counted, deterministic) and at the same measured speedup (what a user waits).

    The step-reduction variants with the baseline's solver, plus the baseline itself, form a curve of quality
    over compute and over speedup; it is interpolated at each variant's own value. A variant beats fewer steps
    when its PSNR and SSIM are both higher than the curve's; blocks are not equal work (a UNet's outer blocks
    run at full resolution), hence the second reading.
    """

    runs = [(run, metric_values(run)) for run in exp.runs]
    sampler = exp.spec.get("sampler", "ddim")
    steps = [m for run, m in runs if _same_solver_step_reduction(run, sampler) or run is exp.runs[0]]
    if len(steps) < 2:
        return []
    by_blocks = _curves(steps, "blocks_computed", ("psnr_db", "ssim", "class_accuracy", "speedup"))
    by_speed = _curves(steps, "speedup", ("psnr_db", "ssim"))
    rows = []
    for run, m in runs[1:]:
        if _same_solver_step_reduction(run, sampler) or m.get("blocks_computed") is None:
            continue
        at_blocks = {name: _interpolate(curve, m["blocks_computed"]) for name, curve in by_blocks.items()}
        at_speed = {name: _interpolate(curve, m["speedup"]) for name, curve in by_speed.items()}
        rows.append({"Variant": run.variant, "Blocks computed [%]": round(m["blocks_computed"], 1),
                     "PSNR [dB]": _r(m.get("psnr_db")), "fewer steps: PSNR": _r(at_blocks["psnr_db"][0]),
                     "SSIM": _r(m.get("ssim"), 3), "fewer steps: SSIM": _r(at_blocks["ssim"][0], 3),
                     "Accuracy [%]": _r(m.get("class_accuracy")),
                     "fewer steps: accuracy": _r(at_blocks["class_accuracy"][0]),
                     "At equal compute": _verdict(m, at_blocks),
                     "Speedup [x]": _r(m.get("speedup"), 2), "fewer steps: speedup": _r(at_blocks["speedup"][0], 2),
                     "fewer steps at this speedup: PSNR": _r(at_speed["psnr_db"][0]),
                     "At equal speed": _verdict(m, at_speed)})
    return rows


def _curves(points: list[dict], axis: str, names: tuple) -> dict:
    curves = {}
    for name in names:
        pts = sorted((m[axis], m.get(name)) for m in points if m.get(axis) is not None)
        # the baseline's PSNR is infinite (stored as none): cap the curve's top at the best finite value
        finite = [y for _, y in pts if y is not None]
        curves[name] = [(x, y if y is not None else max(finite, default=0.0)) for x, y in pts]
    return curves


def _verdict(m: dict, ref: dict) -> str:
    better = [m.get(n) is not None and m[n] > ref[n][0] for n in ("psnr_db", "ssim")]
    verdict = "beats fewer steps" if all(better) else ("loses to fewer steps" if not any(better) else "mixed")
    return verdict + ("" if ref["psnr_db"][1] else " (outside the step curve)")


def _same_solver_step_reduction(run, sampler: str) -> bool:
    # only plain fewer steps of the baseline's own solver make the curve; another solver is a method of its own,
    # and so is a cache stacked on fewer steps (TaylorSeer + 25 steps is a point to set against the curve)
    techniques = run.params.get("techniques", [])
    return len(techniques) == 1 and techniques[0]["name"] == "step_reduction" and \
        techniques[0].get("sampler", "same") in ("same", sampler)


def _r(x, digits: int = 1):
    return None if x is None else round(x, digits)
