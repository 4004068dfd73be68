"""Runs a validated spec: loads the model once, hands it to the runner of its kind, then measures each variant's
memory in a fresh process. Nothing is written here; lab/bench/record.py saves the results in one transaction."""
from __future__ import annotations

from typing import Callable

import torch

from lab.bench.diffusion_runner import run_diffusion
from lab.bench.llm_runner import run_llm
from lab.bench.loader import load
from lab.bench.measure import environment
from lab.bench.memory_probe import probe
from lab.bench.record import VariantResult
from lab.llm.models import default_device
from lab.spec import Spec, spec_hash

_default_threads: int | None = None


def _noop(_fraction: float, _message: str) -> None:
    return None


def execute(spec: Spec, progress: Callable[[float, str], None] = _noop) -> list[VariantResult]:
    """Run the spec and return the measured results, baseline first."""
    global _default_threads
    if _default_threads is None:
        _default_threads = torch.get_num_threads()
    # a long-lived worker must not carry one job's thread count into the next
    torch.set_num_threads(spec.threads or _default_threads)
    device = default_device() if spec.device == "auto" else spec.device
    if device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device 'cuda' was asked for but no CUDA GPU is available here; use 'auto' or 'cpu'")
    progress(0.0, f"loading {spec.model}")
    loaded = load(spec.model, device=device, kind=spec.model_kind)
    results = [VariantResult(v.name, v.engine, v.techniques, environment(device, loaded.dtype, spec_hash(spec)))
               for v in spec.variants]
    runner = run_diffusion if spec.model_kind == "diffusion" else run_llm
    runner(spec, loaded, results, progress)
    measure_memory(spec, results, progress)
    progress(1.0, "done")
    return results


def measure_memory(spec: Spec, results: list[VariantResult], progress) -> None:
    """Each variant's memory with only its own weights alive, from a fresh process (lab/bench/memory_probe.py)."""
    progress(0.92, "memory: each variant once more, in a fresh process with only its own weights")
    for res, m in zip(results, probe(spec)):
        if "error" in m:
            res.environment["memory_probe"] = m["error"]
            continue
        res.samples["peak_mem_mb"].append(m["peak_mb"])
        res.samples["mem_rise_mb"].append(m["rise_mb"])
