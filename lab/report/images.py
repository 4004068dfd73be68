"""Diffusion images in a report: each stored image as a base64 PNG (the digits' grey pixels are encoded here, a
pipeline's thumbnail is already one), and the grids the diffusion page draws (baseline, variant, difference),
rebuilt from the report alone so an imported or offline report draws them too."""
from __future__ import annotations

import base64
import io

import numpy as np
from PIL import Image

from lab.views.diffusion import SIDE, difference, grid

GRID_ITEMS = 10  # images per grid row, as on the diffusion page


def png_base64(pixels: np.ndarray) -> str:
    """A PNG (grey for H x W, RGB for H x W x 3) as base64 text. PIL writes no timestamp, so the same pixels
    always give the same text."""
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def stored_image_png(extra: dict) -> str | None:
    """The image a stored diffusion output holds, as base64 PNG; None for an output without one (an LLM's)."""
    if isinstance(extra.get("png"), str):
        return extra["png"]
    pixels = extra.get("pixels")
    if isinstance(pixels, list) and len(pixels) == SIDE * SIDE:
        return png_base64(np.asarray(pixels, dtype=np.uint8).reshape(SIDE, SIDE))
    return None


def _pixels(png: str) -> np.ndarray:
    image = Image.open(io.BytesIO(base64.b64decode(png)))
    return np.asarray(image if image.mode == "L" else image.convert("RGB"))


def _caption(output: dict) -> str:
    extra = output.get("extra") or {}
    return f"{extra['label']}→{extra['predicted']}" if "label" in extra and "predicted" in extra \
        else str(output.get("item_key", ""))


def _images(run: dict) -> list[tuple[np.ndarray, str]]:
    outputs = sorted(run["outputs"], key=lambda o: o["item_index"])
    return [(_pixels(o["image_png"]), _caption(o)) for o in outputs if o.get("image_png")][:GRID_ITEMS]


def image_grids(experiment: dict) -> list[dict]:
    """Per variant other than the baseline: grid PNGs (base64) of the baseline's images, the variant's and their
    difference (white = identical), with the variant's captions. Empty when the runs hold no images."""
    baseline = next((r for r in experiment["runs"] if r["is_baseline"]), None)
    base = _images(baseline) if baseline else []
    grids = []
    for run in experiment["runs"]:
        ours = _images(run)
        if run is baseline or not ours:
            continue
        row = {"variant": run["variant"], "variant_png": png_base64(grid([img for img, _ in ours])),
               "captions": [caption for _, caption in ours], "baseline_png": None, "difference_png": None}
        pairs = [(a, b) for (a, _), (b, _) in zip(base, ours) if a.shape == b.shape]
        if pairs:
            row["baseline_png"] = png_base64(grid([a for a, _ in pairs]))
            row["difference_png"] = png_base64(grid([difference(a, b) for a, b in pairs]))
        grids.append(row)
    return grids
