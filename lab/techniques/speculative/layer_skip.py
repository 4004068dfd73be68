"""Self-speculative decoding: the target drafts with a subset of its own layers and verifies with all."""
from __future__ import annotations

from dataclasses import dataclass

from lab.techniques.base import knob
from lab.techniques.speculative.base import DraftVerify


def kept_layers(n_total: int, n_keep: int, pattern: str) -> list[int]:
    """Which layers the draft runs: the first n_keep, or n_keep spread evenly with the first and last kept."""
    n_keep = min(n_keep, n_total)
    if pattern == "first" or n_keep == 1:
        return list(range(n_keep))
    step = (n_total - 1) / (n_keep - 1)
    return sorted({round(i * step) for i in range(n_keep)})


@dataclass
class LayerSkip(DraftVerify):
    name = "layer_skip"
    title = "Self-speculative layer skipping"
    summary = ("The draft is the target itself with some decoder layers skipped (no extra weights); the full "
               "model verifies. The draft keeps its own KV cache for the layers it runs.")
    paper = ("Zhang et al., Draft & Verify: Lossless LLM Acceleration via Self-Speculative Decoding, ACL 2024 "
             "(arXiv:2309.08168); Elhoushi et al., LayerSkip, ACL 2024 (arXiv:2404.16710)")
    idea = ("Self-speculative decoding needs no second model: the draft is the same model running only some of its "
            "layers, which is faster and already agrees with it more often than a stranger would. The full model then "
            "checks the drafted tokens in one pass and keeps those it agrees with, so greedy output is unchanged. "
            "There are no extra weights to load, only a small extra cache for the draft's layers. Skipping too many "
            "layers makes the guesses poor and the verification wasted.")
    paper_claim = ("Draft & Verify: up to 1.99x faster generation with output identical to the full model, no extra "
                   "training and no extra memory (LLaMA-2 models and their fine-tuned variants).")
    picture = "draft_verify"
    hf_generate_counterpart = "assistant_early_exit"

    k: int = knob(3, min=1, max=16, unit="tokens", help="Draft tokens proposed per target forward.")
    draft_layers: int = knob(24, min=1, max=256, unit="layers", help="Decoder layers the draft runs.")
    pattern: str = knob("spread", choices=("spread", "first"),
                        help="spread: evenly spaced, first and last kept; first: the first draft_layers (early exit).")

    def make_drafter(self, engine):
        # lazy: lab.ops.drafting imports torch; pages import this module
        from lab.ops.drafting import ModelDrafter, decoder_layers, layer_subset
        n_total = len(decoder_layers(engine.model))
        return ModelDrafter(layer_subset(engine.model, kept_layers(n_total, self.draft_layers, self.pattern)))

    def hf_generate_refusal(self) -> str | None:
        if self.pattern != "first" and self.draft_layers > 1:
            return ("transformers' counterpart, assistant_early_exit, drafts with the target's first layers (an "
                    f"early exit), not layers spread through it; set pattern = 'first' (found '{self.pattern}')")
        return None

    def hf_generate_options(self, engine) -> dict:
        """transformers' assistant_early_exit = draft_layers: the target drafts with its first draft_layers
        layers, its final norm and LM head (as pattern 'first' does here), in a cache of its own (see
        DraftVerify._assistant_schedule for k and adaptive)."""
        self._check_hf_generate()
        # lazy: lab.ops.drafting imports torch; pages import this module
        from lab.ops.drafting import decoder_layers
        n_total = len(decoder_layers(engine.model))
        return {"assistant_early_exit": min(self.draft_layers, n_total), **self._assistant_schedule()}
