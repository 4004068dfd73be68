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
    """Bytes of a model's parameters and buffers as held in memory; tied tensors (embedding == LM head) once.
    Packed quantized layers are counted by what they hold (int8 codes, scales, zero points, bias)."""
    seen, total = set(), 0
    for t in list(model.parameters()) + list(model.buffers()):
        if t.data_ptr() not in seen:
            seen.add(t.data_ptr())
            total += t.numel() * t.element_size()
    # the quantized Linear holds a LinearPackedParams module, which itself holds the packed (script) object
    return total + sum(packed_bytes(m) for m in model.modules()
                       if isinstance(getattr(m, "_packed_params", None), torch.nn.Module))


def packed_bytes(module) -> int:
    """torch.ao's dynamically quantized Linear (and weight-only Embedding) packs its int8 weight, scales and bias
    outside the module's parameters and buffers, so model_bytes reads them here."""
    packed = module._packed_params
    weight, bias = packed._weight_bias() if hasattr(packed, "_weight_bias") else (packed._weight(), None)
    total = weight.numel() * weight.element_size()
    if weight.qscheme() in (torch.per_channel_affine, torch.per_channel_symmetric,
                            torch.per_channel_affine_float_qparams):
        total += sum(t.numel() * t.element_size()
                     for t in (weight.q_per_channel_scales(), weight.q_per_channel_zero_points()))
    else:
        total += 16  # one float64 scale and one int64 zero point
    return total + (bias.numel() * bias.element_size() if bias is not None else 0)
