"""Which kind a model is (decided here, once) and loading it: an LLM (lab/llm/models.py), a shipped diffusion
model or a diffusers pipeline folder (lab/diffusion/models.py). A worker keeps the last models it loaded.

A model named by a local path is checked here before anything inside it is read (check_model_folder), and a
model that needs its own Python code is refused: the lab never turns trust_remote_code on."""
from __future__ import annotations

import json
import os
import threading

from lab.diffusion.models import (
    DIFFUSION_MODELS,
    MODELS_DIR,
    check_denoiser,
    load_denoiser,
)
from lab.diffusion.pipelines import pipeline_folder, pipeline_info
from lab.errors import SpecError, shown
from lab.llm.models import BUILTIN_MODELS, check_llm, default_device, llm_rows, load_llm
from lab.model_folder import CONFIG_LIMIT, check_local_folder
from lab.paths import model_file


def check_model_folder(name: str) -> None:
    """Refuse (SpecError) a model named by a local path that is not a plain model folder (lab/model_folder.py);
    a built-in model's name passes whatever lies at that path."""
    if name in BUILTIN_MODELS or name in DIFFUSION_MODELS:
        return
    check_local_folder(name)


def is_pipeline(name: str) -> bool:
    """A diffusers pipeline folder (a local folder or a cached hub snapshot with model_index.json)."""
    return name not in DIFFUSION_MODELS and pipeline_folder(name) is not None


def model_kind(name: str) -> str:
    """'diffusion' for a shipped diffusion model or a pipeline folder, else 'llm' (whether it loads or not)."""
    return "diffusion" if name in DIFFUSION_MODELS or is_pipeline(name) else "llm"


def check_model(name: str) -> str:
    """The model's kind if `name` can be loaded here, else SpecError naming what is allowed."""
    check_model_folder(name)
    if model_kind(name) == "diffusion":
        check_denoiser(name)
        _refuse_own_code(name, "diffusion")
        return "diffusion"
    check_llm(name, others=tuple(DIFFUSION_MODELS))
    _refuse_own_code(name, "llm")
    return "llm"


def _refuse_own_code(name: str, kind: str) -> None:
    """Refuse a model that needs Python code of its own. The lab never runs it (trust_remote_code stays off), and
    transformers or diffusers would refuse it only while loading, advising trust_remote_code=True."""
    code = _pipeline_code(name) if kind == "diffusion" else _llm_code(name)
    if code:
        raise SpecError(f"model {shown(name, 240)} needs its own Python code ({', '.join(code)}), and the lab never "
                        f"runs a model's code (trust_remote_code stays off); allowed: a model whose classes "
                        f"transformers or diffusers ship")


def _llm_code(name: str) -> list[str]:
    """The custom classes config.json's auto_map names, when transformers has no class of its own for the
    model_type (with one, transformers loads its own and ignores auto_map)."""
    config = _small_json(model_file(name, "config.json"))
    auto_map = config.get("auto_map") if config else None
    if not isinstance(auto_map, dict) or not auto_map or _native_model_type(config.get("model_type")):
        return []
    return [f"config.json auto_map: {shown(', '.join(map(str, auto_map.values())))}"]


def _native_model_type(model_type) -> bool:
    # lazy: imports torch; only a config with an auto_map gets here
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES
    return isinstance(model_type, str) and model_type in CONFIG_MAPPING_NAMES


def _pipeline_code(name: str) -> list[str]:
    """The Python files of the pipeline folder that diffusers would import for it: a pipeline class named
    [file, class] in model_index.json, or a component [library, class] whose library is a file in its folder."""
    folder = pipeline_folder(name)
    index = _small_json(folder / "model_index.json") if folder else None
    if not index:
        return []
    modules = {"": _module_of(index.get("_class_name"))}
    modules.update({part: _module_of(value) for part, value in index.items() if not part.startswith("_")})
    files = [os.path.join(part, f"{module}.py") for part, module in modules.items() if module]
    return [f for f in files if (folder / f).is_file()]


def _module_of(entry) -> str | None:
    """The module a model_index.json entry [module, class] names, if it names one."""
    return entry[0] if isinstance(entry, list) and entry and isinstance(entry[0], str) else None


def _small_json(path) -> dict | None:
    """A config file's JSON object; None when there is none, it is too big for a config, or not a JSON object."""
    try:
        if path is None or os.path.getsize(path) > CONFIG_LIMIT:
            return None
        with open(path, encoding="utf-8") as f:
            content = json.load(f)
    except (OSError, ValueError):
        return None
    return content if isinstance(content, dict) else None


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
        kind = _checked_kind(name, kind)
        loaded = load_denoiser(name, device) if kind == "diffusion" else load_llm(name, device)
        _loaded[(name, device)] = loaded
        while len(_loaded) > KEEP_LOADED:
            _loaded.pop(next(iter(_loaded)))
        return loaded


def _checked_kind(name: str, kind: str | None) -> str:
    """The model's kind, its folder checked again: a worker loads after validation, and the folder may have
    changed since."""
    if kind is None:
        return check_model(name)
    check_model_folder(name)
    _refuse_own_code(name, kind)
    return kind


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
