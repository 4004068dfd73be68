"""The six slots a technique attaches to, as classes: a technique subclasses the class of its slot and overrides
that slot's hooks. The class says which model kinds use the slot (a technique declared for a kind its slot
ignores is refused when it is defined) and is applied in canonical order:

  weights    transform a copy of the model (the loaded original is shared and never mutated)   llm, diffusion
  attention  the attention function (and its mask) the model runs, registered with transformers  llm
  cache      the KV cache object the decode loop writes into, and hooks around one generation  llm
  decoding   llm: the loop that produces tokens (draft/verify); diffusion: the sampler schedule  llm, diffusion
  denoiser   wraps the denoiser for one generation (caching between steps)                      diffusion
  runtime    how the steps execute: the batch object the loop feeds (static cache, compiled step)  llm

The engine (lab/llm/engine.py) and the diffusion variant (lab/diffusion/variant.py) call these hooks and
nothing else; neither looks at a technique's family or name. Nothing here imports torch at import time.
"""
from __future__ import annotations

import contextlib
from typing import ClassVar

from lab.spec import MODEL_KINDS
from lab.techniques.base import Technique


class WeightsTechnique(Technique):
    slot: ClassVar[str] = "weights"
    slot_order: ClassVar[int] = 0
    model_kinds: ClassVar[tuple[str, ...]] = ("llm", "diffusion")

    # needs_calibration (Technique): an LLM run calls transform_weights(model, calibration), where calibration
    # (lab/ops/calibration.Calibration) holds held-out text to calibrate on and counts the time spent on it;
    # without it (every technique written before calibration existed): transform_weights(model)

    def transform_weights(self, model, calibration=None):
        """A transformed copy of `model` (never `model` itself changed: other variants share it)."""
        raise NotImplementedError


class AttentionTechnique(Technique):
    """Replaces the attention function of every layer. A subclass defines attend() with transformers'
    attention-function signature; the slot registers it (and its mask) under a name of its own."""
    slot: ClassVar[str] = "attention"
    slot_order: ClassVar[int] = 1
    model_kinds: ClassVar[tuple[str, ...]] = ("llm",)
    # the attention mask attend() receives: "sdpa" (boolean, what sdpa takes) or "eager" (additive float)
    mask: ClassVar[str] = "sdpa"

    def attend(self, module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
        """(output [batch, queries, heads, head_dim], weights or None), as transformers' attention functions."""
        raise NotImplementedError

    def attention_implementation(self) -> str:
        """The name this instance's attend() is registered under with transformers (the engine switches the
        model to it for each call). One name per instance, so two variants' knobs never share a function."""
        from lab.ops.attention import register_attention  # lazy: transformers and torch load only to run
        return register_attention(f"lab_{self.name}_{id(self):x}", self.attend, self.mask)


class CacheTechnique(Technique):
    slot: ClassVar[str] = "cache"
    slot_order: ClassVar[int] = 2
    model_kinds: ClassVar[tuple[str, ...]] = ("llm",)
    batchable: ClassVar[bool] = False  # one sequence's cache: the ragged batch loop keeps plain caches

    def make_cache(self, model):
        """The transformers Cache object one generation writes into."""
        raise NotImplementedError

    def attention_needed(self) -> str | None:
        """The attention implementation the cache relies on (a path that returns attention weights), or None.
        A variant with an attention technique as well is refused (see conflicts_with)."""
        return None

    def cache_hooks(self, model, cache):
        """A context manager around one generation (forward hooks that prune the cache); yields a tracker or
        None."""
        return contextlib.nullcontext()

    def conflicts_with(self, other: Technique) -> str | None:
        if other.slot == "attention" and self.attention_needed():
            return (f"'{self.name}' scores tokens by the attention weights of its own attention path "
                    f"({self.attention_needed()}), which '{other.name}' would replace")
        return None


class DecodingTechnique(Technique):
    slot: ClassVar[str] = "decoding"
    slot_order: ClassVar[int] = 3
    model_kinds: ClassVar[tuple[str, ...]] = ("llm", "diffusion")

    def decode_batch(self, engine, prompts: list[list[int]], settings) -> list:
        """LLM: generate after each prompt (a list of lab.ops.generation.Generation), owning the loop. The
        engine offers engine.forward(), engine.new_cache() and engine.draft_verify(drafter, ...)."""
        raise NotImplementedError

    def sampler_steps(self, steps: int) -> int:
        """Diffusion: the sampler steps this variant runs."""
        return steps

    def sampler_name(self, sampler: str) -> str:
        """Diffusion: the solver this variant runs."""
        return sampler


class DenoiserTechnique(Technique):
    slot: ClassVar[str] = "denoiser"
    slot_order: ClassVar[int] = 4
    model_kinds: ClassVar[tuple[str, ...]] = ("diffusion",)
    applies_to: ClassVar[tuple[str, ...]] = ("diffusion",)

    def prepare_denoiser(self, call) -> None:
        """Once per variant before the warm-up (calibration); `call` is the sampler's DenoiserCall."""
        return None

    def wrap_denoiser(self, call):
        """A context manager around one generation."""
        raise NotImplementedError


class RuntimeTechnique(Technique):
    """How the model's steps execute, not what they compute: a static KV cache and a compiled decode step. The
    draft/verify loop feeds the target through make_batch()'s object, so it stacks with a decoding technique."""
    slot: ClassVar[str] = "runtime"
    slot_order: ClassVar[int] = 5
    model_kinds: ClassVar[tuple[str, ...]] = ("llm",)

    def make_batch(self, model, prompts: list[list[int]], max_new_tokens: int, widest: int):
        """An object with RaggedBatch's interface (feed, keep, select, cache; lab/ops/ragged.py) that runs the
        target for one generation; `widest`: the most tokens one feed after the prefill takes."""
        raise NotImplementedError


SLOT_CLASSES = (WeightsTechnique, AttentionTechnique, CacheTechnique, DecodingTechnique, DenoiserTechnique,
                RuntimeTechnique)
SLOTS = tuple(c.slot for c in SLOT_CLASSES)
MODEL_SLOTS = {kind: tuple(c.slot for c in SLOT_CLASSES if kind in c.model_kinds) for kind in MODEL_KINDS}


def refuse_unused_slots(techniques: list, model_kind: str, what: str) -> None:
    """Raise when a technique sits in a slot a run of this model kind never calls (it would silently do
    nothing)."""
    for t in techniques:
        if t.slot not in MODEL_SLOTS[model_kind]:
            raise ValueError(f"technique '{t.name}' uses the {t.slot} slot, which {what} does not have "
                             f"(its slots: {', '.join(MODEL_SLOTS[model_kind])})")
