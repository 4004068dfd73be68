"""What a run feeds the model and how its quality is scored.

- chat: instruct prompts from data/prompts/chat.toml, wrapped in the model's chat template.
- perplexity: held-out English from CPython's own standard library, pydoc_data/topics.py (the language
  reference topics that `help()` shows; PSF licence). It ships with every Python, so it is always offline,
  and it is documentation prose, not chat data the instruct model was tuned on. Topics are joined in sorted
  key order so the text is the same everywhere for a given Python version.
"""
from __future__ import annotations

import random
from dataclasses import dataclass
from pydoc_data.topics import topics

from lab.prompts import QA, Item, calibration_text, chat_prompts, grounded_prompts, heldout_text


@dataclass(frozen=True)
class GenerationItem:
    """One generation: a prompt (or a context to compress) and, optionally, a question asked after it."""
    index: int
    key: str
    text: str  # what the page shows as the prompt
    prompt_ids: list[int]
    question_ids: list[int] | None = None
    answer: str | None = None  # for scored workloads (needle)
    info: dict | None = None


def _as_chat(tokenizer, prompts: list[Item]) -> list[GenerationItem]:
    return [GenerationItem(i.index, i.key, i.text, chat_input_ids(tokenizer, i.text)) for i in prompts]


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


def calibration_windows(tokenizer, n_tokens: int = 1024, window: int = 512) -> list[list[int]]:
    """The first n_tokens of the calibration text (never scored), in windows of `window` tokens."""
    ids = tokenizer(calibration_text(), add_special_tokens=False).input_ids[:n_tokens]
    return [ids[i:i + window] for i in range(0, len(ids), window)]


# The classic pass-key filler (Mohtashami & Jaggi, Landmark Attention, 2023): repetitive, so only the
# needle carries information.
FILLER = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again. "
NEEDLE = "The pass key is {key}. Remember it. {key} is the pass key. "
QUESTION = "What is the pass key?"
INTRO = ("There is an important info hidden inside a lot of irrelevant text. Find it and memorize it. "
         "I will quiz you about the important information there.\n\n")


def needle_items(tokenizer, lengths: list[int], depths: list[int], seed: int = 0) -> list[GenerationItem]:
    """One item per (length, depth): a pass key at `depth`% of a filler context of about `length` tokens.

    The context (instruction + filler with the needle) is the part a KV technique compresses; the question
    and the answer prefix follow uncompressed, as in kvpress's protocol.
    """
    rng = random.Random(seed)
    filler_ids = tokenizer(FILLER, add_special_tokens=False).input_ids
    items = []
    for length in lengths:
        for depth in depths:
            key = str(rng.randint(10000, 99999))
            needle = NEEDLE.format(key=key)
            n_repeats = max(1, length // len(filler_ids))
            at = round(n_repeats * depth / 100)
            haystack = FILLER * at + needle + FILLER * (n_repeats - at)
            context, question = _split_needle(haystack, QUESTION)
            items.append(GenerationItem(
                index=len(items), key=f"needle-{length}-{depth}", text=f"{length} tokens, needle at {depth}%",
                prompt_ids=tokenizer(context, add_special_tokens=False).input_ids,
                question_ids=tokenizer(question, add_special_tokens=False).input_ids,
                answer=key, info={"length": length, "depth": depth}))
    return items


def _split_needle(context: str, question: str) -> tuple[str, str]:
    """Plain completion text, cut where the question starts. Plain text, not the chat template: SmolLM2-135M
    found the key in 8 of 10 haystacks this way and in 4 of 10 through its chat template (1k and 2k tokens)."""
    return INTRO + context, f"\n\n{question} The pass key is"


def chat_items(tokenizer, limit: int) -> list[GenerationItem]:
    return _as_chat(tokenizer, chat_prompts(limit))


def grounded_items(tokenizer, limit: int) -> list[GenerationItem]:
    return _as_chat(tokenizer, grounded_prompts(limit))


def context_qa_items(tokenizer, limit: int) -> list[GenerationItem]:
    """Context: one topic of the language reference (up to 8k characters); question asked after it."""
    items = []
    for topic, question in QA[:limit]:
        context, rest = _split_chat_qa(tokenizer, topics[topic].strip()[:8000], question)
        items.append(GenerationItem(
            index=len(items), key=f"qa-{topic}", text=f"[{topic} topic] {question}",
            prompt_ids=tokenizer(context, add_special_tokens=False).input_ids,
            question_ids=tokenizer(rest, add_special_tokens=False).input_ids, info={"topic": topic}))
    return items


def _split_chat_qa(tokenizer, context: str, question: str) -> tuple[str, str]:
    """The chat-formatted message cut where the question starts, as kvpress's pipeline cuts it."""
    marker = "\u0000Q\u0000"
    message = f"{context}\n\n{marker}{question}"
    if getattr(tokenizer, "chat_template", None):
        message = tokenizer.apply_chat_template([{"role": "user", "content": message}], tokenize=False,
                                                add_generation_prompt=True)
    before, after = message.split(marker)
    return before, after
