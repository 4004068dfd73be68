"""SqueezeLLM-style dense-and-sparse quantization: per output row a k-means codebook of 2**bits values, weighted by
each input channel's sensitivity, plus the largest-magnitude weights kept exactly in a sparse CSR matrix.

Calibration: the per-channel sum of x^2 of every Linear's input over the held-out text (lab/ops/calibration.py)
stands in for SqueezeLLM's Fisher information as the k-means weight. The maths and the layer are in
lab/ops/codebook.py. The outlier share is taken over the whole matrix (one threshold per Linear, as in the paper),
so a row may hold several outliers or none. There is no fast kernel here: every call dequantizes the weight, so
this is a memory and quality study, and the speed column shows the cost.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass

from lab.errors import SpecError
from lab.techniques.base import knob
from lab.techniques.quantization.base import QuantizedWeights, layer_row, swap_linears


@dataclass
class DenseSparse(QuantizedWeights):
    name = "dense_sparse"
    family = "quantization"
    title = "Dense-and-sparse k-means (SqueezeLLM)"
    summary = ("Keeps the largest-magnitude weights of every decoder Linear (0.45% by default) exactly, in a sparse "
               "float32 matrix, and replaces every other weight by one of 2^bits values of its output row's own "
               "codebook, found by k-means weighted by each input channel's sum of x^2 on held-out calibration "
               "text. A memory and quality study on CPU: compute dequantizes, the speed column shows the cost "
               "(every call rebuilds the float weight, so it runs slower than fp32).")
    needs_calibration = True
    paper = ("Kim et al., SqueezeLLM: Dense-and-Sparse Quantization, ICML 2024 (arXiv:2306.07629)")
    idea = ("Weights are not spread evenly: most sit near zero and a few are huge. SqueezeLLM keeps the few largest "
            "weights exactly in a small sparse matrix and stores every other weight as a 3- or 4-bit index into a "
            "per-row table of values found by clustering, with the table's values placed where the most important "
            "weights are. That fits the weights' real distribution better than an even grid, so quality holds up at "
            "very few bits. Here every call rebuilds the float weights, so it shows the memory and quality side, not "
            "speed.")
    paper_claim = ("3-bit LLaMA models close the perplexity gap to fp16 up to 2.1x better than other methods at the "
                   "same memory, and run up to 2.3x faster than the fp16 baseline on an NVIDIA A6000 GPU.")
    picture = "weight_grid"

    bits: int = knob(4, choices=(3, 4), unit="bits",
                     help="Bits per code: each output row gets a codebook of 2^bits float16 values.")
    outlier_percent: float = knob(0.45, min=0.0, max=10.0, unit="% of weights",
                                  help="Share of each Linear's weights, the largest |w| of the whole matrix, kept "
                                       "exactly in float32 (sparse CSR, 6 bytes each plus row pointers).")
    sensitivity: bool = knob(True, help="Weight k-means by each input channel's sum of x^2 on the calibration text "
                                        "(SqueezeLLM's sensitivity); off = plain k-means.")

    def check_model(self, model) -> None:
        # lazy: torch loads only when a technique runs; pages import every technique to build their forms
        from lab.ops.quantize import decoder_linears

        if not decoder_linears(model):
            raise SpecError(f"technique '{self.name}': {type(model).__name__} has no nn.Linear layer besides its "
                            f"LM head; it quantizes nn.Linear weights only (Llama-style decoders)")

    def transform_weights(self, model, calibration=None):
        # lazy: torch loads only when a technique runs; pages import every technique to build their forms
        from lab.ops.codebook import DenseSparseLinear
        from lab.ops.quantize import decoder_linears

        if calibration is None:
            raise SpecError(f"technique '{self.name}' needs calibration text (an LLM run provides it)")
        model = copy.deepcopy(model).float()  # the loaded model is shared by every variant
        stats = calibration.input_stats(model)
        share, rows = self.outlier_percent / 100, []

        def make(name, linear):  # the error is read here, while the float weight is still at hand
            layer = DenseSparseLinear(linear, self.bits, share, stats[name]["sqsum"] if self.sensitivity else None)
            rows.append(layer_numbers(name, linear.weight.detach(), layer))
            return layer

        swap_linears(model, list(decoder_linears(model)), make)
        self._details = {"layers": rows}
        return model


def layer_numbers(name: str, original, layer) -> dict:
    """One layer's row for the page: relative weight error, bits per code, outliers kept, and the bits each
    weight really takes (codes, codebook and sparse part together; the bias left out)."""
    # lazy: torch loads only when a technique runs; pages import every technique to build their forms
    from lab.ops.quantize import relative_error

    held = sum(b.numel() * b.element_size() for n, b in layer.named_buffers() if n != "bias")
    return layer_row(name, weight_error=relative_error(original, layer.dequantized_weight()), bits=layer.bits,
                     outliers=layer.outliers, bits_per_weight=8 * held / original.numel())
