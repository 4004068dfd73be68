"""Integer quantization of KV tensors (asymmetric min-max, int8 or int4 packed two per byte).

Written here rather than taken from quanto/HQQ: those backends are separate packages, and the lab wants the
exact bytes held to be visible and countable (cache_nbytes reads these tensors).
"""
from __future__ import annotations


def quantize(x, bits: int, dim: int):
    """Quantize along `dim` (the values sharing one scale): x ≈ q * scale + low, q in [0, 2^bits - 1]."""
    # lazy: torch loads only when a technique runs; pages import every technique to build their forms
    import torch
    levels = 2 ** bits - 1
    low = x.amin(dim=dim, keepdim=True)
    scale = (x.amax(dim=dim, keepdim=True) - low).clamp(min=1e-8) / levels
    q = torch.round((x - low) / scale).clamp(0, levels).to(torch.uint8)
    if bits == 4:  # two 4-bit codes per byte along the last dimension
        q = q[..., 0::2] | (q[..., 1::2] << 4)
    return q, scale.to(x.dtype), low.to(x.dtype)


def dequantize(q, scale, low, bits: int):
    # lazy: torch loads only when a technique runs; pages import every technique to build their forms
    import torch
    if bits == 4:
        q = torch.stack([q & 0x0F, q >> 4], dim=-1).flatten(-2)
    return q.to(scale.dtype) * scale + low
