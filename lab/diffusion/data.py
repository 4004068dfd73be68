"""sklearn's handwritten digits (1797 images, 8x8, 16 grey levels), upsampled to 16x16 in [-1, 1].

The dataset ships inside scikit-learn, so training and scoring need no download.
"""
from __future__ import annotations

import torch
from sklearn.datasets import load_digits

IMAGE_SIZE = 16
NUM_CLASSES = 10


def load_digits_16(split: str = "all", holdout: float = 0.2, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Images (N, 1, 16, 16) float32 in [-1, 1] and labels (N,) int64; split is 'all', 'train' or 'test'.

    The split is a fixed seeded permutation, so the classifier's held-out accuracy is reproducible.
    """

    digits = load_digits()
    x = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
    # Bilinear upsampling keeps strokes smooth; 8x8 pixels become soft 2x2 blobs.
    x = torch.nn.functional.interpolate(x, size=(IMAGE_SIZE, IMAGE_SIZE), mode="bilinear", align_corners=False)
    x = x.clamp(0, 1) * 2 - 1
    y = torch.tensor(digits.target, dtype=torch.int64)
    if split not in ("all", "train", "test"):
        raise ValueError(f"split must be 'all', 'train' or 'test', got {split!r}")
    if split == "all":
        return x, y
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    n_test = int(len(y) * holdout)
    picked = order[:n_test] if split == "test" else order[n_test:]
    return x[picked], y[picked]


def augment(x: torch.Tensor, generator: torch.Generator, max_shift: int = 1) -> torch.Tensor:
    """Shift each image by up to `max_shift` pixels in x and y, filling with background (-1)."""
    n = x.shape[0]
    pad = torch.nn.functional.pad(x, (max_shift,) * 4, value=-1.0)
    shifts = torch.randint(0, 2 * max_shift + 1, (n, 2), generator=generator)
    out = torch.empty_like(x)
    for i in range(n):
        dy, dx = int(shifts[i, 0]), int(shifts[i, 1])
        out[i] = pad[i, :, dy:dy + IMAGE_SIZE, dx:dx + IMAGE_SIZE]
    return out
