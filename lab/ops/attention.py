"""Attention functions registered with transformers: register_attention() for the attention slot, and the
weight-returning path of score-based KV methods (H2O, TOVA, Scissorhands need the attention each key receives;
sdpa never returns it). Its eager mask (additive float) suits both of its branches, so decode steps that need
no weights still run through sdpa.
"""
from __future__ import annotations

import torch
from transformers import AttentionInterface, AttentionMaskInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import eager_mask, sdpa_mask

WEIGHTS_ATTENTION = "lab_eager_weights"


def _repeat_kv(x: torch.Tensor, groups: int) -> torch.Tensor:
    # [b, kv_heads, n, d] -> [b, kv_heads * groups, n, d]: each KV head serves `groups` query heads (GQA)
    if groups == 1:
        return x
    b, h, n, d = x.shape
    return x[:, :, None].expand(b, h, groups, n, d).reshape(b, h * groups, n, d)


def eager_with_weights(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """softmax(q k^T * scale + mask) v, returning the weights [b, heads, q, k] as well.

    Prefill (more than one query) always takes this path so the press sees full attention; a single-token
    decode step takes it only when the module asks for weights (accumulating methods), else sdpa.
    """
    if query.shape[2] == 1 and not getattr(module, "lab_want_weights", False):
        return sdpa_attention_forward(module, query, key, value, attention_mask, scaling=scaling, dropout=dropout,
                                      **kwargs)
    groups = query.shape[1] // key.shape[1]
    scale = scaling if scaling is not None else query.shape[-1] ** -0.5
    k, v = _repeat_kv(key, groups), _repeat_kv(value, groups)
    scores = torch.matmul(query, k.transpose(2, 3)) * scale
    if attention_mask is not None:
        scores = scores + attention_mask[:, :, :, : k.shape[-2]]
    weights = torch.softmax(scores, dim=-1, dtype=torch.float32).to(query.dtype)
    out = torch.matmul(weights, v).transpose(1, 2).contiguous()
    return out, weights


MASKS = {"sdpa": sdpa_mask, "eager": eager_mask}


def register_attention(name: str, function, mask: str = "sdpa") -> str:
    """Register an attention function under `name` with transformers, together with the mask it takes: with
    only the function registered, transformers silently passes mask=None. The one place the lab registers
    attention (the attention slot and the weight-returning path both come here)."""
    if mask not in MASKS:
        raise ValueError(f"attention mask {mask!r} is not known; allowed: {', '.join(MASKS)}")
    AttentionInterface.register(name, function)
    AttentionMaskInterface.register(name, MASKS[mask])
    return name


register_attention(WEIGHTS_ATTENTION, eager_with_weights, "eager")
