"""The experiment spec: model + workload + variants, a typed object whose fields are declared the way technique
knobs are (lab/knobs.py), so the page form, the CLI and validation read the same declaration.

This module checks each field on its own (type, range, choices, length the store keeps). What needs the model
or the techniques (the model's kind, knobs, context and memory) is checked once in lab/bench/validate.py, which
returns a Spec with model_kind resolved; nothing after it decides the kind again.
"""
from __future__ import annotations

import copy
import hashlib
import itertools
import json
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

from lab import store
from lab.errors import SpecError, named, shown
from lab.knobs import KnobInfo, knob, knobs_of
from lab.prompts import WORKLOADS

# What runs a variant: the lab's loop; transformers' generate (the library's own version of a technique); or
# llama.cpp on the model's GGUF (the engine people deploy), as reference rows beside the lab's.
ENGINES = ("lab", "hf_generate", "llama_cpp")
SAMPLERS = ("ddim", "dpmsolver++")  # the shipped diffusion models' solvers
PIPELINE_SAMPLER = "pipeline"  # a diffusers pipeline runs its own scheduler
MODEL_KINDS = ("llm", "diffusion")
VARIANT_FIELDS = ("name", "techniques", "engine", "threads")
MAX_THREADS = 256
SWEEP_FIELD = "sweep"  # a table (or list of tables) of one technique's knob values, expanded into variants
SWEEP_KEYS = ("technique", "name")  # a sweep table's own keys; every other key is a knob of its technique
# Every variant runs in every repeat and a sweep's product grows fast: past this a list is more likely a typo
# than a plan, and the run would take hours.
MAX_VARIANTS = 64


@dataclass
class Variant:
    """One variant: a name, what runs it, its techniques as validated tables ({'name': ..., knob: value}), and
    the threads it runs on (0: the spec's)."""
    name: str
    engine: str = "lab"
    techniques: list[dict] = field(default_factory=list)
    threads: int = 0

    def stored(self) -> dict:
        """What the store keeps; threads only when set, so specs written before it existed hash as they did."""
        out = asdict(self)
        if not self.threads:
            del out["threads"]
        return out

    @property
    def is_baseline(self) -> bool:
        return not self.techniques and self.engine == "lab" and not self.threads


@dataclass
class Spec:
    name: str = knob("experiment", help="A short name for the experiment.")
    description: str = knob("", help="Free text.")
    model: str = knob("smollm2-135m-instruct", help="Built-in name, local folder, or cached hub id.")
    device: str = knob("auto", choices=("auto", "cpu", "cuda"), help="auto, cpu or cuda.")
    workload: str = knob("chat", choices=tuple(WORKLOADS), help=(
        "chat, grounded, perplexity, needle or context_qa (LLM); digits (the shipped diffusion models' default); "
        "image_prompts (a diffusers pipeline's default)."))
    prompts: int = knob(4, min=1, max=1000, help="How many workload items (prompts, text windows or image "
                                                 "prompts) to use.")
    max_new_tokens: int = knob(32, min=1, max=4096, unit="tokens", help="Tokens to generate per prompt (chat).")
    batch_size: int = knob(1, min=1, max=64, help=(
        "Sequences generated together (generation workloads); above 1 the prompts are left-padded into one batch "
        "and each sequence stops on its own."))
    repeats: int = knob(3, min=1, max=100, help="Measured repeats; variants interleave within each repeat.")
    warmup: int = knob(1, min=0, max=10, help="Unmeasured warm-up passes per variant before the repeats.")
    seed: int = knob(0, min=0, max=2**31 - 1, help="Seed for sampling; the same for every variant.")
    threads: int = knob(0, min=0, max=MAX_THREADS, help="torch threads for every variant (0: keep torch's default).")
    temperature: float = knob(0.0, min=0.0, max=5.0, help="0 = greedy; above 0 samples with this temperature.")
    top_p: float = knob(1.0, min=0.01, max=1.0, help="Nucleus sampling mass (used when temperature > 0).")
    perplexity_tokens: int = knob(256, min=0, max=100_000, unit="tokens", help=(
        "Held-out tokens scored for perplexity per variant (0: skip)."))
    perplexity_window: int = knob(256, min=16, max=8192, unit="tokens", help="Window length for perplexity scoring.")
    needle_lengths: list = knob([1024, 2048, 4096], min=64, max=32768, unit="tokens",
                                help="needle workload: context lengths in tokens.")
    needle_depths: list = knob([0, 25, 50, 75, 100], min=0, max=100, unit="%",
                               help="needle workload: pass-key depths in % of the context.")
    classes: list = knob(list(range(10)), min=0, max=9, help="diffusion: the digit classes to generate.")
    images_per_class: int = knob(1, min=1, max=100, help="diffusion: images generated per class (each with its own "
                                                         "seed).")
    steps: int = knob(50, min=1, max=1000, help="diffusion: sampler steps of the baseline.")
    guidance: float = knob(1.5, min=1.0, max=20.0, help=(
        "diffusion: classifier-free guidance scale (1 = no guidance; the digits models score best at 1.5)."))
    sampler: str = knob("ddim", choices=(*SAMPLERS, PIPELINE_SAMPLER), help=(
        "diffusion: ddim or dpmsolver++ (shipped models); pipeline (a diffusers pipeline's own scheduler, its "
        "default)."))
    image_size: int = knob(0, min=0, max=4096, unit="px", help=(
        "pipeline: image height and width in pixels (0: the pipeline's default)."))
    variants: list[Variant] = field(default_factory=list)
    # Resolved once by lab/bench/validate.py from the model; not part of what the user writes or the store keeps.
    model_kind: str = field(default="llm", compare=False)
    pipeline: bool = field(default=False, compare=False)  # a diffusers pipeline folder (not a shipped denoiser)

    def to_dict(self) -> dict:
        """What the store keeps and the spec hash covers: the user's fields and the variants."""
        out = {k.name: copy.deepcopy(getattr(self, k.name)) for k in FIELDS.values()}
        out["variants"] = [v.stored() for v in self.variants]
        return out

    @classmethod
    def from_stored(cls, stored: dict, model_kind: str, pipeline: bool = False) -> "Spec":
        """A spec as the store keeps it (validated when it was submitted), with its resolved model kind."""
        values = check_fields({k: v for k, v in stored.items() if k != "variants"})
        variants = [Variant(v["name"], v.get("engine", "lab"), v.get("techniques", []), v.get("threads", 0))
                    for v in stored["variants"]]
        return cls(**values, variants=variants, model_kind=model_kind, pipeline=pipeline)


