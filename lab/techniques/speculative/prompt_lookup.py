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
    idea = ("When the answer copies from the prompt (summaries, edits, answers quoting a document), the next few "
            "tokens have often appeared in the text already. Prompt lookup finds the last few generated tokens earlier "
            "in the text and proposes what followed them there as the draft; the model checks the draft in one pass "
            "and keeps what it agrees with. Drafting costs almost nothing, needs no draft model, and greedy output is "
            "unchanged. When the answer does not copy, no draft is found and nothing is gained.")
    paper_claim = ("2x to 4x faster generation on input-grounded tasks (summarisation, context-based QA, multi-turn "
                   "chat) with no change in the output (Mistral-7B-Instruct-v0.1, greedy decoding, on one A100 40GB "
                   "GPU; the author's code repository, not a peer-reviewed paper).")
    picture = "draft_verify"
    hf_generate_counterpart = "prompt_lookup_num_tokens"

    k: int = knob(4, min=1, max=16, unit="tokens", help="Tokens copied after a match (the most proposed per round).")
    ngram_size: int = knob(3, min=1, max=8, unit="tokens", help="Longest n-gram matched; shorter ones are "
                                                                "tried down to min_ngram.")
    min_ngram: int = knob(2, min=1, max=8, unit="tokens", help="Shortest n-gram matched. 1 proposes often but "
                                                               "is rejected more.")

    def make_drafter(self, engine):
        # lazy: lab.ops.drafting imports torch; pages import this module
        from lab.ops.drafting import PromptLookupDrafter
        return PromptLookupDrafter(self.ngram_size, min(self.min_ngram, self.ngram_size))

    def hf_generate_refusal(self) -> str | None:
        if self.adaptive:
            return ("transformers' prompt lookup proposes a fixed prompt_lookup_num_tokens every round (its "
                    "schedules are for assistant models); set adaptive = false")
        return None

    def hf_generate_options(self, engine) -> dict:
        """transformers' PromptLookupCandidateGenerator (5.x) against the lab's PromptLookupDrafter:
          - the same: the last n tokens are matched longest n first, the earliest match with a token after it
            wins, and up to k tokens that followed it are proposed;
          - n-gram sizes: transformers tries max_matching_ngram_size down to 1 and has no minimum, so with
            min_ngram > 1 (the default 2) it also proposes after a one-token match, where the lab proposes
            nothing; its drafts differ there (the output does not: greedy verification keeps the target's);
          - transformers cuts a draft at an end-of-sequence token and at max_length; the lab proposes past them
            and its verification stops there, so the output is the same;
          - sampling: transformers samples the target at every position and keeps drafts while they equal its
            samples; the lab accepts a draft with probability q(draft). Both give the target's distribution.
        """
        self._check_hf_generate()
        return {"prompt_lookup_num_tokens": self.k, "max_matching_ngram_size": self.ngram_size}
