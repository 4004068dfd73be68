"""The workshop: experiments/workshop/*.toml in their suggested order, each with the questions to discuss that its
file carries as `# Q:` comments (a question may go on over indented `#    ` lines). No Streamlit, no torch."""
from __future__ import annotations

import tomllib
from dataclasses import dataclass
from pathlib import Path

from lab.paths import ROOT

WORKSHOP_DIR = ROOT / "experiments" / "workshop"


@dataclass(frozen=True)
class WorkshopStep:
    preset: str  # the form's preset label, e.g. "workshop/1_kv_cache"
    name: str  # the experiment name the spec gives
    path: Path
    questions: tuple[str, ...]


def questions_in(text: str) -> list[str]:
    """The `# Q:` questions of a spec file's comments, continuation lines joined."""
    questions: list[str] = []
    for line in text.splitlines():
        if line.startswith("# Q:"):
            questions.append(line[4:].strip())
        elif questions and line.startswith("#    ") and line[5:].strip():
            questions[-1] += " " + line[5:].strip()
        elif not line.startswith("#"):
            break  # the header comment is over
    return questions


def steps() -> list[WorkshopStep]:
    """The workshop's presets in their suggested order (the files' numeric prefixes)."""
    out = []
    for path in sorted(WORKSHOP_DIR.glob("*.toml")):
        text = path.read_text(encoding="utf-8")
        out.append(WorkshopStep(f"workshop/{path.stem}", tomllib.loads(text).get("name", path.stem), path,
                                tuple(questions_in(text))))
    return out


def questions_for(experiment_name: str) -> tuple[str, ...]:
    """The questions of the workshop preset an experiment was run from (matched by its name), else none."""
    return next((s.questions for s in steps() if s.name == experiment_name), ())
