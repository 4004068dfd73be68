"""The Techniques page's data: every registered technique grouped by family, read from its declaration (idea,
picture, knobs, paper and its claim), and what this lab measured for it: a finished run of this machine that used
it (alone rather than in a stack where both exist), or, labelled as such, one recorded elsewhere.
No Streamlit, no torch."""
from __future__ import annotations

import platform
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import func, select
from sqlalchemy.orm import defer, selectinload

from lab import store
from lab.store import Experiment, Metric, Run
from lab.techniques.registry import all_techniques
from lab.views import forms
from lab.views.diffusion import is_diffusion
from lab.views.results import (
    RATIOS,
    SUMMARY_METRICS,
    busy_runs,
    column_label,
    definition,
    fmt,
    ordered_metric_names,
    ratio_note,
)


@dataclass(frozen=True)
class FamilyText:
    title: str
    about: str
    order: tuple[str, ...]  # teaching order of its techniques, simplest first; others follow by name


# In teaching order: what a weight is and how it is stored comes before the cache, the cache before attention
# patterns and drafts; diffusion's plain alternative (fewer steps) before the caches measured against it.
FAMILIES: dict[str, FamilyText] = {
    "quantization": FamilyText(
        "Quantization and pruning",
        "A model's weights are millions of numbers, usually stored as 32- or 16-bit floats. Quantization stores "
        "them (and sometimes the activations) in fewer bits; pruning sets some of them to zero. Both shrink the "
        "model's memory, and with the right kernels they also speed up each step, because generating text mostly "
        "waits for weights to arrive from memory. The cost is rounding error, which the quality columns measure "
        "against the full-precision baseline.",
        ("weight_dtype", "weight_only", "w8a8_dynamic", "smoothquant", "weight_budget", "dense_sparse", "pruning")),
    "kv_cache": FamilyText(
        "KV cache compression",
        "While generating, an LLM keeps the keys and values of every token it has seen (the KV cache) so it never "
        "recomputes them. On long prompts this cache can outgrow the model itself, and every new token reads all "
        "of it. These techniques evict the tokens the model will probably not need again, or store them in fewer "
        "bits. They save memory and reading time on long contexts; what is lost may be exactly the fact a later "
        "question asks for, which the needle workload tests.",
        ("streaming_llm", "knorm", "snapkv", "tova", "h2o", "scissorhands", "mikv", "quantized_kv", "fp8_kv")),
    "sparse_attention": FamilyText(
        "Sparse attention",
        "Attention compares every token with every earlier token, so its work grows with the square of the text's "
        "length and dominates long prompts. Sparse attention computes only some of those pairs, chosen by a fixed "
        "pattern or a cheap estimate, and keeps the KV cache whole. It speeds up the prefill of long prompts when "
        "a kernel really skips the pairs; a skipped pair cannot inform the answer. The same idea applies to the "
        "image patches of a diffusion transformer.",
        ("sink_window", "block_topk", "vertical_slash", "dit_sparse_attention")),
    "speculative": FamilyText(
        "Speculative decoding",
        "An LLM writes one token per forward pass, and each pass is mostly spent reading the weights, so checking "
        "several tokens costs about as much as writing one. Speculative decoding lets something cheap guess a few "
        "tokens ahead and has the model check them all in one pass, keeping the guesses it agrees with. With "
        "greedy decoding the output is identical to the model's own; the speedup depends on how often the guesses "
        "are right, which depends on the text.",
        ("prompt_lookup", "draft_model", "layer_skip")),
    "runtime": FamilyText(
        "Runtime",
        "The same maths can run fast or slow. Eager PyTorch runs a model one small operation at a time, called "
        "from Python; for a small model generating one token, that overhead can cost as much as the arithmetic. "
        "A runtime technique changes how the steps execute, not what they compute: compiled, with a fixed-size "
        "cache. The output stays the same up to rounding; the speed column shows what is left when the overhead "
        "goes, and the engine rows show what a dedicated engine such as llama.cpp does with the same model.",
        ("compiled_decode",)),
    "sampler": FamilyText(
        "Fewer sampler steps",
        "A diffusion model makes an image in a number of denoising steps, each one a full pass through the "
        "network. The plainest way to go faster is to take fewer steps. Every diffusion cache in this lab is "
        "compared with this at equal compute, to show whether reusing features beats simply taking larger steps.",
        ("step_reduction",)),
    "diffusion_cache": FamilyText(
        "Diffusion feature caching",
        "Between neighbouring denoising steps the network's inner features change little. Caches compute some "
        "blocks, layers or whole steps only now and then, and reuse (or extrapolate) their outputs in between. "
        "They save compute in proportion to what they skip, without retraining; the reused features are slightly "
        "stale, so the images drift from the baseline's, which PSNR, SSIM and class accuracy measure.",
        ("block_cache", "deep_cache", "first_block_cache", "taylorseer", "mag_cache", "pyramid_attention_broadcast",
         "faster_cache")),
}


