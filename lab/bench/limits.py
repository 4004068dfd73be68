"""Limits checked before a run: the longest input each phase builds against the model's context, and an
estimate of peak memory against what is free. Pure functions of the spec and the model's sizes (read from
its config, no weights loaded), so tests can call them with any numbers."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

from lab.errors import SpecError, shown
from lab.llm import workloads
from lab.spec import FIELDS
from lab.techniques import get


def _quoted(name: str) -> str:
    return f"'{name}'" if name.isprintable() and len(name) <= 80 else shown(name)

# --- limits: the model's context and the machine's memory ---------------------------------------------------
# Without the tokenizer loaded, prompt lengths are bounded from characters: English BPE vocabularies average
# about 4 characters per token (SmolLM2: 4.0 to 4.4 on the context_qa topics), so 2 leaves a wide margin.
CHARS_PER_TOKEN = 2
TEMPLATE_TOKENS = 64  # a chat template's wrapping (SmolLM2's adds a system prompt of about 30 tokens)
PROMPT_WORKLOADS = ("chat", "grounded", "context_qa")
BYTES = 4  # fp32: weights on CPU, KV cache, scores; on CUDA the config's dtype is at most this


@dataclass(frozen=True)
class Phase:
    """One kind of forward pass a run makes, with the longest sequence it holds and the field that sets it."""
    field: str  # the field that sets the length (the one to reduce)
    value: object  # that field's value, as messages show it
    tokens: int  # the longest sequence held: input plus generated tokens
    fixed: int  # the part of `tokens` the field does not set (prompt, question, new tokens)
    batch: int = 1
    logits_share: float = 0.0  # share of the positions whose logits are kept (perplexity: half; else the last)


class _CharCounter:
    """Stands in for a tokenizer so the workloads' own builders measure their inputs in characters."""
    chat_template = None

    def __call__(self, text: str, add_special_tokens: bool = True):
        return SimpleNamespace(input_ids=range(len(text)))


