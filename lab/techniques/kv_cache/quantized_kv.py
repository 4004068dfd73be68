"""Quantized KV cache: every cached key and value stored in int8 or int4 with its own scales."""
from __future__ import annotations

from dataclasses import dataclass

from lab.techniques.base import knob
from lab.techniques.kv_cache.quant import dequantize, quantize
from lab.techniques.slots import CacheTechnique


def make_quantized_layer_class():
    """Build the layer class lazily: it subclasses a transformers class, which imports torch."""
    # lazy: torch loads only when a technique runs; pages import every technique to build their forms
    import torch
    from transformers.cache_utils import DynamicLayer


    class QuantizedKVLayer(DynamicLayer):
        """Holds quantized blocks plus a full-precision residual of the newest tokens.

        per_token: each token's head_dim vector shares one scale, so a token is quantized as it arrives.
        per_channel (KIVI-style for keys): each channel shares a scale across a block of `group` tokens, so
        tokens wait in the residual until a block is full. The prefill attends to its own full-precision keys and
        values; later steps get the dequantized cache, as transformers' QuantizedCache does: the saving is in what
        is held between steps.
        """

        def __init__(self, bits: int, axis: str, group: int):
            super().__init__()
            self.bits, self.axis, self.group = bits, axis, group
            self.q_keys = self.q_values = None  # (codes, scale, low) concatenated along the token axis

        def _append(self, held, x):
            dim = -1 if self.axis == "per_token" else -2
            if self.axis == "per_channel":  # one scale per channel per block of `group` tokens
                b, h, n, d = x.shape
                x = x.view(b, h, n // self.group, self.group, d)
            new = quantize(x, self.bits, dim)
            if self.axis == "per_channel":
                new = (new[0].flatten(2, 3), new[1].flatten(2, 3), new[2].flatten(2, 3))
            if held is None:
                return new
            return tuple(torch.cat([a, b], dim=2) for a, b in zip(held, new))

        def _restore(self, held):
            if held is None:
                return None
            codes, scale, low = held
            if self.axis == "per_channel":
                b, h, n, d = codes.shape
                codes = codes.view(b, h, n // self.group, self.group, d)
                return dequantize(codes, scale.unsqueeze(3), low.unsqueeze(3), self.bits).flatten(2, 3)
            return dequantize(codes, scale, low, self.bits)

        def update(self, key_states, value_states, *args, **kwargs):
            if not self.is_initialized:
                self.lazy_initialization(key_states, value_states)
            prefill = self.q_keys is None and self.keys.numel() == 0
            self.keys = torch.cat([self.keys, key_states], dim=-2)  # the full-precision residual
            self.values = torch.cat([self.values, value_states], dim=-2)
            ready = self.keys.shape[-2] if self.axis == "per_token" else \
                self.keys.shape[-2] // self.group * self.group
            if ready:
                self.q_keys = self._append(self.q_keys, self.keys[..., :ready, :])
                self.q_values = self._append(self.q_values, self.values[..., :ready, :])
                self.keys, self.values = self.keys[..., ready:, :], self.values[..., ready:, :]
            if prefill:  # the prefill attends in full precision, as in KIVI and transformers' QuantizedCache
                return key_states, value_states
            keys = [t for t in (self._restore(self.q_keys), self.keys) if t is not None]
            values = [t for t in (self._restore(self.q_values), self.values) if t is not None]
            return torch.cat(keys, dim=-2), torch.cat(values, dim=-2)

        def get_seq_length(self) -> int:
            quantized = 0 if self.q_keys is None else self.q_keys[0].shape[-2]
            return quantized + (self.keys.shape[-2] if self.is_initialized else 0)

    return QuantizedKVLayer


@dataclass
class QuantizedKV(CacheTechnique):
    name = "quantized_kv"
    family = "kv_cache"
    title = "Quantized KV cache (int8 / int4)"
    summary = ("Stores every cached key and value in 8 or 4 bits with min-max scales, per token or per channel "
               "(KIVI style for keys; here values too), with a full-precision residual until a block of tokens is "
               "complete. The prefill attends in full precision; what is held is quantized.")
    paper = ("Liu et al., KIVI: A Tuning-Free Asymmetric 2bit Quantization for KV Cache, ICML 2024 "
             "(arXiv:2402.02750)")
    idea = ("The KV cache holds numbers that do not need 16 or 32 bits each. This technique stores every cached key "
            "and value in 8 or 4 bits, with a scale and offset per token or per channel, and keeps the newest tokens "
            "in full precision until a block of them is complete. The same text then takes a half to an eighth of the "
            "cache memory, so longer texts or more sequences fit. Every step pays to quantize new tokens and "
            "dequantize the cache, and the rounding adds a little noise to attention.")
    paper_claim = ("KIVI (2-bit keys per channel, values per token) keeps almost the same quality while using 2.6x "
                   "less peak memory, model weights included; the up to 4x larger batches this allows give 2.35x to "
                   "3.47x the throughput (Llama-2, Falcon and Mistral models on a GPU).")
    picture = "kv_quantization"

    bits: int = knob(8, choices=(8, 4), unit="bits", help="Bits per cached value.")
    axis: str = knob("per_token", choices=("per_token", "per_channel"),
                     help="Values that share one scale: a token's head vector, or a channel across a block.")
    group_size: int = knob(32, min=2, max=1024, unit="tokens",
                           help="Tokens per block for per_channel scales (the residual kept in full precision).")

    def make_cache(self, model):
        # lazy: torch loads only when a technique runs; pages import every technique to build their forms
        from transformers import DynamicCache
        layer_class = make_quantized_layer_class()
        cache = DynamicCache(config=model.config)
        cache.layers = [layer_class(self.bits, self.axis, self.group_size) for _ in cache.layers]
        return cache
