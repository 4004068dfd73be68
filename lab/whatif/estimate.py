"""Roofline floors of LLM inference (LLM-Viewer; Fu 2024): bytes moved over bandwidth and FLOPs over peak, for
a decode step and for prefill. Floors, not predictions: real kernels reach a fraction of either peak.

Notation: L layers, H query heads, G KV heads, d head_dim, n context tokens, B batch, P parameters,
b_w / b_kv bytes per weight / per cached value. A multiply-add counts 2 FLOPs.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from lab.errors import SpecError, shown
from lab.whatif.devices import Device
from lab.whatif.model import ModelShape

# Bytes per value. int4 packs two values per byte; the per-group scales of quantized formats (e.g. one fp16
# scale per 128 int4 weights: +1/64 byte per weight, ~3%) are not counted.
BYTES = {"fp32": 4.0, "bf16": 2.0, "fp16": 2.0, "fp8": 1.0, "int8": 1.0, "int4": 0.5}
WEIGHT_DTYPES = ("fp32", "bf16", "fp16", "int8", "int4")
KV_DTYPES = ("fp32", "bf16", "fp16", "fp8", "int8", "int4")
CONTEXT_RANGE = (1, 10_000_000)
BATCH_RANGE = (1, 100_000)


@dataclass(frozen=True)
class Scenario:
    """What is estimated: a model at a context and batch, in dtypes, with the knobs techniques turn.
    kv_ratio: the cache keeps n / kv_ratio tokens (KV compression); attended_share: each query reads this share
    of the kept cache (sparse attention)."""
    shape: ModelShape
    context: int
    batch: int = 1
    weight_dtype: str = "bf16"
    kv_dtype: str = "bf16"
    kv_ratio: float = 1.0
    attended_share: float = 1.0

    def __post_init__(self):
        for field, value, (low, high) in (("context", self.context, CONTEXT_RANGE),
                                          ("batch", self.batch, BATCH_RANGE)):
            if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
                raise SpecError(f"{field} must be a whole number from {low:,} to {high:,}, got {shown(value)}")
        for field, value, allowed in (("weight_dtype", self.weight_dtype, WEIGHT_DTYPES),
                                      ("kv_dtype", self.kv_dtype, KV_DTYPES)):
            if value not in allowed:
                raise SpecError(f"{field} must be one of {', '.join(allowed)}, got {shown(value)}")
        if not (isinstance(self.kv_ratio, (int, float)) and 1 <= self.kv_ratio <= 1000):
            raise SpecError(f"kv_ratio must be from 1 to 1000, got {shown(self.kv_ratio)}")
        if not (isinstance(self.attended_share, (int, float)) and 0 < self.attended_share <= 1):
            raise SpecError(f"attended_share must be above 0 and at most 1, got {shown(self.attended_share)}")


@dataclass(frozen=True)
class Phase:
    """One phase on the roofline: the time floor is the larger of memory time and compute time."""
    flops: float
    bytes: float
    memory_s: float  # bytes / bandwidth
    compute_s: float  # flops / peak
    peak_dtype: str  # the dtype whose peak FLOPs were used

    @property
    def floor_s(self) -> float:
        return max(self.memory_s, self.compute_s)

    @property
    def intensity(self) -> float:
        """Arithmetic intensity, FLOPs per byte moved."""
        return self.flops / self.bytes

    @property
    def bound(self) -> str:
        """memory-bound when intensity < ridge (= peak / bandwidth), i.e. memory time >= compute time."""
        return "memory" if self.memory_s >= self.compute_s else "compute"


def weight_bytes(shape: ModelShape, dtype: str) -> float:
    """P * b_w: every parameter stored once."""
    return shape.params * BYTES[dtype]


def kv_bytes_per_token(shape: ModelShape, dtype: str) -> float:
    """2 (K and V) * L * G * d * b_kv per token of one sequence."""
    return 2 * shape.layers * shape.kv_heads * shape.head_dim * BYTES[dtype]


def kept_tokens(s: Scenario) -> float:
    """Tokens the cache holds per sequence: n / kv_ratio."""
    return s.context / s.kv_ratio


def kv_bytes(s: Scenario) -> float:
    """The cache of the whole batch at the context: kv_bytes_per_token * (n / kv_ratio) * B."""
    return kv_bytes_per_token(s.shape, s.kv_dtype) * kept_tokens(s) * s.batch


def compute_dtype(weight_dtype: str) -> str:
    """Weight-only int8 / int4 (W8A16, W4A16) dequantize to bf16 before the matmul, so they compute in bf16."""
    return weight_dtype if weight_dtype in ("fp32", "bf16", "fp16") else "bf16"


def attention_flops(shape: ModelShape, queries: float, keys: float) -> float:
    """QK^T and PV: each query does H * d multiply-adds per key for each: 2 * 2 * L * H * d * queries * keys."""
    return 2 * 2 * shape.layers * shape.heads * shape.head_dim * queries * keys


def decode_step(s: Scenario, device: Device, tokens: int = 1) -> Phase:
    """One forward over `tokens` new tokens per sequence (1: a decode step; k + 1: a speculative verify).
    Bytes: the weights one step reads (read_params * b_w), the kept cache read (attended share of it) and the
    new tokens' K and V written. FLOPs: B * tokens * (2 * matmul params + attention over the attended keys)."""
    keys = kept_tokens(s) * s.attended_share
    nbytes = (s.shape.read_params * BYTES[s.weight_dtype] + kv_bytes(s) * s.attended_share
              + kv_bytes_per_token(s.shape, s.kv_dtype) * tokens * s.batch)
    flops = s.batch * (2 * s.shape.matmul_params * tokens + attention_flops(s.shape, tokens, keys))
    return _phase(flops, nbytes, device, compute_dtype(s.weight_dtype))


