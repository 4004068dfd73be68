"""Weight-only int8 / int4: weights stored as int8 per output channel or int4 per group, activations in bf16.

Kernels: torch's own CPU weight-only GEMMs (aten::_weight_int8pack_mm, _weight_int4pack_mm_for_cpu), which never
dequantize the whole weight; lab/ops/quantize.py says why not torchao (its CPU paths are slower or absent in the
release for torch 2.13). On a CPU without fast bf16 (most Intel Xeons before Sapphire Rapids) the bf16 activations
make these layers slow: the speed column shows what this machine does.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from types import SimpleNamespace

from lab.errors import SpecError
from lab.techniques.base import knob
from lab.techniques.quantization.base import QuantizedWeights, layer_row, llama_linear_shapes, swap_linears

GROUP_SIZES = (0, 32, 64, 128, 256)  # 0 = per output channel (int8); int4 takes the int4pack kernel's groups


@dataclass
class WeightOnly(QuantizedWeights):
    name = "weight_only"
    family = "quantization"
    title = "Weight-only int8 / int4"
    summary = ("Stores every decoder Linear's weight as int8 (one scale per output channel) or int4 (a scale and "
               "zero point per group of input columns) and multiplies bf16 activations by the packed weight "
               "directly. A quarter (int8) or an eighth plus scales (int4) of the fp32 Linear bytes; the rest of the "
               "model (embeddings, norms) runs in bf16.")
    cpu_kernels = "_weight_int8pack_mm, _weight_int4pack_mm_for_cpu"
    paper = ("Dettmers et al., The case for 4-bit precision: k-bit Inference Scaling Laws, ICML 2023 "
             "(arXiv:2212.09720); kernels: torch aten _weight_int8pack_mm / _weight_int4pack_mm_for_cpu")
    idea = ("Generating text one token at a time is usually limited by how fast the weights can be read from memory, "
            "not by arithmetic. Weight-only quantization stores each weight in 8 or 4 bits with a few scales and keeps "
            "the activations in 16-bit floats; the kernel multiplies with the small weights directly. Fewer bytes to "
            "read means less memory and often faster decoding. 4 bits round more coarsely, so quality drops a little "
            "more, and the speed depends on good kernels for the hardware.")
    paper_claim = ("In over 35,000 experiments with models from 19M to 176B parameters (BLOOM, OPT, NeoX/Pythia, "
                   "GPT-2), 4-bit weights give almost universally the best zero-shot accuracy for a given total number "
                   "of model bits (a scaling result about accuracy, not speed).")
    picture = "weight_grid"

    applies_to = ("llm", "diffusion")

    bits: int = knob(8, choices=(8, 4), unit="bits", help="int8 per output channel, or int4 per group.")
    group_size: int = knob(0, choices=GROUP_SIZES, unit="columns",
                           help="Input columns sharing one int4 scale and zero point (must divide every layer's "
                                "input size); 0 = per output channel, the only choice for int8.")

    def check(self) -> None:
        if self.bits == 8 and self.group_size:
            raise SpecError(f"technique '{self.name}': int8 uses one scale per output channel (its kernel has no "
                            f"groups); allowed group_size for bits=8: 0")
        if self.bits == 4 and not self.group_size:
            raise SpecError(f"technique '{self.name}': int4 needs a group size; allowed for bits=4: "
                            f"{', '.join(map(str, GROUP_SIZES[1:]))}")

    def check_shape(self, shape) -> None:
        check_group_size(self.name, self.group_size, shape_layers(shape))

    def check_model(self, model) -> None:
        """The device, and the group size against this model's layers (the denoiser of a diffusion model too)."""
        super().check_model(model)
        # lazy: torch loads only when a technique runs; pages import every technique to build their forms
        from lab.ops.quantize import decoder_linears

        layers = decoder_linears(model)
        check_group_size(self.name, self.group_size, layers)

    def transform_weights(self, model):
        # lazy: torch loads only when a technique runs; pages import every technique to build their forms
        import torch

        from lab.ops.quantize import WeightOnlyLinear, decoder_linears, fake_quantize, relative_error

        model = copy.deepcopy(model).float()  # the loaded model is shared by every variant
        names = list(decoder_linears(model))
        errors = {}
        for n in names:
            weight = model.get_submodule(n).weight
            errors[n] = relative_error(weight, fake_quantize(weight, self.bits, self.group_size))
        swap_linears(model, names, lambda _n, linear: WeightOnlyLinear(linear, self.bits, self.group_size))
        self._details = {"layers": [layer_row(n, weight_error=errors[n], bits=self.bits) for n in names]}
        return model.to(torch.bfloat16)


def shape_layers(shape) -> dict:
    """Stand-ins with in_features for the Linears of one decoder layer, from the config's sizes."""
    return {kind: SimpleNamespace(in_features=cols, out_features=rows, bias=None)
            for kind, (rows, cols) in llama_linear_shapes(shape).items()}


def check_group_size(technique: str, group_size: int, layers: dict) -> None:
    """Refuse a group size that does not divide a layer's input size, naming the sizes that would."""
    if not group_size:
        return
    for name, linear in layers.items():
        if linear.in_features % group_size:
            fits = [g for g in GROUP_SIZES[1:] if all(m.in_features % g == 0 for m in layers.values())]
            raise SpecError(f"technique '{technique}': group_size {group_size} does not divide the {linear.in_features} "
                            f"input columns of {name}; group sizes that divide every layer of this model: "
                            f"{', '.join(map(str, fits)) or 'none'}")
