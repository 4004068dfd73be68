"""SmoothQuant W8A8: activation outliers migrated into the weights (alpha), then int8 weights and activations.

Calibration: per-channel max |x| of every Linear's input over a held-out text no workload scores, stored and
reused (lab/ops/calibration.py). The smoothing scales are folded into the RMSNorm weights, up_proj and v_proj
(lab/techniques/quantization/base.py), so a smoothed layer runs exactly as fast as an unsmoothed one. The
`float_layers` knob keeps the Linears whose int8 output error on the calibration text is largest in float:
those per-layer errors are what the page plots.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass

from lab.errors import SpecError
from lab.techniques.base import knob
from lab.techniques.quantization.base import QuantizedWeights, decoder_layers, layer_row, smooth, swap_linears


@dataclass
class SmoothQuant(QuantizedWeights):
    name = "smoothquant"
    family = "quantization"
    title = "SmoothQuant W8A8"
    summary = ("Divides each activation channel by a per-channel scale and multiplies the weight column by it "
               "(folded into the layer norms, up_proj and v_proj, so free at run time), moving the outliers "
               "from activations, which quantize badly, into weights, which quantize well; then every decoder "
               "Linear runs int8 x int8. Calibrated once on held-out text that is never scored.")
    cpu_kernels = "torch._int_mm, fbgemm"
    needs_calibration = True
    paper = ("Xiao et al., SmoothQuant: Accurate and Efficient Post-Training Quantization for Large Language "
             "Models, ICML 2023 (arXiv:2211.10438)")
    idea = ("In LLMs a few activation channels hold huge values, which makes activations hard to round to int8, while "
            "weights round easily. SmoothQuant divides each activation channel by a scale and multiplies the matching "
            "weights by the same scale: the product is unchanged, but the difficulty moves from the activations to the "
            "weights. The scales come once from calibration text and are folded into earlier layers, so they cost "
            "nothing at run time, and both weights and activations then run in int8. Moving too much makes the weights "
            "hard to round instead.")
    paper_claim = ("W8A8 with negligible accuracy loss for LLMs of up to 530B parameters (OPT-175B, BLOOM-176B, "
                   "GLM-130B, MT-NLG 530B): up to 1.56x faster with 2x less memory than fp16, serving a 530B model "
                   "within a single node of NVIDIA A100 GPUs.")
    picture = "weight_grid"

    alpha: float = knob(0.5, min=0.0, max=1.0, unit="migration",
                        help="s = max|X|^alpha / max|W|^(1 - alpha) per input channel: 1 moves all of the "
                             "activations' range into the weights, 0 equalises the weights instead (no migration "
                             "of outliers). w8a8_dynamic is W8A8 with no scaling at all.")
    activation_scale: str = knob("per_token", choices=("per_token", "per_tensor"),
                                 help="per_token: each token's activations get their own int8 scale "
                                      "(torch._int_mm); per_tensor: one scale per call (torch.ao / fbgemm, "
                                      "7-bit activations), the original SmoothQuant setting.")
    float_layers: int = knob(0, min=0, max=1000, unit="layers",
                             help="Keep this many Linears in float: those with the largest int8 output error on "
                                  "the calibration text.")

    def check_model(self, model) -> None:
        super().check_model(model)
        decoder_layers(model)  # raises with the supported layouts

    def transform_weights(self, model, calibration=None):
        # lazy: torch loads only when a technique runs; pages import every technique to build their forms
        import torch

        from lab.ops.quantize import Int8DynamicLinear, decoder_linears

        if calibration is None:
            raise SpecError(f"technique '{self.name}' needs calibration text (an LLM run provides it)")
        model = copy.deepcopy(model).float()  # the loaded model is shared by every variant
        stats = calibration.input_stats(model)
        before = {name: float(s["absmax"].max()) for name, s in stats.items()}
        after = smooth(model, stats, self.alpha)
        names = [n for n in decoder_linears(model) if n in after]
        errors = layer_errors(model, calibration, names, self.activation_scale)
        kept = set(sorted(names, key=errors.get, reverse=True)[:self.float_layers])
        quantized = [n for n in names if n not in kept]
        if self.activation_scale == "per_token":
            swap_linears(model, quantized, lambda _n, linear: Int8DynamicLinear(linear))
        else:
            # lazy: torch loads only when a technique runs
            from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic
            model = quantize_dynamic(model, {n: per_channel_dynamic_qconfig for n in quantized}, dtype=torch.qint8)
        self._details = {"layers": [layer_row(n, outlier_before=before[n], outlier_after=after[n],
                                              int8_error=errors[n], bits=32 if n in kept else 8) for n in names]}
        return model


def layer_errors(model, calibration, names: list[str], activation_scale: str) -> dict[str, float]:
    """Relative output error of each Linear run as W8A8 (int8 weights per channel, activations per
    `activation_scale`) against float, over the calibration text: ||Q(X) Q(W)^T - X W^T|| / ||X W^T||."""
    # lazy: torch loads only when a technique runs
    from lab.ops.quantize import fake_quantize, fake_quantize_activations

    wanted, sums = set(names), {}
    quantized = {name: fake_quantize(model.get_submodule(name).weight, 8) for name in names}

    def accumulate(name, module, rows):
        if name in wanted:
            exact = rows @ module.weight.float().t()
            approx = fake_quantize_activations(rows, activation_scale) @ quantized[name].t()
            err, ref = sums.get(name, (0.0, 0.0))
            sums[name] = (err + float(((approx - exact) ** 2).sum()), ref + float((exact ** 2).sum()))

    calibration.run(model, accumulate)
    return {name: (err / max(ref, 1e-30)) ** 0.5 for name, (err, ref) in sums.items()}
