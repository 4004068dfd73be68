"""The experiment spec: model + workload + variants, read from TOML or built by a page, validated before
anything is stored or run. Every error names the field and its allowed values."""
from __future__ import annotations

import copy
import hashlib
import json
import math
import tomllib
from pathlib import Path

from lab.diffusion import SAMPLERS
from lab.techniques import SpecError, build
from lab.techniques.base import named, shown
from lab.workloads import WORKLOADS, check_workload

ENGINES = ("lab", "hf_generate")

# field -> (type, default, min, max, help); choices-typed fields are checked separately below
FIELDS = {
    "name": (str, "experiment", None, None, "A short name for the experiment."),
    "description": (str, "", None, None, "Free text."),
    "model": (str, "smollm2-135m-instruct", None, None, "Built-in name, local folder, or cached hub id."),
    "device": (str, "auto", None, None, "auto, cpu or cuda."),
    "workload": (str, "chat", None, None, "chat, grounded, perplexity, needle or context_qa (LLM); digits "
                                          "(the shipped diffusion models' default); image_prompts (a diffusers "
                                          "pipeline's default)."),
    "prompts": (int, 4, 1, 1000, "How many workload items (prompts, text windows or image prompts) to use."),
    "max_new_tokens": (int, 32, 1, 4096, "Tokens to generate per prompt (chat)."),
    "batch_size": (int, 1, 1, 64, "Sequences generated together (generation workloads); above 1 the prompts are "
                                  "left-padded into one batch and each sequence stops on its own."),
    "repeats": (int, 3, 1, 100, "Measured repeats; variants interleave within each repeat."),
    "warmup": (int, 1, 0, 10, "Unmeasured warm-up passes per variant before the repeats."),
    "seed": (int, 0, 0, 2**31 - 1, "Seed for sampling; the same for every variant."),
    "threads": (int, 0, 0, 256, "torch threads for every variant (0: keep torch's default)."),
    "temperature": (float, 0.0, 0.0, 5.0, "0 = greedy; above 0 samples with this temperature."),
    "top_p": (float, 1.0, 0.01, 1.0, "Nucleus sampling mass (used when temperature > 0)."),
    "perplexity_tokens": (int, 256, 0, 100_000, "Held-out tokens scored for perplexity per variant (0: skip)."),
    "perplexity_window": (int, 256, 16, 8192, "Window length for perplexity scoring."),
    "needle_lengths": (list, [1024, 2048, 4096], 64, 32768, "needle workload: context lengths in tokens."),
    "needle_depths": (list, [0, 25, 50, 75, 100], 0, 100, "needle workload: pass-key depths in % of the context."),
    "classes": (list, list(range(10)), 0, 9, "diffusion: the digit classes to generate."),
    "images_per_class": (int, 1, 1, 100, "diffusion: images generated per class (each with its own seed)."),
    "steps": (int, 50, 1, 1000, "diffusion: sampler steps of the baseline."),
    "guidance": (float, 1.5, 1.0, 20.0, "diffusion: classifier-free guidance scale (1 = no guidance; the digits "
                                          "models score best at 1.5)."),
    "sampler": (str, "ddim", None, None, "diffusion: ddim or dpmsolver++ (shipped models); pipeline (a diffusers "
                                         "pipeline's own scheduler, its default)."),
    "image_size": (int, 0, 0, 4096, "pipeline: image height and width in pixels (0: the pipeline's default)."),
    "variants": (list, None, None, None, "The variants; a baseline (no technique) is added when missing."),
}
PIPELINE_SAMPLER = "pipeline"  # a diffusers pipeline runs its own scheduler
CHOICES = {"device": ("auto", "cpu", "cuda"), "workload": tuple(WORKLOADS), "sampler": (*SAMPLERS, PIPELINE_SAMPLER)}
DIFFUSION_WORKLOADS = ("digits", "image_prompts")
VARIANT_FIELDS = ("name", "techniques", "engine")


