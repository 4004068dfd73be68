"""KV bytes actually held by a cache, read from its tensors (never from a shape formula)."""
from __future__ import annotations

import torch


def cache_nbytes(cache) -> int:
    """Sum the bytes of every distinct tensor a transformers Cache holds, layer by layer.

    Reads every tensor attribute of each layer, so quantized layers (packed data plus scales) and
    compressed layers count what they really keep.
    """
    seen, total = set(), 0
    layers = getattr(cache, "layers", None) or []
    for layer in layers:
        for value in vars(layer).values():
            for t in (value if isinstance(value, (list, tuple)) else [value]):
                if isinstance(t, torch.Tensor) and t.data_ptr() not in seen:
                    seen.add(t.data_ptr())
                    total += t.numel() * t.element_size()
    return total
