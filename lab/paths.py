"""Where the lab keeps its files. LAB_DATA_DIR moves the writable state (database, model caches)."""
from __future__ import annotations

import os
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SHIPPED_DATA = ROOT / "data"


def data_dir() -> Path:
    path = Path(os.environ.get("LAB_DATA_DIR", SHIPPED_DATA))
    path.mkdir(parents=True, exist_ok=True)
    return path


def model_cache_dir() -> Path:
    path = data_dir() / "cache" / "models"
    path.mkdir(parents=True, exist_ok=True)
    return path


def child_env() -> dict:
    """The environment of processes the lab starts: ours (LAB_DATABASE_URL, LAB_DATA_DIR...), with the lab
    importable ahead of whatever PYTHONPATH already holds."""
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    return {**os.environ, "PYTHONPATH": path}
