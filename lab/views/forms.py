"""What the pages need to build a spec from widgets, without Streamlit or torch: presets, field help,
and the widget each technique knob calls for (derived from its declaration)."""
from __future__ import annotations

import copy
import re
import tomllib
from pathlib import Path
from typing import Any

from lab.bench.loader import check_model_folder
from lab.diffusion import models as diffusion_models
from lab.diffusion.models import DIFFUSION_MODELS
from lab.diffusion.pipelines import pipeline_info
from lab.errors import SpecError
from lab.knobs import KnobInfo
from lab.llm import models as llm_models
from lab.paths import ROOT
from lab.spec import ENGINES, FIELDS, MAX_VARIANTS, expand_runs
from lab.techniques import all_techniques, registry

# the pages' model pickers (a page reads lab.views, never the model modules themselves)
BUILTIN_MODELS, DEFAULT_LLM = llm_models.BUILTIN_MODELS, llm_models.DEFAULT_LLM
DEFAULT_DIFFUSION = diffusion_models.DEFAULT_DIFFUSION
EXPERIMENTS_DIR = ROOT / "experiments"
VARIANT_ENGINES = ENGINES  # what runs a variant: the lab's loop, or transformers' generate as the reference
SWEEP_WIDGETS = ("number", "slider", "select")  # the knobs a sweep can list values for: numbers and choices
SWEEP_HELP = ("Several values, separated by commas (e.g. 0.25, 0.5, 0.75), run this variant once per value, "
              "named 'variant (knob=value)'; values in several knobs run every combination. One value: no sweep.")


def presets(kind: str | None = None) -> dict[str, dict]:
    """Raw (unvalidated) specs of experiments/*.toml and experiments/workshop/*.toml, by path without suffix (a
    file with [[runs]] gives one per run, named by its run); the kind's quick start first, then the workshop in
    order. `kind` ('llm' or 'diffusion') keeps the specs for that model kind."""
    return {label: raw for label, (_path, _index, raw) in _preset_entries(kind).items()}


def preset_origins(kind: str | None = None) -> dict[str, tuple[Path, int]]:
    """Where each preset comes from: its file and, in a file with [[runs]], the run's index (0 otherwise);
    `lab.bench.validate.load_toml_specs(path)[index]` is the spec the preset should give."""
    return {label: (path, index) for label, (path, index, _raw) in _preset_entries(kind).items()}


def _preset_entries(kind: str | None) -> dict[str, tuple[Path, int, dict]]:
    out = {}
    # the quick starts first, then the workshop in its order (labelled workshop/1_kv_cache), then the rest
    paths = [*EXPERIMENTS_DIR.glob("*.toml"), *EXPERIMENTS_DIR.glob("workshop/*.toml")]
    for path in sorted(paths, key=lambda p: (not p.stem.endswith("quickstart"), p.parent.name != "workshop",
                                             p.stem)):
        with open(path, "rb") as f:
            raws = expand_runs(tomllib.load(f))
        for index, raw in enumerate(raws):
            if kind is not None and (raw.get("model") in DIFFUSION_MODELS) != (kind == "diffusion"):
                continue
            stem = path.relative_to(EXPERIMENTS_DIR).with_suffix("").as_posix()
            label = stem if len(raws) == 1 else _run_label(stem, str(raw.get("name", index + 1)))
            while label in out:  # two runs named alike stay two presets
                label += "'"
            out[label] = (path, index, raw)
    return out


def _run_label(stem: str, run_name: str) -> str:
    return run_name if run_name.startswith(stem) else f"{stem}: {run_name}"


def form_key(page: str, preset: str) -> str:
    """The prefix of every widget key of a page's experiment form: it names the preset, so choosing another
    preset draws new widgets initialised from that preset. (Streamlit keeps a keyed widget's value when only its
    default changes, so keys shared between presets carried the previous preset's values into the next one.)"""
    return f"{page}:{preset}:"


def preset_fields(raw: dict) -> dict:
    """Every field a preset sets except its variants (a copy): the base a form's widgets are laid over, so fields
    the form has no widget for (description, device, seed, perplexity_window, ...) still reach the spec."""
    return {k: copy.deepcopy(v) for k, v in raw.items() if k != "variants"}


def spec_from_form(raw: dict, fields: dict, variants: list[dict]) -> dict:
    """The raw spec a form submits: the preset's fields, overridden by the form's widgets, and its variants."""
    return {**preset_fields(raw), **fields, "variants": variants}


def split_baseline(variants: list[dict]) -> tuple[str, list[dict]]:
    """A preset's baseline name and its other variants, in their order. The baseline is the variant that
    validate() puts first: the first one with no technique on the lab's engine at the experiment's threads
    ('baseline' when there is none)."""
    variants = [v for v in variants if isinstance(v, dict)]
    for i, v in enumerate(variants):
        if not v.get("techniques") and v.get("engine", "lab") == "lab" and not v.get("threads"):
            return v.get("name") or "baseline", variants[:i] + variants[i + 1:]
    return "baseline", variants


def choice_index(options: list, value, fallback=None) -> int:
    """Where a preset's value sits among a widget's options (the fallback's place, or 0, when it is not there)."""
    options = list(options)
    if value in options:
        return options.index(value)
    return options.index(fallback) if fallback in options else 0


def techniques_for(kind: str, architecture: str | None = None, denoiser_class: str | None = None) -> dict[str, type]:
    """The registered techniques that apply to a model kind (and, for diffusion, to its denoiser)."""
    return {name: cls for name, cls in all_techniques().items() if kind in cls.applies_to
            and (architecture is None or not cls.denoisers or architecture in cls.denoisers)
            and denoiser_class not in cls.unsupported_denoisers}


