"""A raw spec (TOML or a page's form) checked whole, before anything is stored or run: the model kind is decided
here once, every variant's techniques are built against it, and the inputs must fit the model's context and the
free memory. Every error names the field and its allowed values."""
from __future__ import annotations

import tomllib
from pathlib import Path

from lab.bench import limits
from lab.bench.engines import check_engine
from lab.bench.loader import (
    check_model,
    check_model_folder,
    denoiser_of,
    is_pipeline,
    model_kind,
)
from lab.errors import SpecError, named, shown
from lab.knobs import KnobInfo
from lab.llm.models import model_shape
from lab.prompts import DIFFUSION_WORKLOADS, WORKLOADS, available_items
from lab.spec import (
    ENGINES,
    MAX_THREADS,
    PIPELINE_SAMPLER,
    SAMPLERS,
    SWEEP_FIELD,
    VARIANT_FIELDS,
    Spec,
    Variant,
    check_fields,
    check_length,
    expand_runs,
    expand_sweeps,
)
from lab.techniques import build, get
from lab.textfile import read_text_file

# A spec is a few KB (a long sweep tens of KB); a file a hundred times that is no spec.
SPEC_FILE_LIMIT = 2**20


def validate(raw: dict, check_model_exists: bool = True) -> Spec:
    """The spec, typed, defaults filled, baseline first, model kind resolved; or SpecError.

    Everything that would fail later is refused here: types and ranges of every field, variant and knob; a model
    path that is no plain model folder, before any file in it is read; names longer than the store's columns;
    inputs longer than the model's context; and a peak-memory estimate above what is free. Knobs given a list and
    `sweep` tables are expanded first (lab.spec.expand_sweeps), so every expanded variant is checked like one
    written out, and the Spec (and what the store keeps) holds them all."""
    values = check_fields(raw)
    spec = Spec(**values)
    _model_lookup(_check_folder_field, spec.model)  # before any lookup below reads a file in the folder
    spec.pipeline = _model_lookup(is_pipeline, spec.model)
    spec.model_kind = _model_lookup(check_model if check_model_exists else model_kind, spec.model)
    _check_workload_kind(spec, raw)
    variants = raw.get("variants", [])
    if not isinstance(variants, list):
        raise SpecError(f"field 'variants': expected a list of tables, got {shown(variants)}")
    expanded = expand_sweeps(variants, raw.get(SWEEP_FIELD), _knobs_of)
    normalized = [_variant(where, v, spec, check_model_exists) for where, v in expanded]
    baselines = [v for v in normalized if v.is_baseline]
    if not baselines:
        normalized.insert(0, Variant("baseline"))
    else:  # the baseline goes first: every other variant is scored against it
        normalized.remove(baselines[0])
        normalized.insert(0, baselines[0])
    names = [v.name for v in normalized]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise SpecError(f"field 'variants': variant name(s) used twice: {', '.join(named(d) for d in dupes)}; "
                        f"give each variant its own name")
    available = available_items(spec.workload)
    if available is not None and spec.prompts > available:
        raise SpecError(f"field 'prompts': {spec.prompts} is more than the {spec.workload} workload has; "
                        f"allowed: 1 to {available}")
    if spec.batch_size > 1 and spec.model_kind == "llm":
        _check_batchable(spec.batch_size, normalized)
    spec.variants = normalized
    if spec.model_kind == "llm":
        _check_limits(spec)
    return spec


def stored_spec(stored: dict) -> Spec:
    """A spec the store kept (validated when submitted) as a typed Spec again, its model kind resolved."""
    name = stored["model"]
    return Spec.from_stored(stored, model_kind(name), is_pipeline(name))


def _knobs_of(technique: str) -> dict[str, KnobInfo]:
    return {k.name: k for k in get(technique).knobs()}


def _variant(where: str, variant, spec: Spec, check_model_exists: bool) -> Variant:
    """One raw variant (`where`: 'variants[1]', or 'sweep' for one a sweep table made) typed and checked."""
    if not isinstance(variant, dict):
        raise SpecError(f"{where}: expected a table with name and techniques, got {shown(variant)}")
    unknown = sorted(named(str(k)) for k in variant if k not in VARIANT_FIELDS)  # str(): a Python caller's keys
    if unknown:
        raise SpecError(f"{where}: unknown field(s) {', '.join(unknown)}; allowed: {', '.join(VARIANT_FIELDS)}")
    # The name and engine are checked before the techniques, so a wrong type is reported as itself rather
    # than inside a technique's error (and `name = false` is refused, not taken as "no name").
    name = variant.get("name", "")
    if not isinstance(name, str):
        raise SpecError(f"{where}.name: expected a string, got {shown(name)}")
    engine = variant.get("engine", "lab")
    if not isinstance(engine, str) or engine not in ENGINES:
        raise SpecError(f"{where}.engine: {shown(engine)} is not allowed; allowed: {', '.join(ENGINES)}")
    techniques = variant.get("techniques", [])
    if not isinstance(techniques, list):
        raise SpecError(f"{where}.techniques: expected a list of tables, got {shown(techniques)}")
    try:
        built = build(techniques, model_kind=spec.model_kind)
        _check_against_model(built, spec, check_model_exists)
    except SpecError as e:
        raise SpecError(f"{where} ({named(name or 'unnamed')}): {e}") from None
    threads = variant.get("threads", 0)
    if isinstance(threads, bool) or not isinstance(threads, int) or not 0 <= threads <= MAX_THREADS:
        raise SpecError(f"{where}.threads: {shown(threads)} is not allowed; allowed: an integer from 0 (the "
                        f"spec's threads) to {MAX_THREADS}")
    check_engine(where, engine, built, spec, check_model_exists)
    given = bool(name)
    name = name or (" + ".join(t.label() for t in built) if built else ("baseline" if engine == "lab" else engine))
    try:
        check_length(f"{where}.name", name, "Run", "variant")
    except SpecError as e:
        if given:
            raise
        # a name made from long knob values (a draft model's path): say where it came from
        raise SpecError(f"{e} (the name made from its techniques; give the variant a shorter name)") from None
    return Variant(name, engine, [{"name": t.name, **t.params()} for t in built], threads)


