"""GPU check (issue 18): run the lab's CUDA paths once, end to end, and say PASS or FAIL per check.

What it runs, through the lab's normal path (validate, submit to a temporary store, a `python -m lab worker
--device DEVICE` it starts itself, each job in the worker's own child process), in this order:
  1. A tiny random Flux pipeline saved to a temporary folder (tests/tiny_pipelines.py), run by the pipeline path
     (bf16 on a GPU, as the lab loads pipelines there): baseline against TaylorSeer (a diffusers hook) and the
     lab's block cache (its own hook).
  2. SmolLM2-135M-Instruct on chat: baseline (fp32) against SnapKV at half the cache, prompt lookup and bf16
     weights.
  3. SmolLM2 on grounded (where prompt lookup copies the most): baseline against prompt lookup.
Pass criteria are what the maths promises, never a speed: every job done and every run measured on DEVICE;
SnapKV holds fewer KV bytes than the baseline at the same tokens seen; bf16 weights take half the fp32 bytes;
prompt lookup's greedy token ids equal the baseline's item by item; each cache computes fewer denoiser blocks than
the baseline. Speedups, tokens/s, acceptance and memory are printed as information.

Run it with scripts/gpu_check.sh on a GPU machine (it sets up the venv and the model first), or directly:
    .venv/bin/python scripts/gpu_check.py                      # device cuda, full sizes
    .venv/bin/python scripts/gpu_check.py --device cpu --quick # a rehearsal of the same logic on a CPU
Expected: about 3-5 minutes on one GPU (model loads and one fresh process per variant for memory dominate;
nothing is compiled); --device cpu --quick took 3 minutes on 2 idle CPU cores, 10 on busy ones.
Exit 0 only when every check passes, 1 when one fails, 2 when it could not start. Not part of CI or `make test`.
"""
from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as `python scripts/gpu_check.py`: the lab and tests/ import from the checkout

from lab import jobs  # noqa: E402
from lab.bench.validate import validate  # noqa: E402
from lab.errors import SpecError  # noqa: E402
from lab.paths import child_env  # noqa: E402
from lab.views import results  # noqa: E402

LLM = "smollm2-135m-instruct"
FULL = dict(prompts=4, max_new_tokens=64, repeats=3, warmup=1, perplexity_tokens=256, steps=8, image_prompts=2)
QUICK = dict(prompts=2, max_new_tokens=16, repeats=1, warmup=1, perplexity_tokens=0, steps=6, image_prompts=2)
BF16_RATIO_TOLERANCE = 0.005  # weight bytes are counted from the tensors: exactly 0.5 unless something stayed fp32


@dataclass
class Check:
    name: str
    ok: bool
    detail: str


@dataclass
class Experiment:
    """One experiment of the check: its raw spec, the judge that reads its results, and its ids once queued."""
    title: str
    raw: dict
    judge: object  # (exp, device) -> list[Check]
    info: object  # exp -> list[str], the measured numbers worth a line each
    exp_id: int | None = None
    job_id: int | None = None


# --- the specs ---------------------------------------------------------------------------------------------
def chat_spec(device: str, size: dict) -> dict:
    return {"name": "gpu_check chat", "model": LLM, "device": device, "workload": "chat",
            "prompts": size["prompts"], "max_new_tokens": size["max_new_tokens"], "repeats": size["repeats"],
            "warmup": size["warmup"], "perplexity_tokens": size["perplexity_tokens"],
            "variants": [{"name": "snapkv@0.5", "techniques": [{"name": "snapkv", "compression_ratio": 0.5}]},
                         {"name": "prompt_lookup", "techniques": [{"name": "prompt_lookup", "k": 4}]},
                         {"name": "bf16", "techniques": [{"name": "weight_dtype", "dtype": "bf16"}]}]}


def grounded_spec(device: str, size: dict) -> dict:
    # no perplexity: prompt lookup leaves the model's scores untouched, and the chat run already scores it
    return {"name": "gpu_check grounded", "model": LLM, "device": device, "workload": "grounded",
            "prompts": size["prompts"], "max_new_tokens": size["max_new_tokens"], "repeats": size["repeats"],
            "warmup": size["warmup"], "perplexity_tokens": 0,
            "variants": [{"name": "prompt_lookup", "techniques": [{"name": "prompt_lookup", "k": 4}]}]}