def plugin_errors() -> list[str]:
    """Why a user's technique file (LAB_TECHNIQUES_PATH) or entry point did not load, for the form to show."""
    return registry.plugin_errors()


def pipeline_denoiser(folder: str) -> tuple[str | None, str | None, str | None]:
    """The denoiser architecture and class of a diffusers pipeline folder, and why it cannot be used (if it
    cannot), read without torch."""
    if not folder.strip():
        return None, None, None
    try:
        check_model_folder(folder.strip())  # stat and listing only: /etc, a symlink or a file is refused unread
        info = pipeline_info(folder.strip())
    except SpecError as e:
        return None, None, str(e)
    return info.architecture, info.denoiser_class, None


def preset_path(stem: str) -> Path:
    return EXPERIMENTS_DIR / f"{stem}.toml"


def field_help(name: str) -> str:
    return FIELDS[name].help


def field_range(name: str) -> tuple:
    f = FIELDS[name]
    return f.default, f.min, f.max


def field_choices(name: str) -> tuple:
    return FIELDS[name].choices


def widget_for(k: KnobInfo) -> dict:
    """Which widget a knob needs: select (choices), checkbox (bool), slider (declared), int/float number, or
    text."""
    if k.slider is not None:
        low, high, step = k.slider
        return {"widget": "slider", "min": k.type(low), "max": k.type(high), "step": k.type(step)}
    if k.choices is not None:
        return {"widget": "select", "options": list(k.choices)}
    if k.type is bool:
        return {"widget": "checkbox"}
    if k.type in (int, float):
        step = 1 if k.type is int else (0.01 if (k.max or 1) <= 1 else 0.1)
        return {"widget": "number", "min": k.min, "max": k.max, "step": step}
    return {"widget": "text"}


def knob_label(k: KnobInfo) -> str:
    return f"{k.name} [{k.unit}]" if k.unit else k.name


# --- sweeps: several values for a knob, submitted as the list a spec file would hold (lab.spec.expand_sweeps) ---

def sweepable(k: KnobInfo) -> bool:
    return widget_for(k)["widget"] in SWEEP_WIDGETS


def has_sweep(entries: list[dict], techniques: dict[str, type]) -> bool:
    """Whether a preset variant's techniques list several values for a sweepable knob (the form then opens in
    sweep mode, so the preset's lists are shown rather than cut to one value)."""
    for entry in entries:
        cls = techniques.get(entry.get("name"))
        knobs = {k.name: k for k in cls.knobs()} if cls else {}
        if any(isinstance(v, list) and n in knobs and sweepable(knobs[n]) for n, v in entry.items()):
            return True
    return False


def single_value(value: Any) -> Any:
    """What a one-value widget shows for a preset value: a listed sweep shows its first value."""
    return value[0] if isinstance(value, list) and value else value


def sweep_text(value: Any) -> str:
    """A knob's value (or listed values) as the sweep text input shows it: '0.25, 0.5, 0.75'."""
    return ", ".join(str(v) for v in value) if isinstance(value, list) else str(value)


def sweep_choices(value: Any, options: list) -> list:
    """The options a sweep's multiselect starts with: the preset's listed values (or its one value) offered."""
    values = value if isinstance(value, list) else [value]
    return [v for v in values if v in options]


def chosen_values(chosen: list) -> Any:
    """A multiselect's choice as a spec holds it: one value alone, several as the list that sweeps them (none:
    the empty list, which validation refuses by name)."""
    return chosen[0] if len(chosen) == 1 else list(chosen)


def parse_sweep_values(text: str, k: KnobInfo) -> Any:
    """The values typed for a knob, '0.25, 0.5, 0.75' (commas, semicolons or spaces between), each checked by
    the knob's declaration: one value alone, several as a list; SpecError naming the knob and the bad value."""
    where = f"knob '{k.name}'"
    example = "e.g. 0.25, 0.5, 0.75" if k.type is float else "e.g. 32, 64, 128"
    tokens = [t for t in re.split(r"[,;\s]+", text.strip()) if t]
    if not tokens:
        raise SpecError(f"{where}: enter one value, or several separated by commas ({example}); each "
                        f"{k.expected()}")
    if len(tokens) > MAX_VARIANTS:
        raise SpecError(f"{where}: {len(tokens)} values would make {len(tokens)} variants; allowed: at most "
                        f"{MAX_VARIANTS} in one experiment")
    values = [k.validate(where, _typed(where, token, k, example)) for token in tokens]
    twice = next((v for i, v in enumerate(values) if v in values[:i]), None)
    if twice is not None:
        raise SpecError(f"{where}: {twice} is listed twice; each value makes one variant, list it once")
    return values[0] if len(values) == 1 else values


def sweep_field(text: str, k: KnobInfo) -> tuple[Any, str | None]:
    """What the form submits for a sweep text input, and the error to show under it. On bad input the text
    itself is submitted, so validation refuses it too and nothing runs on values the user did not mean."""
    try:
        return parse_sweep_values(text, k), None
    except SpecError as e:
        return text, str(e)


def _typed(where: str, token: str, k: KnobInfo, example: str) -> Any:
    """A typed token as the knob's type reads it (a choice knob of strings takes it as it is)."""
    if k.type not in (int, float):
        return token
    try:
        return int(token)
    except ValueError:
        pass
    try:
        return float(token)
    except ValueError:
        raise SpecError(f"{where}: {token!r} is not a number; enter one value, or several separated by commas "
                        f"({example}), each {k.expected()}") from None
