"""A batch of sequences of different lengths sharing one KV cache, each able to roll back on its own.

Column j of the cache holds one token of every sequence. A column a sequence does not use (prompt padding,
a draft token it rejected) is a hole: masked out of attention, skipped when counting its positions.
transformers' caches can only crop every sequence by the same amount, which is all batch 1 needs; per-sequence
acceptance in a batch needs holes (the approach of "Batch Speculative Decoding Done Right"). With batch 1
the trailing holes are cropped at once, so this reduces to the usual crop-based rollback.
"""
from __future__ import annotations

import torch
from transformers import DynamicCache


class RaggedBatch:
    def __init__(self, model, batch: int, device):
        self.model = model
        self.cache = DynamicCache(config=model.config)
        self.mask = torch.zeros(batch, 0, dtype=torch.long, device=device)  # 1 = a token, 0 = a hole
        self.length = torch.zeros(batch, dtype=torch.long, device=device)  # tokens each sequence holds
        self.device = device

    @property
    def batch(self) -> int:
        return self.mask.shape[0]

    def feed(self, tokens: torch.Tensor, valid: torch.Tensor | None = None, logits_to_keep: int = 1):
        """Append a block of tokens [batch, n] and return the model's logits for the last `logits_to_keep`
        columns (0: all). `valid` [batch, n] marks real tokens; the others are holes (left padding)."""
        if valid is None:
            valid = torch.ones_like(tokens, dtype=torch.long)
        valid = valid.long()
        # a sequence's positions count only its own tokens, so RoPE sees the same positions as at batch 1
        positions = (self.length[:, None] + valid.cumsum(dim=1) - 1).clamp(min=0)
        self.mask = torch.cat([self.mask, valid], dim=1)
        out = self.model(input_ids=tokens, attention_mask=self.mask, position_ids=positions,
                         past_key_values=self.cache, use_cache=True, logits_to_keep=logits_to_keep)
        self.length += valid.sum(dim=1)
        return out.logits

    def keep(self, n_kept: torch.Tensor, block: int) -> None:
        """Of the last `block` columns, sequence i keeps the first n_kept[i]; the rest become holes."""
        if block == 0:
            return
        tail = self.mask[:, -block:]
        keep = (torch.arange(block, device=self.device)[None] < n_kept[:, None]).long() & tail
        self.length -= (tail - keep).sum(dim=1)
        self.mask[:, -block:] = keep
        self._crop_trailing_holes()

    def _crop_trailing_holes(self) -> None:
        used = self.mask.any(dim=0).nonzero()
        end = int(used[-1]) + 1 if len(used) else 0
        drop = self.mask.shape[1] - end
        if drop:
            self.cache.crop(-drop)
            self.mask = self.mask[:, :end]

    def select(self, rows: torch.Tensor) -> None:
        """Keep only these sequences (finished ones leave the batch so they cost nothing more)."""
        self.cache.batch_select_indices(rows)
        self.mask = self.mask[rows]
        self.length = self.length[rows]
        self._crop_trailing_holes()

    def holes(self) -> int:
        return int((self.mask == 0).sum())


def left_padded(sequences: list[list[int]], device, pad: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack token lists right-aligned: [batch, longest] tokens and the valid mask (holes on the left), so
    the last column is every sequence's newest token."""
    width = max(len(s) for s in sequences)
    tokens = torch.full((len(sequences), width), pad, dtype=torch.long)
    valid = torch.zeros((len(sequences), width), dtype=torch.long)
    for i, s in enumerate(sequences):
        if s:
            tokens[i, width - len(s):] = torch.tensor(s)
            valid[i, width - len(s):] = 1
    return tokens.to(device), valid.to(device)
