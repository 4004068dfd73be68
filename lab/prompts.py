"""The workloads a run can feed a model, and their shipped texts (data/prompts/*.toml, CPython's pydoc topics).

No tokenizer and no torch here: a spec is checked against these (names, how many prompts a workload has) before
anything loads. lab/llm/workloads.py turns them into token ids.
"""
from __future__ import annotations

import tomllib
from dataclasses import dataclass
from pydoc_data.topics import topics

from lab.errors import SpecError
from lab.paths import SHIPPED_DATA

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


# the workloads of diffusion models; the rest are an LLM's
DIFFUSION_WORKLOADS = ("digits", "image_prompts")


@dataclass(frozen=True)
class Item:
    index: int
    key: str
    text: str


def check_workload(name: str) -> None:
    if name not in WORKLOADS:
        raise SpecError(f"unknown workload '{name}'; allowed: {', '.join(WORKLOADS)}")


def prompt_file(stem: str, text_of, limit: int | None) -> list[Item]:
    """The [[prompts]] of data/prompts/<stem>.toml as Items; text_of makes the user message of one entry."""
    with open(SHIPPED_DATA / "prompts" / f"{stem}.toml", "rb") as f:
        prompts = tomllib.load(f)["prompts"]
    items = [Item(i, p["key"], text_of(p)) for i, p in enumerate(prompts)]
    return items[:limit] if limit else items


def chat_prompts(limit: int | None = None) -> list[Item]:
    return prompt_file("chat", lambda p: p["text"], limit)


def grounded_prompts(limit: int | None = None) -> list[Item]:
    """Task + passage, as one user message."""
    return prompt_file("grounded", lambda p: f"{p['task']}\n\n{p['passage']}", limit)


def image_prompts(limit: int | None = None) -> list[Item]:
    return prompt_file("images", lambda p: p["text"], limit)


# Calibration (weight quantization's activation statistics) reads this topic and nothing scores it: it is left
# out of the held-out text, and no QA item asks about it. About 2,500 tokens of SmolLM2's tokenizer.
CALIBRATION_TOPIC = "typesmapping"


def heldout_text() -> str:
    """The held-out English text scored by the perplexity workload (see module docstring for source and licence);
    the calibration topic is not part of it."""
    return "\n\n".join(topics[k].strip() for k in sorted(topics) if k != CALIBRATION_TOPIC)


def calibration_text() -> str:
    """Text that weight techniques calibrate on; never scored (see CALIBRATION_TOPIC)."""
    return topics[CALIBRATION_TOPIC].strip()


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


def available_items(workload: str) -> int | None:
    """How many items a prompt workload has (None: a workload not limited by a file)."""
    counts = {"chat": lambda: len(chat_prompts()), "grounded": lambda: len(grounded_prompts()),
              "context_qa": lambda: len(QA), "image_prompts": lambda: len(image_prompts())}
    return counts[workload]() if workload in counts else None
