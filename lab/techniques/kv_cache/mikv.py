"""MiKV ("No Token Left Behind"): the tokens an eviction method would drop are kept in low precision
instead, so a wrong eviction costs accuracy a little rather than all at once."""
from __future__ import annotations

from dataclasses import dataclass

from lab.errors import SpecError
from lab.techniques.base import knob
from lab.techniques.kv_cache.h2o import H2O
from lab.techniques.kv_cache.quant import dequantize, quantize


def make_mixed_layer_class():
    # lazy: torch loads only when a technique runs; pages import every technique to build their forms
    import torch
    from transformers.cache_utils import DynamicLayer


    class MixedPrecisionLayer(DynamicLayer):
        """Important tokens in `keys`/`values` (full precision); the rest as per-token int codes."""

        def __init__(self, bits: int):
            super().__init__()
            self.bits = bits
            self.low_keys = self.low_values = None

        def demote(self, keys, values):
            self.low_keys = quantize(keys, self.bits, dim=-1)
            self.low_values = quantize(values, self.bits, dim=-1)

        def update(self, key_states, value_states, *args, **kwargs):
            keys, values = super().update(key_states, value_states)
            if self.low_keys is None:
                return keys, values
            # attention is order-free over keys (RoPE is already in them), so low-precision ones go first
            return (torch.cat([dequantize(*self.low_keys, self.bits), keys], dim=-2),
                    torch.cat([dequantize(*self.low_values, self.bits), values], dim=-2))

        def get_seq_length(self) -> int:
            low = 0 if self.low_keys is None else self.low_keys[0].shape[-2]
            return low + super().get_seq_length()

    return MixedPrecisionLayer


@dataclass
class MiKV(H2O):  # H2O's ranking (accumulated attention + recent window); demotes instead of evicting
    name = "mikv"
    title = "MiKV (mixed-precision KV instead of eviction)"
    summary = ("Ranks tokens by accumulated attention (as H2O); keeps the top share in full precision and "
               "the rest in low-bit integers instead of evicting them. Compresses after the prefill.")
    paper = ("Yang et al., No Token Left Behind: Reliable KV Cache Compression via Importance-Aware Mixed "
             "Precision Quantization, 2024 (arXiv:2402.18096)")
    idea = ("Eviction bets that a dropped token will never be needed again; when the bet is wrong, the model loses a "
            "fact or starts to ramble. MiKV ranks tokens by accumulated attention as H2O does, but instead of evicting "
            "the unimportant ones it keeps them in low precision (4 or 8 bits) and the important ones in full "
            "precision. The cache shrinks much as it would with eviction, while every token can still be attended to. "
            "It costs the quantize and dequantize work, and the demoted tokens are slightly blurred.")
    paper_claim = ("Stated qualitatively: keeping the tokens eviction would drop in low precision instead gives a "
                   "better trade-off between cache compression and generation quality than eviction alone, preserving "
                   "context details eviction loses (open 7B-class chat LLMs such as Llama-2; a quality result, with no "
                   "speed claim).")
    picture = "kv_quantization"
    needs_attention_weights = True

    low_bits: int = knob(4, choices=(8, 4), unit="bits", help="Bits for the demoted (less important) tokens.")

    def __post_init__(self):
        if self.compress_every:
            raise SpecError("technique 'mikv', knob 'compress_every': only 0 (compress after the prefill) is "
                            "supported; allowed: 0")

    def make_cache(self, model):
        # lazy: torch loads only when a technique runs; pages import every technique to build their forms
        from transformers import DynamicCache
        layer_class = make_mixed_layer_class()
        cache = DynamicCache(config=model.config)
        cache.layers = [layer_class(self.low_bits) for _ in cache.layers]
        return cache

    def evict(self, layer, state, keep):
        """Demote instead of drop: the complement of `keep` goes to low precision."""
        # lazy: torch loads only when a technique runs; pages import every technique to build their forms
        import torch
        b, h, n, d = layer.keys.shape
        mask = torch.ones(b, h, n, dtype=torch.bool, device=keep.device).scatter(2, keep, False)
        drop = mask.nonzero()[:, 2].view(b, h, -1)
        idx = drop.unsqueeze(-1).expand(-1, -1, -1, d)
        layer.demote(layer.keys.gather(2, idx), layer.values.gather(2, idx))
        state["demoted_positions"] = state["positions"].gather(2, drop)
