"""The knobs every speculative technique shares, and its place in the engine (the decoding slot)."""
from __future__ import annotations

from dataclasses import dataclass

from lab.errors import SpecError
from lab.techniques.base import knob, metric
from lab.techniques.slots import DecodingTechnique


@dataclass
class DraftVerify(DecodingTechnique):
    """Base of the drafts: subclasses only say how to make their drafter (make_drafter)."""

    metrics = (
        metric("draft_kv_mb", "Draft KV cache", "MB", "Speculative decoding: bytes of the draft model's own KV "
               "cache at the end of a generation, read from its tensors (prompt lookup keeps none).", False),
        metric("acceptance_rate", "Acceptance", "%", "Speculative decoding: accepted draft tokens divided by "
               "proposed draft tokens.", True),
        metric("mean_accepted", "Accepted per round", "tok", "Speculative decoding: draft tokens accepted per "
               "draft/verify round (each round also yields one token of the target's own).", True),
        metric("tokens_per_forward", "Tokens per target forward", "tok", "New tokens divided by target forwards "
               "(prefill included); plain decoding makes exactly 1.", True),
        metric("draft_ms", "Draft time", "ms", "Speculative decoding: time spent drafting per generation (the "
               "draft model's prefill included), in ms.", False),
        metric("verify_ms", "Verify time", "ms", "Speculative decoding: time of the target's verification "
               "forwards per generation (prefill excluded), in ms.", False),
    )

    family = "speculative"

    k: int = knob(4, min=1, max=16, unit="tokens", help="Draft tokens proposed per target forward (the start "
                                                          "value when adaptive).")
    adaptive: bool = knob(False, help="Choose k each round (up to k_max) for the most expected tokens per second, "
                                      "from the acceptance per draft position and the round times measured so far "
                                      "(lab/llm/speculative.py AdaptiveK).")
    k_max: int = knob(8, min=1, max=32, unit="tokens", help="Upper bound of k when adaptive.")

    def conflicts_with(self, other) -> str | None:
        if other.slot == "cache":
            return ("the draft/verify loop rolls the KV cache back after each rejection, which the compressed "
                    "caches do not support")
        return None

    def make_drafter(self, engine):
        raise NotImplementedError

    # --- engine 'hf_generate': transformers' assisted generation -------------------------------------------
    def _check_hf_generate(self) -> None:
        reason = self.hf_generate_refusal()
        if reason:
            raise SpecError(f"technique '{self.name}' with engine 'hf_generate': {reason}")

    def _assistant_schedule(self) -> dict:
        """transformers' options for a model assistant: k drafts every round. transformers 5.x reads these three
        from the assistant's own generation_config, not from generate()'s arguments, so Engine.generate_hf sets
        them there for the call. The confidence threshold is 0: at its default (0.4) the assistant stops drafting
        early when unsure, which the lab's drafter never does. adaptive maps to transformers' own schedule,
        "heuristic" (+2 after a round with every draft accepted, -1 otherwise, no upper bound): the counterpart of
        an adaptive k, not of the lab's rule (AdaptiveK), and k_max has none. Its _transient form starts every
        generation from k, as the lab's does (plain "heuristic" carries k over from one generate() to the next)."""
        return {"num_assistant_tokens": self.k,
                "num_assistant_tokens_schedule": "heuristic_transient" if self.adaptive else "constant",
                "assistant_confidence_threshold": 0.0}

    def decode_batch(self, engine, prompts: list[list[int]], settings) -> list:
        return engine.draft_verify(self.make_drafter(engine), prompts, settings, self.k, self.adaptive, self.k_max)

    def measure(self, output) -> dict[str, float]:
        """The draft/verify counts of one Generation (the loop leaves them in its extra). transformers' generate()
        (engine 'hf_generate') shows only its target forwards and the tokens each brought, so its Generation has
        target_forwards and accepted, and no drafted or times."""
        x, values = output.extra or {}, {}
        if output.draft_kv_bytes:
            values["draft_kv_mb"] = output.draft_kv_bytes / 2**20
        if x.get("drafted"):
            values["acceptance_rate"] = 100.0 * x["accepted"] / x["drafted"]
        if "target_forwards" in x:
            values["mean_accepted"] = x["accepted"] / max(x["target_forwards"], 1)
            values["tokens_per_forward"] = len(output.token_ids) / (x["target_forwards"] + 1)  # + the prefill
        if "draft_s" in x:
            values["draft_ms"] = 1000 * x["draft_s"]
            values["verify_ms"] = 1000 * x["verify_s"]
        return values

    def output_extra(self, output, decode, prompt_ids, detail) -> dict:
        """The rounds, for the page's token colouring (accepted, corrected, rejected) and per-round timeline."""
        rounds = output.extra.get("spec_rounds")
        if rounds is None:
            return {}
        return {"spec_rounds": rounds, "prefill_s": output.token_times[0],
                "token_texts": [decode([t]) for t in output.token_ids],
                "rejected_texts": [decode(r["proposed"][r["accepted"]:]) for r in rounds]}
