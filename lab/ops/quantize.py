"""Quantized Linear layers on torch's own int8 / int4 CPU kernels, and the quantization maths they share.

Why hand-written layers rather than torchao: torchao 0.18 (the release for torch 2.13) runs weight-only int8 on
this CPU 2.4x slower than bf16 (its Int8Tensor dequantizes in Python) and its int4 needs the `mslk` package,
which has no CPU build. The kernels below are torch's own (aten::_int_mm, _weight_int8pack_mm,
_weight_int4pack_mm_for_cpu: the ones torchao's former CPU layouts called); measured on the 2-core AMD EPYC, a
576 -> 1536 projection of one token: fp32 72 us, int8 x int8 `_int_mm` 10 us, int8 weights x bf16 37 us,
int4 (group 32) x bf16 43 us. The layers only prepare operands for them and rescale.

Conventions (each tested against a slow re-implementation in tests/test_quantization.py):
- symmetric int8 per row: scale = max|row| / 127, q = round(w / scale) in [-127, 127], w ~ q * scale;
- asymmetric int4 per group of `group_size` input columns (torch's int4pack layout): scale = (max - min) / 15,
  q = round((w - min) / scale) in [0, 15], w ~ (q - 8) * scale + zero with zero = min + 8 * scale.
"""
from __future__ import annotations

import torch
from torch import nn

INT4_GROUP_SIZES = (32, 64, 128, 256)  # what the int4pack kernels accept


