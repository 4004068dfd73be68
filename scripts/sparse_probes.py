"""Perplexity-only probes of block top-k settings (docs/BENCHMARKS.md, bench_sparse: "Perplexity-only probes"):
each setting scores the held-out windows bench_sparse's perplexity run scores (the second half of each window given
its first half) and reports the share of causal pairs its pattern keeps and its kernel computes. Nothing is
timed: these settings were chosen for quality first, and the ones worth timing are rows of
experiments/bench_sparse.toml.

    .venv/bin/python scripts/sparse_probes.py [--window 8192] [--windows 2] [--threads 2]
    .venv/bin/python scripts/sparse_probes.py --run "bench_sparse (perplexity 8k)"   # that run's variants instead

About 2 minutes per setting at 8k on 2 CPU cores (the FlexAttention kernel compiles once per shape first).
"""
from __future__ import annotations

import argparse
import math
import platform
import sys
from datetime import datetime, timezone
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from anywhere: the lab is the folder above

from lab.bench.loader import load  # noqa: E402
from lab.bench.validate import load_toml_specs  # noqa: E402
from lab.llm.engine import Engine  # noqa: E402
from lab.llm.workloads import perplexity_windows  # noqa: E402
from lab.techniques import build  # noqa: E402

MODEL = "smollm2-135m-instruct"
PROBES = {
    "dense SDPA": [],
    "score mean, top-8, window 128": [{"name": "block_topk", "top_k": 8}],
    "score mass, top-8, window 128": [{"name": "block_topk", "score": "mass", "top_k": 8}],
    "score max, top-8 + window 512": [{"name": "block_topk", "score": "max", "top_k": 8, "window": 512}],
    "coverage 90%": [{"name": "block_topk", "score": "mass", "coverage": 0.90, "top_k": 64}],
    "coverage 97%": [{"name": "block_topk", "score": "mass", "coverage": 0.97, "top_k": 64}],
    "coverage 99%": [{"name": "block_topk", "score": "mass", "coverage": 0.99, "top_k": 64}],
    "coverage 90% + window 1024": [{"name": "block_topk", "score": "mass", "coverage": 0.90, "top_k": 64,
                                    "window": 1024}],
}


def probe(loaded, techniques: list[dict], windows: list[list[int]]) -> dict:
    """Perplexity over the windows, and the kept / computed shares (%) pooled over them."""
    engine = Engine(loaded.model, loaded.tokenizer, build(techniques, model_kind="llm"))
    pattern = engine.slots.get("attention")
    nll = n = 0
    kept, computed = [], []
    with torch.inference_mode():
        for ids in windows:
            half = len(ids) // 2
            a, b = engine.continuation_nll(ids[:half], ids[half:])
            nll, n = nll + a, n + b
            if pattern is not None:
                shares = pattern.sequence_shares(len(ids) - 1)  # a window's last token is never fed
                kept.append(shares["kept_share"])
                computed.append(shares["attended_share"])
    mean = (lambda xs: sum(xs) / len(xs) if xs else 100.0)
    return {"perplexity": math.exp(nll / n), "kept": mean(kept), "computed": mean(computed)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--window", type=int, default=8192)
    parser.add_argument("--windows", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--run", default=None, help="probe the variants of this run of experiments/bench_sparse.toml "
                                                    "(its window too) instead of the settings above")
    args = parser.parse_args()
    probes = PROBES
    if args.run:
        spec = next(s for s in load_toml_specs(ROOT / "experiments" / "bench_sparse.toml") if s.name == args.run)
        probes, args.window = {v.name: v.techniques for v in spec.variants}, spec.perplexity_window
    torch.set_num_threads(args.threads)
    loaded = load(MODEL, device="cpu", kind="llm")
    windows = perplexity_windows(loaded.tokenizer, args.windows * args.window, args.window)
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")),
               platform.processor())
    flags = open("/proc/cpuinfo").read()
    print(f"# {MODEL}, {len(windows)} windows of {args.window} tokens, {args.threads} threads, {cpu} "
          f"({'with' if 'avx512_bf16' in flags else 'without'} avx512_bf16), "
          f"{datetime.now(timezone.utc):%Y-%m-%d}")
    print("| setting | perplexity | kept % | computed % |\n| --- | --- | --- | --- |")
    for label, techniques in probes.items():
        row = probe(loaded, techniques, windows)
        print(f"| {label} | {row['perplexity']:.2f} | {row['kept']:.1f} | {row['computed']:.1f} |", flush=True)


if __name__ == "__main__":
    main()
