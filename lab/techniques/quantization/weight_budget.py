"""A weight-memory budget: bits per layer (4, 8 or 16) chosen from a measured sensitivity so the model fits.

Sensitivity of a layer at b bits is the output error its quantized weight causes on the calibration text, in the
diagonal-Hessian form of the mixed-precision papers (HAWQ, EMQ): the Gauss-Newton Hessian of ||X W^T||^2 is X^T X,
whose diagonal is each input channel's sum of x^2 over the calibration tokens, so
    error_b(layer) = sum_ij sqsum_j * (Q_b(W) - W)_ij^2
Allocation (BitStack's idea of meeting any memory budget, done greedily): every layer starts at 4 bits, then the
upgrade (4 -> 8 or 8 -> 16) with the largest error removed per extra byte is taken while it fits the budget.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass

from lab.errors import SpecError
from lab.techniques.base import knob
from lab.techniques.quantization.base import QuantizedWeights, layer_row, swap_linears
from lab.techniques.quantization.weight_only import check_group_size, shape_layers

BITS = (4, 8, 16)
MB = 2 ** 20  # as everywhere in the lab (lab/bench/measure.MB)


@dataclass
class WeightBudget(QuantizedWeights):
    name = "weight_budget"
    family = "quantization"
    title = "Weight budget (mixed 4 / 8 / 16-bit)"
    summary = ("You give the weights a memory budget in MB; each decoder Linear gets 4, 8 or 16 bits, chosen from "
               "its measured sensitivity (output error on held-out calibration text per byte saved) so the model "
               "fits the budget. The page shows the bits chosen per layer.")
    cpu_kernels = "_weight_int8pack_mm, _weight_int4pack_mm_for_cpu"
    needs_calibration = True
    paper = ("Wang et al., BitStack: Any-Size Compression of Large Language Models in Variable Memory "
             "Environments, ICLR 2025 (arXiv:2410.23918); Dong et al., HAWQ: Hessian AWare Quantization, ICCV 2019")
    idea = ("Not every layer suffers equally from rounding: some go down to 4 bits almost for free, others lose a lot. "
            "Given a memory budget, this technique measures on calibration text how much each layer's output changes "
            "at 4 and 8 bits, and spends the bits where they matter most so the whole model fits the budget. You get "
            "the best quality the budget allows and trade memory for quality with one number. The calibration takes "
            "time once, and mixed layers need a kernel for each bit width.")
    paper_claim = ("Stated qualitatively: BitStack builds one compressed model whose size can be set to any memory "
                   "budget at run time, and matches or beats strong quantization baselines at the same size, "
                   "especially at extreme compression (Llama 2, Llama 3 and Llama 3.1 models).")
    picture = "weight_grid"

    budget_mb: float = knob(180.0, min=0.01, max=1_000_000.0, unit="MB", slider=(50.0, 2000.0, 5.0),
                            help="Bytes all weights may take (MB = 2^20 bytes), embeddings and norms included. "
                                 "SmolLM2-135M takes 116 MB at 4 bits (group 64) and 257 MB in bf16.")
    group_size: int = knob(64, choices=(32, 64, 128, 256), unit="columns",
                           help="Input columns sharing one scale and zero point in the 4-bit layers. 32 is the "
                                "default model's own grid (its weights come from a Q4_1 file), where 4 bits lose "
                                "nothing and every budget picks 4 bits.")

    def check_shape(self, shape) -> None:
        """Before loading: the group size, and a budget below a lower bound of the smallest size (every Linear at
        4 bits plus the embedding in bf16; check_model() adds the norms and an untied head once loaded)."""
        layers = shape_layers(shape)
        check_group_size(self.name, self.group_size, layers)
        per_layer = sum(layer_bytes(m, 4, self.group_size) for m in layers.values())
        self._refuse_below(shape.layers * per_layer + 2 * shape.vocab * shape.hidden, "at least ")

    def check_model(self, model) -> None:
        super().check_model(model)
        # lazy: torch loads only when a technique runs; pages import every technique to build their forms
        from lab.ops.quantize import decoder_linears

        layers = decoder_linears(model)
        check_group_size(self.name, self.group_size, layers)
        self._refuse_below(fixed_bytes(model, layers) + sum(layer_bytes(m, 4, self.group_size) for m in layers.values()))

    def _refuse_below(self, smallest: int, bound: str = "") -> None:
        if self.budget_mb * MB < smallest:
            raise SpecError(f"technique '{self.name}': budget_mb {self.budget_mb:g} is below the smallest this model "
                            f"can take ({bound}{smallest / MB:.1f} MB: every Linear at 4 bits, group "
                            f"{self.group_size}, the rest in bf16); allowed: budget_mb >= {smallest / MB:.1f}")

    def transform_weights(self, model, calibration=None):
        # lazy: torch loads only when a technique runs; pages import every technique to build their forms
        import torch

        from lab.ops.quantize import WeightOnlyLinear, decoder_linears

        if calibration is None:
            raise SpecError(f"technique '{self.name}' needs calibration text (an LLM run provides it)")
        model = copy.deepcopy(model).float()  # the loaded model is shared by every variant
        layers = decoder_linears(model)
        stats = calibration.input_stats(model)
        errors = {n: sensitivities(m.weight, stats[n]["sqsum"], self.group_size) for n, m in layers.items()}
        sizes = {n: {b: layer_bytes(m, b, self.group_size) for b in BITS} for n, m in layers.items()}
        bits = allocate(errors, sizes, self.budget_mb * MB - fixed_bytes(model, layers))
        for n, b in bits.items():
            if b < 16:
                swap_linears(model, [n], lambda _n, linear, b=b: WeightOnlyLinear(linear, b, self.group_size))
        self._details = {"layers": [layer_row(n, bits=bits[n], sensitivity=errors[n][bits[n]]) for n in layers],
                         "budget_mb": self.budget_mb}
        return model.to(torch.bfloat16)


def sensitivities(weight, sqsum, group_size: int) -> dict[int, float]:
    """error_b = sum_ij sqsum_j (Q_b(W) - W)_ij^2 for each bit width (see the module docstring)."""
    # lazy: torch loads only when a technique runs
    from lab.ops.quantize import fake_quantize

    w = weight.detach().float()
    return {b: float((((fake_quantize(w, b, group_size) - w) ** 2) * sqsum[None, :]).sum()) for b in BITS}


def layer_bytes(linear, bits: int, group_size: int) -> int:
    """Bytes the layer holds at `bits` (lab/ops/quantize.WeightOnlyLinear's buffers; 16 = bf16 weight)."""
    rows, cols = linear.out_features, linear.in_features
    bias = 2 * rows if linear.bias is not None else 0
    if bits == 16:
        return 2 * rows * cols + bias
    if bits == 8:
        return rows * cols + 2 * rows + bias  # int8 codes, a bf16 scale per row
    return rows * cols // 2 + 2 * 2 * rows * (cols // group_size) + bias  # packed codes, bf16 scale + zero per group


def fixed_bytes(model, layers: dict) -> int:
    """Bytes of everything the budget does not quantize, in bf16: the model's tensors minus the Linears'."""
    seen, total = set(), 0
    linear_weights = {id(p) for m in layers.values() for p in m.parameters()}
    for t in list(model.parameters()) + list(model.buffers()):
        if t.data_ptr() not in seen and id(t) not in linear_weights:
            seen.add(t.data_ptr())
            total += t.numel() * 2
    return total


def allocate(errors: dict, sizes: dict, budget: float) -> dict[str, int]:
    """Greedy: all layers at 4 bits, then take the upgrade with the most error removed per extra byte while the
    total fits `budget` bytes."""
    bits = {n: 4 for n in errors}
    used = sum(sizes[n][4] for n in errors)
    while True:
        best, best_gain = None, 0.0
        for n, b in bits.items():
            if b == 16:
                continue
            up = BITS[BITS.index(b) + 1]
            extra = sizes[n][up] - sizes[n][b]
            gain = (errors[n][b] - errors[n][up]) / extra
            if used + extra <= budget and gain > best_gain:
                best, best_gain = (n, up, extra), gain
        if best is None:
            return bits
        n, up, extra = best
        bits[n], used = up, used + extra
