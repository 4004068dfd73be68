"""Techniques, one file each, grouped by family (<family>/base.py holds what a family shares). A technique
subclasses the class of its slot (slots.py); the declaration itself is described in base.py."""
from lab.knobs import KnobInfo, knob
from lab.techniques.base import Technique, metric
from lab.techniques.registry import all_techniques, build, get
from lab.techniques.slots import (
                                  SLOTS,
                                  AttentionTechnique,
                                  CacheTechnique,
                                  DecodingTechnique,
                                  DenoiserTechnique,
                                  RuntimeTechnique,
                                  WeightsTechnique,
)

__all__ = ["SLOTS", "KnobInfo", "Technique", "knob", "metric", "all_techniques", "build", "get", "AttentionTechnique",
           "CacheTechnique", "DecodingTechnique", "DenoiserTechnique", "RuntimeTechnique",
           "WeightsTechnique"]
