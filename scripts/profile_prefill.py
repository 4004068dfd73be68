"""Where the time of a long prefill goes (docs/BENCHMARKS.md, bench_sparse: "Where the time of an 8k prefill
goes"): one forward over the first held-out window, after one warm forward, under torch.profiler, for dense SDPA
and two FlexAttention patterns; self CPU time grouped by op, and the whole forward timed again unprofiled.

    .venv/bin/python scripts/profile_prefill.py [--length 8192] [--threads 2]

About 3 minutes at 8k on 2 CPU cores.
"""
from __future__ import annotations

import argparse
import platform
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from anywhere: the lab is the folder above

from lab.bench.loader import load  # noqa: E402
from lab.llm.engine import Engine  # noqa: E402
from lab.llm.workloads import perplexity_windows  # noqa: E402
from lab.techniques import build  # noqa: E402

MODEL = "smollm2-135m-instruct"
VARIANTS = {
    "dense SDPA": [],
    "sink 4 + window 1024 (flex)": [{"name": "sink_window", "n_sink": 4, "window": 1024}],
    "block top-8 + window 1024 (flex)": [{"name": "block_topk", "top_k": 8, "window": 1024}],
}
GROUPS = {  # op name prefixes -> the row they count in
    "attention kernel": ("aten::_scaled_dot_product", "aten::scaled_dot_product", "flex", "CompiledFunction",
                         "Torch-Compiled Region", "## Call CompiledFxGraph"),
    "aten::mm / addmm / linear (projections, MLP, head)": ("aten::mm", "aten::addmm", "aten::linear", "aten::matmul"),
    "aten::mul (RoPE, RMSNorm, SwiGLU gate)": ("aten::mul",),
    "aten::silu, add, cat, pow, rsqrt, mean": ("aten::silu", "aten::add", "aten::cat", "aten::pow", "aten::rsqrt",
                                              "aten::mean"),
}


def forward(engine, ids) -> float:
    start = time.perf_counter()
    engine.forward(ids, engine.new_cache(), 0)
    return time.perf_counter() - start


def grouped(prof) -> dict[str, float]:
    """Self CPU seconds per group of GROUPS, and everything else."""
    totals = dict.fromkeys([*GROUPS, "other"], 0.0)
    for event in prof.key_averages():
        group = next((g for g, prefixes in GROUPS.items() if event.key.startswith(prefixes)), "other")
        totals[group] += event.self_cpu_time_total / 1e6
    return totals


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--length", type=int, default=8192)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    loaded = load(MODEL, device="cpu", kind="llm")
    ids = torch.tensor([perplexity_windows(loaded.tokenizer, args.length, args.length)[0]])
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")),
               platform.processor())
    bf16 = "avx512_bf16" in open("/proc/cpuinfo").read()
    print(f"# {MODEL}, one {ids.shape[1]}-token forward, {args.threads} threads, {cpu} "
          f"({'with' if bf16 else 'without'} avx512_bf16), {datetime.now(timezone.utc):%Y-%m-%d}")
    columns = {}
    with torch.inference_mode():
        for label, techniques in VARIANTS.items():
            engine = Engine(loaded.model, loaded.tokenizer, build(techniques, model_kind="llm"))
            forward(engine, ids)  # warm: compiles the kernel, first-touch allocations
            with profile(activities=[ProfilerActivity.CPU]) as prof:
                forward(engine, ids)
            columns[label] = (grouped(prof), forward(engine, ids))
    print("| op | " + " | ".join(columns) + " |\n| --- |" + " --- |" * len(columns))
    for group in [*GROUPS, "other"]:
        cells = []
        for totals, _ in columns.values():
            share = totals[group] / sum(totals.values())
            cells.append(f"{totals[group]:.2f} s ({100 * share:.1f}%)")
        print(f"| {group} | " + " | ".join(cells) + " |")
    dense = next(iter(columns.values()))[1]
    print("| whole forward (unprofiled) | " + " | ".join(f"{t:.2f} s ({dense / t:.2f}x)" for _, t in columns.values())
          + " |")


if __name__ == "__main__":
    main()
