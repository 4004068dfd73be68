"""Starts the memory probe's processes (lab/bench/memory_probe.py measures in them): a llama.cpp row's is a new
process with no torch; the lab's own engines' are forked from a server, one process per model kind that imports
torch, the kind's engine and the model's transformers code, and then only forks a fresh child per variant.

Importing those cost every variant's process 4-9 s of CPU on a 2-core machine, and the model's code, imported
while its weights loaded, was counted as weights. The server is kept for the life of the process that asked
(a job's process, a test session), so a second experiment's probe pays no imports at all. Nothing in the server
runs a torch op or starts a thread, so a fork of it is as clean as a new process that imported the same: a child's
RSS right after the fork is its runtime. A child measures in the environment its request carries.

Protocol, one JSON line each way: {"spec", "variants", "work", "env"} -> {"<variant index>": {...}, ...}.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor

from lab.bench.machine_load import count_as_own
from lab.bench.memory_probe import import_kind, measure, torch_prepare
from lab.bench.rss import rss_bytes
from lab.paths import ROOT, child_env, read_reply, set_parent_death_signal

PROBE_TIMEOUT_S = 1800
CHILDREN_AT_ONCE = 2  # each child reads only its own process's memory, so a neighbour changes no peak

_servers: dict[str, subprocess.Popen] = {}  # model kind -> its server, for the life of this process
_lock = threading.Lock()


def probe(spec, work: dict) -> list[dict]:
    """{'peak_mb', 'runtime_mb', 'weights_mb', 'rise_mb'} per variant of a spec (LLM or diffusion), each from a
    child process of its own, or {'error': ...} for a variant whose probe could not run. `work` is what
    probe_work() in the runner made: the first unit's token ids, each variant's threads, llama.cpp's context."""
    stored = spec.to_dict()
    own_engine = [i for i, v in enumerate(spec.variants) if v.engine == "llama_cpp"]
    lab_engine = [i for i in range(len(spec.variants)) if i not in own_engine]
    results: dict[int, dict] = {}
    with ThreadPoolExecutor(max_workers=max(1, len(own_engine))) as pool:
        started = {i: pool.submit(_probe_started, stored, i, work) for i in own_engine}
        # in this thread, not the pool's: the server outlives this call, and a pool thread's end would kill it
        results.update(served(stored, lab_engine, work) if lab_engine else {})
        results.update({i: f.result() for i, f in started.items()})
    return [results[i] for i in range(len(spec.variants))]


def _probe_started(spec: dict, index: int, work: dict) -> dict:
    """A llama.cpp row: a plain new process (no torch in it), importing only libllama and its engine."""
    request = json.dumps({"spec": spec, "variant": index, "work": work})
    return _child_reply([sys.executable, "-m", "lab.bench.memory_probe"], request)


def _child_reply(argv: list[str], request: str) -> dict:
    try:
        done = subprocess.run(argv, input=request, text=True, capture_output=True, cwd=ROOT, env=child_env(),
                              timeout=PROBE_TIMEOUT_S, preexec_fn=set_parent_death_signal)  # never outlive the job
    except subprocess.TimeoutExpired:
        return {"error": f"the memory probe took over {PROBE_TIMEOUT_S} s"}
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or [f"exit code {done.returncode}"])[-1]
        return {"error": f"the memory probe failed: {last}"}
    return json.loads(done.stdout.strip().splitlines()[-1])


def served(spec: dict, indices: list[int], work: dict) -> dict[int, dict]:
    """{variant index: the memory_probe.measure() result, or {'error': ...}} for the spec's given variants."""
    from lab.bench.validate import stored_spec  # lazy: the server imports it only under its request's env

    kind = stored_spec(spec).model_kind
    request = json.dumps({"spec": spec, "variants": indices, "work": work, "env": child_env()}) + "\n"
    with _lock:
        try:
            reply = _ask(kind, request)
        except (OSError, EOFError, TimeoutError, ValueError) as e:
            _stop(kind)
            return {i: {"error": f"the memory probe failed: {e}"} for i in indices}
    return {int(i): m for i, m in reply.items()}


