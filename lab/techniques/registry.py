"""Automatic registry of techniques: defining a Technique subclass with a name registers it.

discover() imports every module under lab/techniques and every module of the Python entry-point group
"lab.techniques" (once), then every .py file in the folders named by LAB_TECHNIQUES_PATH (separated like PATH;
looked at again on every call, so a file added or fixed is picked up).
A user's technique needs no other file edited: the form, the CLI, validation, the runner and the compare
view read it from here.
"""
from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import os
import pkgutil
import sys
from pathlib import Path

from lab import metrics
from lab.errors import SpecError, shown

PLUGIN_PATH_VARIABLE = "LAB_TECHNIQUES_PATH"
ENTRY_POINT_GROUP = "lab.techniques"

_REGISTRY: dict[str, type] = {}
_discovered = False
_plugin_files: dict[Path, str] = {}  # a user's technique file -> the module name it was imported as
_errors: dict[str, str] = {}  # a user's file or entry point -> why it did not load
_folder_errors: dict[str, str] = {}  # a folder LAB_TECHNIQUES_PATH names that does not exist -> the message


def register(cls: type) -> None:
    """Called by Technique.__init_subclass__ for every class that sets a name."""
    if not cls.slot:
        raise TypeError(f"{cls.__name__}: a technique subclasses the class of its slot (lab/techniques/slots.py: "
                        f"WeightsTechnique, AttentionTechnique, CacheTechnique, DecodingTechnique, DenoiserTechnique, "
                        f"RuntimeTechnique)")
    ignored = [k for k in cls.applies_to if k not in cls.model_kinds]
    if ignored:
        raise TypeError(f"technique {cls.name!r} applies to {', '.join(ignored)} models, whose runs never use its "
                        f"{cls.slot} slot (used by: {', '.join(cls.model_kinds)})")
    existing = _REGISTRY.get(cls.name)
    if existing is not None and existing.__qualname__ != cls.__qualname__:
        raise TypeError(f"technique name {cls.name!r} is declared twice ({existing.__module__}, {cls.__module__})")
    metrics.add(cls.metrics, cls.name)
    _REGISTRY[cls.name] = cls


def discover() -> None:
    """Import every technique module once (they register themselves on import), then the user's. A user's file
    that fails to load is skipped and reported by plugin_errors(), so one typo never takes the lab down."""
    global _discovered
    if not _discovered:
        for info in pkgutil.walk_packages([str(Path(__file__).parent)], prefix="lab.techniques."):
            importlib.import_module(info.name)
        for entry in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
            _load_user_code(f"entry point {entry.name!r} ({entry.value})", entry.load)
        _discovered = True
    for folder in plugin_folders():
        for path in sorted(folder.glob("*.py")):
            _import_plugin(path.resolve())


def plugin_folders() -> list[Path]:
    """The folders LAB_TECHNIQUES_PATH names (one that does not exist is reported by plugin_errors())."""
    folders = [Path(p) for p in os.environ.get(PLUGIN_PATH_VARIABLE, "").split(os.pathsep) if p]
    _folder_errors.clear()  # the setting may have changed since the last look
    for folder in folders:
        if not folder.is_dir():
            _folder_errors[str(folder)] = (f"{PLUGIN_PATH_VARIABLE} names {folder}, which is not a folder; allowed: "
                                           f"folders of technique files, separated by {os.pathsep!r}")
    return [f for f in folders if f.is_dir()]


def plugin_errors() -> list[str]:
    """Why a user's technique file, folder or entry point could not be loaded (empty when all loaded)."""
    return [*_folder_errors.values(), *_errors.values()]


def _import_plugin(path: Path) -> None:
    if path in _plugin_files:
        return
    name = f"lab_user_techniques.{path.stem}_{len(_plugin_files)}"

    def load():
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module  # dataclasses look their module up while the class is being made
        try:
            spec.loader.exec_module(module)
        except BaseException:
            del sys.modules[name]
            raise

    if _load_user_code(f"technique file {path} ({PLUGIN_PATH_VARIABLE})", load):
        _plugin_files[path] = name


def _load_user_code(what: str, load) -> bool:
    try:
        load()
    except Exception as e:  # any error in a user's code: reported with its cause, the lab's techniques stay
        _errors[what] = f"{what} failed to load: {type(e).__name__}: {e}"
        return False
    _errors.pop(what, None)
    return True


def unregister(name: str) -> None:
    """Take a technique and its own metrics out of the registry (a user's, when a test is done with it)."""
    cls = _REGISTRY.pop(name, None)
    if cls is not None:
        metrics.remove([m.name for m in cls.metrics], name)


def forget_plugins() -> None:
    """Unregister every technique loaded from LAB_TECHNIQUES_PATH (tests load their own and clean up)."""
    modules = set(_plugin_files.values())
    for name in [n for n, cls in _REGISTRY.items() if cls.__module__ in modules]:
        unregister(name)
    for name in modules:
        sys.modules.pop(name, None)
    _plugin_files.clear()
    _errors.clear()
    _folder_errors.clear()


def all_techniques() -> dict[str, type]:
    discover()
    return dict(sorted(_REGISTRY.items(), key=lambda kv: (kv[1].slot_order, kv[1].family, kv[0])))


def get(name: str) -> type:
    techniques = all_techniques()
    if not isinstance(name, str) or name not in techniques:  # a list name would make the lookup itself raise
        failed = "".join(f"; {e}" for e in plugin_errors())
        raise SpecError(f"unknown technique {shown(name)}; registered techniques: {', '.join(techniques)}{failed}")
    return techniques[name]


def build(entries: list[dict], model_kind: str = "llm") -> list:
    """Turn [{'name': ..., knob: value}, ...] into technique instances, validated and ordered by slot.

    Composition is checked here, before any run: one technique per slot, the model kind must fit, and
    pairwise conflicts declared by the techniques themselves are refused with their reason.
    """
    if not isinstance(entries, list):
        raise SpecError(f"techniques: expected a list of tables, got {shown(entries)}")
    built = [_build_one(i, entry, model_kind) for i, entry in enumerate(entries)]
    by_slot: dict[str, object] = {}
    for t in built:
        if t.slot in by_slot:
            raise SpecError(f"techniques '{by_slot[t.slot].name}' and '{t.name}' both use the {t.slot} slot; "
                            f"a variant may hold one technique per slot")
        by_slot[t.slot] = t
    for a in built:
        for b in built:
            reason = a.conflicts_with(b) if a is not b else None
            if reason:
                raise SpecError(f"techniques '{a.name}' and '{b.name}' cannot be combined: {reason}")
    return sorted(built, key=lambda t: t.slot_order)


def _build_one(i: int, entry, model_kind: str):
    if not isinstance(entry, dict) or "name" not in entry:
        raise SpecError(f"technique #{i + 1}: expected a table with a 'name' field, got {shown(entry)}")
    if not isinstance(entry["name"], str):
        raise SpecError(f"technique #{i + 1}, field 'name': expected a string, one of: "
                        f"{', '.join(all_techniques())}; got {shown(entry['name'])}")
    cls = get(entry["name"])
    if model_kind not in cls.applies_to:
        raise SpecError(f"technique '{cls.name}' applies to {', '.join(cls.applies_to)} models, "
                        f"not to a {model_kind} model")
    technique = cls.from_params({k: v for k, v in entry.items() if k != "name"})
    try:
        technique.check()
    except OSError as e:  # a knob naming a path the OS cannot take (too long, unreadable) is the knob's error
        raise SpecError(f"technique '{cls.name}': a knob names a file or folder that cannot be read "
                        f"({e.strerror or type(e).__name__})") from None
    return technique
