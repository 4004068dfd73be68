"""Timers, memory and environment capture, and the summary statistics every metric is reported with."""
from __future__ import annotations

import math
import os
import platform
import time
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version

import torch

from lab.bench.rss import PeakRSS
from lab.paths import git_commit

MB = 1024 * 1024


@dataclass(frozen=True)
class Summary:
    median: float
    p10: float
    p90: float
    n: int


def percentile(values: list[float], q: float) -> float:
    """Linear-interpolated percentile (q in [0, 100]) of the finite values; nan when there are none."""
    xs = sorted(v for v in values if v is not None and math.isfinite(v))
    if not xs:
        return float("nan")
    pos = (len(xs) - 1) * q / 100.0
    lo, hi = math.floor(pos), math.ceil(pos)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def summarize(values: list[float], share: bool = False) -> Summary:
    """Median with p10/p90; for a share (a 0/100 score per item) the mean, with no spread."""
    finite = [v for v in values if v is not None and math.isfinite(v)]
    if share:
        mean = sum(finite) / len(finite) if finite else float("nan")
        return Summary(mean, mean, mean, len(finite))
    return Summary(percentile(finite, 50), percentile(finite, 10), percentile(finite, 90), len(finite))


class PeakMemory:
    """Peak memory during a block: on CPU this process's RSS (lab/bench/rss.py: the kernel's high-water mark, reset
    at entry), on CUDA max_memory_allocated.

    Reports the peak in absolute terms and its rise above the level at entry (the working memory the
    generation itself needed: activations, KV cache, temporaries).
    """

    def __init__(self, device: str = "cpu"):
        self.device = device
        self.peak = self.start = 0
        self._rss = PeakRSS()

    def __enter__(self):
        if self.device.startswith("cuda"):
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.start = torch.cuda.memory_allocated()
        else:
            self._rss.__enter__()
            self.start = self._rss.start
        return self

    def __exit__(self, *exc):
        if self.device.startswith("cuda"):
            torch.cuda.synchronize()
            self.peak = torch.cuda.max_memory_allocated()
        else:
            self._rss.__exit__(*exc)
            self.peak = self._rss.peak
        return False

    @property
    def rise(self) -> int:
        return max(0, self.peak - self.start)


def _version(module: str) -> str:
    try:
        return version(module)
    except PackageNotFoundError:
        return "not installed"


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def environment(device: str, dtype: str, spec_hash: str) -> dict:
    """Everything needed to tell whether two runs are comparable."""
    env = {
        "device": device,
        "device_name": torch.cuda.get_device_name(0) if device.startswith("cuda") else _cpu_name(),
        "threads": torch.get_num_threads(),
        "dtype": dtype,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": _version("transformers"),
        "diffusers": _version("diffusers"),
        "llama_cpp": _version("llama_cpp_python"),  # the llama_cpp engine's numbers are its build's
        "lab_commit": git_commit(),
        "spec_hash": spec_hash,
        "host": platform.node(),
        "cpu_count": os.cpu_count(),
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    if os.environ.get("LAB_RAY_NODE"):  # a unit of a sweep on Ray (lab/jobs/ray_units.py): which node measured it
        env["ray_node"] = os.environ["LAB_RAY_NODE"]
    return env
