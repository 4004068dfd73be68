"""Automatic registry of techniques: importing lab.techniques imports every module under it."""
from __future__ import annotations

import importlib
import pkgutil

from lab.techniques.base import SLOTS, SpecError, shown

_REGISTRY: dict[str, type] = {}
_discovered = False


def register(cls: type) -> None:
    if cls.slot not in SLOTS:
        raise TypeError(f"{cls.__name__}: slot {cls.slot!r} is not one of {SLOTS}")
    existing = _REGISTRY.get(cls.name)
    if existing is not None and existing.__qualname__ != cls.__qualname__:
        raise TypeError(f"technique name {cls.name!r} is declared twice ({existing.__module__}, {cls.__module__})")
    _REGISTRY[cls.name] = cls


def discover() -> None:
    """Import every technique module once (they register themselves on import)."""
    global _discovered
    if _discovered:
        return
    import lab.techniques as pkg
    for info in pkgutil.walk_packages(pkg.__path__, prefix="lab.techniques."):
        if info.name.rsplit(".", 1)[-1] not in ("base", "registry"):
            importlib.import_module(info.name)
    _discovered = True


def all_techniques() -> dict[str, type]:
    discover()
    return dict(sorted(_REGISTRY.items(), key=lambda kv: (SLOTS.index(kv[1].slot), kv[1].family, kv[0])))


def get(name: str) -> type:
    techniques = all_techniques()
    if not isinstance(name, str) or name not in techniques:  # a list name would make the lookup itself raise
        raise SpecError(f"unknown technique {shown(name)}; registered techniques: {', '.join(techniques)}")
    return techniques[name]


def build(entries: list[dict], model_kind: str = "llm") -> list:
    """Turn [{'name': ..., knob: value}, ...] into technique instances, validated and ordered by slot.

    Composition is checked here, before any run: one technique per slot, the model kind must fit, and
    pairwise conflicts declared by the techniques themselves are refused with their reason.
    """
    if not isinstance(entries, list):
        raise SpecError(f"techniques: expected a list of tables, got {shown(entries)}")
    built = []
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict) or "name" not in entry:
            raise SpecError(f"technique #{i + 1}: expected a table with a 'name' field, got {shown(entry)}")
        if not isinstance(entry["name"], str):
            raise SpecError(f"technique #{i + 1}, field 'name': expected a string, one of: "
                            f"{', '.join(all_techniques())}; got {shown(entry['name'])}")
        params = {k: v for k, v in entry.items() if k != "name"}
        cls = get(entry["name"])
        if model_kind not in cls.applies_to:
            raise SpecError(f"technique '{cls.name}' applies to {', '.join(cls.applies_to)} models, "
                            f"not to a {model_kind} model")
        technique = cls.from_params(params)
        try:
            technique.check()
        except OSError as e:  # a knob naming a path the OS cannot take (too long, unreadable) is the knob's error
            raise SpecError(f"technique '{cls.name}': a knob names a file or folder that cannot be read "
                            f"({e.strerror or type(e).__name__})") from None
        built.append(technique)
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
    return sorted(built, key=lambda t: SLOTS.index(t.slot))