def _ask(kind: str, request: str) -> dict:
    server = _servers.get(kind)
    if server is None or server.poll() is not None:
        # the kernel's death signal follows the thread that started a process, so only the main thread's is the
        # process's; elsewhere the server ends when its stdin closes, which this process's end does too
        main_thread = threading.current_thread() is threading.main_thread()
        server = _servers[kind] = subprocess.Popen(
            [sys.executable, "-m", "lab.bench.probe_server"], cwd=ROOT, env=child_env(), text=True,
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, preexec_fn=set_parent_death_signal if main_thread else None)
        count_as_own(server.pid)  # its work is the runs' own, though no run waits for it
    server.stdin.write(request)
    server.stdin.flush()
    return json.loads(read_reply(server, PROBE_TIMEOUT_S, "the memory probe's server"))


def _stop(kind: str) -> None:
    server = _servers.pop(kind, None)
    if server is not None and server.poll() is None:
        server.kill()
        server.wait()


# --- the server's own side ---------------------------------------------------------------------------------
def serve_forever() -> None:
    replies = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # what a child prints goes to stderr, never into the replies
    for line in sys.stdin:
        replies.write(json.dumps(_serve(json.loads(line))) + "\n")


def _serve(request: dict) -> dict[int, dict]:
    """Import what every variant of this spec runs with, then fork one child per variant, CHILDREN_AT_ONCE at a
    time (one on CUDA: two models on one GPU)."""
    os.environ.clear()
    os.environ.update(request["env"])  # the asking process's: its data folder, its model cache
    spec, work = request["spec"], request["work"]
    _import_for(spec)
    pending, running, results = list(request["variants"]), {}, {}
    at_once = 1 if str(spec.get("device", "")).startswith("cuda") else CHILDREN_AT_ONCE
    while pending or running:
        while pending and len(running) < at_once:
            index = pending.pop(0)
            read_end, write_end = os.pipe()
            runtime = rss_bytes()  # what a process that imported the same holds: the child's runtime
            pid = os.fork()
            if pid == 0:
                os.close(read_end)
                set_parent_death_signal()  # a child never measures on after its server
                _measure_forked(spec, index, work, write_end, runtime)
            os.close(write_end)
            running[pid] = (index, read_end)
        pid, status = os.wait()
        index, read_end = running.pop(pid)
        with os.fdopen(read_end) as reply:
            text = reply.read()
        code = os.waitstatus_to_exitcode(status)
        results[index] = json.loads(text) if text else {"error": f"the memory probe's child ended with {code}"}
    return results


def _import_for(spec: dict) -> None:
    # lazy: everything the lab's engines run with, imported here once and never in the asking process's module
    import torch  # noqa: F401
    from transformers.utils import logging as transformers_logging

    from lab.bench import loader  # noqa: F401
    from lab.bench.validate import stored_spec
    from lab.techniques import build  # noqa: F401

    transformers_logging.disable_progress_bar()  # a bar per child in the job's log tells no one anything
    kind = stored_spec(spec).model_kind
    import_kind(kind)
    if kind == "llm":
        from lab.llm.models import import_model_code  # lazy: an LLM server only
        import_model_code(spec["model"])


def _measure_forked(spec: dict, index: int, work: dict, write_end: int, runtime: int) -> None:
    """In a forked child: measure one variant, write its result, exit. Never returns."""
    code = 0
    try:
        prepare, device = torch_prepare(spec, index, work, work["threads"][index])
        result = measure(prepare, device, runtime)
    except BaseException as e:  # noqa: BLE001  # a forked child must reach os._exit, never the server's loop
        result, code = {"error": f"the memory probe failed: {type(e).__name__}: {e}"}, 1
    with os.fdopen(write_end, "w") as out:
        out.write(json.dumps(result))
    os._exit(code)


if __name__ == "__main__":
    serve_forever()