@dataclass(frozen=True)
class TechniqueEntry:
    name: str
    title: str
    summary: str
    idea: str
    paper: str
    paper_claim: str
    picture: str
    applies_to: tuple[str, ...]
    knobs: list[dict]  # one row per knob, ready for a table


@dataclass(frozen=True)
class Family:
    name: str
    title: str
    about: str
    techniques: list[TechniqueEntry]


def catalogue() -> list[Family]:
    """Every registered technique once, grouped by family, families and techniques in teaching order (a family
    this page has no text for, a user's, comes last under its own name)."""
    by_family: dict[str, list] = {}
    for cls in all_techniques().values():
        by_family.setdefault(cls.family, []).append(cls)
    names = [f for f in FAMILIES if f in by_family] + sorted(f for f in by_family if f not in FAMILIES)
    families = []
    for name in names:
        text = FAMILIES.get(name, FamilyText(name.replace("_", " ").capitalize(), "", ()))
        rank = {t: i for i, t in enumerate(text.order)}
        ordered = sorted(by_family[name], key=lambda c: (rank.get(c.name, len(rank)), c.name))
        families.append(Family(name, text.title, text.about, [_entry(c) for c in ordered]))
    return families


def _entry(cls) -> TechniqueEntry:
    return TechniqueEntry(cls.name, cls.title, cls.summary, cls.idea, cls.paper, cls.paper_claim, cls.picture,
                          tuple(cls.applies_to), [_knob_row(k) for k in cls.knobs()])


def _knob_row(k) -> dict:
    return {"Knob": k.name, "Type": k.type.__name__, "Default": str(k.default), "Allowed": k.allowed(),
            "Unit": k.unit, "What it does": k.help}


@dataclass(frozen=True)
class Measured:
    """A finished run that used a technique: its key numbers, the variant's whole stack (a speedup belongs to the
    stack, not to one technique in it), the notes the results page shows beside them, and where the lab shows it.

    `here`: measured by this machine's own runs (origin local, this host). Otherwise `where` says whose numbers
    they are (the lab's recorded gallery, a colleague's imported report, another host of a shared store)."""
    experiment_id: int
    experiment_name: str
    variant: str
    stack: tuple[str, ...]  # the variant's techniques in slot order; one name: the technique alone
    engine: str  # what ran the variant (lab/bench/engines.py): "lab" unless it says otherwise
    finished_at: datetime | None
    page: str  # the lab page that shows the experiment
    link: str  # its address, the experiment opened
    metrics: dict[str, str]  # column label -> median (p10–p90), a ratio's noise note beside it; speedup, 1st quality
    busy: str | None  # why the machine counted as busy while it measured (lab/views/results.busy_runs), or None
    here: bool
    where: str  # "" when here; else whose machine measured it, ending "not this machine"

    @property
    def alone(self) -> bool:
        return len(self.stack) == 1


def measured_here(technique: str) -> Measured | None:
    """The measurement of `technique` made on this machine (see measurements), or None (see unmeasured_hints for
    what to run)."""
    found = measurements().get(technique)
    return found if found is not None and found.here else None


def measurements() -> dict[str, Measured]:
    """For every technique a finished stored run used, in one pass over the store: the best run measured here,
    else the best recorded elsewhere (here=False). Best: measured here; then the fewest techniques stacked with it
    (alone before any stack); the lab's own engine; a machine that was not busy; the latest experiment."""
    latest_first = func.coalesce(Experiment.finished_at, Experiment.created_at).desc()
    with store.session() as s:
        experiments = s.scalars(
            select(Experiment).where(Experiment.status == "done").order_by(latest_first, Experiment.id.desc())
            .options(selectinload(Experiment.runs).selectinload(Run.metrics).options(defer(Metric.samples)))).all()
    host = platform.node()
    best: dict[str, tuple[tuple, Experiment, Run]] = {}
    for age, exp in enumerate(experiments):
        busy = busy_runs(exp) is not None
        for run in exp.runs:
            names = technique_names(run)
            rank = (not measured_on(exp, run, host), len(names), run_engine(run) != "lab", busy, age)
            for name in names:
                if name not in best or rank < best[name][0]:
                    best[name] = (rank, exp, run)
    return {name: _measured(exp, run, host) for name, (_rank, exp, run) in best.items()}


