"""Each variant's peak memory is its own (lab/bench/memory_probe.py), on the real default model: every variant is
probed in a fresh process of its own, so the order of the variants changes no peak; the llama.cpp row's peak is
what a plain llama-cpp-python process doing the same work peaks at; fewer weight bytes give a lower peak."""
from __future__ import annotations

import dataclasses
import json
import subprocess
import sys

import pytest

from lab.bench.validate import validate

MODEL = "smollm2-135m-instruct"
VARIANTS = [{"name": "bf16", "techniques": [{"name": "weight_dtype", "dtype": "bf16"}]},
            {"name": "int4", "techniques": [{"name": "weight_only", "bits": 4, "group_size": 32}]},
            {"name": "llama.cpp", "engine": "llama_cpp"}]

# A plain llama-cpp-python process doing the probe's work: open the GGUF as the lab does, generate greedily after
# each prompt twice, and report the kernel's high-water mark of its RSS (its whole life: import, load, work).
STANDALONE = """
import json, sys
import llama_cpp
request = json.loads(sys.stdin.read())
llm = llama_cpp.Llama(model_path=request["path"], n_ctx=request["n_ctx"], n_batch=512, n_threads=request["threads"],
                      n_threads_batch=request["threads"], use_mmap=False, verbose=False)
for _ in range(2):
    for ids in request["prompts"]:
        llm.reset()
        llm.create_completion(ids, max_tokens=request["max_new_tokens"], temperature=0.0)
for line in open("/proc/self/status"):
    if line.startswith("VmHWM:"):
        print(int(line.split()[1]) / 1024)
"""


@pytest.fixture(scope="module")
def probed():
    """The spec's variants probed in order and in reverse order, and the work they ran."""
    from lab.bench.llm_runner import probe_work
    from lab.bench.loader import load
    from lab.bench.probe_server import probe
    spec = validate({"model": MODEL, "workload": "chat", "prompts": 1, "max_new_tokens": 16, "threads": 2,
                     "variants": VARIANTS})
    work = probe_work(spec, load(MODEL, device="cpu", kind="llm").tokenizer)
    forward = dict(zip((v.name for v in spec.variants), probe(spec, work)))
    reverse = dataclasses.replace(spec, variants=list(reversed(spec.variants)))
    backward = dict(zip((v.name for v in reverse.variants), probe(reverse, work)))
    return spec, work, forward, backward


@pytest.mark.real_model
def test_reversing_the_variant_order_changes_no_peak(probed):
    _spec, _work, forward, backward = probed
    assert all("error" not in m for m in (*forward.values(), *backward.values())), (forward, backward)
    for name, m in forward.items():
        assert backward[name]["peak_mb"] == pytest.approx(m["peak_mb"], rel=0.05), name


@pytest.mark.real_model
def test_fewer_weight_bytes_give_a_lower_peak_and_the_peak_is_its_parts(probed):
    _spec, _work, forward, _backward = probed
    fp32, bf16, int4 = (forward[n] for n in ("baseline", "bf16", "int4"))
    assert int4["peak_mb"] < bf16["peak_mb"] < fp32["peak_mb"]
    assert int4["weights_mb"] < bf16["weights_mb"] < fp32["weights_mb"]
    for m in forward.values():
        assert m["peak_mb"] == pytest.approx(m["runtime_mb"] + m["weights_mb"] + m["rise_mb"], abs=1)
    assert forward["llama.cpp"]["runtime_mb"] < fp32["runtime_mb"] - 100  # no torch in llama.cpp's process


@pytest.mark.real_model
def test_the_llama_cpp_rows_peak_is_a_plain_llama_cpp_process_doing_the_same_work(probed):
    from lab.llm.llama_cpp import context_for, gguf_path
    spec, work, forward, _backward = probed
    request = {"path": str(gguf_path(MODEL)), "n_ctx": context_for(work["n_ctx"]), "threads": 2,
               "prompts": [it["prompt_ids"] for it in work["batch"]], "max_new_tokens": spec.max_new_tokens}
    done = subprocess.run([sys.executable, "-c", STANDALONE], input=json.dumps(request), capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    standalone = float(done.stdout.split()[-1])
    assert forward["llama.cpp"]["peak_mb"] == pytest.approx(standalone, rel=0.15), (forward["llama.cpp"], standalone)


def test_the_weights_part_holds_weights_not_the_models_code(tiny_spec):
    """The lab's engines' children are forked from a server that imported the model's transformers code: loading
    a 0.4 MB model in a fresh process imported 146 MB of modules, all of it counted as weights before."""
    from lab.bench.llm_runner import probe_work
    from lab.bench.loader import load
    from lab.bench.probe_server import probe
    spec = validate(tiny_spec)
    measured = probe(spec, probe_work(spec, load(spec.model, device="cpu", kind="llm").tokenizer))
    assert all("error" not in m for m in measured), measured
    for m in measured:
        assert 0 < m["weights_mb"] < 64, m  # the model's code is the runtime's: python, torch, transformers
        assert m["runtime_mb"] > 150, m
