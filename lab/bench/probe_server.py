"""Starts the memory probe's processes (lab/bench/memory_probe.py measures in them): a llama.cpp row's is a new
process with no torch; the lab's own engines' are forked from a server, one process per model kind that imports
torch, the kind's engine and the model's transformers code, and then only forks a fresh child per variant.

Importing those cost every variant's process 4-9 s of CPU on a 2-core machine, and the model's code, imported
while its weights loaded, was counted as weights. The server is kept for the life of the process that asked
(a job's process, a test session), so a second experiment's probe pays no imports at all; the worker's job
zygote keeps the LLM one, which all its jobs share (start_server). It imports torch and the kind's engine before its first
request, the model's code on the request that names the model. Nothing in the server
runs a torch op or starts a thread, so a fork of it is as clean as a new process that imported the same: a child's
RSS right after the fork is its runtime. A child measures in the environment its request carries.

Protocol, one JSON line each way, after the server's first line {"ready": "<kind>"}:
{"spec", "variants", "work", "env"} -> {"<variant index>": {...}, ...}.
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
_ready: set[str] = set()  # kinds whose server has said it finished its imports
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


def threads_at_once(spec, work: dict) -> int:
    """The most threads the probe runs at one time: the server's children CHILDREN_AT_ONCE at a time (one on
    CUDA) beside every llama.cpp row's process. The load average counts them as the run's own work."""
    own_engine = [t for t, v in zip(work["threads"], spec.variants) if v.engine == "llama_cpp"]
    lab_engine = sorted((t for t, v in zip(work["threads"], spec.variants) if v.engine != "llama_cpp"), reverse=True)
    at_once = 1 if str(spec.device).startswith("cuda") else CHILDREN_AT_ONCE
    return sum(own_engine) + sum(lab_engine[:at_once])


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
    from lab.bench.validate import stored_spec  # lazy: it imports every technique's declaration

    kind = stored_spec(spec).model_kind
    request = json.dumps({"spec": spec, "variants": indices, "work": work, "env": child_env()}) + "\n"
    with _lock:
        try:
            reply = _ask(kind, request)
        except (OSError, EOFError, TimeoutError, ValueError) as e:
            stop_server(kind)
            return {i: {"error": f"the memory probe failed: {e}"} for i in indices}
    return {int(i): m for i, m in reply.items()}


def _ask(kind: str, request: str) -> dict:
    server = start_server(kind)
    await_ready(kind)
    server.stdin.write(request)
    server.stdin.flush()
    return json.loads(read_reply(server, PROBE_TIMEOUT_S, "the memory probe's server"))


def start_server(kind: str) -> subprocess.Popen:
    """`kind`'s server, started now if it is not running. The job zygote (lab/jobs/zygote.py) starts the LLM one
    as it starts, so every job it forks inherits a server that has done its imports."""
    server = _servers.get(kind)
    if server is None or not _alive(server):
        stop_server(kind)
        # the kernel's death signal follows the thread that started a process, so only the main thread's is the
        # process's; elsewhere the server ends when its stdin closes, which this process's end does too
        main_thread = threading.current_thread() is threading.main_thread()
        server = _servers[kind] = subprocess.Popen(
            [sys.executable, "-m", "lab.bench.probe_server", kind], cwd=ROOT, env=child_env(), text=True,
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, preexec_fn=set_parent_death_signal if main_thread else None)
    count_as_own(server.pid)  # its work is the runs' own, though no run waits for it (again in a forked job)
    return server


def await_ready(kind: str) -> None:
    """Wait until `kind`'s server has done its imports (its first line says so). The zygote waits before it forks
    a job, so the imports never run beside a job's timed repeats; a job forked after that inherits the answer."""
    server = _servers.get(kind)
    if server is not None and kind not in _ready:
        reply = json.loads(read_reply(server, PROBE_TIMEOUT_S, "the memory probe's server"))
        if reply != {"ready": kind}:
            raise ValueError(f"the memory probe's server said {reply!r} before it was asked anything")
        _ready.add(kind)


def renew_server(kind: str) -> None:
    """A new server in place of this process's own, if it has one: a killed job may have left it mid-request,
    and its reply would reach the next job."""
    if kind in _servers:
        stop_server(kind)
        start_server(kind)


def _alive(server: subprocess.Popen) -> bool:
    """poll() answers only in the process that started the server; a job forked from the zygote shares the
    zygote's, so /proc says whether it runs (a zombie does not)."""
    try:
        with open(f"/proc/{server.pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except OSError:  # gone, or not Linux
        return server.poll() is None


def stop_server(kind: str) -> None:
    server = _servers.pop(kind, None)
    _ready.discard(kind)
    if server is not None:
        if _alive(server):
            server.kill()
        server.wait()  # in a job forked from the zygote this returns at once (ECHILD): the zygote reaps its own


# --- the server's own side ---------------------------------------------------------------------------------
def serve_forever(kind: str) -> None:
    replies = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # what a child prints goes to stderr, never into the replies
    _import_common(kind)  # before the first request: a server started ahead of time has it done when one comes
    replies.write(json.dumps({"ready": kind}) + "\n")
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


def _import_common(kind: str) -> None:
    # lazy: everything the kind's engines run with, imported here once and never in the asking process's module
    import torch  # noqa: F401
    from transformers.utils import logging as transformers_logging

    from lab.bench import loader  # noqa: F401
    from lab.bench.validate import stored_spec  # noqa: F401
    from lab.techniques import build  # noqa: F401

    transformers_logging.disable_progress_bar()  # a bar per child in the job's log tells no one anything
    import_kind(kind)


def _import_for(spec: dict) -> None:
    from lab.bench.validate import stored_spec  # lazy: imported by _import_common already

    kind = stored_spec(spec).model_kind
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
    serve_forever(sys.argv[1])