FIELDS: dict[str, KnobInfo] = {k.name: k for k in knobs_of(Spec)}
FIELD_NAMES = (*FIELDS, "variants", SWEEP_FIELD)


def check_fields(raw: dict) -> dict:
    """Each field of a raw spec checked on its own, defaults filled; the variants and sweeps are left to the
    caller (expand_sweeps, then lab/bench/validate.py)."""
    if not isinstance(raw, dict):
        raise SpecError(f"the spec: expected a table of fields ({', '.join(FIELD_NAMES)}), got {shown(raw)}")
    unknown = sorted(named(str(k)) for k in raw if k not in FIELD_NAMES)  # str(): a Python caller's keys
    if unknown:
        raise SpecError(f"unknown field(s) {', '.join(unknown)}; allowed fields: {', '.join(FIELD_NAMES)}")
    values = {name: info.validate(f"field '{name}'", copy.deepcopy(raw[name])) if name in raw
              else copy.deepcopy(info.default) for name, info in FIELDS.items()}
    check_length("field 'name'", values["name"], "Experiment", "name")
    if not values["model"].isprintable():  # no folder or hub id holds control characters; keeps errors on one line
        raise SpecError(f"field 'model': {shown(values['model'])} holds control characters; allowed: a built-in "
                        f"name, a local folder or a cached hub id")
    return values


def column_limit(table: str, column: str) -> int:
    """The length of a String column of the store. Read from the table itself, so the check follows a
    migration; SQLite ignores the length, PostgreSQL refuses longer text only when the results are saved."""
    return getattr(store, table).__table__.c[column].type.length


def check_length(where: str, value: str, table: str, column: str) -> None:
    limit = column_limit(table, column)
    if len(value) > limit:
        raise SpecError(f"{where}: {len(value)} characters is longer than the store keeps ({table}.{column}); "
                        f"allowed: at most {limit} characters")