def _check_against_model(built: list, spec: Spec, check_model_exists: bool) -> None:
    architecture, denoiser_class = _model_lookup(denoiser_of, spec.model)
    for t in built:
        if architecture and t.denoisers and architecture not in t.denoisers:
            raise SpecError(f"technique '{t.name}' works on {' or '.join(t.denoisers)} denoisers; model "
                            f"'{spec.model}' is a {architecture}")
        if denoiser_class in t.unsupported_denoisers:
            raise SpecError(f"technique '{t.name}' does not work on {denoiser_class} (the denoiser of "
                            f"'{spec.model}'): {t.unsupported_denoisers[denoiser_class]}")
        t.check_spec(spec)
        if check_model_exists:
            t.check_models(check_model)
    shape = _model_lookup(model_shape, spec.model) if spec.model_kind == "llm" and built else None
    for t in built if shape is not None else []:
        t.check_shape(shape)


def _check_workload_kind(spec: Spec, raw: dict) -> None:
    """A shipped diffusion model takes digits, a pipeline image_prompts (their defaults, with their samplers);
    an LLM takes the others."""
    diffusion = spec.model_kind == "diffusion"
    if diffusion and "workload" not in raw:
        spec.workload = "image_prompts" if spec.pipeline else "digits"
    if spec.pipeline and "sampler" not in raw:
        spec.sampler = PIPELINE_SAMPLER
    if diffusion:
        allowed = ("image_prompts",) if spec.pipeline else ("digits",)
    else:
        allowed = tuple(w for w in WORKLOADS if w not in DIFFUSION_WORKLOADS)
    if spec.workload not in allowed:
        what = "diffusers pipeline" if spec.pipeline else f"{spec.model_kind} model"
        raise SpecError(f"field 'workload': {spec.workload!r} does not fit the {what} {_quoted(spec.model)}; "
                        f"allowed: {', '.join(allowed)}")
    if diffusion and (spec.sampler == PIPELINE_SAMPLER) != spec.pipeline:
        allowed = (PIPELINE_SAMPLER,) if spec.pipeline else SAMPLERS
        raise SpecError(f"field 'sampler': {spec.sampler!r} does not fit model {_quoted(spec.model)}"
                        f"{' (a diffusers pipeline runs its own scheduler)' if spec.pipeline else ''}; "
                        f"allowed: {', '.join(allowed)}")


def _quoted(name: str) -> str:
    return f"'{name}'" if name.isprintable() and len(name) <= 80 else shown(name)


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


def _check_folder_field(model: str) -> None:
    """lab.bench.loader.check_model_folder, its refusal named as the spec field's (the draft_model knob names its
    own)."""
    try:
        check_model_folder(model)
    except SpecError as e:
        raise SpecError(f"field 'model': {e}") from None


def _check_batchable(size: int, variants: list[Variant]) -> None:
    for v in variants:
        if v.engine != "lab":
            raise SpecError(f"field 'batch_size': {size} is not supported by variant '{v.name}' (engine "
                            f"'{v.engine}' runs batch 1); allowed: 1, or remove that variant")
        unbatched = [t["name"] for t in v.techniques if not get(t["name"]).batchable]
        if unbatched:
            raise SpecError(f"field 'batch_size': {size} is not supported by variant '{v.name}' (the "
                            f"{get(unbatched[0]).slot} technique '{unbatched[0]}' runs batch 1); allowed: 1")


def _check_limits(spec: Spec) -> None:
    """Context and memory of an LLM run, from the model's config (no weights loaded)."""
    shape = _model_lookup(model_shape, spec.model)
    if shape is None:  # sizes unknown here (no readable config): loading will tell
        return
    limits.check_context(spec, shape)
    limits.check_memory(spec, shape, *limits.free_memory(spec.device))


def load_toml(path: str | Path) -> Spec:
    """One experiment from a spec file (a file with [[runs]] must be read with load_toml_specs)."""
    specs = load_toml_specs(path)
    if len(specs) > 1:
        raise SpecError(f"{path}: holds {len(specs)} experiments ([[runs]]); expected one")
    return specs[0]


def load_toml_specs(path: str | Path) -> list[Spec]:
    """The experiments of a spec file: one, or one per [[runs]] table, each run overriding the top-level
    fields (e.g. the same variants on two workloads)."""
    content = _spec_toml(path)
    specs = []
    for i, raw in enumerate(expand_runs(content)):
        try:
            specs.append(validate(raw))
        except SpecError as e:
            raise SpecError(f"runs[{i}]: {e}" if "runs" in content else str(e)) from None
    return specs


def _spec_toml(path: str | Path) -> dict:
    """The TOML of a spec file, parsed from text read_text_file checked."""
    text = read_text_file(path, SPEC_FILE_LIMIT, "spec file", SpecError)
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise SpecError(f"{path}: not valid TOML ({e})") from None
