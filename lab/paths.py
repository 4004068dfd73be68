"""Where the lab keeps its files. LAB_DATA_DIR moves the writable state (database, model caches)."""
from __future__ import annotations

import ctypes
import os
import select
import signal
import subprocess
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


def set_parent_death_signal() -> None:
    """Linux: the kernel kills this process the moment its parent dies (PR_SET_PDEATHSIG); a no-op elsewhere.
    Passed as preexec_fn to the processes the lab starts, so none outlives the job that started it."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # 1 = PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def model_file(name: str, filename: str) -> Path | None:
    """`filename` of a model named by a local folder or by a hub id already in the local Hugging Face cache
    (nothing is downloaded); None when it is not there. A name the OS cannot take as a path (too long, NUL
    bytes) raises OSError or ValueError, for the caller to name the field (lab/bench/validate.py)."""
    if Path(name).is_dir():
        path = Path(name) / filename
        return path if path.is_file() else None
    if "/" not in name:
        return None
    # lazy: only for a hub id; seconds to import, and pages read this module
    from huggingface_hub import try_to_load_from_cache
    try:
        hit = try_to_load_from_cache(name, filename)
    except Exception:  # malformed ids raise; they are simply not cached
        return None
    return Path(hit) if isinstance(hit, str) else None


def git_commit() -> str:
    """The checkout's commit, "+dirty" when tracked files changed: what a run's numbers were measured with."""
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                             timeout=5).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                               capture_output=True, text=True, timeout=5).stdout.strip()
        return (sha or "unknown") + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def read_reply(proc: subprocess.Popen, timeout: float | None, what: str) -> str:
    """The next line a process the lab started writes on its stdout (the job zygote, the memory probe's server):
    TimeoutError when none came within `timeout` seconds, EOFError when `what` has ended."""
    if timeout is not None:
        ready, _, _ = select.select([proc.stdout], [], [], timeout)
        if not ready:
            raise TimeoutError(f"{what} gave no reply within {timeout:g} s")
    line = proc.stdout.readline()
    if not line:
        raise EOFError(f"{what} ended (exit code {proc.wait()})")
    return line
