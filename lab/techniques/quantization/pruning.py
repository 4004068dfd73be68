"""Weight pruning at a sparsity knob: magnitude or Wanda scores, unstructured or 2:4 semi-structured.

Scores, compared within each output row (Wanda's finding: a per-row comparison beats a per-layer one for LLMs):
    magnitude  S_ij = |W_ij|
    wanda      S_ij = |W_ij| * ||X_j||_2,  ||X_j||_2 = sqrt(sum of x_j^2 over the calibration tokens)
Patterns:
    unstructured  each row loses its floor(sparsity * in_features) lowest scores (floor, as Wanda's reference
                  code's int(); a tiny epsilon keeps 0.3 * 10 from flooring to 2 by float rounding)
    2:4           each group of 4 consecutive input weights of a row keeps its 2 highest scores (50% fixed)
Ties are broken by the lower input index being pruned first (a stable sort), so a run is reproducible.

Every decoder nn.Linear is pruned, never the LM head. On the CPU no kernel runs these shapes faster sparse, so the
zeros are written into a dense copy: a quality study, with the weight bytes unchanged. On CUDA with 2:4 the pruned
weights become torch's semi-structured sparse tensors, so the 2:4 sparse kernels run.

One simplification against the paper: Wanda's reference code feeds each decoder block the outputs of the blocks
pruned before it; here every Linear's input statistics come from one pass of the unpruned model (the stored
calibration statistics every calibrated technique shares).
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass

from lab.errors import SpecError
from lab.techniques.base import knob
from lab.techniques.quantization.base import QuantizedWeights, layer_row, llama_linear_shapes

SEMI_STRUCTURED_SPARSITY = 0.5  # 2 of every 4 weights
SEMI_STRUCTURED_DTYPES = ("float16", "bfloat16")  # what torch's 2:4 kernels take (cuSPARSELt has no float32)
# fp16/bf16 weight shapes both of torch's 2:4 backends accept (CUTLASS needs (32, 64) multiples, cuSPARSELt (16, 16))
SEMI_STRUCTURED_MULTIPLE = (32, 64)


@dataclass
class Pruning(QuantizedWeights):
    name = "pruning"
    family = "quantization"
    title = "Pruning: magnitude or Wanda, unstructured or 2:4"
    summary = ("Zeroes the lowest-scoring weights of every decoder Linear, compared within each output row: by "
               "|w| (magnitude), or by |w| times the input channel's L2 norm on held-out calibration text (Wanda). "
               "Unstructured prunes the sparsity share of each row; 2:4 keeps 2 of every 4 consecutive weights. "
               "A quality study on CPU: no CPU kernel runs these shapes faster sparse, so the pruned weights stay "
               "dense (same compute, same weight bytes). On CUDA, 2:4 weights run torch's semi-structured sparse "
               "kernel.")
    needs_calibration = True
    paper = ("Sun et al., A Simple and Effective Pruning Approach for Large Language Models (Wanda), ICLR 2024 "
             "(arXiv:2306.11695)")
    idea = ("Many weights contribute little to the output, so setting them to zero barely changes it. Magnitude "
            "pruning removes the smallest weights; Wanda multiplies each weight by how large its input usually is "
            "(measured on calibration text), so a small weight that meets large inputs survives. The 2:4 pattern keeps "
            "two of every four neighbouring weights, a shape some GPUs run about twice as fast. Without such kernels "
            "(on a CPU here) the zeros cost the same time and memory as before, and removing half the weights always "
            "costs some quality.")
    paper_claim = ("Wanda prunes LLaMA and LLaMA-2 models (7B to 70B) to 50% unstructured sparsity, and to 2:4, "
                   "without retraining or any weight update, far better than magnitude pruning and competitive with "
                   "SparseGPT, which updates the weights (a quality result).")
    picture = "pruning"

    method: str = knob("wanda", choices=("magnitude", "wanda"),
                       help="magnitude: score |w|; wanda: score |w| * ||x_j||_2, the weight times its input "
                            "channel's L2 norm over the calibration text (calibrated once, then reused).")
    pattern: str = knob("unstructured", choices=("unstructured", "2:4"),
                        help="unstructured: each output row loses its `sparsity` share of lowest scores; 2:4: "
                             "every 4 consecutive input weights of a row keep their 2 highest (sparsity 0.5 only; "
                             "runs torch's 2:4 sparse kernel on CUDA, dense on CPU).")
    sparsity: float = knob(0.5, min=0.0, max=0.95, unit="share pruned", slider=(0.0, 0.95, 0.05),
                           help="Share of each output row's weights set to zero (floor(sparsity * in_features) per "
                                "row). Pattern 2:4 fixes it at 0.5.")

    def check(self) -> None:
        if self.pattern == "2:4" and self.sparsity != SEMI_STRUCTURED_SPARSITY:
            raise SpecError(f"technique '{self.name}': pattern 2:4 keeps 2 of every 4 weights, so its sparsity is "
                            f"fixed at 0.5, got {self.sparsity}; allowed: sparsity 0.5 with 2:4, or pattern "
                            f"unstructured for any sparsity from 0.0 to 0.95")

    def check_shape(self, shape) -> None:
        if self.pattern == "2:4":
            _refuse_uneven_groups(self.name, {kind: cols for kind, (_rows, cols) in llama_linear_shapes(shape).items()})

    def check_model(self, model) -> None:
        # lazy: torch loads only when a technique runs; pages import every technique to build their forms
        from lab.ops.quantize import decoder_linears

        linears = decoder_linears(model)
        if not linears:
            raise SpecError(f"technique '{self.name}': {type(model).__name__} has no nn.Linear layer besides its "
                            f"LM head; it prunes nn.Linear weights only")
        if self.pattern != "2:4":
            return
        _refuse_uneven_groups(self.name, {name: m.in_features for name, m in linears.items()})
        weight = next(iter(linears.values())).weight
        dtype = str(weight.dtype).replace("torch.", "")
        if weight.is_cuda and dtype not in SEMI_STRUCTURED_DTYPES:
            raise SpecError(f"technique '{self.name}': pattern 2:4 on CUDA runs torch's semi-structured sparse "
                            f"kernel, which takes {' or '.join(SEMI_STRUCTURED_DTYPES)} weights; the model is "
                            f"{dtype}. Allowed: a float16/bfloat16 model on CUDA, or the CPU (dense compute)")

    def transform_weights(self, model, calibration=None):
        # lazy: torch loads only when a technique runs; pages import every technique to build their forms
        import torch

        from lab.ops.quantize import decoder_linears, relative_error

        if self.method == "wanda" and calibration is None:
            raise SpecError(f"technique '{self.name}': method wanda needs calibration text (an LLM run provides "
                            f"it); method magnitude needs none")
        model = copy.deepcopy(model)  # the loaded model is shared by every variant
        stats = calibration.input_stats(model) if self.method == "wanda" else None  # magnitude reads no inputs
        rows = []
        with torch.no_grad():
            for name, linear in decoder_linears(model).items():
                original = linear.weight.detach().clone()
                norms = stats[name]["sqsum"].sqrt() if stats is not None else None
                keep = keep_mask(prune_scores(original, norms), self.pattern, self.sparsity)
                linear.weight.mul_(keep.to(linear.weight.device, linear.weight.dtype))
                zeros = float((linear.weight == 0).float().mean())
                error = relative_error(original, linear.weight)
                kernel = self._to_sparse_kernel(linear)
                rows.append(layer_row(name, sparsity=zeros, weight_error=error, kernel=kernel))
        self._details = {"layers": rows}
        return model

    def _to_sparse_kernel(self, linear) -> str:
        """Hand a pruned 2:4 weight on CUDA to torch's semi-structured sparse kernel; what the layer runs as."""
        if self.pattern != "2:4" or not linear.weight.is_cuda:
            return "dense"  # CPU: no sparse kernel speeds these shapes up; the zeros stay in a dense copy
        rows, cols = linear.weight.shape
        if rows % SEMI_STRUCTURED_MULTIPLE[0] or cols % SEMI_STRUCTURED_MULTIPLE[1]:
            return f"dense (shape {rows}x{cols} not a multiple of {SEMI_STRUCTURED_MULTIPLE})"
        # Checked on a GPU machine only: this CPU-only project cannot run it. check_model() made sure the dtype is
        # float16/bfloat16; the mask above left exactly 2 nonzeros per group of 4, what the format stores.
        # lazy: torch loads only when a technique runs; pages import every technique to build their forms
        import torch
        from torch.sparse import to_sparse_semi_structured

        sparse = to_sparse_semi_structured(linear.weight.detach().contiguous())
        linear.weight = torch.nn.Parameter(sparse, requires_grad=False)  # F.linear now dispatches to the 2:4 kernel
        return "2:4 sparse"


