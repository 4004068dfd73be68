"""Self-attention of a diffusers denoiser that reuses one sparse pattern across sampler steps (AdaSpa's
"identify once, reuse": the pattern found at a dense step holds for the steps after it).

It attaches through diffusers' own mechanism, an attention processor set on each `Attention` module
(Attention.set_processor): the processor is the whole computation of the layer, so nothing is monkey-patched.
The shipped DiT has no model-level set_attn_processor (DiTTransformer2DModel lacks AttentionMixin in diffusers
0.42), which is why processors are set module by module, here and when they are put back.

A processor computes exactly what diffusers' AttnProcessor2_0 computes for a self-attention call (the same ops in
the same order), except that between refresh steps SDPA gets a boolean mask [batch, heads, queries, keys]: the
keys each query kept at the last refresh. A dense call through it therefore equals the original bit for bit.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from diffusers.models.attention_processor import Attention, AttnProcessor2_0


def kept_keys(keep_ratio: float, keys: int) -> int:
    """k = ceil(keep_ratio * keys), at least 1 key; the rounding absorbs float noise (0.1 * 30 is 3.0000000000000004,
    which must keep 3 keys, not 4)."""
    return min(keys, max(1, math.ceil(round(keep_ratio * keys, 6))))


def attention_probs(query: torch.Tensor, key: torch.Tensor) -> torch.Tensor:
    """softmax(q k^T / sqrt(head_dim)) in fp32, [batch, heads, queries, keys]: SDPA's own scale (AttnProcessor2_0
    passes none), so these are the probabilities the dense step really used."""
    scores = query.float() @ key.float().transpose(-1, -2) * query.shape[-1] ** -0.5
    return scores.softmax(dim=-1)


def top_keys_mask(probs: torch.Tensor, k: int) -> torch.Tensor:
    """Boolean [batch, heads, queries, keys]: per query, its k keys of highest attention probability."""
    index = probs.topk(k, dim=-1).indices
    return torch.zeros(probs.shape, dtype=torch.bool, device=probs.device).scatter_(-1, index, True)


@dataclass
class PairCount:
    """Query-key pairs over one generation, all rewritten layers together: computed, and what dense attention
    would have computed; the sampler steps in which a layer attended densely."""
    computed: int = 0
    dense: int = 0
    dense_steps: set = field(default_factory=set)

    def add(self, computed: int, dense: int) -> None:
        self.computed += computed
        self.dense += dense

    def share(self) -> float | None:
        return 100.0 * self.computed / self.dense if self.dense else None


class ReusedPatternProcessor:
    """One self-attention layer's processor for one generation (its pattern never crosses generations).

    `step()` gives the sampler step being computed. A call is dense (and records a new pattern) at a refresh step
    (step % refresh_every == 0), when it holds no pattern yet, or when its pattern has another shape (a pipeline
    that changed its batch); otherwise SDPA runs with the pattern as its mask.
    """

    def __init__(self, original, keep_ratio: float, refresh_every: int, step, count: PairCount):
        self.original = original
        self.keep_ratio, self.refresh_every = keep_ratio, refresh_every
        self.step, self.count = step, count
        self.mask: torch.Tensor | None = None  # the keys each query attends to until the next refresh

    def __call__(self, attn: Attention, hidden_states: torch.Tensor, encoder_hidden_states=None,
                 attention_mask=None, temb=None, *args, **kwargs) -> torch.Tensor:
        plain = (encoder_hidden_states is None and attention_mask is None and hidden_states.ndim == 3
                 and attn.spatial_norm is None and attn.group_norm is None and not args and not kwargs)
        tokens = hidden_states.shape[1] if hidden_states.ndim == 3 else math.prod(hidden_states.shape[2:])
        dense_pairs = hidden_states.shape[0] * attn.heads * tokens * tokens
        k = kept_keys(self.keep_ratio, tokens)
        if not plain or k == tokens:
            # Full coverage (or a call shape this processor does not rewrite, counted as dense): the original
            # processor, untouched, so keep_ratio 1 equals the dense run exactly.
            self.count.add(dense_pairs, dense_pairs)
            self.count.dense_steps.add(self.step())
            return self.original(attn, hidden_states, encoder_hidden_states, attention_mask, temb, *args, **kwargs)

        # AttnProcessor2_0's self-attention path, op for op (3-D input, no mask, no spatial or group norm)
        residual = hidden_states
        batch_size = hidden_states.shape[0]
        query = attn.to_q(hidden_states)
        key = attn.to_k(hidden_states)
        value = attn.to_v(hidden_states)
        head_dim = key.shape[-1] // attn.heads
        query = query.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
        key = key.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
        value = value.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
        if attn.norm_q is not None:
            query = attn.norm_q(query)
        if attn.norm_k is not None:
            key = attn.norm_k(key)

        step = self.step()
        stale = self.mask is None or self.mask.shape != (batch_size, attn.heads, tokens, tokens)
        if stale or step % self.refresh_every == 0:
            out = F.scaled_dot_product_attention(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False)
            self.mask = top_keys_mask(attention_probs(query, key), k)  # the pattern the next steps reuse
            self.count.add(dense_pairs, dense_pairs)
            self.count.dense_steps.add(step)
        else:
            # SDPA with a boolean mask still computes every pair on CPU: the pairs a block-sparse kernel would
            # compute are what the count records
            out = F.scaled_dot_product_attention(query, key, value, attn_mask=self.mask, dropout_p=0.0,
                                                 is_causal=False)
            self.count.add(batch_size * attn.heads * tokens * k, dense_pairs)

        out = out.transpose(1, 2).reshape(batch_size, -1, attn.heads * head_dim).to(query.dtype)
        out = attn.to_out[1](attn.to_out[0](out))  # output projection, then dropout
        if attn.residual_connection:
            out = out + residual
        return out / attn.rescale_output_factor


def self_attention_layers(model: torch.nn.Module) -> tuple[list[Attention], list[str]]:
    """The self-attention layers a pattern can take over (diffusers Attention modules running AttnProcessor2_0,
    not attending to a text encoder), and why any other attention module of the model cannot be (a joint or
    rotary attention, e.g. Flux's and SD3's, or a UNet's group-normed one, which this processor does not
    compute). Cross-attention to text is left as it is: its keys are the prompt's tokens, not the image's."""
    layers, refused = [], []
    for name, module in model.named_modules():
        if not hasattr(module, "get_processor"):
            continue
        processor = module.get_processor()
        if isinstance(module, Attention) and module.is_cross_attention:
            continue
        if not isinstance(module, Attention) or type(processor) is not AttnProcessor2_0:
            refused.append(f"{name} ({type(module).__name__} with {type(processor).__name__})")
        elif module.group_norm is not None or module.spatial_norm is not None:
            # a UNet's attention over feature maps: a path the processor hands back to the original whole
            refused.append(f"{name} (attention over group-normed feature maps)")
        else:
            layers.append(module)
    return layers, refused
