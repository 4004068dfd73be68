"""A declared setting: a dataclass field whose metadata (help, unit, range, choices) drives the page form, the CLI
listing and validation. Technique knobs and experiment spec fields are both declared this way and checked by the
one KnobInfo.validate, so a value is refused with the same words wherever it was typed."""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

from lab.errors import SpecError, shown

_TYPES = {"int": int, "float": float, "str": str, "bool": bool, "list": list, "list[int]": list}


def knob(default: Any, *, help: str, unit: str = "", min: float | None = None, max: float | None = None,
         choices: tuple | None = None, slider: tuple | None = None) -> Any:
    """Declare a knob. For a list field, min and max bound each of its whole numbers. `slider` = (low, high,
    step): the page offers a slider over that span (files and the CLI still take anything in min..max)."""
    meta = {"help": help, "unit": unit, "min": min, "max": max, "choices": choices, "slider": slider}
    if isinstance(default, (list, dict)):  # a mutable default must be built per instance
        return field(default_factory=lambda: list(default), metadata={"knob": meta})
    return field(default=default, metadata={"knob": meta})


def knobs_of(cls) -> list["KnobInfo"]:
    """The declared knobs of a dataclass, in declaration order (fields without knob metadata are skipped)."""
    out = []
    for f in dataclasses.fields(cls):
        meta = f.metadata.get("knob")
        if meta is None:
            continue
        ftype = _TYPES[f.type] if isinstance(f.type, str) else f.type
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        out.append(KnobInfo(name=f.name, type=ftype, default=default, **meta))
    return out


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
    slider: tuple | None = None  # (low, high, step) of the page's slider

    def allowed(self) -> str:
        if self.choices is not None:
            return ", ".join(str(c) for c in self.choices)
        if self.type is bool:
            return "true or false"
        if self.type is str:
            return "a string"
        lo = "-inf" if self.min is None else self.min
        hi = "inf" if self.max is None else self.max
        if self.type is list:
            return f"a non-empty list of whole numbers from {lo} to {hi}"
        return f"{lo} to {hi}"

    def expected(self) -> str:
        """The type and range, as a message says what it expected."""
        if self.type in (int, float) and self.choices is None:
            article = "an" if self.type is int else "a"
            return f"{article} {self.type.__name__} from {self.allowed()}"
        if self.choices is not None:
            return "one of " + self.allowed()
        return self.allowed()

    def validate(self, where: str, value: Any) -> Any:
        """The value, converted to the knob's type (an int for a float knob becomes a float), or SpecError
        naming `where` and the allowed values."""
        if self.type is list:
            return self._whole_numbers(where, value)
        if self.type is bool:
            if not isinstance(value, bool):
                raise SpecError(f"{where}: expected true or false, got {shown(value)}")
            return value
        if self.type in (int, float):
            value = self._number(where, value)
        elif not isinstance(value, self.type):
            raise SpecError(f"{where}: expected {self.expected()}, got {shown(value)}")
        if self.choices is not None and value not in self.choices:
            raise SpecError(f"{where}: {shown(value)} is not allowed; allowed: {self.allowed()}")
        if self.min is not None and value < self.min or self.max is not None and value > self.max:
            raise SpecError(f"{where}: {shown(value)} is out of range; allowed: {self.allowed()}")
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
        raise SpecError(f"{where}: expected {self.expected()}, got {shown(value)}")

    def _whole_numbers(self, where: str, value: Any) -> list:
        if not isinstance(value, list) or not value or not all(isinstance(v, int) and not isinstance(v, bool)
                                                               for v in value):
            raise SpecError(f"{where}: expected {self.allowed()}, got {shown(value)}")
        bad = [v for v in value if v < self.min or v > self.max]
        if bad:
            raise SpecError(f"{where}: {shown(bad)} out of range; allowed: {self.min} to {self.max}")
        return value
