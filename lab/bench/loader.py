"""Which kind a model is (decided here, once) and loading it: an LLM (lab/llm/models.py), a shipped diffusion
model or a diffusers pipeline folder (lab/diffusion/models.py). A worker keeps the last models it loaded."""
from __future__ import annotations

import threading

from lab.diffusion.models import DIFFUSION_MODELS, MODELS_DIR, check_denoiser, load_denoiser
from lab.diffusion.pipelines import pipeline_folder, pipeline_info
from lab.llm.models import check_llm, default_device, llm_rows, load_llm


def is_pipeline(name: str) -> bool:
    """A diffusers pipeline folder (a local folder or a cached hub snapshot with model_index.json)."""
    return name not in DIFFUSION_MODELS and pipeline_folder(name) is not None


def model_kind(name: str) -> str:
    """'diffusion' for a shipped diffusion model or a pipeline folder, else 'llm' (whether it loads or not)."""
    return "diffusion" if name in DIFFUSION_MODELS or is_pipeline(name) else "llm"


def check_model(name: str) -> str:
    """The model's kind if `name` can be loaded here, else SpecError naming what is allowed."""
    if model_kind(name) == "diffusion":
        check_denoiser(name)
        return "diffusion"
    check_llm(name, others=tuple(DIFFUSION_MODELS))
    return "llm"


def denoiser_of(name: str) -> tuple[str | None, str | None]:
    """The denoiser architecture and class of a diffusion model (None, None for an LLM)."""
    if name in DIFFUSION_MODELS:
        return DIFFUSION_MODELS[name].architecture, None
    if pipeline_folder(name) is None:
        return None, None
    info = pipeline_info(name)
    return info.architecture, info.denoiser_class


_loaded: dict[tuple[str, str], object] = {}  # insertion order = least recently used first
KEEP_LOADED = 2  # a worker keeps the last two models in memory; older ones are released
_lock = threading.Lock()


def load(name: str, device: str | None = None, kind: str | None = None):
    """Load (and keep in memory) a model: a LoadedModel or a LoadedDenoiser. `kind` is the spec's model_kind,
    decided once by validation; without it (a caller with only a name) it is decided here the same way."""
    device = device or default_device()
    with _lock:
        if (name, device) in _loaded:
            _loaded[(name, device)] = _loaded.pop((name, device))
            return _loaded[(name, device)]
        kind = kind or check_model(name)
        loaded = load_denoiser(name, device) if kind == "diffusion" else load_llm(name, device)
        _loaded[(name, device)] = loaded
        while len(_loaded) > KEEP_LOADED:
            _loaded.pop(next(iter(_loaded)))
        return loaded


def unload_all() -> None:
    """Forget every kept model, so its memory can be freed once no one else holds it."""
    with _lock:
        _loaded.clear()


def list_models() -> list[dict]:
    rows = llm_rows()
    for d in DIFFUSION_MODELS.values():
        shipped = (MODELS_DIR / d.folder / "config.json").exists()
        rows.append({"name": d.name, "kind": "diffusion", "installed": shipped, "prepared": shipped,
                     "description": d.description})
    return rows
