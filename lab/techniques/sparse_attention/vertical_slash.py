"""Static vertical + slash attention (MInference's pattern family, chosen offline per head): from a calibration
text no workload scores, each layer's heads keep the distances and the early positions that drew the most of their
attention; the choice is stored under data/cache/sparse and reused by later runs."""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from lab.techniques.base import knob
from lab.techniques.sparse_attention.base import SparsePattern, causal_pairs

SPAN = 64  # vertical lines are chosen among the first SPAN positions: later positions are text-specific


@dataclass
class VerticalSlash(SparsePattern):
    name = "vertical_slash"
    title = "Vertical + slash attention (static, per head)"
    summary = ("Per layer and head, the distances (slash lines) and early positions (vertical lines) that drew the "
               "most attention on a held-out calibration text; every query then attends only to keys on those "
               "lines. Chosen once, stored, reused; the KV cache stays whole.")
    paper = ("Jiang et al., MInference 1.0: Accelerating Pre-filling for Long-Context LLMs via Dynamic Sparse "
             "Attention, NeurIPS 2024 (arXiv:2407.02490)")
    idea = ("Attention maps of real models often look like a few vertical lines (a handful of tokens every query "
            "attends to) and a few diagonal 'slash' lines (keys at a fixed distance, such as the previous few tokens). "
            "Vertical-slash learns on a calibration text which lines carry the most attention in each layer and head, "
            "and afterwards computes attention only on those lines. For long prompts this skips most of the attention "
            "work of the prefill. The pattern is fixed, so a head that needs something off its lines for a new text "
            "misses it.")
    paper_claim = ("MInference: up to 10x faster pre-filling of prompts of up to 1M tokens on a single A100 GPU with "
                   "accuracy maintained (LLaMA-3-8B-1M, GLM-4-9B-1M, Yi-9B-200K, Phi-3-Mini-128K and Qwen2-7B-128K); "
                   "there the lines are estimated for each input at run time, here once from calibration text.")
    picture = "attention_mask"
    needs_calibration: ClassVar[bool] = True

    slashes: int = knob(256, min=1, max=512, unit="lines",
                        help="Distances each head keeps (its own token always among them), chosen among the "
                             "calibration windows' 512 distances: farther keys are attended only on vertical lines.")
    verticals: int = knob(4, min=0, max=SPAN, unit="lines",
                          help=f"Early positions (among the first {SPAN}) every query of a head attends to.")

    def calibrate(self, model, calibration) -> None:
        # lazy: torch loads only when a technique runs
        from lab.ops.vertical_slash import HeadPatterns

        stats = calibration.attention_stats(model, SPAN)
        self._patterns = HeadPatterns.choose(stats["offsets"], stats["columns"], self.slashes, self.verticals)
        self._head_coverage = self._patterns.coverage(stats["offsets"])
        calibration.notes.append(f"{self.name}: {self.slashes} slashes and {self.verticals} verticals per head")

    def details(self) -> dict:
        patterns = getattr(self, "_patterns", None)
        if patterns is None:
            return {}
        return {"vertical_slash": {
            "coverage": [[round(float(c), 4) for c in row] for row in self._head_coverage],
            # one string per layer and head: the kept distances / positions as bits in hex
            "slashes": [[_bits(h) for h in layer] for layer in patterns.slashes],
            "verticals": [[_bits(h) for h in layer] for layer in patterns.verticals],
        }}

    def covers_all(self, queries: int, keys: int) -> bool:
        slashes = self._patterns.slashes
        return keys <= slashes.shape[-1] and bool(slashes[..., :keys].all())

    def token_mask(self, layer: int, query, key):
        return self._patterns.token_mask(layer, query.shape[2], key.shape[2]).to(query.device)

    def flex_mask(self, layer: int, query, key):
        # lazy: torch loads only when a technique runs
        from lab.ops.flex import blocks_to_mask

        queries, keys = query.shape[2], key.shape[2]
        masks = self.__dict__.setdefault("_masks", {})  # static: one per layer and shape
        if (layer, queries, keys) not in masks:
            partial, full = self._patterns.blocks(layer, queries, keys, self.block_size)
            masks[layer, queries, keys] = blocks_to_mask(partial, full, self._patterns.mask_mod(layer, keys - queries),
                                                         self.block_size, queries, keys)
        return masks[layer, queries, keys]

    def kept_share(self, length: int) -> float:
        """Percent of causal pairs kept over a `length`-token sequence, summed over layers and heads."""
        return 100.0 * float(self._patterns.kept_pairs(length).float().mean()) / causal_pairs(0, length)


def _bits(row) -> str:
    """A boolean row as hex, lowest position in the lowest bit."""
    return format(sum(1 << i for i, b in enumerate(row.tolist()) if b), "x")
