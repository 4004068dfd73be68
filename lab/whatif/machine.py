"""'This machine, measured once': memory bandwidth from timing a read over a large tensor on every core and peak
matmul FLOPs in fp32 and bf16 from timing torch matmuls, stored under the data folder (cache/machine.json) with
when it was measured. Measured only when asked (the page's button), never on import: it takes about 10 s of both
cores."""
from __future__ import annotations

import json
import os
import platform
import time
from datetime import datetime, timezone
from pathlib import Path

from lab.errors import SpecError
from lab.paths import data_dir
from lab.whatif.devices import Device, device_from_dict

THIS_MACHINE = "This machine (measured)"
READ_BYTES = 512 * 2**20  # far larger than any last-level cache, so the read streams from memory (~15 ms at 40 GB/s)
READ_REPEATS = 8
MATMUL_SIZE = 2048  # 2 * 2048^3 = 17 GFLOP: a few tenths of a second per matmul on two cores


def cache_path() -> Path:
    return data_dir() / "cache" / "machine.json"


def read_bandwidth_gbs(threads: int | None = None, nbytes: int = READ_BYTES, repeats: int = READ_REPEATS) -> float:
    """GB/s of torch's sum over `nbytes` of float32 on `threads` torch threads (None: as set), best of `repeats`
    after one untimed pass: n / t. A decode step reads its weights and KV cache and writes little, so a read is
    the kernel its floor divides by; one thread reads less than two, so it is measured on the run's threads (a
    single-threaded numpy copy erred 35-45% low on a 2-core EPYC)."""
    # lazy: torch takes seconds to import and pages read this module; only a measurement needs it
    import torch
    previous = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        data = torch.ones(nbytes // 4, dtype=torch.float32)  # written once: page faults are not timed
        data.sum()
        best = float("inf")
        for _ in range(repeats):
            start = time.perf_counter()
            data.sum()
            best = min(best, time.perf_counter() - start)
        del data
    finally:
        torch.set_num_threads(previous)
    return nbytes / best / 1e9


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
    raw = {"name": THIS_MACHINE, "kind": "cpu", "bandwidth_gbs": round(read_bandwidth_gbs(os.cpu_count()), 2),
           "peak_tflops": {dtype: round(matmul_tflops(dtype), 4) for dtype in ("fp32", "bf16")},
           "memory_gb": _memory_gb(), "measured_at": when,
           "source": f"Measured on {_cpu_name()}, {os.cpu_count()} CPUs, {when}: a read over {READ_BYTES // 2**20} MB on "
                     f"{os.cpu_count()} threads (best of {READ_REPEATS}) and {MATMUL_SIZE}x{MATMUL_SIZE} torch matmuls (best of 3)"}
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