def pipeline_spec(device: str, size: dict, folder: Path) -> dict:
    # TaylorSeer's schedule (computed every 3rd step after 2) and the block cache's (every 2nd) skip blocks on
    # any weights, so "fewer blocks" holds on random ones too; a threshold cache might never skip on them
    return {"name": "gpu_check pipeline", "model": str(folder), "device": device, "steps": size["steps"],
            "guidance": 4.0, "image_size": 32, "prompts": size["image_prompts"], "repeats": size["repeats"],
            "warmup": size["warmup"],
            "variants": [{"name": "taylorseer", "techniques": [{"name": "taylorseer", "interval": 3,
                                                               "warmup_steps": 2}]},
                         {"name": "block_cache", "techniques": [{"name": "block_cache", "interval": 2}]}]}


def save_tiny_flux(folder: Path) -> Path:
    """A tiny random Flux pipeline saved like a real checkpoint (model_index.json and components), built offline."""
    from tests.tiny_pipelines import save_tiny_pipeline  # lazy: imports diffusers and transformers

    return save_tiny_pipeline("flux", folder)


# --- reading results ----------------------------------------------------------------------------------------
def metric(run, name: str):
    return next((m for m in run.metrics if m.name == name), None)


def value(run, name: str) -> float | None:
    m = metric(run, name)
    return None if m is None else m.value


def shown(run, name: str, unit: str = "") -> str:
    """A metric as 'median (p10-p90, n)', or '-' when the run did not record it."""
    m = metric(run, name)
    if m is None or m.value is None:
        return "-"
    spread = f" ({results.fmt(m.p10)}-{results.fmt(m.p90)}, n={m.n})" if m.n > 1 else f" (n={m.n})"
    return f"{results.fmt(m.value)}{unit}{spread}"


def ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def runs_by_name(exp) -> dict:
    return {run.variant: run for run in exp.runs}


# --- judging ------------------------------------------------------------------------------------------------
def common_checks(exp, device: str, title: str) -> list[Check]:
    """The job finished and every variant ran on the device asked for (the worker's CUDA path, not a fallback)."""
    checks = [Check(f"{title}: job done", exp.status == "done", f"status {exp.status}")]
    devices = {run.variant: (run.environment or {}).get("device") for run in exp.runs}
    on_device = bool(devices) and all(str(d).startswith(device) for d in devices.values())
    checks.append(Check(f"{title}: measured on {device}", on_device,
                        ", ".join(f"{k}={v}" for k, v in devices.items()) or "no runs stored"))
    return checks


def judge_chat(exp, device: str) -> list[Check]:
    checks = common_checks(exp, device, "chat")
    runs = runs_by_name(exp)
    base = runs.get("baseline")
    if base is None:
        return checks
    checks.append(kv_check(base, runs.get("snapkv@0.5")))
    checks.append(bf16_check(base, runs.get("bf16")))
    checks.append(same_tokens_check("chat", base, runs.get("prompt_lookup")))
    return checks


def judge_grounded(exp, device: str) -> list[Check]:
    checks = common_checks(exp, device, "grounded")
    runs = runs_by_name(exp)
    if "baseline" in runs:
        checks.append(same_tokens_check("grounded", runs["baseline"], runs.get("prompt_lookup")))
    return checks


def kv_check(base, run) -> Check:
    """SnapKV evicts half the context's KV pairs: at the same tokens seen it must hold fewer bytes. The paired
    ratio (kv_compression) is used, not the final bytes: a variant that writes a longer answer holds more."""
    if run is None:
        return Check("chat: snapkv holds fewer KV bytes", False, "no snapkv run stored")
    compression = value(run, "kv_compression")
    final = ratio(value(run, "kv_cache_mb"), value(base, "kv_cache_mb"))
    detail = (f"baseline/snapkv KV bytes at equal tokens seen {shown(run, 'kv_compression', 'x')}; "
              f"final KV bytes snapkv/baseline {results.fmt(final)}")
    return Check("chat: snapkv holds fewer KV bytes", compression is not None and compression > 1.0, detail)


