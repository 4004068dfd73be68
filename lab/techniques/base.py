"""The technique declaration: one dataclass per technique, knobs declared once.

Everything user-facing (page form, CLI listing, TOML validation, compare columns, report) reads these
declarations; nothing here imports torch, so pages can build forms without loading it.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, ClassVar

# The five attachment points of the engine, in the canonical order they are applied.
SLOTS = ("weights", "attention", "cache", "decoding", "denoiser")
MODEL_KINDS = ("llm", "diffusion")


class SpecError(ValueError):
    """A spec (or a technique's knobs) is invalid; the message names the field and the allowed values."""


def knob(default: Any, *, help: str, unit: str = "", min: float | None = None, max: float | None = None,
         choices: tuple | None = None) -> Any:
    """Declare a technique knob: a dataclass field whose metadata drives forms, CLI and validation."""
    meta = {"help": help, "unit": unit, "min": min, "max": max, "choices": choices}
    return field(default=default, metadata={"knob": meta})


@dataclass(frozen=True)
class KnobInfo:
    name: str
    type: type
    default: Any
    help: str
    unit: str = ""
    min: float | None = None
    max: float | None = None
    choices: tuple | None = None

    def allowed(self) -> str:
        if self.choices is not None:
            return "one of " + ", ".join(repr(c) for c in self.choices)
        if self.type is bool:
            return "true or false"
        if self.type is str:
            return "a string"
        lo = "-inf" if self.min is None else self.min
        hi = "inf" if self.max is None else self.max
        return f"a {self.type.__name__} in [{lo}, {hi}]"

    def validate(self, technique: str, value: Any) -> Any:
        where = f"technique '{technique}', knob '{self.name}'"
        if self.type is bool:
            if not isinstance(value, bool):
                raise SpecError(f"{where}: expected true or false, got {shown(value)}")
            return value
        if self.type in (int, float):
            value = self._number(where, value)
        elif not isinstance(value, self.type):
            raise SpecError(f"{where}: expected {self.allowed()}, got {shown(value)}")
        if self.choices is not None and value not in self.choices:
            raise SpecError(f"{where}: {shown(value)} is not allowed; expected {self.allowed()}")
        if self.min is not None and value < self.min or self.max is not None and value > self.max:
            raise SpecError(f"{where}: {shown(value)} is out of range; expected {self.allowed()}")
        return value

    def _number(self, where: str, value: Any) -> int | float:
        """A number of the knob's type. NaN and infinities are refused here: they pass every range comparison
        (and int() of them raises), so they would otherwise slip through or crash validation."""
        ok = not isinstance(value, bool) and (isinstance(value, int) or
                                              isinstance(value, float) and math.isfinite(value))
        if ok and self.type is int and isinstance(value, float) and not value.is_integer():
            ok = False
        try:
            if ok:
                return self.type(value)
        except OverflowError:  # an int too large for a float
            pass
        raise SpecError(f"{where}: expected {self.allowed()}, got {shown(value)}")


def named(text: str, limit: int = 80) -> str:
    """A user's name as a message shows it: as typed when short and printable, else as shown() gives it, so
    an error stays one line."""
    return text if text.isprintable() and len(text) <= limit else shown(text, limit)


def shown(value: Any, limit: int = 80) -> str:
    """A value as an error message shows it: its repr, on one line, cut to `limit` characters."""
    try:
        text = repr(value)
    except ValueError:  # an int of more than 4300 digits has no repr
        return f"a {type(value).__name__} too large to show"
    return text if len(text) <= limit else text[:limit - 3] + "..."


_TYPES = {"int": int, "float": float, "str": str, "bool": bool}


class Technique:
    """Base of every technique. Subclasses are dataclasses; defining one with a `name` registers it.

    A subclass declares: name, family, slot, title, summary, paper, applies_to, and overrides the hook of
    its slot (see lab/engine/slots.py for what each slot receives).
    """

    name: ClassVar[str] = ""
    family: ClassVar[str] = ""
    slot: ClassVar[str] = ""
    title: ClassVar[str] = ""
    summary: ClassVar[str] = ""
    paper: ClassVar[str] = ""
    applies_to: ClassVar[tuple[str, ...]] = ("llm",)
    denoisers: ClassVar[tuple[str, ...]] = ()  # diffusion: denoiser architectures it works on ("dit", "unet"); () = any
    # diffusion: denoiser classes of that architecture it is known to fail on, each with the reason
    unsupported_denoisers: ClassVar[dict[str, str]] = {}

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if cls.__dict__.get("name"):
            from lab.techniques.registry import register
            register(cls)

    # --- declaration -----------------------------------------------------------------------------
    @classmethod
    def knobs(cls) -> list[KnobInfo]:
        out = []
        for f in dataclasses.fields(cls):
            meta = f.metadata.get("knob")
            if meta is None:
                continue
            ftype = _TYPES[f.type] if isinstance(f.type, str) else f.type
            out.append(KnobInfo(name=f.name, type=ftype, default=f.default, **meta))
        return out

    @classmethod
    def from_params(cls, params: dict) -> "Technique":
        """Build from user params, validating every knob; unknown knobs are refused by name."""
        knobs = {k.name: k for k in cls.knobs()}
        unknown = sorted(named(str(p)) for p in params if p not in knobs)  # str(): a Python caller's keys
        if unknown:
            raise SpecError(f"technique '{cls.name}': unknown knob(s) {', '.join(unknown)}; "
                            f"its knobs are: {', '.join(knobs) or '(none)'}")
        values = {name: knobs[name].validate(cls.name, v) for name, v in params.items()}
        return cls(**values)

    def params(self) -> dict:
        return {k.name: getattr(self, k.name) for k in self.knobs()}

    def label(self) -> str:
        inner = ", ".join(f"{k}={v}" for k, v in self.params().items())
        return f"{self.name}({inner})"

    def check(self) -> None:
        """Checks beyond each knob's own range (e.g. that a named model exists); raise SpecError."""

    def check_spec(self, spec: dict) -> None:
        """Checks against the rest of the experiment (e.g. fewer steps than the baseline); raise SpecError."""

    def check_model(self, model) -> None:
        """Checks against the loaded model, before anything runs (e.g. that the hooks find what they attach to);
        raise SpecError naming the reason. A technique that cannot attach must refuse, never silently do nothing."""

    def conflicts_with(self, other: "Technique") -> str | None:
        """Why this technique cannot run together with `other` (None when it can)."""
        return None

    # --- slot hooks (each technique overrides the one of its slot) -------------------------------
    def transform_weights(self, model):  # weights slot: return a transformed copy, never mutate `model`
        raise NotImplementedError

    def attention_implementation(self) -> str:  # attention slot: name registered with transformers
        raise NotImplementedError

    def make_cache(self, model):  # cache slot: the Cache object the decode loop uses
        raise NotImplementedError

    def attention_implementation_needed(self) -> str | None:  # cache slot: an attention path it relies on
        return None

    def cache_hooks(self, model, cache):  # cache slot: hooks active for one generation (yields a tracker)
        import contextlib
        return contextlib.nullcontext()

    def decode(self, engine, prompt_ids, settings):  # decoding slot: owns the generation loop
        raise NotImplementedError

    def extra_weight_bytes(self, engine) -> int:  # weights a technique adds beside the model (a draft model)
        return 0

    def prepare_denoiser(self, call) -> None:  # denoiser slot: once per variant before warm-up (calibration)
        return None

    def wrap_denoiser(self, call):  # denoiser slot: a context manager around one generation (a DenoiserCall)
        raise NotImplementedError

    def sampler_steps(self, steps: int) -> int:  # decoding slot, diffusion: the sampler steps this variant runs
        return steps

    def sampler_name(self, sampler: str) -> str:  # decoding slot, diffusion: the solver this variant runs
        return sampler