def _char_tokens(chars: int) -> int:
    return -(-chars // CHARS_PER_TOKEN)


def phases(spec) -> list[Phase]:
    """The forward passes an LLM run makes and the longest sequence of each, bounded without a tokenizer."""
    new, out = spec.max_new_tokens, []
    if spec.workload == "needle":
        # needle lengths are tokens already; the instruction, needle and question around the filler are text
        one = workloads.needle_items(_CharCounter(), [1], [0])[0]  # one filler repeat: measure the rest
        around = len(one.prompt_ids) + len(one.question_ids) - len(workloads.FILLER)
        fixed = _char_tokens(around) + new
        longest = max(max(spec.needle_lengths), _char_tokens(len(workloads.FILLER)))
        out.append(Phase("needle_lengths", max(spec.needle_lengths), longest + fixed, fixed, spec.batch_size))
    elif spec.workload in PROMPT_WORKLOADS:
        build = {"chat": workloads.chat_items, "grounded": workloads.grounded_items,
                 "context_qa": workloads.context_qa_items}[spec.workload]
        chars = max(len(it.prompt_ids) + len(it.question_ids or []) for it in build(_CharCounter(), spec.prompts))
        fixed = _char_tokens(chars) + TEMPLATE_TOKENS
        out.append(Phase("max_new_tokens", new, fixed + new, fixed, spec.batch_size))
    window = spec.perplexity_window
    if spec.workload == "perplexity":
        out.append(Phase("perplexity_window", window, window, 0, logits_share=0.5))
    elif spec.perplexity_tokens > 0:  # every generation run also scores held-out windows
        out.append(Phase("perplexity_window", window, min(window, spec.perplexity_tokens), 0, logits_share=0.5))
    return out


@dataclass(frozen=True)
class MemoryEstimate:
    weights: int
    kv_cache: int
    attention_scores: int
    activations: int
    logits: int

    @property
    def total(self) -> int:
        return self.weights + self.kv_cache + self.attention_scores + self.activations + self.logits

    def describe(self) -> str:
        parts = {"weights": self.weights, "KV cache": self.kv_cache, "attention scores": self.attention_scores,
                 "activations": self.activations, "logits": self.logits}
        return ", ".join(f"{k} {_gb(v)}" for k, v in parts.items() if v)


def _gb(n: float) -> str:
    return f"{n / 1e9:.1f} GB" if n >= 1e8 else f"{n / 1e6:.0f} MB"


def estimate_peak_memory(shape, tokens: int, batch: int = 1, attention_weights: bool = False,
                         logits_rows: int = 1, weight_copies: float = 1.0) -> MemoryEstimate:
    """Peak bytes of a forward over `tokens` positions of a model of `shape` (a lab.llm.models.ModelShape).

    Pure arithmetic, so tests can set any shape. Layers run one after another, so only the KV cache grows
    with the layer count; the attention-score matrix exists only on the weight-returning (eager) path, which
    holds one layer's scores [batch, heads, n, n] and their softmax at once.
    """
    return MemoryEstimate(
        weights=int(shape.parameters * BYTES * weight_copies),
        kv_cache=2 * shape.layers * shape.kv_heads * shape.head_dim * tokens * batch * BYTES,
        attention_scores=2 * batch * shape.heads * tokens * tokens * BYTES if attention_weights else 0,
        # one layer's residual stream, q/k/v/o outputs and the gated MLP's three intermediate tensors
        activations=batch * tokens * (4 * shape.hidden + 3 * shape.intermediate) * BYTES,
        logits=2 * batch * logits_rows * shape.vocab * BYTES,  # logits and their log-softmax
    )


def _uses_attention_weights(spec) -> list[str]:
    """Techniques of the spec that need the weight-returning attention (they declare it)."""
    return sorted({t["name"] for v in spec.variants for t in v.techniques
                   if getattr(get(t["name"]), "needs_attention_weights", False)})


def _weight_copies(spec) -> float:
    """The original fp32 weights plus one transformed copy per variant with a weights technique (the Engine
    keeps every variant's copy for the interleaved repeats); a half-precision copy is half the size."""
    transformed = sum(any(get(t["name"]).slot == "weights" for t in v.techniques) for v in spec.variants)
    return 1.0 + 0.5 * transformed


def check_context(spec, shape) -> None:
    """Refuse inputs longer than the model takes (its max_position_embeddings)."""
    if shape.context is None:
        return
    for phase in phases(spec):
        if phase.tokens <= shape.context:
            continue
        lo = FIELDS[phase.field].min  # the field's own lower bound
        room = shape.context - phase.fixed
        allowed = f"{lo} to {room}" if room >= lo else f"none at this setting (the rest takes {phase.fixed} tokens)"
        rest = f" ({phase.fixed} of them prompt, question and max_new_tokens)" if phase.fixed else ""
        raise SpecError(f"field '{phase.field}': {phase.value} makes inputs of up to about {phase.tokens} tokens"
                        f"{rest}, more than the {shape.context}-token context of model {_quoted(spec.model)} "
                        f"(max_position_embeddings); allowed: {allowed}")


def check_memory(spec, shape, available: int | None, where: str = "free") -> None:
    """Refuse a spec whose estimated peak memory exceeds `available` bytes, naming the field to reduce.

    `available` is passed in (free_memory() in validate) so tests can say how much is free."""
    if available is None:
        return
    eager = _uses_attention_weights(spec)
    copies = _weight_copies(spec)

    def estimate(phase: Phase, tokens: int) -> MemoryEstimate:
        rows = max(1, int(tokens * phase.logits_share))
        return estimate_peak_memory(shape, tokens, phase.batch, bool(eager), rows, copies)

    for phase in sorted(phases(spec), key=lambda p: -estimate(p, p.tokens).total):
        peak = estimate(phase, phase.tokens)
        if peak.total <= available:
            return
        if estimate(phase, 1).total > available:
            and_copies = " and the variants' transformed copies" if copies > 1 else ""
            raise SpecError(f"field 'model': {_quoted(spec.model)} needs about {_gb(peak.weights)} for its weights"
                            f"{and_copies} alone, more than the {_gb(available)} {where}; allowed: a smaller model")
        room = _largest_fitting(lambda n: estimate(phase, n).total <= available, phase.tokens) - phase.fixed
        why = f"; the weight-returning attention of {', '.join(eager)} holds n x n scores" if eager else ""
        also = f" (or batch_size, {phase.batch} now)" if phase.batch > 1 else ""
        lo = FIELDS[phase.field].min  # the field's own lower bound
        instead = "reduce batch_size or prompts" + (f", or drop the variants using {', '.join(eager)}" if eager else "")
        allowed = (f"up to about {room}" if room >= lo else
                   f"none at this setting (the prompts alone take {phase.fixed} tokens): {instead}")
        raise SpecError(f"field '{phase.field}': {phase.value} needs about {_gb(peak.total)} at its peak "
                        f"({peak.describe()}{why}), more than the {_gb(available)} {where}; reduce {phase.field}"
                        f"{also}; allowed: {allowed}")


def _largest_fitting(fits, upper: int) -> int:
    """The largest n below `upper` for which fits(n) holds (fits is monotone in n); 0 when none does."""
    lo, hi = 0, upper
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if fits(mid) else (lo, mid)
    return lo


def free_memory(device: str) -> tuple[int | None, str]:
    """Bytes free for the run and where they are: the GPU's free memory when it runs on CUDA, else the
    kernel's MemAvailable. None when neither can be read (the check is then skipped)."""
    # torch only here and only for CUDA: pages import this module and must open without loading it
    if device == "cuda" or device == "auto" and Path("/proc/driver/nvidia/version").exists():
        # lazy: torch loads only to run; validation and pages read this module
        import torch
        if torch.cuda.is_available():
            return torch.cuda.mem_get_info()[0], "free on the GPU"
        if device == "cuda":
            return None, ""  # no GPU here: the run reports that itself
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024, "available in RAM (MemAvailable)"
    except (OSError, ValueError, IndexError):
        pass
    return None, ""


