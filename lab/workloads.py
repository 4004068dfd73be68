"""What a run feeds the model and how its quality is scored.

- chat: instruct prompts from data/prompts/chat.toml, wrapped in the model's chat template.
- perplexity: held-out English from CPython's own standard library, pydoc_data/topics.py (the language
  reference topics that `help()` shows; PSF licence). It ships with every Python, so it is always offline,
  and it is documentation prose, not chat data the instruct model was tuned on. Topics are joined in sorted
  key order so the text is the same everywhere for a given Python version.
"""
from __future__ import annotations

import tomllib
from dataclasses import dataclass

from lab.paths import SHIPPED_DATA
from lab.techniques.base import SpecError

WORKLOADS = {
    "chat": "Answer varied instruct prompts (explain, list, write, reason, code); measures generation speed "
            "and compares each variant's answers with the baseline's.",
    "perplexity": "Score held-out English text (CPython's pydoc topics, PSF licence) in fixed windows; "
                  "measures prefill throughput and perplexity.",
}


@dataclass(frozen=True)
class Item:
    index: int
    key: str
    text: str


def check_workload(name: str) -> None:
    if name not in WORKLOADS:
        raise SpecError(f"unknown workload '{name}'; allowed: {', '.join(WORKLOADS)}")


def chat_prompts(limit: int | None = None) -> list[Item]:
    with open(SHIPPED_DATA / "prompts" / "chat.toml", "rb") as f:
        prompts = tomllib.load(f)["prompts"]
    items = [Item(i, p["key"], p["text"]) for i, p in enumerate(prompts)]
    return items[:limit] if limit else items


def heldout_text() -> str:
    """The held-out English text (see module docstring for source and licence)."""
    from pydoc_data.topics import topics
    return "\n\n".join(topics[k].strip() for k in sorted(topics))


def chat_input_ids(tokenizer, text: str) -> list[int]:
    """Tokenize a user message, through the chat template when the model has one."""
    if getattr(tokenizer, "chat_template", None):
        text = tokenizer.apply_chat_template([{"role": "user", "content": text}], tokenize=False,
                                             add_generation_prompt=True)
        return tokenizer(text, add_special_tokens=False).input_ids
    return tokenizer(text).input_ids


def perplexity_windows(tokenizer, n_tokens: int, window: int) -> list[list[int]]:
    """The first n_tokens of the held-out text, cut into windows of `window` tokens."""
    text, chars = heldout_text(), n_tokens * 6
    ids = tokenizer(text[:chars], add_special_tokens=False).input_ids
    while len(ids) < n_tokens and chars < len(text):  # tokenising all 465k chars is slow; grow only as needed
        chars *= 2
        ids = tokenizer(text[:chars], add_special_tokens=False).input_ids
    ids = ids[:n_tokens]
    return [ids[i:i + window] for i in range(0, len(ids), window) if len(ids[i:i + window]) > 1]