def _check_field(key: str, value):
    ftype, _default, lo, hi, _help = FIELDS[key]
    if ftype is list:  # lists of whole numbers in [lo, hi]
        if not isinstance(value, list) or not value or not all(isinstance(v, int) and not isinstance(v, bool)
                                                               for v in value):
            raise SpecError(f"field '{key}': expected a non-empty list of whole numbers ({lo} to {hi}), "
                            f"got {shown(value)}")
        bad = [v for v in value if v < lo or v > hi]
        if bad:
            raise SpecError(f"field '{key}': {shown(bad)} out of range; allowed: {lo} to {hi}")
        return value
    if ftype is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value) if abs(value) < 2 ** 53 else math.inf  # beyond any range; float() could overflow
    # NaN passes every range comparison, so a finite number is part of the type
    if not isinstance(value, ftype) or isinstance(value, bool) or ftype is float and not math.isfinite(value):
        raise SpecError(f"field '{key}': expected a {ftype.__name__}"
                        f"{f' from {lo} to {hi}' if lo is not None else ''}, got {shown(value)}")
    if lo is not None and (value < lo or value > hi):
        raise SpecError(f"field '{key}': {shown(value)} is out of range; allowed: {lo} to {hi}")
    if key in CHOICES and value not in CHOICES[key]:
        raise SpecError(f"field '{key}': {shown(value)} is not allowed; allowed: {', '.join(CHOICES[key])}")
    return value


def column_limit(table: str, column: str) -> int:
    """The length of a String column of the store. Read from the table itself, so the check follows a
    migration; SQLite ignores the length, PostgreSQL refuses longer text only when the results are saved."""
    from lab import store
    return getattr(store, table).__table__.c[column].type.length


def _check_length(where: str, value: str, table: str, column: str) -> None:
    limit = column_limit(table, column)
    if len(value) > limit:
        raise SpecError(f"{where}: {len(value)} characters is longer than the store keeps ({table}.{column}); "
                        f"allowed: at most {limit} characters")


def _quoted(name: str) -> str:
    return f"'{name}'" if name.isprintable() and len(name) <= 80 else shown(name)


def _normalize_variant(i: int, variant, model_kind: str, spec: dict) -> dict:
    if not isinstance(variant, dict):
        raise SpecError(f"variants[{i}]: expected a table with name and techniques, got {shown(variant)}")
    unknown = sorted(named(str(k)) for k in variant if k not in VARIANT_FIELDS)  # str(): a Python caller's keys
    if unknown:
        raise SpecError(f"variants[{i}]: unknown field(s) {', '.join(unknown)}; allowed: {', '.join(VARIANT_FIELDS)}")
    # The name and engine are checked before the techniques, so a wrong type is reported as itself rather
    # than inside a technique's error (and `name = false` is refused, not taken as "no name").
    name = variant.get("name", "")
    if not isinstance(name, str):
        raise SpecError(f"variants[{i}].name: expected a string, got {shown(name)}")
    engine = variant.get("engine", "lab")
    if not isinstance(engine, str) or engine not in ENGINES:
        raise SpecError(f"variants[{i}].engine: {shown(engine)} is not allowed; allowed: {', '.join(ENGINES)}")
    techniques = variant.get("techniques", [])
    if not isinstance(techniques, list):
        raise SpecError(f"variants[{i}].techniques: expected a list of tables, got {shown(techniques)}")
    try:
        built = build(techniques, model_kind=model_kind)
        _check_against_spec(built, spec)
    except SpecError as e:
        raise SpecError(f"variants[{i}] ({named(name or 'unnamed')}): {e}") from None
    if engine == "hf_generate" and built:
        raise SpecError(f"variants[{i}]: engine 'hf_generate' is the raw transformers reference and takes no "
                        f"techniques")
    given = bool(name)
    name = name or (" + ".join(t.label() for t in built) if built else ("baseline" if engine == "lab" else engine))
    try:
        _check_length(f"variants[{i}].name", name, "Run", "variant")
    except SpecError as e:
        if given:
            raise
        # a name made from long knob values (a draft model's path): say where it came from
        raise SpecError(f"{e} (the name made from its techniques; give the variant a shorter name)") from None
    return {"name": name, "engine": engine,
            "techniques": [{"name": t.name, **t.params()} for t in built]}


def _check_against_spec(built: list, spec: dict) -> None:
    architecture, denoiser_class = _model_lookup(_denoiser, spec["model"])
    for t in built:
        if architecture and t.denoisers and architecture not in t.denoisers:
            raise SpecError(f"technique '{t.name}' works on {' or '.join(t.denoisers)} denoisers; model "
                            f"'{spec['model']}' is a {architecture}")
        if denoiser_class in t.unsupported_denoisers:
            raise SpecError(f"technique '{t.name}' does not work on {denoiser_class} (the denoiser of "
                            f"'{spec['model']}'): {t.unsupported_denoisers[denoiser_class]}")
        t.check_spec(spec)