def int8_rows(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric int8 per row of `w` [rows, cols]: (codes int8, scale float32 [rows])."""
    scale = w.float().abs().amax(dim=1).clamp(min=1e-8) / 127
    return torch.round(w.float() / scale[:, None]).clamp(-127, 127).to(torch.int8), scale


def int8_tensor(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric int8 with one scale for the whole matrix, repeated per row (so layers take either form)."""
    scale = (w.float().abs().max().clamp(min=1e-8) / 127).expand(w.shape[0]).contiguous()
    return torch.round(w.float() / scale[:, None]).clamp(-127, 127).to(torch.int8), scale


def int4_groups(w: torch.Tensor, group_size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Asymmetric 4-bit per group of `group_size` columns: (codes int32 [rows, cols] in 0..15, scale and zero
    [rows, cols // group_size])."""
    rows, cols = w.shape
    groups = w.float().reshape(rows, cols // group_size, group_size)
    low, high = groups.amin(-1), groups.amax(-1)
    scale = ((high - low) / 15).clamp(min=1e-8)
    codes = torch.round((groups - low[..., None]) / scale[..., None]).clamp(0, 15).to(torch.int32)
    return codes.reshape(rows, cols), scale, low + 8 * scale


def dequantize_int4(codes: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, group_size: int) -> torch.Tensor:
    rows, cols = codes.shape
    groups = codes.reshape(rows, cols // group_size, group_size).float()
    return ((groups - 8) * scale[..., None] + zero[..., None]).reshape(rows, cols)


def fake_quantize(w: torch.Tensor, bits: int, group_size: int = 0) -> torch.Tensor:
    """`w` after quantization and back, in float32: what a layer of `bits` really multiplies by (16 = bf16)."""
    if bits == 16:
        return w.to(torch.bfloat16).float()
    if bits == 8:
        codes, scale = int8_rows(w)
        return codes.float() * scale[:, None]
    return dequantize_int4(*int4_groups(w, group_size), group_size)


def relative_error(reference: torch.Tensor, approx: torch.Tensor) -> float:
    """||approx - reference|| / ||reference|| (Frobenius)."""
    return float((approx.float() - reference.float()).norm() / reference.float().norm().clamp(min=1e-12))


class Int8DynamicLinear(nn.Module):
    """W8A8 with per-token activations: each row of the input gets its own int8 scale at every call
    (symmetric), weights are int8 per output channel, the product accumulates in int32 (torch._int_mm).

    y[t, n] = (sum_k xq[t, k] * wq[n, k]) * sx[t] * sw[n] + b[n]
    Per-token scales are what makes W8A8 accurate: one outlier token no longer flattens every other token's
    levels, as a per-tensor activation scale does (lab/techniques/quantization/w8a8.py).
    """

    def __init__(self, linear: nn.Linear, per_channel: bool = True):
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        weight = linear.weight.detach()
        codes, scale = int8_rows(weight) if per_channel else int8_tensor(weight)
        self.register_buffer("weight_codes", codes)
        self.register_buffer("weight_scale", scale)
        bias = linear.bias.detach().float() if linear.bias is not None else None
        self.register_buffer("bias", bias)

    def dequantized_weight(self) -> torch.Tensor:
        return self.weight_codes.float() * self.weight_scale[:, None]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(-1, self.in_features).float()
        token_scale = rows.abs().amax(dim=1, keepdim=True).clamp(min=1e-8) / 127
        codes = torch.round(rows / token_scale).to(torch.int8)  # |rows / scale| <= 127: no clamp needed
        y = torch._int_mm(codes, self.weight_codes.t()).float() * token_scale * self.weight_scale
        if self.bias is not None:
            y = y + self.bias
        return y.reshape(*x.shape[:-1], self.out_features).to(x.dtype)


class WeightOnlyLinear(nn.Module):
    """Weight-only int8 (per output channel) or int4 (per group) with bf16 activations, on torch's CPU kernels
    (_weight_int8pack_mm, _weight_int4pack_mm_for_cpu); the codes stay packed, and a call never dequantizes."""

    def __init__(self, linear: nn.Linear, bits: int, group_size: int = 0):
        super().__init__()
        if bits not in (4, 8):
            raise ValueError(f"bits must be 4 or 8, got {bits}")
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.bits, self.group_size = bits, group_size
        w = linear.weight.detach()
        if bits == 8:
            codes, scale = int8_rows(w)
            self.register_buffer("weight_codes", codes)
            self.register_buffer("weight_scale", scale.to(torch.bfloat16))
        else:
            codes, scale, zero = int4_groups(w, group_size)
            # packs two codes per byte in the kernel's tile order; the original codes are not kept
            self.register_buffer("weight_codes", torch.ops.aten._convert_weight_to_int4pack_for_cpu(codes, 1))
            scales_and_zeros = torch.stack([scale, zero], dim=-1).transpose(0, 1).contiguous()  # [groups, rows, 2]
            self.register_buffer("scales_and_zeros", scales_and_zeros.to(torch.bfloat16))
        bias = linear.bias.detach().to(torch.bfloat16) if linear.bias is not None else None
        self.register_buffer("bias", bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(-1, self.in_features).to(torch.bfloat16)
        if self.bits == 8:
            y = torch.ops.aten._weight_int8pack_mm(rows, self.weight_codes, self.weight_scale)
        else:
            y = torch.ops.aten._weight_int4pack_mm_for_cpu(rows, self.weight_codes, self.group_size,
                                                           self.scales_and_zeros)
        if self.bias is not None:
            y = y + self.bias
        return y.reshape(*x.shape[:-1], self.out_features).to(x.dtype)


def linear_layers(model, skip: tuple = ()) -> dict[str, nn.Linear]:
    """Every nn.Linear of `model` by its qualified name, except the modules in `skip` (an LM head)."""
    return {name: m for name, m in model.named_modules() if isinstance(m, nn.Linear) and m not in skip}


def decoder_linears(model) -> dict[str, nn.Linear]:
    """The Linears weight quantization rewrites: all but an LLM's output head (it reads every token's hidden
    state, and is tied to the embedding in most small models); a denoiser has none, so all of its Linears."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    return linear_layers(model, skip=(head,) if head is not None else ())


def replace_module(model, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, new)


def fake_quantize_activations(rows: torch.Tensor, scale: str) -> torch.Tensor:
    """Input rows [tokens, features] as a W8A8 kernel sees them: "per_token" symmetric int8 per row (our
    Int8DynamicLinear); "per_tensor" asymmetric over the whole call with fbgemm's reduced range (0..127, to keep
    its int16 accumulation from saturating), as torch.ao's dynamic Linear does."""
    if scale == "per_token":
        step = rows.abs().amax(dim=1, keepdim=True).clamp(min=1e-8) / 127
        return torch.round(rows / step) * step
    low, high = rows.min().clamp(max=0), rows.max().clamp(min=0)
    step = ((high - low) / 127).clamp(min=1e-8)
    zero = torch.round(-low / step)
    return (torch.round(rows / step + zero).clamp(0, 127) - zero) * step
