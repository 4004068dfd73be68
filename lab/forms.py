"""What the pages need to build a spec from widgets, without Streamlit or torch: presets, field help,
and the widget each technique knob calls for (derived from its declaration)."""
from __future__ import annotations

import tomllib
from pathlib import Path

from lab.experiment import CHOICES, FIELDS, expand_runs
from lab.paths import ROOT
from lab.techniques import KnobInfo

EXPERIMENTS_DIR = ROOT / "experiments"


def presets(kind: str | None = None) -> dict[str, dict]:
    """Raw (unvalidated) specs of experiments/*.toml, by file stem (a file with [[runs]] gives one per run,
    named by its workload); quickstart first. `kind` ('llm' or 'diffusion') keeps the specs for that model kind."""
    from lab.diffusion.models import DIFFUSION_MODELS
    out = {}
    for path in sorted(EXPERIMENTS_DIR.glob("*.toml"), key=lambda p: (p.stem != "quickstart", p.stem)):
        with open(path, "rb") as f:
            raws = expand_runs(tomllib.load(f))
        for raw in raws:
            if kind is not None and (raw.get("model") in DIFFUSION_MODELS) != (kind == "diffusion"):
                continue
            out[path.stem if len(raws) == 1 else f"{path.stem} ({raw.get('workload', 'chat')})"] = raw
    return out


def techniques_for(kind: str, architecture: str | None = None, denoiser_class: str | None = None) -> dict[str, type]:
    """The registered techniques that apply to a model kind (and, for diffusion, to its denoiser)."""
    from lab.techniques import all_techniques
    return {name: cls for name, cls in all_techniques().items() if kind in cls.applies_to
            and (architecture is None or not cls.denoisers or architecture in cls.denoisers)
            and denoiser_class not in cls.unsupported_denoisers}


def pipeline_denoiser(folder: str) -> tuple[str | None, str | None, str | None]:
    """The denoiser architecture and class of a diffusers pipeline folder, and why it cannot be used (if it
    cannot), read without torch."""
    from lab.diffusion.pipelines import pipeline_info
    from lab.techniques import SpecError
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
    return FIELDS[name][4]


def field_range(name: str) -> tuple:
    _t, default, lo, hi, _h = FIELDS[name]
    return default, lo, hi


def field_choices(name: str) -> tuple:
    return CHOICES[name]


def widget_for(k: KnobInfo) -> dict:
    """Which widget a knob needs: select (choices), checkbox (bool), int/float number, or text."""
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
