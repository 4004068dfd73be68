"""Prompt lookup decoding: the draft is a copy of what followed the same n-gram earlier in the text."""
from __future__ import annotations

from dataclasses import dataclass

from lab.techniques.base import knob
from lab.techniques.speculative.base import DraftVerify


@dataclass
class PromptLookup(DraftVerify):
    name = "prompt_lookup"
    title = "Prompt lookup (n-gram copy draft)"
    summary = ("No draft model: the last n generated tokens are looked up in the prompt and the text so far, "
               "and the tokens that followed the match are proposed. Free to draft, so it pays whenever the "
               "output copies the input (rewriting, editing, summarising, code edits).")
    paper = ("Saxena, Prompt Lookup Decoding (2023, github.com/apoorvumang/prompt-lookup-decoding); "
             "transformers' prompt_lookup_num_tokens")

    k: int = knob(4, min=1, max=16, unit="tokens", help="Tokens copied after a match (the most proposed per round).")
    ngram_size: int = knob(3, min=1, max=8, unit="tokens", help="Longest n-gram matched; shorter ones are "
                                                                "tried down to min_ngram.")
    min_ngram: int = knob(2, min=1, max=8, unit="tokens", help="Shortest n-gram matched. 1 proposes often but "
                                                               "is rejected more.")

    def make_drafter(self, engine):
        # lazy: lab.ops.drafting imports torch; pages import this module
        from lab.ops.drafting import PromptLookupDrafter
        return PromptLookupDrafter(self.ngram_size, min(self.min_ngram, self.ngram_size))
