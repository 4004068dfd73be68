"""Runs a validated spec: loads the model once, hands it to the runner of its kind, then measures each variant's
memory in a fresh process. Nothing is written here; lab/bench/record.py saves the results in one transaction."""
from __future__ import annotations

from typing import Callable

import torch

from lab.bench.llm_runner import probe_work, run_llm
from lab.bench.loader import load
from lab.bench.measure import environment
from lab.bench.probe_server import probe, threads_at_once
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
    _runner(spec.model_kind)(spec, loaded, results, progress)
    measure_memory(spec, results, progress, _probe_work(spec, loaded))
    progress(1.0, "done")
    return results


def _runner(kind: str):
    if kind == "diffusion":
        # lazy: diffusers, scipy and sklearn take seconds to import, and an LLM job never runs them
        from lab.bench.diffusion_runner import run_diffusion
        return run_diffusion
    return run_llm


def _probe_work(spec: Spec, loaded) -> dict:
    if spec.model_kind == "llm":
        return probe_work(spec, loaded.tokenizer)
    return {"threads": [v.threads or torch.get_num_threads() for v in spec.variants]}


def measure_memory(spec: Spec, results: list[VariantResult], progress, work: dict) -> None:
    """Each variant's memory in a fresh process of its own (lab/bench/memory_probe.py): the peak and its parts."""
    progress(0.92, "memory: each variant once more, each in a fresh process of its own")
    at_once = threads_at_once(spec, work)
    for res, m in zip(results, probe(spec, work)):
        res.environment["memory_probe_threads"] = at_once  # the load average counts them as the run's own
        if "error" in m:
            res.environment["memory_probe"] = m["error"]
            continue
        res.record({"peak_mem_mb": m["peak_mb"], "mem_runtime_mb": m["runtime_mb"],
                    "mem_weights_mb": m["weights_mb"], "mem_rise_mb": m["rise_mb"]})