def _denoiser(model: str) -> tuple[str | None, str | None]:
    """The denoiser architecture and class of a diffusion model (None, None for an LLM)."""
    from lab.diffusion.models import DIFFUSION_MODELS
    from lab.diffusion.pipelines import pipeline_folder, pipeline_info
    if model in DIFFUSION_MODELS:
        return DIFFUSION_MODELS[model].architecture, None
    if pipeline_folder(model) is None:
        return None, None
    info = pipeline_info(model)
    return info.architecture, info.denoiser_class


def _is_pipeline(model: str) -> bool:
    from lab.diffusion.models import DIFFUSION_MODELS
    from lab.diffusion.pipelines import pipeline_folder
    return model not in DIFFUSION_MODELS and pipeline_folder(model) is not None


def _check_workload_kind(spec: dict, raw: dict, model_kind: str) -> None:
    """A shipped diffusion model takes digits, a pipeline image_prompts (their defaults, with their samplers);
    an LLM takes the others."""
    pipeline = model_kind == "diffusion" and _is_pipeline(spec["model"])
    if model_kind == "diffusion" and "workload" not in raw:
        spec["workload"] = "image_prompts" if pipeline else "digits"
    if pipeline and "sampler" not in raw:
        spec["sampler"] = PIPELINE_SAMPLER
    if model_kind == "diffusion":
        allowed = ("image_prompts",) if pipeline else ("digits",)
    else:
        allowed = tuple(w for w in WORKLOADS if w not in DIFFUSION_WORKLOADS)
    if spec["workload"] not in allowed:
        what = "diffusers pipeline" if pipeline else f"{model_kind} model"
        raise SpecError(f"field 'workload': {spec['workload']!r} does not fit the {what} {_quoted(spec['model'])}; "
                        f"allowed: {', '.join(allowed)}")
    if model_kind == "diffusion" and (spec["sampler"] == PIPELINE_SAMPLER) != pipeline:
        allowed = (PIPELINE_SAMPLER,) if pipeline else SAMPLERS
        raise SpecError(f"field 'sampler': {spec['sampler']!r} does not fit model {_quoted(spec['model'])}"
                        f"{' (a diffusers pipeline runs its own scheduler)' if pipeline else ''}; "
                        f"allowed: {', '.join(allowed)}")


def _model_lookup(function, model: str):
    """Run a lookup of the model's files; a name the OS cannot take as a path (too long, unreadable) or a
    damaged model_index.json is the model field's error, not a crash."""
    try:
        return function(model)
    except SpecError:
        raise
    except (OSError, ValueError) as e:
        reason = e.strerror if isinstance(e, OSError) and e.strerror else shown(str(e))
        raise SpecError(f"field 'model': {shown(model)} cannot be read as a model folder or hub id ({reason}); "
                        f"allowed: a built-in name, a local folder or a cached hub id") from None


