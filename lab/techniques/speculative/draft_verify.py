"""The knobs every speculative technique shares, and its place in the engine (the decoding slot)."""
from __future__ import annotations

from dataclasses import dataclass

from lab.techniques.base import Technique, knob


@dataclass
class DraftVerify(Technique):
    """Base of the drafts: subclasses only say how to make their drafter (make_drafter)."""

    family = "speculative"
    slot = "decoding"

    k: int = knob(4, min=1, max=16, unit="tokens", help="Draft tokens proposed per target forward (the start "
                                                          "value when adaptive).")
    adaptive: bool = knob(False, help="Grow k by 1 after a round where every draft was accepted, shrink it by 1 "
                                      "after any rejection (transformers' heuristic schedule).")
    k_max: int = knob(8, min=1, max=32, unit="tokens", help="Upper bound of k when adaptive.")

    def conflicts_with(self, other) -> str | None:
        if other.slot == "cache":
            return ("the draft/verify loop rolls the KV cache back after each rejection, which the compressed "
                    "caches do not support")
        return None

    def make_drafter(self, engine):
        raise NotImplementedError

    def decode_batch(self, engine, prompts: list[list[int]], settings) -> list:
        from lab.engine.speculative import AdaptiveK, speculative_generate
        schedule = AdaptiveK(self.k, self.adaptive, max(self.k_max, self.k))
        return speculative_generate(engine, self.make_drafter(engine), prompts, settings, schedule)
