"""The measurement protocol, written once for every runner (LLM generation, perplexity, diffusion).

Every variant is prepared first, then warmed up on the first unit of work, then the repeats run with the
variants interleaved: within each repeat and unit (a batch of items, a text window, a batch of images) every
variant runs once, in an order that rotates (A B C, B C A, ...) so no variant always runs first and drift in
the machine hits all of them alike. After each such group the caller pairs every variant with the baseline
(variant 0) on the same unit in the same repeat, adjacent in time.
"""
from __future__ import annotations

from typing import Callable


def rotation(n_variants: int, shift: int) -> list[int]:
    """The order the variants run in for one group: 0..n-1 rotated left by `shift`."""
    return [(k + shift) % n_variants for k in range(n_variants)]


def run_interleaved(n_variants: int, n_units: int, repeats: int, warmup: int,
                    run: Callable[[int, int, int | None], object],
                    pair: Callable[[int, int, dict], None],
                    progress: Callable[[float, str], None], label: Callable[[int], str], unit: str = "batch",
                    warmup_units: int = 1) -> None:
    """Warm up, then run the interleaved repeats.

    run(variant, unit, repeat) runs one unit of work through one variant and returns what it measured;
    repeat is None during the warm-up, which runs units 0 .. warmup_units - 1 (the first only, unless a kernel
    compiled per shape must meet every unit's shape before timing). After every variant ran unit u of repeat r,
    pair(r, u, {variant: outcome}) records the paired ratios. progress(fraction, message) is told before
    each run, fraction in [0, 1)."""
    warm_units = range(min(max(warmup_units, 1), n_units) if warmup else 0)
    total = (warmup * len(warm_units) + repeats * n_units) * n_variants
    done = 0
    for w in range(warmup):
        for k in range(n_variants):
            for u in warm_units:
                progress(done / total, f"warm-up {w + 1}: {label(k)}" + (f", {unit} {u + 1}" if u else ""))
                run(k, u, None)
                done += 1
    for r in range(repeats):
        for u in range(n_units):
            outcomes = {}
            for k in rotation(n_variants, r + u):
                progress(done / total, f"repeat {r + 1}/{repeats}, {unit} {u + 1}/{n_units}: {label(k)}")
                outcomes[k] = run(k, u, r)
                done += 1
            pair(r, u, outcomes)


def scaled(progress: Callable[[float, str], None], start: float, span: float) -> Callable[[float, str], None]:
    """A progress callback that maps [0, 1] onto [start, start + span] of the whole job."""
    return lambda fraction, message: progress(start + span * fraction, message)