def measured_on(exp: Experiment, run: Run, host: str) -> bool:
    """Whether this machine measured the run: the store's own (local) experiment, on this host."""
    return exp.origin == store.ORIGIN_LOCAL and (run.environment or {}).get("host") == host


def technique_names(run: Run) -> list[str]:
    return [t["name"] for t in (run.params or {}).get("techniques", []) if isinstance(t, dict) and "name" in t]


def run_engine(run: Run) -> str:
    return (run.params or {}).get("engine") or "lab"


def _measured(exp: Experiment, run: Run, host: str) -> Measured:
    page, path = ("Diffusion Lab", "Diffusion_Lab") if is_diffusion(exp) else ("LLM Lab", "LLM_Lab")
    here = measured_on(exp, run, host)
    return Measured(exp.id, exp.name, run.variant, tuple(technique_names(run)), run_engine(run), exp.finished_at,
                    page, f"/{path}?experiment={exp.id}", key_metrics(run, (exp.spec or {}).get("warmup", 1)),
                    busy_runs(exp), here, "" if here else recorded_where(exp, run))


def recorded_where(exp: Experiment, run: Run) -> str:
    """Whose machine measured a run this machine did not, in words."""
    env = run.environment or {}
    cpu = env.get("device_name") or "an unrecorded machine"
    if exp.origin == store.ORIGIN_GALLERY:
        return f"recorded by the lab on {cpu} (the shipped gallery), not this machine"
    if exp.origin == store.ORIGIN_IMPORTED:
        source = (exp.imported_from or {}).get("file") or "a report"
        return f"imported from {source}, recorded on {cpu}, not this machine"
    return f"recorded on {cpu} by host {env.get('host') or '(unrecorded)'}, not this machine"


def key_metrics(run: Run, warmup: int = 1) -> dict[str, str]:
    """The run's speedup and its first quality metric with a value (in the summary table's order); a speedup
    that cannot be told from noise says so beside it, as in the results table (lab/views/results.ratio_note)."""
    by_name = {m.name: m for m in run.metrics if m.value is not None}
    quality = [n for n in SUMMARY_METRICS + ordered_metric_names(by_name)
               if n in by_name and definition(n).kind == "quality"]
    shown = {}
    for name in ["speedup", *quality[:1]]:
        if name not in by_name:
            continue
        m = by_name[name]
        note = ratio_note(m.p10, m.p90, m.n, warmup) if name in RATIOS and not run.is_baseline else None
        shown[column_label(name)] = _median_text(m) + (f" · {note}" if note else "")
    return shown


def _median_text(m: Metric) -> str:
    spread = f" ({fmt(m.p10)}–{fmt(m.p90)})" if m.n > 1 and m.p10 is not None and m.p10 != m.p90 else ""
    return f"{fmt(m.value)}{spread}"


def unmeasured_hints() -> dict[str, str]:
    """For every registered technique, what to run to measure it here: the quickest shipped preset using it (a
    quick start or a *_quick file first, then the fewest variants, then the fewest other families mixed in), on the
    page of its model kind."""
    techniques = all_techniques()
    candidates: dict[str, list[tuple]] = {}
    for kind, page in (("llm", "LLM Lab"), ("diffusion", "Diffusion Lab")):
        for label, raw in forms.presets(kind).items():
            used = [n for n in preset_techniques(raw) if n in techniques]
            families = {techniques[n].family for n in used}
            for name in used:
                rank = ("quick" not in label, len(raw.get("variants", [])), len(families), label)
                candidates.setdefault(name, []).append((rank, f"run the preset '{label}' on the {page} page"))
    hints = {}
    for name, cls in techniques.items():
        page = "LLM Lab" if "llm" in cls.applies_to else "Diffusion Lab"
        todo = min(candidates[name])[1] if name in candidates else f"add it to a variant on the {page} page"
        hints[name] = f"Not measured here yet: {todo}."
    return hints


def preset_techniques(raw: dict) -> list[str]:
    """The techniques a raw preset's variants name, in order of first use."""
    names = [t.get("name") for v in raw.get("variants", []) for t in v.get("techniques", []) if isinstance(t, dict)]
    return list(dict.fromkeys(n for n in names if isinstance(n, str)))
