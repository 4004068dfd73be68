"""Peak memory of each variant with only its own model copy alive, measured in a fresh process.

In the measuring process every variant's weights are alive at once (a bf16 variant is a copy beside the fp32
original), so its RSS cannot tell variants apart. The probe runs after the timed repeats, in a new Python
process: for each variant in turn it loads the model, applies the variant's techniques, drops every reference
to weights the variant does not use and hands the freed pages back to the OS (gc, then glibc's malloc_trim:
freed small tensors otherwise stay in malloc's arenas and keep counting in RSS), then runs the workload's first
batch once while PeakMemory samples RSS (on CUDA: peak allocated). The variant's memory is that peak, and the
rise is the peak above the level just before the generation (activations, KV cache, temporaries).
"""
from __future__ import annotations

import ctypes
import gc
import json
import subprocess
import sys

import torch

from lab.bench import loader
from lab.bench.measure import MB, PeakMemory
from lab.bench.validate import stored_spec
from lab.llm.models import default_device
from lab.paths import ROOT, child_env, set_parent_death_signal
from lab.spec import Spec, Variant
from lab.techniques import build

PROBE_TIMEOUT_S = 3600


def probe(spec: Spec) -> list[dict]:
    """{'peak_mb', 'rise_mb'} per variant of a spec (LLM or diffusion), measured in a child process (or
    {'error': ...} for every variant when the probe could not run)."""
    try:
        done = subprocess.run([sys.executable, "-m", "lab.bench.memory_probe"], input=json.dumps(spec.to_dict()),
                              text=True,
                              capture_output=True, cwd=ROOT, env=child_env(), timeout=PROBE_TIMEOUT_S,
                              preexec_fn=set_parent_death_signal)  # never outlive the job
    except subprocess.TimeoutExpired:
        return [{"error": f"the memory probe took over {PROBE_TIMEOUT_S} s"}] * len(spec.variants)
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or [f"exit code {done.returncode}"])[-1]
        return [{"error": f"the memory probe failed: {last}"}] * len(spec.variants)
    return json.loads(done.stdout.strip().splitlines()[-1])


def release_freed_memory() -> None:
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: RSS may then overstate, never understate
        pass


def probe_variant(spec: Spec, variant: Variant, device: str) -> dict:
    loaded = loader.load(spec.model, device=device, kind=spec.model_kind)
    techniques = build(variant.techniques, model_kind=loaded.kind)
    weights, work = (_diffusion_work if loaded.kind == "diffusion" else _llm_work)(spec, variant, loaded, techniques)
    del loaded
    loader.unload_all()  # only this variant's own weights stay referenced
    release_freed_memory()
    _page_in(weights)
    with PeakMemory(device) as mem:
        work()
    result = {"peak_mb": mem.peak / MB, "rise_mb": mem.rise / MB}
    del weights, work
    release_freed_memory()
    return result


def _page_in(model) -> None:
    """Read every weight once: safetensors maps the file, and pages count in RSS only once touched, so without
    this the first generation's rise would include loading the weights rather than the generation's own work.
    None: an engine that maps its own weights (llama.cpp) and reads them itself."""
    if model is None:
        return
    with torch.no_grad():
        for t in list(model.parameters()) + list(model.buffers()):
            t.reshape(-1)[::512].sum()  # one element in every 4 KB page, read in place (no full-size temporary)


def _llm_work(spec: Spec, variant: Variant, loaded, techniques):
    """The variant's model, and the first unit of the workload the timed repeats ran: a batch of items, or a
    perplexity window."""
    # lazy: the probe's own memory is what it measures, so an LLM's probe never holds diffusers or sklearn
    from lab.bench.engines import make_engine
    from lab.bench.llm_runner import first_batch, run_batch, settings_for
    from lab.llm.workloads import perplexity_windows

    engine = make_engine(variant, loaded, spec, techniques)
    if spec.workload == "perplexity":
        ids = perplexity_windows(loaded.tokenizer, spec.perplexity_window, spec.perplexity_window)[0]
        return engine.weights_to_page_in(), lambda: engine.continuation_nll(ids[:len(ids) // 2], ids[len(ids) // 2:])
    batch = first_batch(spec, loaded.tokenizer)
    return engine.weights_to_page_in(), lambda: run_batch(engine, variant.engine, batch, settings_for(spec))


def _diffusion_work(spec: Spec, _variant: Variant, loaded, techniques):
    """The variant's denoiser (its own copy under a weights technique), and its first image batch."""
    # lazy: the probe's own memory is what it measures, so a diffusion probe never holds the LLM runner's scorers
    from lab.diffusion.variant import DiffusionVariant, image_batches

    diffusion = DiffusionVariant(spec, loaded, techniques)
    diffusion.prepare()
    batch, device = image_batches(spec)[0], loaded.device  # the closure must not hold `loaded` (the original)
    return diffusion.call.model, lambda: diffusion.generate(batch, spec.seed, device)


def main() -> None:
    spec = stored_spec(json.loads(sys.stdin.read()))
    if spec.threads:
        torch.set_num_threads(spec.threads)
    device = default_device() if spec.device == "auto" else spec.device
    out = [probe_variant(spec, v, device) for v in spec.variants]
    print(json.dumps(out))


if __name__ == "__main__":
    main()
