"""What the quantization techniques share: the decoder layout they rewrite, activation smoothing (SmoothQuant),
per-layer error and outlier numbers for the page, and the swap of nn.Linear layers for quantized ones.

Smoothing (Xiao et al., 2023): a Linear's input channel j is divided by s_j and its weight column multiplied by
s_j, so the product is unchanged while the activation outliers shrink:
    s_j = max|X_j|^alpha / max|W_:,j|^(1 - alpha)
The division is folded into the op that produces X, so it costs nothing at run time:
    q, k, v   <- input_layernorm:          RMSNorm weight g_j / s_j
    gate, up  <- post_attention_layernorm: RMSNorm weight g_j / s_j
    down      <- up_proj:                  down's input is act(gate) * up, so up's output row j / s_j
    o         <- v_proj:                   o's input (head h, dim d) is a mix of v's row (kv head of h, d), so
                                           the heads sharing one kv head share one s (max taken over them)
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from lab.errors import SpecError
from lab.techniques.slots import WeightsTechnique

LLAMA_LAYOUT = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj", "mlp.gate_proj",
                "mlp.up_proj", "mlp.down_proj", "input_layernorm", "post_attention_layernorm")
LAYOUT_MODELS = "Llama-style decoders (SmolLM2, Llama, Mistral, Qwen2)"


def decoder_layers(model) -> list:
    """The decoder layers of a Llama-style model, checked to have every module smoothing rewrites."""
    layers = getattr(getattr(model, "model", None), "layers", None)
    if layers is None:
        raise SpecError(f"{type(model).__name__} has no model.layers; smoothing supports {LAYOUT_MODELS}")
    for i, layer in enumerate(layers):
        missing = [path for path in LLAMA_LAYOUT if not _has(layer, path)]
        if missing:
            raise SpecError(f"decoder layer {i} of {type(model).__name__} lacks {', '.join(missing)}; smoothing "
                            f"supports {LAYOUT_MODELS}")
    return list(layers)


def _has(module, path: str) -> bool:
    try:
        module.get_submodule(path)
        return True
    except AttributeError:
        return False


@dataclass
class SmoothingGroup:
    """Linears that read one input, and the op whose output rows produce it (the fold target)."""
    consumers: list  # qualified Linear names
    producer: object  # a module whose `weight` rows are the input's channels
    repeat: int = 1  # input channels per producer channel block: o_proj reads each v row for `repeat` heads


def smoothing_groups(model) -> list[SmoothingGroup]:
    config = model.config
    group = config.num_attention_heads // getattr(config, "num_key_value_heads", config.num_attention_heads)
    groups = []
    for i, layer in enumerate(decoder_layers(model)):
        p = f"model.layers.{i}."
        groups += [
            SmoothingGroup([p + "self_attn.q_proj", p + "self_attn.k_proj", p + "self_attn.v_proj"],
                           layer.input_layernorm),
            SmoothingGroup([p + "mlp.gate_proj", p + "mlp.up_proj"], layer.post_attention_layernorm),
            SmoothingGroup([p + "mlp.down_proj"], layer.mlp.up_proj),
            SmoothingGroup([p + "self_attn.o_proj"], layer.self_attn.v_proj, repeat=group),
        ]
    return groups


def smooth(model, stats: dict, alpha: float) -> dict[str, float]:
    """Fold SmoothQuant's scales into `model` (modified in place) and return each Linear's input outlier after
    smoothing: max|X / s| over channels, from the calibration statistics."""
    # lazy: torch loads only when a technique runs; pages import every technique to build their forms
    import torch

    after = {}
    with torch.no_grad():
        for g in smoothing_groups(model):
            absmax = torch.stack([stats[name]["absmax"] for name in g.consumers]).amax(0)
            weights = [model.get_submodule(name).weight for name in g.consumers]
            wmax = torch.cat([w.abs().float() for w in weights]).amax(0).cpu()
            if g.repeat > 1:  # o_proj: one s per v row, so the heads sharing a kv head take their max
                head_dim = model.config.hidden_size // model.config.num_attention_heads
                absmax, wmax = (_max_over_repeats(t, g.repeat, head_dim) for t in (absmax, wmax))
            s = (absmax.clamp(min=1e-5) ** alpha / wmax.clamp(min=1e-5) ** (1 - alpha)).clamp(min=1e-5)
            s_in = _repeat_heads(s, g.repeat, head_dim) if g.repeat > 1 else s
            for name, w in zip(g.consumers, weights):
                w.mul_(s_in.to(w.dtype)[None, :])
                after[name] = float((stats[name]["absmax"] / s_in).max())
            producer = g.producer.weight
            shape = (-1,) + (1,) * (producer.dim() - 1)
            producer.div_(s.to(producer.dtype).reshape(shape))
            if getattr(g.producer, "bias", None) is not None:
                g.producer.bias.div_(s.to(producer.dtype))
    return after


def _max_over_repeats(t, repeat: int, head_dim: int):
    """[kv_heads * repeat * head_dim] in o_proj's head order -> [kv_heads * head_dim], max over each group."""
    return t.reshape(-1, repeat, head_dim).amax(1).reshape(-1)


def _repeat_heads(s, repeat: int, head_dim: int):
    return s.reshape(-1, 1, head_dim).expand(-1, repeat, head_dim).reshape(-1)


def llama_linear_shapes(shape) -> dict[str, tuple[int, int]]:
    """(rows, input columns) of each Linear kind of one Llama-style decoder layer, from a config's sizes
    (lab/llm/models.ModelShape), for checks made before the model loads."""
    attention = shape.heads * shape.head_dim
    kv = shape.kv_heads * shape.head_dim
    return {"q_proj": (attention, shape.hidden), "k_proj": (kv, shape.hidden), "v_proj": (kv, shape.hidden),
            "o_proj": (shape.hidden, attention), "gate_proj": (shape.intermediate, shape.hidden),
            "up_proj": (shape.intermediate, shape.hidden), "down_proj": (shape.hidden, shape.intermediate)}


def swap_linears(model, names, make) -> None:
    """Replace each named nn.Linear by make(name, linear)."""
    for name in names:
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent), child, make(name, model.get_submodule(name)))


def layer_row(name: str, **values) -> dict:
    """One row of a technique's per-layer numbers: decoder layer index, module kind, values."""
    parts = name.split(".")
    layer = int(parts[2]) if len(parts) > 2 and parts[1] == "layers" else -1
    return {"name": name, "layer": layer, "module": parts[-1], **values}


class QuantizedWeights(WeightsTechnique):
    """A quantization technique: reports per-layer numbers (details()) for the page, may read the calibration
    statistics (lab/ops/calibration), and when `cpu_kernels` names kernels that run on the CPU only, refuses a
    GPU run before it starts and a model on a GPU before it is rewritten."""

    cpu_kernels: ClassVar[str] = ""  # the CPU-only kernels it runs, as the refusal names them; "" = any device
    _details: dict

    def details(self) -> dict:
        return getattr(self, "_details", {})

    def check_spec(self, spec) -> None:
        if self.cpu_kernels and spec.device == "cuda":
            raise SpecError(f"technique '{self.name}': its kernels ({self.cpu_kernels}) run on the CPU only; "
                            f"allowed devices: cpu, auto (on a machine without a GPU)")

    def check_model(self, model) -> None:
        device = next(model.parameters()).device
        if self.cpu_kernels and device.type != "cpu":
            raise SpecError(f"technique '{self.name}': the model is on {device}; its kernels ({self.cpu_kernels}) "
                            f"run on the CPU only")