def bf16_check(base, run) -> Check:
    """bf16 stores 2 bytes per weight against fp32's 4: the weight bytes must be half the fp32 baseline's."""
    name = "chat: bf16 weight bytes are half of fp32's"
    if run is None:
        return Check(name, False, "no bf16 run stored")
    base_dtype = (base.environment or {}).get("dtype")
    r = ratio(value(run, "weight_mb"), value(base, "weight_mb"))
    ok = base_dtype == "float32" and r is not None and abs(r - 0.5) <= BF16_RATIO_TOLERANCE
    detail = (f"bf16/baseline weight bytes {results.fmt(r, 4)} ({results.fmt(value(run, 'weight_mb'))} MB vs "
              f"{results.fmt(value(base, 'weight_mb'))} MB); baseline dtype {base_dtype}")
    return Check(name, ok, detail)


def same_tokens_check(title: str, base, run) -> Check:
    """Greedy speculative decoding verifies every drafted token against the target's own argmax: its output must
    be the baseline's token for token (the outputs of the first measured repeat, item by item)."""
    name = f"{title}: prompt lookup's greedy tokens equal the baseline's"
    if run is None:
        return Check(name, False, "no prompt_lookup run stored")
    expected = {o.item_index: o.token_ids for o in base.outputs}
    got = {o.item_index: o.token_ids for o in run.outputs}
    differing = [i for i in sorted(expected) if got.get(i) != expected[i]]
    detail = f"{len(expected) - len(differing)}/{len(expected)} items identical"
    for i in differing[:3]:  # where it went apart, so a near-tie flip can be told from a real bug
        a, b = expected[i], got.get(i) or []
        first = next((k for k, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
        detail += f"; item {i} differs at token {first} of {len(a)}"
    return Check(name, bool(expected) and not differing, detail)


def judge_pipeline(exp, device: str) -> list[Check]:
    checks = common_checks(exp, device, "pipeline")
    runs = runs_by_name(exp)
    base = runs.get("baseline")
    if base is None:
        return checks
    for name in ("taylorseer", "block_cache"):
        run = runs.get(name)
        computed = value(run, "blocks_computed") if run else None
        ok = computed is not None and value(base, "blocks_computed") is not None and \
            computed < value(base, "blocks_computed")
        checks.append(Check(f"pipeline: {name} computes fewer blocks", ok,
                            f"blocks computed {results.fmt(computed)}% vs baseline "
                            f"{results.fmt(value(base, 'blocks_computed'))}%"))
    return checks


# --- information (never pass/fail) --------------------------------------------------------------------------
def llm_info(exp) -> list[str]:
    runs = runs_by_name(exp)
    base = runs.get("baseline")
    lines = []
    for run in exp.runs:
        line = (f"{run.variant}: decode tok/s {shown(run, 'decode_tokens_per_s')}, TTFT {shown(run, 'ttft_s', 's')}, "
                f"peak mem {shown(run, 'peak_mem_mb', 'MB')}")
        if run is not base:
            line += (f", speedup {shown(run, 'speedup', 'x')}, weight bytes ratio "
                     f"{results.fmt(ratio(value(run, 'weight_mb'), value(base, 'weight_mb') if base else None))}, "
                     f"agreement {shown(run, 'agreement', '%')}, exact match {shown(run, 'exact_match', '%')}")
        if metric(run, "acceptance_rate") is not None:
            line += (f", acceptance {shown(run, 'acceptance_rate', '%')}, tokens/forward "
                     f"{shown(run, 'tokens_per_forward')}")
        if metric(run, "kv_compression") is not None and run is not base:
            line += f", KV compression {shown(run, 'kv_compression', 'x')}"
        if metric(run, "perplexity") is not None:
            line += f", perplexity {shown(run, 'perplexity')}"
        lines.append(line)
    return lines


def pipeline_info(exp) -> list[str]:
    return [f"{run.variant}: s/image {shown(run, 's_per_image', 's')}, speedup {shown(run, 'speedup', 'x')}, "
            f"blocks computed {shown(run, 'blocks_computed', '%')}, PSNR {shown(run, 'psnr_db', 'dB')}, "
            f"peak mem {shown(run, 'peak_mem_mb', 'MB')}" for run in exp.runs]


def environment_line(exp) -> str:
    if not exp.runs:
        return "no runs stored"
    env = exp.runs[0].environment or {}
    return (f"device={env.get('device')} ({env.get('device_name')}) dtype={env.get('dtype')} "
            f"torch={env.get('torch')} transformers={env.get('transformers')} diffusers={env.get('diffusers')} "
            f"commit={env.get('lab_commit')}")


# --- running ------------------------------------------------------------------------------------------------
def submit_all(experiments: list[Experiment]) -> None:
    """Validate every spec first, so a spec the lab refuses stops the check before anything runs."""
    specs = [validate(e.raw) for e in experiments]
    for e, spec in zip(experiments, specs):
        e.exp_id, e.job_id = jobs.submit(spec)
        print(f"queued {e.title} as experiment {e.exp_id} (job {e.job_id})", flush=True)


def start_worker(device: str, log_path: Path) -> subprocess.Popen:
    """A worker of our own (not a detached one), so the check knows its process and stops it at the end."""
    log = open(log_path, "ab")
    return subprocess.Popen([sys.executable, "-m", "lab", "worker", "--device", device, "--idle-exit", "30"],
                            cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                            env=child_env())


def wait_all(experiments: list[Experiment], worker: subprocess.Popen, started: float, limit_s: float) -> str | None:
    """Poll the jobs until all ended; returns why it stopped early (worker gone, out of time), else None.
    Each progress line carries the seconds since the start, so a slow phase shows where the time went."""
    last: dict[int, str] = {}
    while True:
        states = {e.job_id: jobs.get_job(e.job_id) for e in experiments}
        for e in experiments:
            job = states[e.job_id]
            line = f"[{e.title} {job.progress * 100:5.1f}%] {job.message}"
            if last.get(e.job_id) != line:
                print(f"{time.time() - started:6.0f}s {line}", flush=True)
                last[e.job_id] = line
        if all(job.status in ("done", "failed", "cancelled") for job in states.values()):
            return None
        if worker.poll() is not None:
            return f"the worker exited with code {worker.returncode}"
        if time.time() - started > limit_s:
            return f"out of time ({limit_s:.0f} s)"
        time.sleep(1.0)


def stop_worker(worker: subprocess.Popen) -> None:
    """SIGTERM: the worker stops its job's process within seconds and unregisters from the store."""
    if worker.poll() is None:
        worker.terminate()
        try:
            worker.wait(timeout=20)
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.wait()


def cancel_unfinished(experiments: list[Experiment]) -> None:
    for e in experiments:
        if e.job_id is not None and jobs.get_job(e.job_id).status in ("queued", "running"):
            jobs.cancel(e.job_id)


def report(experiments: list[Experiment], device: str) -> list[Check]:
    """Every experiment's full table and job error first (long), then per experiment its environment and the
    numbers that matter, then (print_verdict) the checks: whoever reads only the end of the output gets those."""
    loaded = [(e, results.load_experiment(e.exp_id), jobs.get_job(e.job_id)) for e in experiments]
    for e, exp, job in loaded:
        print(f"\n=== {e.title}: experiment {e.exp_id} [{exp.status}], the table `python -m lab show` prints ===")
        if job.error:
            print(f"job error: {job.error}")
        print(results.text_table(results.summary_rows(exp)))
    print("\n=== measured (information, not judged) ===")
    checks = []
    for e, exp, job in loaded:
        print(f"{e.title} [{exp.status}]: {environment_line(exp)}")
        if job.error:
            print(f"  job error: {job.error.strip().splitlines()[-1]}")
        if exp.runs and (busy := results.busy_runs(exp)):  # speeds then say little; the checks do not depend on them
            print(f"  WARNING: measured on a busy machine: {busy}")
        for line in e.info(exp):
            print(f"  {line}")
        checks += e.judge(exp, device)
    return checks


def print_verdict(checks: list[Check], device: str, seconds: float) -> int:
    print(f"\n=== GPU check on {device}: {sum(c.ok for c in checks)}/{len(checks)} passed in {seconds:.0f} s ===")
    for c in checks:
        print(f"{'PASS' if c.ok else 'FAIL'}  {c.name}: {c.detail}")
    ok = bool(checks) and all(c.ok for c in checks)
    print("ALL PASS" if ok else "SOME CHECKS FAILED")
    return 0 if ok else 1


def worker_log_tail(log_path: Path, lines: int = 40) -> None:
    if log_path.exists():
        tail = log_path.read_text(errors="replace").splitlines()[-lines:]
        print("\n--- worker log (last lines) ---\n" + "\n".join(tail))


def parse_args(argv=None):
    p = argparse.ArgumentParser(description="Run the lab's CUDA paths once and report PASS/FAIL per check "
                                            "(see this file's docstring).")
    p.add_argument("--device", choices=("cuda", "cpu"), default="cuda",
                   help="where the worker measures (cpu: a rehearsal of the same logic)")
    p.add_argument("--quick", action="store_true", help="smaller sizes (2 prompts, 16 tokens, 1 repeat)")
    p.add_argument("--limit-s", type=float, default=450.0,
                   help="stop waiting after this many seconds, cancel what is left and report (default 450)")
    p.add_argument("--keep", action="store_true", help="keep the temporary store and pipeline folder")
    return p.parse_args(argv)


def on_sigterm(_sig, _frame):
    # `timeout` sends SIGTERM: unwind through the finally blocks, which stop the worker and remove the store
    raise KeyboardInterrupt


def main(argv=None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, on_sigterm)
    started = time.time()
    tmp = Path(tempfile.mkdtemp(prefix="gpu_check-"))
    # a store of its own, so the check never mixes with (or waits behind) the user's jobs; LAB_DATA_DIR stays,
    # so the prepared model cache and measured bandwidth are reused
    os.environ["LAB_DATABASE_URL"] = f"sqlite:///{tmp / 'gpu_check.db'}"
    os.environ["LAB_WORKER_AUTOSTART"] = "0"  # the only worker is the one started below
    size = QUICK if args.quick else FULL
    worker = None
    try:
        folder = save_tiny_flux(tmp / "tiny-flux")
        # run in this order (the worker takes the oldest job first): should the time run out, the cheap pipeline
        # check and the chat check have finished, and the grounded one (a second look at prompt lookup) is lost
        experiments = [Experiment("pipeline", pipeline_spec(args.device, size, folder), judge_pipeline, pipeline_info),
                       Experiment("chat", chat_spec(args.device, size), judge_chat, llm_info),
                       Experiment("grounded", grounded_spec(args.device, size), judge_grounded, llm_info)]
        try:
            submit_all(experiments)
        except SpecError as e:
            print(f"error: the lab refused a spec: {e}", file=sys.stderr)
            return 2
        worker = start_worker(args.device, tmp / "worker.log")
        stopped = wait_all(experiments, worker, started, args.limit_s)
        # the worker first: stopping it puts a running job back in the queue, where cancel ends it at once
        stop_worker(worker)
        if stopped:
            print(f"stopped waiting: {stopped}", flush=True)
            cancel_unfinished(experiments)
        checks = report(experiments, args.device)
        if stopped or not all(c.ok for c in checks):
            worker_log_tail(tmp / "worker.log")
        return print_verdict(checks, args.device, time.time() - started)
    except KeyboardInterrupt:
        print("interrupted (or timed out): no verdict", file=sys.stderr)
        return 1
    finally:
        if worker is not None:
            stop_worker(worker)
        if args.keep:
            print(f"kept {tmp}; see an experiment with LAB_DATABASE_URL={os.environ['LAB_DATABASE_URL']} "
                  f".venv/bin/python -m lab show ID")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
