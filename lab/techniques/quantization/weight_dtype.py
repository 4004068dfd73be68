"""Cast the weights to a 16-bit float type: the simplest weight quantization, and the reference point
every lower-bit method is judged against."""
from __future__ import annotations

import copy
from dataclasses import dataclass

from lab.techniques.base import knob
from lab.techniques.slots import WeightsTechnique

_TORCH_DTYPES = {"bf16": "bfloat16", "fp16": "float16"}


@dataclass
class WeightDtype(WeightsTechnique):
    name = "weight_dtype"
    family = "quantization"
    title = "Weight dtype cast (bf16 / fp16)"
    summary = ("Stores weights and runs the whole model in a 16-bit float type: half the weight bytes and "
               "KV bytes of fp32; speed depends on the hardware's 16-bit kernels.")
    paper = "Kalamkar et al., A Study of BFLOAT16 for Deep Learning Training, 2019 (arXiv:1905.12322)"
    idea = ("Most trained models do not need the 32 bits of precision their weights are stored in. Casting every "
            "weight to a 16-bit float (bf16 or fp16) halves the memory of the weights and of the activations, and "
            "hardware with fast 16-bit arithmetic computes faster. bf16 keeps fp32's range but fewer digits; fp16 "
            "keeps more digits but a smaller range, so very large values can overflow. Outputs change a little, "
            "because every number is rounded.")
    paper_claim = ("Training in bfloat16 reaches the same accuracy as fp32 with unchanged hyperparameters across image "
                   "classification, speech recognition, language modelling, generative networks and recommendation "
                   "models (a training study; serving in bf16 rests on it).")
    picture = "weight_grid"
    applies_to = ("llm", "diffusion")

    dtype: str = knob("bf16", choices=("bf16", "fp16"), help="Target float type of weights and activations.")

    def transform_weights(self, model):
        # lazy: torch loads only when a technique runs; pages import every technique to build their forms
        import torch

        # deepcopy first: the cached original model is shared by every variant and must stay untouched.
        return copy.deepcopy(model).to(getattr(torch, _TORCH_DTYPES[self.dtype]))