def prefill(s: Scenario, device: Device) -> Phase:
    """The whole context at once. FLOPs: B * (2 * matmul params * n + 2 * 2 * L * H * d * n^2 / 2), the n^2 / 2
    because causal attention scores only earlier keys, times the attended share. Bytes: the weights read once
    and the full cache written (compression happens after prefill, as in kvpress)."""
    n = s.context
    flops = s.batch * (2 * s.shape.matmul_params * n + attention_flops(s.shape, n, n / 2) * s.attended_share)
    nbytes = weight_bytes(s.shape, s.weight_dtype) + kv_bytes_per_token(s.shape, s.kv_dtype) * n * s.batch
    return _phase(flops, nbytes, device, compute_dtype(s.weight_dtype))


def decode_attention_share(s: Scenario, device: Device) -> float:
    """Attention's share of the decode floor, the f of Amdahl's law: memory-bound, the cache read over all bytes
    moved; compute-bound, attention FLOPs over all FLOPs."""
    step = decode_step(s, device)
    if step.bound == "memory":
        return kv_bytes(s) * s.attended_share / step.bytes
    return s.batch * attention_flops(s.shape, 1, kept_tokens(s) * s.attended_share) / step.flops


def prefill_attention_share(s: Scenario, device: Device) -> float:
    """Attention's share of the prefill floor: compute-bound, attention FLOPs over all FLOPs; memory-bound (short
    contexts), the cache written over all bytes."""
    phase = prefill(s, device)
    if phase.bound == "compute":
        return s.batch * attention_flops(s.shape, s.context, s.context / 2) * s.attended_share / phase.flops
    return kv_bytes_per_token(s.shape, s.kv_dtype) * s.context * s.batch / phase.bytes


def _phase(flops: float, nbytes: float, device: Device, dtype: str) -> Phase:
    used, peak = device.peak(dtype)
    return Phase(flops=flops, bytes=nbytes, memory_s=nbytes / device.bandwidth, compute_s=flops / peak,
                 peak_dtype=used)


def ridge(device: Device, dtype: str) -> float:
    """FLOPs per byte where the roofline bends: peak / bandwidth. Below it a phase is memory-bound."""
    return device.peak(dtype)[1] / device.bandwidth


def memory_needed(s: Scenario) -> float:
    """Weights + the batch's cache at the context, bytes (activations and workspace not counted)."""
    return weight_bytes(s.shape, s.weight_dtype) + kv_bytes(s)


def max_batch(s: Scenario, device: Device) -> int | None:
    """Fu 2024's concurrency limit: how many sequences at this context fit beside the weights,
    floor((memory - weights) / cache per sequence); None when the device's memory is unknown."""
    if device.memory_gb is None:
        return None
    per_sequence = kv_bytes_per_token(s.shape, s.kv_dtype) * kept_tokens(s)
    free = device.memory_gb * 1e9 - weight_bytes(s.shape, s.weight_dtype)
    return max(0, math.floor(free / per_sequence))
