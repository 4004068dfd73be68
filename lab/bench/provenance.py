"""What a run's numbers depend on beyond its spec and its machine: the versions of the libraries that computed them
and the model's weight files. Every run records both in its environment (lab/bench/measure.py `environment()`, the
runners), and lab/jobs/reuse.py computes the same values before a run to decide whether a stored result stands for
the one asked for.

No torch here, and no model load: the page's reuse check runs this before anything loads. The weights are
fingerprinted from their files' names, sizes and modification times (a few stat calls, so nothing is cached: a
cache would have to stat the files to know it is still true anyway). Retraining, reconverting or replacing a file
changes the fingerprint; touching a file without changing it does too, which only costs a fresh measurement.
"""
from __future__ import annotations

import hashlib
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from lab.diffusion.models import DIFFUSION_MODELS, MODELS_DIR
from lab.llm.models import BUILTIN_MODELS, _package_folder
from lab.paths import model_file

# environment key -> the distribution whose version it records; the runs' numbers change with any of them
LIBRARIES = {"torch": "torch", "transformers": "transformers", "diffusers": "diffusers",
             "llama_cpp": "llama_cpp_python"}
NOT_INSTALLED = "not installed"
WEIGHTS_KEY = "weights_fingerprint"
MAX_FILES = 10_000  # a model folder holds a few dozen files; a larger tree is not a model folder's


def library_versions() -> dict[str, str]:
    """The installed version of each library in LIBRARIES ("not installed" when it is not), read from the
    packages' metadata, so the page process can ask without importing them."""
    return {key: _installed(dist) for key, dist in LIBRARIES.items()}


def _installed(dist: str) -> str:
    try:
        return version(dist)
    except PackageNotFoundError:
        return NOT_INSTALLED


def weights_fingerprint(model: str) -> str | None:
    """A short hash of the model's files (relative name, size, modification time), or None when the model's files
    cannot be found here (then no stored result is taken for a new one)."""
    files = model_files(model)
    if not files:
        return None
    digest = hashlib.sha256()
    for root, path in files:
        stat = path.stat()  # follows links: a hub snapshot's files link to content-named blobs
        digest.update(f"{path.relative_to(root)}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:12]


def model_files(model: str) -> list[tuple[Path, Path]]:
    """(folder, file) for every file the model loads from, sorted: a built-in LLM's GGUF (the converted cache is
    made from it), a shipped denoiser's folder, a local model or pipeline folder, a cached hub snapshot."""
    if model in BUILTIN_MODELS:
        builtin = BUILTIN_MODELS[model]
        folder = _package_folder(builtin.package)
        gguf = folder / builtin.gguf_file if folder else None
        return [(folder, gguf)] if gguf and gguf.is_file() else []
    folder = _model_folder(model)
    if folder is None:
        return []
    files = []
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            files.append((folder, path))
            if len(files) > MAX_FILES:
                return []
    return files


def _model_folder(model: str) -> Path | None:
    if model in DIFFUSION_MODELS:
        return MODELS_DIR / DIFFUSION_MODELS[model].folder
    try:
        if Path(model).is_dir():
            return Path(model)
        # a hub id in the local cache: its snapshot folder holds the config (an LLM) or the index (a pipeline)
        found = model_file(model, "config.json") or model_file(model, "model_index.json")
    except (OSError, ValueError):  # a name the OS cannot take as a path
        return None
    return found.parent if found else None
