"""'This machine, measured once': memory bandwidth from timing a large numpy copy and peak matmul FLOPs in fp32
and bf16 from timing torch matmuls, stored under the data folder (cache/machine.json) with when it was measured.
Measured only when asked (the page's button), never on import: it takes about 10 s of both cores."""
from __future__ import annotations

import json
import os
import platform
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from lab.errors import SpecError
from lab.paths import data_dir
from lab.whatif.devices import Device, device_from_dict

THIS_MACHINE = "This machine (measured)"
COPY_BYTES = 256 * 2**20  # far larger than any last-level cache, so the copy streams from memory
MATMUL_SIZE = 2048  # 2 * 2048^3 = 17 GFLOP: a few tenths of a second per matmul on two cores


def cache_path() -> Path:
    return data_dir() / "cache" / "machine.json"


def copy_bandwidth_gbs(nbytes: int = COPY_BYTES, repeats: int = 5) -> float:
    """GB/s of np.copyto over `nbytes`, best of `repeats`. A copy reads n bytes and writes n, so 2n / t (STREAM's
    convention; the cache line fetched before each write is not counted, so this errs low, as a floor should)."""
    source = np.ones(nbytes, dtype=np.uint8)
    target = np.zeros(nbytes, dtype=np.uint8)  # written once first: page faults are not timed
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        np.copyto(target, source)
        best = min(best, time.perf_counter() - start)
    return 2 * nbytes / best / 1e9


def matmul_tflops(dtype: str, size: int = MATMUL_SIZE, repeats: int = 3) -> float:
    """TFLOP/s of a size x size matmul in fp32 or bf16 on the CPU, best of `repeats` after one warm-up:
    2 * size^3 FLOPs (size^3 multiply-adds) over the time."""
    # lazy: torch takes seconds to import and pages read this module; only the button's measurement needs it
    import torch
    kind = {"fp32": torch.float32, "bf16": torch.bfloat16}[dtype]
    a, b = torch.randn(size, size).to(kind), torch.randn(size, size).to(kind)
    torch.matmul(a, b)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        torch.matmul(a, b)
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best / 1e12


def _memory_gb() -> float | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1e9
    except (ValueError, OSError, AttributeError):  # not a POSIX system
        return None


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def measure_machine() -> Device:
    """Time this machine once (the module's timing functions, looked up at call time so tests can stand in
    for them) and store the result; returns it as a Device."""
    when = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    raw = {"name": THIS_MACHINE, "kind": "cpu", "bandwidth_gbs": round(copy_bandwidth_gbs(), 2),
           "peak_tflops": {dtype: round(matmul_tflops(dtype), 4) for dtype in ("fp32", "bf16")},
           "memory_gb": _memory_gb(), "measured_at": when,
           "source": f"Measured on {_cpu_name()}, {os.cpu_count()} CPUs, {when}: a {COPY_BYTES // 2**20} MB numpy "
                     f"copy (best of 5) and {MATMUL_SIZE}x{MATMUL_SIZE} torch matmuls (best of 3)"}
    device = device_from_dict(raw)
    path = cache_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(f".partial-{os.getpid()}")
    partial.write_text(json.dumps(raw, indent=2))
    partial.replace(path)  # atomic: a reader never sees half a file
    return device


def load_measured() -> Device | None:
    """The stored measurement, or None when this machine was never measured (or the file is damaged)."""
    try:
        return device_from_dict(json.loads(cache_path().read_text()))
    except (OSError, ValueError, SpecError, AttributeError):
        return None
