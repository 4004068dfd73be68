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
    "needle": "Needle in a haystack: a pass key hidden in filler text at several depths and lengths; the "
              "context is prefilled (and compressed by a KV technique), then the question is asked; scored "
              "by exact match of the pass key.",
    "grounded": "Input-grounded tasks: rewrite, edit, summarise or extract from a short passage given in the "
                "prompt (data/prompts/grounded.toml), so much of the answer copies the input; where prompt lookup "
                "drafting pays.",
    "context_qa": "Long-context QA in kvpress's protocol: a section of the Python language reference is the "
                  "context (compressed by a KV technique), then a question about it is asked; scored by agreement "
                  "with the uncompressed model's answer.",
    "digits": "Diffusion: generate the requested digit classes (images_per_class each, one seed per batch, the "
              "same for every variant); scored by PSNR/SSIM against the baseline's image of the same seed and by "
              "a digit classifier trained on the real digits.",
    "image_prompts": "Diffusion pipelines (a diffusers folder the user points the lab at): text-to-image from the "
                     "prompts in data/prompts/images.toml (one seed per batch, the same for every variant); scored "
                     "by PSNR/SSIM against the baseline's image of the same seed.",
}


@dataclass(frozen=True)
class Item:
    index: int
    key: str
    text: str


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


def check_workload(name: str) -> None:
    if name not in WORKLOADS:
        raise SpecError(f"unknown workload '{name}'; allowed: {', '.join(WORKLOADS)}")


def _prompt_file(stem: str, text_of, limit: int | None) -> list[Item]:
    """The [[prompts]] of data/prompts/<stem>.toml as Items; text_of makes the user message of one entry."""
    with open(SHIPPED_DATA / "prompts" / f"{stem}.toml", "rb") as f:
        prompts = tomllib.load(f)["prompts"]
    items = [Item(i, p["key"], text_of(p)) for i, p in enumerate(prompts)]
    return items[:limit] if limit else items


def _as_chat(tokenizer, prompts: list[Item]) -> list[GenerationItem]:
    return [GenerationItem(i.index, i.key, i.text, chat_input_ids(tokenizer, i.text)) for i in prompts]


def chat_prompts(limit: int | None = None) -> list[Item]:
    return _prompt_file("chat", lambda p: p["text"], limit)


def image_prompts(limit: int | None = None) -> list[Item]:
    return _prompt_file("images", lambda p: p["text"], limit)


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
    import random
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


def grounded_prompts(limit: int | None = None) -> list[Item]:
    """Task + passage, as one user message."""
    return _prompt_file("grounded", lambda p: f"{p['task']}\n\n{p['passage']}", limit)


def grounded_items(tokenizer, limit: int) -> list[GenerationItem]:
    return _as_chat(tokenizer, grounded_prompts(limit))


# (topic of CPython's pydoc_data.topics, question): the topic's text is the context the question is about.
QA = [
    ("try", "What happens to an exception raised inside a finally clause?"),
    ("import", "How does Python find the module named in an import statement?"),
    ("function", "What are default parameter values and when are they evaluated?"),
    ("with", "Which two methods does the with statement call on the context manager?"),
    ("class", "What does a class definition create and execute?"),
    ("exceptions", "What happens when an exception is not handled?"),
    ("for", "What happens when the iterable of a for loop is exhausted?"),
    ("global", "What does the global statement declare?"),
]


def context_qa_items(tokenizer, limit: int) -> list[GenerationItem]:
    """Context: one topic of the language reference (up to 8k characters); question asked after it."""
    from pydoc_data.topics import topics
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
