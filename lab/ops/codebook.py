"""Dense-and-sparse non-uniform weight quantization in the style of SqueezeLLM (Kim et al., ICML 2024,
arXiv:2306.07629): a few outlier weights kept exactly in a sparse matrix, every other weight replaced by one of
2**bits values of its output row's own codebook, found by sensitivity-weighted k-means.

The scheme, for one nn.Linear weight W [rows, cols]:
- sparse part: the `outlier_share` (a fraction, e.g. 0.0045) largest |w| of the whole matrix (one threshold per
  matrix, as SqueezeLLM does; a row may hold many outliers or none) are kept in float32, in CSR layout: values
  float32 [nnz], column indices int16 (int32 when a row has more than 32767 columns) [nnz], row pointers int32
  [rows + 1];
- dense part: each row's remaining weights are clustered into 2**bits centroids by weighted 1-D k-means (Lloyd
  iterations), each weight w_ij weighted by the sensitivity of its input channel j. SqueezeLLM weights by the
  Fisher information; the lab uses the calibration statistic sqsum_j = sum of x_j^2 over the calibration tokens,
  the diagonal of X^T X (the Gauss-Newton Hessian of the layer's output error, see weight_budget.py), which needs
  no gradients. Codebooks are stored float16 [rows, 2**bits]; codes are bit-packed into uint8 (bits=4: two codes
  a byte; bits=3: eight codes in three bytes), so the bytes counted are the bytes a 3-bit code really takes;
- dequantization: W~ = codebook[row, code]; then the sparse outliers overwrite their positions (the dense code
  there is ignored), so an outlier is reproduced exactly, not as dense + correction with a float rounding.

No fast kernel exists for this on the lab's stack: forward() dequantizes the whole weight at every call and runs
torch.nn.functional.linear, so a layer is slower than fp32; what it buys is weight memory at a given quality.
Everything is plain torch, so it runs on any device the model is on.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

KMEANS_ITERATIONS = 20  # Lloyd iterations at most; they stop early once no assignment changes


def outlier_mask(w: torch.Tensor, share: float) -> torch.Tensor:
    """Boolean [rows, cols]: the round(share * numel) largest |w| of the whole matrix (exactly that many; a tie at
    the threshold is broken by topk's order)."""
    count = round(share * w.numel())
    mask = torch.zeros(w.numel(), dtype=torch.bool, device=w.device)
    if count:
        mask[w.abs().reshape(-1).topk(count).indices] = True
    return mask.reshape(w.shape)


def channel_weights(sqsum: torch.Tensor | None, cols: int, device) -> torch.Tensor:
    """Per input column, the k-means weight: sqsum plus a floor (a channel that never fired still gets its
    weights quantized sensibly); all ones without statistics (plain k-means)."""
    if sqsum is None:
        return torch.ones(cols, device=device)
    sqsum = sqsum.float().to(device)
    floor = 1e-6 * float(sqsum.mean())
    return sqsum + floor if floor > 0 else torch.ones(cols, device=device)


def nearest_centroid(w: torch.Tensor, centroids: torch.Tensor) -> torch.Tensor:
    """Index [rows, cols] of the nearest of each row's centroids [rows, k], which must be sorted per row: in 1-D
    the nearest centroid is found by where w falls among the midpoints, O(cols log k) memory-light, instead of a
    [rows, cols, k] distance tensor (a gigabyte for a 2048 x 8192 matrix)."""
    midpoints = ((centroids[:, 1:] + centroids[:, :-1]) / 2).contiguous()
    return torch.searchsorted(midpoints, w.contiguous())


def weighted_kmeans(w: torch.Tensor, weight: torch.Tensor, k: int,
                    iterations: int = KMEANS_ITERATIONS) -> torch.Tensor:
    """Sorted centroids [rows, k] of each row of `w` [rows, cols] by weighted Lloyd iterations, element (i, j)
    weighted by weight[i, j] (0 = ignored, as an outlier is).

    Vectorised over all rows at once rather than sklearn's KMeans per row: a matrix has thousands of rows, and a
    Python call per row (each with its own setup) would take minutes per model; here an iteration is a
    searchsorted and two scatter_adds over the whole matrix."""
    keep = weight > 0
    low = torch.where(keep, w, torch.inf).amin(1)
    high = torch.where(keep, w, -torch.inf).amax(1)
    empty = ~keep.any(1)  # every weight of the row is an outlier: any codebook does
    low, high = torch.where(empty, w.amin(1), low), torch.where(empty, w.amax(1), high)
    steps = torch.linspace(0, 1, k, device=w.device)
    centroids = low[:, None] + (high - low)[:, None] * steps[None, :]  # linspace min..max per row
    codes = None
    for _ in range(iterations):
        new_codes = nearest_centroid(w, centroids)
        if codes is not None and torch.equal(new_codes, codes):
            break
        codes = new_codes
        sums = torch.zeros_like(centroids).scatter_add_(1, codes, w * weight)
        mass = torch.zeros_like(centroids).scatter_add_(1, codes, weight)
        # an empty cluster keeps its centroid; sorting keeps the midpoint search valid
        centroids = torch.where(mass > 0, sums / mass.clamp(min=1e-30), centroids).sort(1).values
    return centroids


def pack_codes(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """Codes [rows, cols] in 0..2**bits-1 -> uint8 [rows, groups * bytes_per_group], little-endian bit stream
    per group of codes (bits=4: 2 codes a byte; bits=3: 8 codes in 3 bytes; the last group padded with 0)."""
    per_group, group_bytes = _group(bits)
    rows, cols = codes.shape
    padded = F.pad(codes.long(), (0, -cols % per_group)).reshape(rows, -1, per_group)
    shifts = bits * torch.arange(per_group, device=codes.device)
    value = (padded << shifts).sum(-1, keepdim=True)  # at most 24 bits
    byte_shifts = 8 * torch.arange(group_bytes, device=codes.device)
    return ((value >> byte_shifts) & 0xFF).to(torch.uint8).reshape(rows, -1)


def unpack_codes(packed: torch.Tensor, bits: int, cols: int) -> torch.Tensor:
    """Inverse of pack_codes: int64 codes [rows, cols]."""
    per_group, group_bytes = _group(bits)
    rows = packed.shape[0]
    groups = packed.long().reshape(rows, -1, group_bytes)
    value = (groups << 8 * torch.arange(group_bytes, device=packed.device)).sum(-1, keepdim=True)
    codes = (value >> bits * torch.arange(per_group, device=packed.device)) & (2 ** bits - 1)
    return codes.reshape(rows, -1)[:, :cols]


def _group(bits: int) -> tuple[int, int]:
    """(codes, bytes) of the smallest whole-byte group of `bits`-bit codes."""
    per_group = 8 // math.gcd(bits, 8)
    return per_group, per_group * bits // 8


def to_csr(w: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The masked entries of `w` in CSR layout: (values float32, column indices int16/int32, row pointers int32)."""
    rows, cols = mask.nonzero(as_tuple=True)  # row-major order, as CSR wants
    index_type = torch.int16 if w.shape[1] <= torch.iinfo(torch.int16).max + 1 else torch.int32
    row_ptr = torch.zeros(w.shape[0] + 1, dtype=torch.int32, device=w.device)
    row_ptr[1:] = torch.bincount(rows, minlength=w.shape[0]).cumsum(0)
    return w[rows, cols].float().clone(), cols.to(index_type), row_ptr


class DenseSparseLinear(nn.Module):
    """An nn.Linear stored as SqueezeLLM's dense-and-sparse decomposition (see the module docstring):
    packed codes, a float16 codebook per output row, and CSR float32 outliers, all buffers so that
    lab/ops/nbytes.model_bytes counts exactly what is held. forward() dequantizes, then F.linear."""

    def __init__(self, linear: nn.Linear, bits: int, outlier_share: float, channel_weight: torch.Tensor | None):
        super().__init__()
        if bits not in (2, 3, 4):
            raise ValueError(f"bits must be 2, 3 or 4, got {bits}")
        self.in_features, self.out_features, self.bits = linear.in_features, linear.out_features, bits
        w = linear.weight.detach().float()
        outliers = outlier_mask(w, outlier_share)
        weight = channel_weights(channel_weight, w.shape[1], w.device)[None, :] * ~outliers
        # the stored (float16) codebook is what the codes must be nearest to, so assign after rounding it
        codebook = weighted_kmeans(w, weight, 2 ** bits).half()
        codes = nearest_centroid(w, codebook.float())
        values, columns, row_ptr = to_csr(w, outliers)
        self.register_buffer("codes", pack_codes(codes, bits))
        self.register_buffer("codebook", codebook)
        self.register_buffer("outlier_values", values)
        self.register_buffer("outlier_columns", columns)
        self.register_buffer("outlier_row_ptr", row_ptr)
        self.register_buffer("bias", linear.bias.detach().float().clone() if linear.bias is not None else None)

    @property
    def outliers(self) -> int:
        return self.outlier_values.numel()

    def dequantized_weight(self) -> torch.Tensor:
        """The float32 weight [out, in] this layer multiplies by: codebook entries, outliers written over them."""
        codes = unpack_codes(self.codes, self.bits, self.in_features)
        w = torch.gather(self.codebook.float(), 1, codes)
        counts = self.outlier_row_ptr.diff().long()
        rows = torch.repeat_interleave(torch.arange(self.out_features, device=w.device), counts)
        w[rows, self.outlier_columns.long()] = self.outlier_values
        return w

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bias = self.bias.to(x.dtype) if self.bias is not None else None
        return F.linear(x, self.dequantized_weight().to(x.dtype), bias)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bits={self.bits}, " \
               f"outliers={self.outliers}"
