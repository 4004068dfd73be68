"""Techniques, one file each, grouped by family. See base.py for the declaration."""
from lab.techniques.base import SLOTS, KnobInfo, SpecError, Technique, knob
from lab.techniques.registry import all_techniques, build, get

__all__ = ["SLOTS", "KnobInfo", "SpecError", "Technique", "knob", "all_techniques", "build", "get"]
