"""Bytes actually held by a KV cache or a model, read from their tensors (never from a shape formula)."""
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


def model_bytes(model) -> int:
    """Bytes of a model's parameters and buffers as held in memory; tied tensors (embedding == LM head) once."""
    seen, total = set(), 0
    for t in list(model.parameters()) + list(model.buffers()):
        if t.data_ptr() not in seen:
            seen.add(t.data_ptr())
            total += t.numel() * t.element_size()
    return total
