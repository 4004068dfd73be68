"""How the next token is picked: greedy argmax, or temperature + nucleus sampling (shared by the plain
loop, the draft/verify loop and the drafters)."""
from __future__ import annotations

import torch

from lab.ops.settings import GenerationSettings  # noqa: F401  (imported from here by the engine and tests)


def warped_probs(logits: torch.Tensor, settings: GenerationSettings) -> torch.Tensor:
    """The distribution sampling draws from: softmax(logits / temperature), cut to the top_p nucleus."""
    probs = torch.softmax(logits.float() / settings.temperature, dim=-1)
    if settings.top_p < 1.0:
        # nucleus: keep the smallest prefix of tokens (by probability) whose mass reaches top_p
        sorted_p, order = probs.sort(dim=-1, descending=True)
        mass_before = sorted_p.cumsum(dim=-1) - sorted_p
        sorted_p = sorted_p.masked_fill(mass_before >= settings.top_p, 0.0)
        probs = torch.zeros_like(probs).scatter(-1, order, sorted_p)
        probs = probs / probs.sum(dim=-1, keepdim=True)
    return probs


def sample_next(logits: torch.Tensor, settings: GenerationSettings, generator: torch.Generator | None) -> torch.Tensor:
    """Pick the next token from last-position logits [batch, vocab]: argmax, or temperature + nucleus sampling."""
    if settings.greedy:
        return logits.argmax(dim=-1)
    return torch.multinomial(warped_probs(logits, settings), 1, generator=generator).squeeze(-1)
