"""W8A8 dynamic: int8 weights and int8 activations in every decoder Linear (and every Linear of a denoiser).

Weights are quantized once, symmetric int8 (per tensor or per output channel). Activations are quantized on the
fly at every call, either per tensor (torch.ao's dynamic Linear: fbgemm, scale from the call's min and max, 7-bit
range) or per token (lab/ops/quantize.Int8DynamicLinear: torch._int_mm). Per-tensor activations are why
SmolLM2's perplexity suffers (a few activation channels reach ~2700, so every other channel keeps only a few int8
levels); per-token scales help, and SmoothQuant (smoothquant.py), which moves the outliers into the weights,
closes the rest. torch.ao's eager quantization is deprecated in favour of torchao but is the fast per-tensor CPU
path in torch 2.13.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass

from lab.techniques.base import knob
from lab.techniques.quantization.base import QuantizedWeights, swap_linears


@dataclass
class W8A8Dynamic(QuantizedWeights):
    name = "w8a8_dynamic"
    family = "quantization"
    title = "W8A8 dynamic (int8 weights and activations)"
    summary = ("Every decoder Linear runs as an int8 GEMM: weights quantized once (symmetric int8, per tensor or "
               "per output channel), activations quantized per call from their own range. A quarter of the Linear "
               "weight bytes of fp32; fast int8 kernels on CPU; activation outliers cost quality.")
    paper = ("Jacob et al., Quantization and Training of Neural Networks for Efficient Integer-Arithmetic-Only "
             "Inference, CVPR 2018 (arXiv:1712.05877); torch.ao.quantization.quantize_dynamic")
    idea = ("Integer arithmetic is cheaper than floating point, and an int8 number takes a quarter of the memory of an "
            "fp32 one. W8A8 rounds each weight matrix to int8 once and, at every call, also rounds the incoming "
            "activations to int8 with a scale measured on the spot, so the whole matrix product runs in integers. That "
            "saves weight memory and uses fast int8 kernels. A few activation channels hold very large values "
            "(outliers), which stretch the scale and wash out the small values, so quality can drop.")
    paper_claim = ("Integer-only inference with 8-bit weights and activations improves the trade-off between accuracy "
                   "and latency over floating point, even for MobileNets, on ImageNet classification and COCO "
                   "detection, measured on popular mobile (ARM) CPUs.")
    picture = "weight_grid"

    applies_to = ("llm", "diffusion")
    cpu_kernels = "torch.ao's dynamic int8 Linear (fbgemm), torch._int_mm"

    weight_scale: str = knob("per_channel", choices=("per_tensor", "per_channel"),
                             help="One int8 scale for each weight matrix, or one per output channel (row).")
    activation_scale: str = knob("per_tensor", choices=("per_tensor", "per_token"),
                                 help="per_tensor: one activation scale per call (torch.ao / fbgemm, 7-bit "
                                      "activations); per_token: one per token (torch._int_mm), far less hurt by "
                                      "outliers.")
    lm_head: bool = knob(False, help="Quantize an LLM's LM head too (it sees every token's hidden state; off keeps "
                                     "it in the model's float type). A denoiser has none: all its Linears run int8.")
    embeddings: bool = knob(False, help="Store the token embedding as int8 too (one scale and offset per row, "
                                        "torch.ao); a tied LM head then keeps its own float copy.")

    def transform_weights(self, model):
        # lazy: torch loads only when a technique runs; pages import every technique to build their forms
        import torch
        from torch.ao.quantization import default_dynamic_qconfig, per_channel_dynamic_qconfig, quantize_dynamic

        from lab.ops.quantize import Int8DynamicLinear, decoder_linears, linear_layers

        model = copy.deepcopy(model).float()  # the loaded model is shared by every variant and must stay untouched
        layers = linear_layers(model) if self.lm_head else decoder_linears(model)
        per_channel = self.weight_scale == "per_channel"
        if self.embeddings:
            model = quantize_embeddings(model)
        if self.activation_scale == "per_token":
            swap_linears(model, layers, lambda _n, linear: Int8DynamicLinear(linear, per_channel))
            return model
        qconfig = per_channel_dynamic_qconfig if per_channel else default_dynamic_qconfig
        return quantize_dynamic(model, dict.fromkeys(layers, qconfig), dtype=torch.qint8)


def quantize_embeddings(model):
    """Every nn.Embedding as torch.ao's weight-only int8 embedding (per row, float scale and zero point)."""
    # lazy: torch loads only when a technique runs
    import torch
    from torch.ao.quantization import float_qparams_weight_only_qconfig, quantize_dynamic

    names = [n for n, m in model.named_modules() if type(m) is torch.nn.Embedding]
    return quantize_dynamic(model, dict.fromkeys(names, float_qparams_weight_only_qconfig), dtype=torch.quint8)
