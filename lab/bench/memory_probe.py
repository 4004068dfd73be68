"""Each variant's memory, measured in a fresh process of its own that holds only what that variant needs.

In the measuring process every variant's weights are alive at once (a bf16 variant is a copy beside the fp32
original), and what one variant imported or compiled stays for the next, so its RSS cannot tell variants apart.
After the timed repeats, the probe starts one new Python process per variant (so no variant's imports, kernels
or allocations reach another's, and the order of the variants changes nothing). Each child:

1. holds what its variant runs with and nothing else (an LLM never holds diffusers; a llama.cpp row never
   holds torch: python + torch alone is about 200 MB) and sets the variant's own thread count;
   its RSS then is the **runtime**. A llama.cpp row's child is a new process; the lab's own engines' children
   are forked from one server process (lab/bench/probe_server.py) that imported torch, the kind's engine and
   the model's transformers code once and ran nothing, so no variant pays those seconds of imports again;
2. loads the weights, applies the variant's techniques, drops every reference to weights the variant does not
   use and hands the freed pages back to the OS (gc, then glibc's malloc_trim), then touches every weight page;
   the RSS added is the **weights** (for llama.cpp also the context it allocates when it opens the model:
   its KV cache, sized from the spec's longest sequence, and compute buffers);
3. runs the workload's first unit once unmeasured (compiles, kernel caches, first-call allocations), then again
   while the kernel's RSS high-water mark is watched (lab/bench/rss.py); the peak above the level after step 2
   is the **work** (activations, KV cache, temporaries, and what the first run left: compiled kernels, a static
   cache).

peak = runtime + weights + work, so a reader sees where the megabytes go. On CUDA the peak is torch's peak
allocated memory, the runtime is 0 and the weights are what was allocated before the work.

This module imports no torch at module level: the llama.cpp child runs it.
"""
from __future__ import annotations

import ctypes
import gc
import json
import sys
from types import SimpleNamespace

from lab.bench.rss import PeakRSS, rss_bytes

MB = 1024 * 1024


def release_freed_memory() -> None:
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: RSS may then overstate, never understate
        pass


def measure(prepare, device: str = "cpu", runtime: int | None = None) -> dict:
    """The three parts of one variant's memory (module docstring): prepare() loads the weights and returns
    (weights, work); work() runs once unmeasured, then once measured. `runtime`: the bytes of the process this one
    was forked from (a fork's page tables start without the libraries' file pages its parent had resident, so its
    own RSS would understate what a process that imported the same holds); None: this process's own RSS."""
    if device.startswith("cuda"):
        return _measure_cuda(prepare, device)
    start = rss_bytes()
    runtime = start if runtime is None else runtime
    weights, work = prepare()
    release_freed_memory()
    _page_in(weights)
    loaded = rss_bytes()
    work()  # unmeasured: compiling, kernel caches and first-call allocations are not the work's peak
    release_freed_memory()
    with PeakRSS() as mem:
        work()
    weights_b, rise_b = loaded - start, max(0, mem.peak - loaded)
    return {"peak_mb": (runtime + weights_b + rise_b) / MB, "runtime_mb": runtime / MB,
            "weights_mb": weights_b / MB, "rise_mb": rise_b / MB}


def _measure_cuda(prepare, device: str) -> dict:
    # lazy: only a CUDA variant's child gets here, and it has torch loaded already
    from lab.bench.measure import PeakMemory

    weights, work = prepare()
    release_freed_memory()
    work()
    with PeakMemory(device) as mem:
        work()
    return {"peak_mb": mem.peak / MB, "runtime_mb": 0.0, "weights_mb": mem.start / MB, "rise_mb": mem.rise / MB}


def _page_in(model) -> None:
    """Read every weight once: safetensors maps the file, and pages count in RSS only once touched, so without
    this the work's rise would include loading the weights. None: an engine that read its own weights."""
    if model is None:
        return
    # lazy: a model to page in is a torch module, in a child that has torch loaded already
    import torch

    with torch.no_grad():
        for t in list(model.parameters()) + list(model.buffers()):
            t.reshape(-1)[::512].sum()  # one element in every 4 KB page, read in place (no full-size temporary)


