"""The errors a user's input raises, and how a message shows the value it refuses.

Bad input anywhere (a spec field, a knob, a model name, a tag) raises SpecError naming the field and its allowed
values; an experiment id that names nothing raises UnknownExperiment. Pages and the CLI show the message as it
is."""
from __future__ import annotations

from typing import Any


class SpecError(ValueError):
    """A spec (or a technique's knobs) is invalid; the message names the field and the allowed values."""


class UnknownExperiment(LookupError):
    """No experiment has this id (deleted, or never stored); the message names the id."""


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