def validate(raw: dict, check_model_exists: bool = True) -> dict:
    """Return the normalized spec (defaults filled, baseline first) or raise SpecError.

    Everything that would fail later is refused here, before anything is stored: types and ranges of every
    field, variant and knob; names longer than the store's columns; inputs longer than the model's context;
    and a peak-memory estimate above what is free."""
    if not isinstance(raw, dict):
        raise SpecError(f"the spec: expected a table of fields ({', '.join(FIELDS)}), got {shown(raw)}")
    unknown = sorted(named(str(k)) for k in raw if k not in FIELDS)  # str(): a Python caller's keys may be any type
    if unknown:
        raise SpecError(f"unknown field(s) {', '.join(unknown)}; allowed fields: {', '.join(FIELDS)}")
    spec = {k: (copy.deepcopy(raw[k]) if k in raw else FIELDS[k][1]) for k in FIELDS if k != "variants"}
    for key in spec:
        spec[key] = _check_field(key, spec[key])
    _check_length("field 'name'", spec["name"], "Experiment", "name")
    if not spec["model"].isprintable():  # no folder or hub id holds control characters; keeps errors on one line
        raise SpecError(f"field 'model': {shown(spec['model'])} holds control characters; allowed: a built-in "
                        f"name, a local folder or a cached hub id")
    check_workload(spec["workload"])
    from lab.diffusion.models import DIFFUSION_MODELS
    pipeline = spec["model"] not in DIFFUSION_MODELS and _model_lookup(_is_pipeline, spec["model"])
    model_kind = "diffusion" if spec["model"] in DIFFUSION_MODELS or pipeline else "llm"
    if check_model_exists:
        from lab.models import check_model
        model_kind = _model_lookup(check_model, spec["model"])
    _check_workload_kind(spec, raw, model_kind)
    variants = raw.get("variants", [])
    if not isinstance(variants, list):
        raise SpecError(f"field 'variants': expected a list of tables, got {shown(variants)}")
    normalized = [_normalize_variant(i, v, model_kind, spec) for i, v in enumerate(variants)]
    baselines = [v for v in normalized if not v["techniques"] and v["engine"] == "lab"]
    if not baselines:
        normalized.insert(0, {"name": "baseline", "engine": "lab", "techniques": []})
    else:  # the baseline goes first: every other variant is scored against it
        normalized.remove(baselines[0])
        normalized.insert(0, baselines[0])
    names = [v["name"] for v in normalized]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise SpecError(f"field 'variants': variant name(s) used twice: {', '.join(named(d) for d in dupes)}; "
                        f"give each variant its own name")
    if spec["workload"] in ("chat", "grounded", "context_qa", "image_prompts"):
        from lab.workloads import QA, chat_prompts, grounded_prompts, image_prompts
        available = {"chat": lambda: len(chat_prompts()), "grounded": lambda: len(grounded_prompts()),
                     "context_qa": lambda: len(QA), "image_prompts": lambda: len(image_prompts())
                     }[spec["workload"]]()
        if spec["prompts"] > available:
            raise SpecError(f"field 'prompts': {spec['prompts']} is more than the {spec['workload']} workload has; "
                            f"allowed: 1 to {available}")
    if spec["batch_size"] > 1 and model_kind == "llm":
        _check_batchable(spec["batch_size"], normalized)
    spec["variants"] = normalized
    if model_kind == "llm":
        _check_limits(spec)
    return spec


def _check_batchable(size: int, variants: list[dict]) -> None:
    from lab.techniques import get
    for v in variants:
        if v["engine"] == "hf_generate":
            raise SpecError(f"field 'batch_size': {size} is not supported by variant '{v['name']}' (engine "
                            f"'hf_generate' runs batch 1); allowed: 1, or remove that variant")
        cache = [t["name"] for t in v["techniques"] if get(t["name"]).slot == "cache"]
        if cache:
            raise SpecError(f"field 'batch_size': {size} is not supported by variant '{v['name']}' (the cache "
                            f"technique '{cache[0]}' runs batch 1); allowed: 1")


def _check_limits(spec: dict) -> None:
    """Context and memory of an LLM run, from the model's config (no weights loaded)."""
    from lab.models import model_shape
    from lab.spec_limits import check_context, check_memory, free_memory
    shape = _model_lookup(model_shape, spec["model"])
    if shape is None:  # sizes unknown here (no readable config): loading will tell
        return
    check_context(spec, shape)
    check_memory(spec, shape, *free_memory(spec["device"]))


def _read_toml(path: str | Path) -> dict:
    path = Path(path)
    if not path.exists():
        raise SpecError(f"spec file not found: {path}")
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except tomllib.TOMLDecodeError as e:
        raise SpecError(f"{path}: not valid TOML ({e})") from None


def load_toml(path: str | Path) -> dict:
    """One experiment from a spec file (a file with [[runs]] must be read with load_toml_specs)."""
    specs = load_toml_specs(path)
    if len(specs) > 1:
        raise SpecError(f"{path}: holds {len(specs)} experiments ([[runs]]); expected one")
    return specs[0]


def load_toml_specs(path: str | Path) -> list[dict]:
    """The experiments of a spec file: one, or one per [[runs]] table, each run overriding the top-level
    fields (e.g. the same variants on two workloads)."""
    content = _read_toml(path)
    specs = []
    for i, raw in enumerate(expand_runs(content)):
        try:
            specs.append(validate(raw))
        except SpecError as e:
            raise SpecError(f"runs[{i}]: {e}" if "runs" in content else str(e)) from None
    return specs


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


def spec_hash(spec: dict) -> str:
    """Hash of what determines the results (name and description excluded)."""
    relevant = {k: v for k, v in spec.items() if k not in ("name", "description")}
    return hashlib.sha256(json.dumps(relevant, sort_keys=True).encode()).hexdigest()[:16]