def _llama_cpp_prepare(spec: dict, work: dict, threads: int):
    """llama.cpp on the GGUF with the run's context size; its work is the first unit, fed as token ids."""
    # lazy: the child of a llama.cpp row imports only this engine and libllama (no torch), before the runtime is read
    import llama_cpp  # noqa: F401

    from lab.llm.llama_cpp import LlamaCppEngine
    from lab.ops.settings import GenerationSettings

    def prepare():
        tokenizer = SimpleNamespace(eos_token_id=work["eos_token_id"])
        engine = LlamaCppEngine(spec["model"], tokenizer, threads=threads, n_ctx=work["n_ctx"])
        if work.get("perplexity_ids"):
            ids = work["perplexity_ids"]
            return None, lambda: engine.continuation_nll(ids[:len(ids) // 2], ids[len(ids) // 2:])
        settings = GenerationSettings(**work["settings"])
        batch = work["batch"]
        return None, lambda: [engine.generate(it["prompt_ids"], settings, it["question_ids"]) for it in batch]
    return prepare


def torch_prepare(spec_dict: dict, index: int, work: dict, threads: int):
    """The lab's own engines (LLM or diffusion): the model loaded, the variant's techniques applied, the original
    dropped when the variant made its own copy."""
    # lazy: torch, the loader and the spec's techniques, imported before the runtime is read
    import torch

    from lab.bench import loader
    from lab.bench.validate import stored_spec
    from lab.llm.models import default_device
    from lab.techniques import build

    torch.set_num_threads(threads)
    spec = stored_spec(spec_dict)
    variant = spec.variants[index]
    device = default_device() if spec.device == "auto" else spec.device
    import_kind(spec.model_kind)

    def prepare():
        loaded = loader.load(spec.model, device=device, kind=spec.model_kind)
        techniques = build(variant.techniques, model_kind=loaded.kind)
        kind_work = _diffusion_work if loaded.kind == "diffusion" else _llm_work
        weights, run = kind_work(spec, variant, loaded, techniques, work)
        del loaded
        loader.unload_all()  # only this variant's own weights stay referenced
        return weights, run
    return prepare, device


def import_kind(kind: str) -> None:
    """Import what the work of this kind runs with before the runtime is read, so the weights part is weights."""
    if kind == "diffusion":
        import lab.diffusion.variant  # noqa: F401  # lazy: each kind's child imports only its own runner
    else:
        # lazy: an LLM's child never holds diffusers, sklearn or the runner's scorers
        import lab.bench.batches  # noqa: F401
        import lab.llm.engine  # noqa: F401


def _llm_work(spec, variant, loaded, techniques, work: dict):
    """The variant's engine, and the first unit of the workload the timed repeats ran (from the runner's ids)."""
    # lazy: as import_kind
    from lab.bench.engines import make_engine
    from lab.bench.batches import run_batch
    from lab.ops.settings import GenerationSettings

    engine = make_engine(variant, loaded, spec, techniques)
    if work.get("perplexity_ids"):
        ids = work["perplexity_ids"]
        return engine.weights_to_page_in(), lambda: engine.continuation_nll(ids[:len(ids) // 2], ids[len(ids) // 2:])
    batch = [SimpleNamespace(**it) for it in work["batch"]]
    settings = GenerationSettings(**work["settings"])
    return engine.weights_to_page_in(), lambda: run_batch(engine, variant.engine, batch, settings)


def _diffusion_work(spec, _variant, loaded, techniques, _work: dict):
    """The variant's denoiser (its own copy under a weights technique), and its first image batch."""
    # lazy: as import_kind
    from lab.diffusion.variant import DiffusionVariant, image_batches

    diffusion = DiffusionVariant(spec, loaded, techniques)
    diffusion.prepare()
    batch, device = image_batches(spec)[0], loaded.device  # the closure must not hold `loaded` (the original)
    return diffusion.call.model, lambda: diffusion.generate(batch, spec.seed, device)


def main() -> None:
    request = json.loads(sys.stdin.read())
    spec, index, work = request["spec"], request["variant"], request["work"]
    result = measure(_llama_cpp_prepare(spec, work, work["threads"][index]))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
