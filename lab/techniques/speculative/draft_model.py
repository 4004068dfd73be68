"""Speculative decoding with a separate, smaller draft model that shares the target's tokenizer."""
from __future__ import annotations

import copy
from dataclasses import dataclass, field

from lab.errors import SpecError
from lab.paths import SHIPPED_DATA
from lab.techniques.base import knob
from lab.techniques.speculative.base import DraftVerify

TRUNCATED, DISTILLED = "truncated", "smollm2-distilled"


@dataclass
class DraftModel(DraftVerify):
    name = "draft_model"
    title = "Draft model (small LM drafts, target verifies)"
    summary = (f"A small causal LM proposes k tokens. '{TRUNCATED}' is a copy of the target's first "
               f"draft_layers layers; '{DISTILLED}' is the shipped 4-layer draft distilled from SmolLM2 with a "
               f"head over the 7544 tokens of its training text (python -m lab.llm.distill); any other value is a "
               f"local folder or cached hub id of a model with the same tokenizer.")
    paper = ("Leviathan et al., Fast Inference from Transformers via Speculative Decoding, ICML 2023 "
             "(arXiv:2211.17192); Kim et al., Big Little Decoder, NeurIPS 2023 (arXiv:2302.07863)")
    idea = ("Generating a token with a large model costs one slow forward pass, but checking several tokens at once "
            "costs about the same as generating one. A small draft model guesses the next few tokens cheaply; the "
            "large model checks them all in one pass and keeps the guesses up to the first one it disagrees with, "
            "adding its own token there. With greedy decoding the output is exactly what the large model alone would "
            "write, only faster when most guesses are accepted. It costs the draft model's time and memory, and a "
            "draft that is often wrong makes generation slower.")
    paper_claim = ("Speculative decoding is 2x to 3x faster than the standard T5X implementation with identical "
                   "outputs (T5-XXL, 11B parameters, with a small T5 model as the draft, on TPU-v4).")
    picture = "draft_verify"
    hf_generate_counterpart = "assistant_model"

    k: int = knob(3, min=1, max=16, unit="tokens", help="Draft tokens proposed per target forward.")
    draft: str = knob(DISTILLED, help=f"'{DISTILLED}', '{TRUNCATED}', or a local folder / cached hub id.")
    draft_layers: int = knob(4, min=1, max=256, unit="layers", help=f"Layers of the '{TRUNCATED}' draft.")
    _cache: dict = field(default_factory=dict, repr=False, compare=False)

    def check(self) -> None:
        if self.draft == DISTILLED:
            if not (SHIPPED_DATA / "models" / "smollm2-draft" / "draft.json").exists():
                raise SpecError(f"technique 'draft_model': the distilled draft is missing from data/models/"
                                f"smollm2-draft; make it with `python -m lab.llm.distill` or use draft = '{TRUNCATED}'")

    def check_models(self, check_model) -> None:
        if self.draft in (DISTILLED, TRUNCATED):
            return
        try:
            kind = check_model(self.draft)
        except SpecError as e:
            raise SpecError(f"technique 'draft_model', knob 'draft': {e}; or use '{DISTILLED}' or "
                            f"'{TRUNCATED}'") from None
        if kind != "llm":
            raise SpecError(f"technique 'draft_model', knob 'draft': '{self.draft}' is a {kind} model; allowed: "
                            f"an LLM with the target's tokenizer, '{DISTILLED}' or '{TRUNCATED}'")

    def make_drafter(self, engine):
        # lazy: lab.ops.drafting imports torch; pages import this module
        from lab.ops.drafting import ModelDrafter
        key = id(engine.model)
        if key not in self._cache:  # built once per prepared model, reused by every generation
            self._cache.clear()
            self._cache[key] = self._build(engine)
        model, vocab = self._cache[key]
        return ModelDrafter(model, vocab, engine.model.config.vocab_size)

    def hf_generate_options(self, engine) -> dict:
        """transformers' assisted generation with the same draft as its assistant_model (see
        DraftVerify._assistant_schedule for k and adaptive)."""
        self._check_hf_generate()
        return {"assistant_model": self._hf_assistant(engine), **self._assistant_schedule()}

    def _hf_assistant(self, engine):
        """The draft as transformers' generate() takes an assistant: a causal LM whose logits are over the
        target's vocabulary. The distilled draft's head covers only the tokens of its training text, so its
        assistant is a view of it (weights shared) whose head scatters those logits into the full vocabulary,
        -inf elsewhere: the same argmax and the same distribution as the lab's drafter, for the cost of a
        scatter, not of a full-vocabulary head. Any other draft is its own assistant (generate_hf sets the
        assistant's generation_config for the call and sets it back)."""
        self.make_drafter(engine)
        key = ("hf", id(engine.model))
        if key not in self._cache:
            model, vocab = self._cache[id(engine.model)]
            if vocab is not None:
                model = _full_vocab_view(model, vocab, engine.model.config.vocab_size)
            self._cache[key] = model
        return self._cache[key]

    def extra_weight_bytes(self, engine) -> int:
        """The draft's own parameters (the distilled draft shares the target's embedding: not counted)."""
        self.make_drafter(engine)
        model, vocab = self._cache[id(engine.model)]
        shared = {p.data_ptr() for p in engine.model.parameters()}
        own = {p.data_ptr(): p.numel() * p.element_size() for p in model.parameters() if p.data_ptr() not in shared}
        return sum(own.values())

    def _build(self, engine):
        target = engine.model
        if self.draft == DISTILLED:
            # lazy: lab.ops.distilled_draft imports torch; pages import this module
            from lab.ops.distilled_draft import load_shipped_draft
            model, vocab, _ = load_shipped_draft(target)
            return model, vocab
        if self.draft == TRUNCATED:
            # lazy: lab.ops.drafting imports torch; pages import this module
            from lab.ops.drafting import truncated_copy
            return truncated_copy(target, self.draft_layers), None
        loaded = engine.load_model(self.draft)
        if loaded.tokenizer.get_vocab() != engine.tokenizer.get_vocab():
            raise ValueError(f"draft model '{self.draft}' has a different tokenizer from the target; speculative "
                             f"decoding needs the same vocabulary")
        return loaded.model.to(next(target.parameters()).dtype), None


def _full_vocab_view(model, vocab, vocab_size: int):
    """A view of a draft with a trimmed head (rows for the target ids in `vocab`) whose logits are over all
    `vocab_size` target ids: the trimmed logits scattered into place, -inf for the tokens it never proposes.
    Shares every weight with `model`; has a generation_config of its own."""
    # lazy: torch would load with the pages, which import this module
    import torch

    class FullVocabHead(torch.nn.Module):
        def __init__(self, head, vocab, size):
            super().__init__()
            self.head, self.size = head, size
            self.register_buffer("vocab", vocab, persistent=False)

        def forward(self, hidden):
            small = self.head(hidden)
            full = small.new_full((*small.shape[:-1], self.size), float("-inf"))
            return full.index_copy_(-1, self.vocab, small)

    view = copy.copy(model)
    view._modules = dict(model._modules)  # copy.copy would share the submodule table with the original
    view.lm_head = FullVocabHead(model.lm_head, vocab, vocab_size)
    view.generation_config = copy.deepcopy(model.generation_config)
    return view
