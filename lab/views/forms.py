"""What the pages need to build a spec from widgets, without Streamlit or torch: presets, field help,
and the widget each technique knob calls for (derived from its declaration)."""
from __future__ import annotations

import copy
import tomllib
from pathlib import Path

from lab.diffusion import models as diffusion_models
from lab.diffusion.models import DIFFUSION_MODELS
from lab.diffusion.pipelines import pipeline_info
from lab.errors import SpecError
from lab.knobs import KnobInfo
from lab.llm import models as llm_models
from lab.paths import ROOT
from lab.spec import ENGINES, FIELDS, expand_runs
from lab.techniques import all_techniques, registry

# the pages' model pickers (a page reads lab.views, never the model modules themselves)
BUILTIN_MODELS, DEFAULT_LLM = llm_models.BUILTIN_MODELS, llm_models.DEFAULT_LLM
DEFAULT_DIFFUSION = diffusion_models.DEFAULT_DIFFUSION
EXPERIMENTS_DIR = ROOT / "experiments"
VARIANT_ENGINES = ENGINES  # what runs a variant: the lab's loop, or transformers' generate as the reference


def presets(kind: str | None = None) -> dict[str, dict]:
    """Raw (unvalidated) specs of experiments/*.toml, by file stem (a file with [[runs]] gives one per run,
    named by its run); the kind's quick start first (quickstart, diffusion_quickstart). `kind` ('llm' or
    'diffusion') keeps the specs for that model kind."""
    return {label: raw for label, (_path, _index, raw) in _preset_entries(kind).items()}


def preset_origins(kind: str | None = None) -> dict[str, tuple[Path, int]]:
    """Where each preset comes from: its file and, in a file with [[runs]], the run's index (0 otherwise);
    `lab.bench.validate.load_toml_specs(path)[index]` is the spec the preset should give."""
    return {label: (path, index) for label, (path, index, _raw) in _preset_entries(kind).items()}


def _preset_entries(kind: str | None) -> dict[str, tuple[Path, int, dict]]:
    out = {}
    for path in sorted(EXPERIMENTS_DIR.glob("*.toml"), key=lambda p: (not p.stem.endswith("quickstart"), p.stem)):
        with open(path, "rb") as f:
            raws = expand_runs(tomllib.load(f))
        for index, raw in enumerate(raws):
            if kind is not None and (raw.get("model") in DIFFUSION_MODELS) != (kind == "diffusion"):
                continue
            label = path.stem if len(raws) == 1 else _run_label(path.stem, str(raw.get("name", index + 1)))
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
    validate() puts first: the first one with no technique on the lab's engine ('baseline' when there is none)."""
    variants = [v for v in variants if isinstance(v, dict)]
    for i, v in enumerate(variants):
        if not v.get("techniques") and v.get("engine", "lab") == "lab":
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
