"""Quality against the baseline, computed from stored outputs so it can always be recomputed."""
from __future__ import annotations

import math


def agreement(baseline: list[int], variant: list[int]) -> tuple[float, int]:
    """(match rate, first divergence) of a variant's tokens against the baseline's.

    Match rate: share of the baseline's positions where the variant has the same token (a shorter variant
    misses the rest; a longer one is penalised by counting over the longer length). First divergence: the
    first position where they differ, or the common length when one is a prefix of the other.
    """
    length = max(len(baseline), len(variant))
    if length == 0:
        return 1.0, 0
    matches = sum(1 for a, b in zip(baseline, variant) if a == b)
    first = next((i for i, (a, b) in enumerate(zip(baseline, variant)) if a != b), min(len(baseline), len(variant)))
    return matches / length, first


def perplexity(nll_sum: float, n_tokens: int) -> float:
    """exp of the mean negative log-likelihood per predicted token."""
    return math.exp(nll_sum / n_tokens) if n_tokens else float("nan")