def prune_scores(weight, input_norms=None):
    """Each weight's importance [rows, cols], float32: |W_ij|, times ||X_j||_2 when input norms are given (Wanda)."""
    scores = weight.detach().float().abs()
    if input_norms is not None:
        scores = scores * input_norms.to(scores.device, scores.dtype)[None, :]
    return scores


def pruned_per_row(cols: int, sparsity: float) -> int:
    """How many weights an unstructured row of `cols` loses: floor(sparsity * cols), as Wanda's reference code's
    int(); the epsilon keeps a product such as 0.3 * 10 = 2.9999999999999996 from flooring to 2."""
    return min(cols, math.floor(sparsity * cols + 1e-9))


def keep_mask(scores, pattern: str, sparsity: float):
    """Boolean [rows, cols], True where a weight stays. Within each row (unstructured) or each group of 4
    consecutive columns of a row (2:4) the lowest scores go; among equal scores the lower column goes first."""
    # lazy: torch loads only when a technique runs; pages import every technique to build their forms
    import torch

    rows, cols = scores.shape
    if pattern == "2:4":
        groups = scores.reshape(rows, cols // 4, 4)
        lowest = torch.argsort(groups, dim=-1, stable=True)[..., :2]
        keep = torch.ones_like(groups, dtype=torch.bool).scatter_(-1, lowest, False)
        return keep.reshape(rows, cols)
    lowest = torch.argsort(scores, dim=1, stable=True)[:, :pruned_per_row(cols, sparsity)]
    return torch.ones_like(scores, dtype=torch.bool).scatter_(1, lowest, False)


def _refuse_uneven_groups(technique: str, in_features: dict) -> None:
    """2:4 needs every pruned Linear's input width to split into groups of 4."""
    uneven = [f"{name} ({cols})" for name, cols in in_features.items() if cols % 4]
    if uneven:
        raise SpecError(f"technique '{technique}': pattern 2:4 groups 4 consecutive input weights, but "
                        f"{', '.join(uneven[:3])} have an input width not divisible by 4; allowed: pattern "
                        f"unstructured for this model")
