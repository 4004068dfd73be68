"""What `python -m lab run FILE` queues: the experiments of a TOML spec file as before, or of a .json file: a
report (each experiment's embedded spec, so a colleague re-measures what they were sent) or a plain spec."""
from __future__ import annotations

import json
from pathlib import Path

from lab.bench.validate import load_toml_specs, validate
from lab.errors import SpecError
from lab.report.collect import FORMAT
from lab.report.importer import REPORT_FILE_LIMIT
from lab.spec import Spec, expand_runs
from lab.textfile import read_text_file


def raw_specs(path: str | Path) -> list[dict]:
    """The raw specs of a .json file, not yet validated: a report's embedded specs in its order, or the file's own
    spec (with [[runs]] expanded as in TOML). SpecError names what is wrong."""
    path = Path(path)
    # the report's limit: a .json given to `lab run` is usually a report, and which it is shows only once parsed
    text = read_text_file(path, REPORT_FILE_LIMIT, "spec or report file", SpecError)
    try:
        content = json.loads(text)
    except json.JSONDecodeError as e:
        raise SpecError(f"{path}: not valid JSON ({e})") from None
    if isinstance(content, dict) and content.get("format") == FORMAT:
        experiments = content.get("experiments")
        if not isinstance(experiments, list) or not experiments:
            raise SpecError(f"{path}: the report holds no experiments")
        specs = [e.get("spec") if isinstance(e, dict) else None for e in experiments]
        missing = [i for i, spec in enumerate(specs) if not isinstance(spec, dict)]
        if missing:
            raise SpecError(f"{path}: experiments[{missing[0]}] has no spec to re-run")
        return specs
    return expand_runs(content)


def run_specs(path: str | Path, check_model_exists: bool = True) -> list[Spec]:
    """The validated specs `python -m lab run` queues from `path` (.json: raw_specs; anything else: TOML)."""
    if Path(path).suffix.lower() != ".json":
        return load_toml_specs(path)
    specs = []
    for i, raw in enumerate(raw_specs(path)):
        try:
            specs.append(validate(raw, check_model_exists=check_model_exists))
        except SpecError as e:
            raise SpecError(f"{path}: experiment {i + 1}: {e}") from None
    return specs