def expand_runs(raw: dict) -> list[dict]:
    """Raw specs of a file: itself, or one per [[runs]] table merged over the top-level fields."""
    if not isinstance(raw, dict):
        raise SpecError(f"the spec: expected a table of fields, got {shown(raw)}")
    raw = dict(raw)
    runs = raw.pop("runs", None)
    if runs is None:
        return [raw]
    if not isinstance(runs, list) or not runs or not all(isinstance(r, dict) for r in runs):
        raise SpecError(f"field 'runs': expected a non-empty list of tables ([[runs]]), each overriding fields; "
                        f"got {shown(runs)}")
    out = []
    for override in runs:
        merged = {**copy.deepcopy(raw), **override}
        name, workload = raw.get("name", "experiment"), merged.get("workload", "chat")
        # only a well-typed name is extended; a wrong one is left for validate() to refuse by name
        if "name" not in override and isinstance(name, str) and isinstance(workload, str):
            merged["name"] = f"{name} ({workload})"
        out.append(merged)
    return out


KnobsOf = Callable[[str], dict[str, KnobInfo]]  # a technique's name -> its declared knobs (SpecError if unknown)


@dataclass
class _Axis:
    """One swept knob: where it sits in the variant's techniques and its validated values, in the order given."""
    technique: int
    knob: str
    values: list


@dataclass
class _Planned:
    """A raw variant, where it came from (for errors), and the knobs it sweeps (none: it runs as written)."""
    where: str
    variant: object
    axes: list[_Axis]

    @property
    def count(self) -> int:
        return math.prod(len(a.values) for a in self.axes)


def expand_sweeps(variants: list, sweep, knobs_of: KnobsOf) -> list[tuple[str, object]]:
    """The raw variants a spec runs, each with where it came from ('variants[1]', 'sweep'), sweeps expanded.

    Two ways to sweep, both validated here, value by value, by the technique's own knob declaration:

    - a number or choice knob given a list inside a variant runs that variant once per value:
          [[variants]]
          name = "snapkv ratio"
          techniques = [{ name = "snapkv", compression_ratio = [0.25, 0.5, 0.75] }]
      gives "snapkv ratio (compression_ratio=0.25)", "... (compression_ratio=0.5)", ...; several listed knobs (in
      one technique or across the variant's techniques) give every combination, the first listed knob varying
      slowest, named "name (knob=value, knob2=value2)" (a variant without a name is named by its techniques);
    - a `sweep` table (or a list of them, [[sweep]]) at the top level or in a [[runs]] table appends one variant
      per combination of one technique's knobs, after the spec's own variants (the baseline stays):
          [sweep]
          technique = "snapkv"
          name = "snapkv"                     # optional; the variants' name before " (knob=value, ...)"
          compression_ratio = [0.25, 0.5]     # a list: swept
          window_size = [32, 64]
          kernel_size = 7                     # a single value: kept for every variant
      or inline: sweep = { technique = "snapkv", compression_ratio = [0.25, 0.5] }.

    Refused, naming the variant and knob: an empty list, a value the knob does not allow (with its allowed
    range), a value listed twice, a list for a knob that is neither a number nor a choice (a list-typed knob
    keeps its list as its value), a sweep table that lists nothing, and more than MAX_VARIANTS variants in all.
    What is malformed otherwise (not a table, an unknown knob) is left as it is for validation to refuse."""
    planned = [_plan(f"variants[{i}]", v, knobs_of) for i, v in enumerate(variants)]
    planned += [_plan_sweep(where, table, knobs_of) for where, table in _sweep_tables(sweep)]
    _check_count(planned)
    return [(p.where, v) for p in planned for v in _combinations(p)]


def _sweep_tables(sweep) -> list[tuple[str, dict]]:
    if sweep is None:
        return []
    if isinstance(sweep, dict):
        return [(SWEEP_FIELD, sweep)]
    if isinstance(sweep, list) and sweep and all(isinstance(t, dict) for t in sweep):
        return [(f"{SWEEP_FIELD}[{i}]", t) for i, t in enumerate(sweep)]
    raise SpecError(f"field '{SWEEP_FIELD}': expected a table (technique = \"name\", knob = [values], ...) or a "
                    f"list of them ([[sweep]]), got {shown(sweep)}")


def _plan_sweep(where: str, table: dict, knobs_of: KnobsOf) -> _Planned:
    """A sweep table as the variant it stands for (one technique, its knobs as given), and its axes."""
    technique = table.get("technique")
    if not isinstance(technique, str):
        raise SpecError(f"{where}.technique: expected the name of a technique, got {shown(technique)}")
    name = table.get("name", technique)
    if not isinstance(name, str) or not name:
        raise SpecError(f"{where}.name: expected a non-empty string (the variants' name before their knob "
                        f"values), got {shown(name)}")
    knobs = {k: v for k, v in table.items() if k not in SWEEP_KEYS}
    planned = _plan(where, {"name": name, "techniques": [{"name": technique, **knobs}]}, knobs_of)
    if not planned.axes:
        raise SpecError(f"{where} ({named(name)}): no knob of '{named(technique)}' is given a list of values, so it "
                        f"sweeps nothing; give one a list (e.g. knob = [1, 2]), or write the variant as [[variants]]")
    return planned


