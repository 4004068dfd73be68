"""Image fidelity against the uncached image with the same seed (PSNR, SSIM) and classifier accuracy.

SSIM is written out here (Wang et al. 2004, 7x7 uniform window, the defaults of scikit-image's
structural_similarity) rather than adding scikit-image for fifteen lines; images are in [-1, 1], so the
data range is 2.
"""
from __future__ import annotations

import math

import torch

DATA_RANGE = 2.0


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    """Peak signal-to-noise ratio in dB of one image pair; inf when identical."""
    mse = torch.mean((a.double() - b.double()) ** 2).item()
    return math.inf if mse == 0 else 10 * math.log10(DATA_RANGE ** 2 / mse)


def ssim(a: torch.Tensor, b: torch.Tensor, window: int = 7) -> float:
    """Mean structural similarity of two (C, H, W) images; 1.0 when identical."""
    x, y = a.double().unsqueeze(0), b.double().unsqueeze(0)
    pool = lambda t: torch.nn.functional.avg_pool2d(t, window, stride=1)  # noqa: E731 (local mean)
    c1, c2 = (0.01 * DATA_RANGE) ** 2, (0.03 * DATA_RANGE) ** 2
    n = window * window
    mu_x, mu_y = pool(x), pool(y)
    # sample (co)variances, as scikit-image computes them
    var_x = (pool(x * x) - mu_x ** 2) * n / (n - 1)
    var_y = (pool(y * y) - mu_y ** 2) * n / (n - 1)
    cov = (pool(x * y) - mu_x * mu_y) * n / (n - 1)
    s = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x ** 2 + mu_y ** 2 + c1) * (var_x + var_y + c2))
    return s.mean().item()


def to_pixels(images: torch.Tensor) -> list[list[int]]:
    """(B, 1, H, W) in [-1, 1] -> per image a flat list of 0-255 grey values (stored with each output)."""
    grey = ((images.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return [img.flatten().tolist() for img in grey]
