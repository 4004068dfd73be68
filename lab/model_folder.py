"""A model named by a local path is checked before anything inside it is read: judged from stat and the
folder's listing only, so /etc, a symlink, a file, a folder without a model's config or one whose links lead
elsewhere is refused with a clear message and no file in it is opened. Low in the layers so every loader (the
worker's, and an engine loading a draft model) checks again what validation checked."""
from __future__ import annotations

import os

from lab.errors import SpecError, shown
from lab.textfile import MODEL_CONFIG_LIMIT

# What makes a folder a model folder: the files from_pretrained starts from.
MODEL_MARKERS = ("config.json", "model_index.json")
# A config is a few KB (the largest published, with label maps, a few MB); a bigger "config" is not one, and
# validation reads it whole.
CONFIG_LIMIT = MODEL_CONFIG_LIMIT
# Trees that never hold a model folder: reading in them can leak secrets (/etc) or block on a device (/dev,
# /proc, /sys). /private/etc is macOS's /etc.
SYSTEM_TREES = ("/etc", "/proc", "/sys", "/dev", "/boot", "/private/etc")
# Top-level system folders: never a model folder themselves, though one may lie below them (/usr/share/...,
# /home/me/models).
SYSTEM_FOLDERS = ("/", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/usr", "/var", "/home", "/root", "/run")
FOLDER_ALLOWED = ("allowed: a folder holding config.json (a transformers model) or model_index.json (a diffusers "
                  "pipeline), as save_pretrained writes it")


def check_local_folder(name: str) -> None:
    """Refuse (SpecError) a model named by a local path that is not a plain model folder, judged from stat and
    the folder's listing: no file inside it is opened. A name that is no path here (a built-in, a hub id)
    passes: the hub cache is the Hugging Face library's own."""
    if not os.path.lexists(name):
        return
    path = os.path.normpath(name)  # "link/" names the link itself, as islink needs it
    if os.path.islink(path):
        # The store records the path given; a link can be repointed between validation and the worker's load,
        # so what ran would not be what the record names.
        raise SpecError(f"model folder {_shown(name)} is a symlink (to {os.path.realpath(path)}); allowed: the "
                        f"folder it points to, named by its own path")
    _refuse_system_folder(name, os.path.realpath(path))
    if not os.path.isdir(path):
        raise SpecError(f"model {_shown(name)} is a file, not a folder{_folder_hint(path)}; {FOLDER_ALLOWED}")
    _check_markers(name, path)
    _refuse_links_leaving(name, path)


def _shown(name: str) -> str:
    return shown(name, 240)  # a path cut at shown()'s usual 80 characters would not say which folder


def _refuse_system_folder(name: str, real: str) -> None:
    tree = next((t for t in SYSTEM_TREES if os.path.commonpath([real, t]) == t), None)
    if tree is not None or real in SYSTEM_FOLDERS:
        where = f"lies in the system folder {tree}" if tree else f"is the system folder {real}"
        raise SpecError(f"model folder {_shown(name)} {where}; the lab reads no files there; {FOLDER_ALLOWED}, "
                        f"outside {', '.join(SYSTEM_TREES)}")


def _folder_hint(path: str) -> str:
    """For a config file given instead of its folder: which folder to give."""
    return f" (give its folder, {os.path.dirname(path) or '.'})" if os.path.basename(path) in MODEL_MARKERS else ""


def _check_markers(name: str, folder: str) -> None:
    markers = [os.path.join(folder, m) for m in MODEL_MARKERS if os.path.isfile(os.path.join(folder, m))]
    if not markers:
        raise SpecError(f"model folder {_shown(name)} holds no config.json or model_index.json, so it is no "
                        f"model folder; {FOLDER_ALLOWED}")
    for marker in markers:
        size = os.path.getsize(marker)
        if size > CONFIG_LIMIT:
            raise SpecError(f"model folder {_shown(name)}: {os.path.basename(marker)} is {size} bytes, too big "
                            f"for a model's config (a few KB); allowed: at most {CONFIG_LIMIT} bytes")


def _refuse_links_leaving(name: str, folder: str) -> None:
    """Links inside the folder must stay inside it, so a folder someone sent cannot make the lab read (and a
    report carry) a file from elsewhere; in a Hugging Face cache snapshot they may point into its blobs/."""
    roots = _link_roots(os.path.realpath(folder))
    for link in _links_in(folder):
        target = os.path.realpath(link)
        if not any(os.path.commonpath([target, root]) == root for root in roots):
            raise SpecError(f"model folder {_shown(name)}: {os.path.relpath(link, folder)} is a symlink to "
                            f"{target}, outside the folder; allowed: files inside the model folder (links within "
                            f"it, or a Hugging Face cache snapshot's links into its blobs/)")


def _link_roots(real_folder: str) -> tuple[str, ...]:
    """Where the folder's links may point: into the folder, and for a cache snapshot (models--org--name/
    snapshots/<revision>) into its repository's blobs/, where the cache keeps the files."""
    snapshots = os.path.dirname(real_folder)
    repository = os.path.dirname(snapshots)
    if os.path.basename(snapshots) == "snapshots" and os.path.basename(repository).startswith("models--"):
        return real_folder, os.path.join(repository, "blobs")
    return (real_folder,)


def _links_in(folder: str) -> list[str]:
    """The symlinks among the folder's entries and its subfolders' (a pipeline's components): as deep as
    from_pretrained reads."""
    links = []
    with os.scandir(folder) as entries:
        for entry in entries:
            if entry.is_symlink():
                links.append(entry.path)
            elif entry.is_dir():
                with os.scandir(entry.path) as inner:
                    links.extend(e.path for e in inner if e.is_symlink())
    return links