def _plan(where: str, variant, knobs_of: KnobsOf) -> _Planned:
    """The knobs a raw variant sweeps. A variant too malformed to read is planned as it is: validation refuses it
    with its own words (and a list never reaches a technique, whose knob check refuses a list for a number)."""
    techniques = variant.get("techniques") if isinstance(variant, dict) else None
    name = variant.get("name", "") if isinstance(variant, dict) else None
    if not isinstance(techniques, list) or not isinstance(name, str):
        return _Planned(where, variant, [])
    axes = []
    for index, entry in enumerate(techniques):
        listed = [k for k, v in entry.items() if isinstance(v, list)] if isinstance(entry, dict) else []
        if not listed or not isinstance(entry.get("name"), str):
            continue
        try:
            knobs = knobs_of(entry["name"])
        except SpecError as e:
            raise SpecError(f"{where} ({named(name or 'unnamed')}): {e}") from None
        for listed_knob in listed:
            info = knobs.get(listed_knob)
            if info is not None and info.type is not list:  # an unknown knob is left for validation to name
                context = f"{where} ({named(name or 'unnamed')}): technique '{entry['name']}', knob '{listed_knob}'"
                axes.append(_Axis(index, listed_knob, _swept_values(context, info, entry[listed_knob])))
    return _Planned(where, variant, axes)


def _swept_values(where: str, info: KnobInfo, values: list) -> list:
    """A knob's listed values, each checked by the knob's declaration as if it were given alone."""
    if info.type not in (int, float) and info.choices is None:
        raise SpecError(f"{where}: a list of values sweeps a number or choice knob; this one takes "
                        f"{info.expected()}, got {shown(values)}")
    if not values:
        raise SpecError(f"{where}: an empty list sweeps nothing; give one value or several, each "
                        f"{info.expected()}")
    if len(values) > MAX_VARIANTS:  # before checking each value: a huge list must not cost a long wait
        raise SpecError(f"{where}: {len(values)} values would make {len(values)} variants; allowed: at most "
                        f"{MAX_VARIANTS} in one experiment")
    checked = [info.validate(where, v) for v in values]
    twice = next((v for i, v in enumerate(checked) if v in checked[:i]), None)
    if twice is not None:
        raise SpecError(f"{where}: {shown(twice)} is listed twice; each value makes one variant, list it once")
    return checked


def _check_count(planned: list[_Planned]) -> None:
    total = sum(p.count for p in planned)
    if total > MAX_VARIANTS:
        swept = "; ".join(f"{p.where}: {' x '.join(str(len(a.values)) for a in p.axes)} = {p.count}"
                          for p in planned if p.axes)
        raise SpecError(f"field 'variants': the sweeps expand to {total} variants ({swept}); allowed: at most "
                        f"{MAX_VARIANTS} in one experiment; list fewer values, or split the sweep over [[runs]]")


def _combinations(planned: _Planned) -> list:
    """The planned variant once per combination of its axes' values (itself when it sweeps nothing)."""
    if not planned.axes:
        return [planned.variant]
    variant = planned.variant
    repeated = {a.knob for a in planned.axes if sum(b.knob == a.knob for b in planned.axes) > 1}
    out = []
    for combination in itertools.product(*(a.values for a in planned.axes)):
        techniques = copy.deepcopy(variant["techniques"])
        parts = []
        for axis, value in zip(planned.axes, combination):
            entry = techniques[axis.technique]
            entry[axis.knob] = value
            # the same knob name swept in two techniques: say whose it is
            label = f"{entry['name']}.{axis.knob}" if axis.knob in repeated else axis.knob
            parts.append(f"{label}={value}")
        name = variant.get("name", "")
        # an unnamed variant stays unnamed: validation names it by its techniques, values included
        out.append({**variant, "techniques": techniques, "name": f"{name} ({', '.join(parts)})" if name else ""})
    return out


def spec_hash(spec: Spec | dict) -> str:
    """Hash of what determines the results (name and description excluded)."""
    data = spec.to_dict() if isinstance(spec, Spec) else spec
    relevant = {k: v for k, v in data.items() if k not in ("name", "description")}
    return hashlib.sha256(json.dumps(relevant, sort_keys=True).encode()).hexdigest()[:16]
