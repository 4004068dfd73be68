"""Runs a validated spec variant by variant and writes the results to the store in one transaction.

Measurement protocol: every variant is prepared first, then warmed up, then the repeats run with the
variants interleaved (A B C, B C A, ...: the order rotates so no variant always runs first), so drift in
the machine hits all of them alike. Each metric is summarised by its median, p10, p90 and n.
"""
from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Callable

from lab import fidelity, store
from lab.measure import environment, summarize
from lab.metrics import definition

MB = 1024 * 1024
_default_threads: int | None = None


class Cancelled(Exception):
    """Raised from the progress callback when the user cancelled the job."""


@dataclass
class VariantResult:
    name: str
    engine: str
    techniques: list
    environment: dict = field(default_factory=dict)
    samples: dict = field(default_factory=lambda: defaultdict(list))  # metric -> values
    outputs: list = field(default_factory=list)  # dicts: item_index, item_key, prompt, text, token_ids, extra


def _noop(_fraction: float, _message: str) -> None:
    return None


def execute(spec: dict, progress: Callable[[float, str], None] = _noop) -> list[VariantResult]:
    """Run the spec and return the measured results (nothing is written here)."""
    import torch

    from lab.engine import Engine
    from lab.experiment import spec_hash
    from lab.models import default_device, load
    from lab.techniques import build

    global _default_threads
    if _default_threads is None:
        _default_threads = torch.get_num_threads()
    # a long-lived worker must not carry one job's thread count into the next
    torch.set_num_threads(spec["threads"] or _default_threads)
    device = default_device() if spec["device"] == "auto" else spec["device"]
    if device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device 'cuda' was asked for but no CUDA GPU is available here; use 'auto' or 'cpu'")
    progress(0.0, f"loading {spec['model']}")
    loaded = load(spec["model"], device=device)
    if loaded.kind == "diffusion":
        return _execute_diffusion(spec, loaded, device, progress)
    engines, results = [], []
    for v in spec["variants"]:
        progress(0.02, f"preparing {v['name']}")
        engine = Engine(loaded.model, loaded.tokenizer, build(v["techniques"], model_kind=loaded.kind))
        engines.append(engine)
        dtype = str(next(engine.model.parameters()).dtype).replace("torch.", "")
        results.append(VariantResult(v["name"], v["engine"], v["techniques"],
                                     environment(device, dtype, spec_hash(spec))))
        results[-1].samples["weight_mb"].append(engine.weight_bytes() / MB)
    torch.manual_seed(spec["seed"])
    if spec["workload"] == "perplexity":
        _run_perplexity_workload(spec, loaded, engines, results, progress)
    else:
        _run_generation(spec, loaded, engines, results, progress)
    _measure_memory(spec, results, progress)
    if spec["workload"] != "perplexity" and spec["perplexity_tokens"]:
        _score_perplexity(spec, loaded, engines, results, progress)
    _score_agreement(results)
    _score_similarity(results)
    _score_answers(results)
    progress(1.0, "done")
    return results


def _execute_diffusion(spec, loaded, device, progress) -> list[VariantResult]:
    from lab.diffusion.runner import run_diffusion
    from lab.experiment import spec_hash
    from lab.techniques import build

    techniques, results = [], []
    for v in spec["variants"]:
        techniques.append(build(v["techniques"], model_kind="diffusion"))
        results.append(VariantResult(v["name"], v["engine"], v["techniques"],
                                     environment(device, loaded.dtype, spec_hash(spec))))
    run_diffusion(spec, loaded, techniques, results, progress)
    _measure_memory(spec, results, progress)
    progress(1.0, "done")
    return results


def _items(spec, tokenizer):
    from lab.workloads import chat_items, context_qa_items, grounded_items, needle_items
    if spec["workload"] == "needle":
        return needle_items(tokenizer, spec["needle_lengths"], spec["needle_depths"], spec["seed"])
    if spec["workload"] == "context_qa":
        return context_qa_items(tokenizer, spec["prompts"])
    if spec["workload"] == "grounded":
        return grounded_items(tokenizer, spec["prompts"])
    return chat_items(tokenizer, spec["prompts"])


# The speedup each workload leads with: one no variant can game by the length of its answers. Chat and
# grounded spend their time decoding, so time per output token; needle and context_qa spend it prefilling a
# long context, so time to first token. Latency-based tokens/s would reward a variant that rambles on.
HEADLINE_SPEEDUP = {"chat": "decode_speedup", "grounded": "decode_speedup", "needle": "prefill_speedup",
                    "context_qa": "prefill_speedup"}


def settings_for(spec: dict):
    from lab.engine import GenerationSettings
    return GenerationSettings(spec["max_new_tokens"], spec["temperature"], spec["top_p"], spec["seed"])


def first_batch(spec: dict, tokenizer) -> list:
    return _items(spec, tokenizer)[:spec["batch_size"]]


def run_batch(engine, engine_name: str, batch: list, settings) -> list:
    """One batch of workload items through one variant: a list of Generations."""
    if engine_name == "hf_generate":
        return [engine.generate_hf(it.prompt_ids + (it.question_ids or []), settings) for it in batch]
    if len(batch) == 1:
        return [engine.generate(batch[0].prompt_ids, settings, batch[0].question_ids)]
    return engine.generate_batch([it.prompt_ids + (it.question_ids or []) for it in batch], settings)


def _run_generation(spec, loaded, engines, results, progress):
    """Generation workloads: every batch of items through every variant, interleaved per repeat."""
    items = _items(spec, loaded.tokenizer)
    size = spec["batch_size"]
    batches = [items[i:i + size] for i in range(0, len(items), size)]
    settings = settings_for(spec)
    n_variants = len(engines)
    total = (spec["warmup"] + spec["repeats"] * len(batches)) * n_variants
    done = 0
    for w in range(spec["warmup"]):
        for k in range(n_variants):
            progress(0.05 + 0.75 * done / total, f"warm-up {w + 1}: {results[k].name}")
            run_batch(engines[k], results[k].engine, batches[0], settings)
            done += 1
    for r in range(spec["repeats"]):
        for b, batch in enumerate(batches):
            order = [(k + r + b) % n_variants for k in range(n_variants)]  # rotate who goes first
            gens_of = {}
            for k in order:
                progress(0.05 + 0.75 * done / total, f"repeat {r + 1}/{spec['repeats']}, batch {b + 1}/{len(batches)}: "
                                                     f"{results[k].name}")
                gens_of[k] = gens = run_batch(engines[k], results[k].engine, batch, settings)
                done += 1
                if len(batch) > 1:  # all its tokens over the time its last sequence finished
                    results[k].samples["batch_tokens_per_s"].append(
                        sum(len(g.token_ids) for g in gens) / max(g.latency for g in gens))
                for item, gen in zip(batch, gens):
                    _record_generation(results[k], gen)
                    if r == 0:
                        results[k].outputs.append(_output(loaded.tokenizer, item, gen, keep_positions=item is items[0]))
            for k in range(n_variants):  # paired: same items, same repeat, adjacent in time
                _record_pair(results[k].samples, gens_of[0], gens_of[k], HEADLINE_SPEEDUP[spec["workload"]])


def _decode_rate(gens) -> float:
    """Tokens after the first per second of decoding (batch 1: 1/TPOT); nan when nothing was decoded."""
    tokens = sum(len(g.token_ids) - 1 for g in gens)
    seconds = max(g.latency for g in gens) - min(g.ttft for g in gens)
    return tokens / seconds if tokens and seconds > 0 else float("nan")


def _record_pair(s: dict, base: list, gens: list, headline: str) -> None:
    """Ratios of a variant to the baseline on the same items in the same repeat."""
    s["decode_speedup"].append(_decode_rate(gens) / _decode_rate(base))
    s["prefill_speedup"].append(min(g.ttft for g in base) / min(g.ttft for g in gens))
    s["speedup"].append(s[headline][-1])
    for b, g in zip(base, gens):  # KV bytes when both caches had seen the same number of tokens
        seen = min(b.tokens_seen, g.tokens_seen)
        if g.kv_bytes_at(seen):
            s["kv_compression"].append(b.kv_bytes_at(seen) / g.kv_bytes_at(seen))


def _record_generation(res, gen) -> None:
    s = res.samples
    s["ttft_s"].append(gen.ttft)
    s["tpot_ms"].append(gen.tpot * 1000)
    s["latency_s"].append(gen.latency)
    s["tokens_per_s"].append(len(gen.token_ids) / gen.latency)
    s["prefill_tokens_per_s"].append(gen.prompt_len / gen.ttft)
    s["decode_tokens_per_s"].append(1.0 / gen.tpot)
    s["new_tokens"].append(len(gen.token_ids))
    s["kv_cache_mb"].append(gen.kv_bytes / MB)
    x = gen.extra
    if "target_forwards" in x:  # speculative decoding
        if gen.draft_kv_bytes:
            s["draft_kv_mb"].append(gen.draft_kv_bytes / MB)
        if x["drafted"]:
            s["acceptance_rate"].append(100.0 * x["accepted"] / x["drafted"])
        s["mean_accepted"].append(x["accepted"] / max(x["target_forwards"], 1))
        s["tokens_per_forward"].append(len(gen.token_ids) / (x["target_forwards"] + 1))  # + the prefill
        s["draft_ms"].append(1000 * x["draft_s"])
        s["verify_ms"].append(1000 * x["verify_s"])


def _measure_memory(spec, results, progress) -> None:
    """Each variant's memory with only its own weights alive, from a fresh process (lab/memory_probe.py)."""
    from lab.memory_probe import probe
    progress(0.82, "memory: each variant once more, in a fresh process with only its own weights")
    for res, m in zip(results, probe(spec)):
        if "error" in m:
            res.environment["memory_probe"] = m["error"]
            continue
        res.samples["peak_mem_mb"].append(m["peak_mb"])
        res.samples["mem_rise_mb"].append(m["rise_mb"])


def _output(tokenizer, item, gen, keep_positions: bool) -> dict:
    text = tokenizer.decode(gen.token_ids, skip_special_tokens=True)
    extra = {"prompt_tokens": gen.prompt_len, "token_times": gen.token_times, "stopped_by": gen.stopped_by}
    if item.info:
        extra.update(item.info)
    if item.answer is not None:
        extra["answer"] = item.answer
        extra["correct"] = item.answer in text
    if "spec_rounds" in gen.extra:  # for the page's token colouring and per-round timeline
        rounds = gen.extra["spec_rounds"]
        extra["spec_rounds"] = rounds
        extra["prefill_s"] = gen.token_times[0]
        extra["token_texts"] = [tokenizer.decode([t]) for t in gen.token_ids]
        extra["rejected_texts"] = [tokenizer.decode(r["proposed"][r["accepted"]:]) for r in rounds]
    kept = gen.extra.get("kept_positions")
    if kept and keep_positions:  # which context tokens each layer and KV head kept, for the page's view
        extra["kept_positions"] = {str(layer): pos[0].sort(dim=-1).values.tolist() for layer, pos in kept.items()}
        extra["context_tokens"] = [tokenizer.decode([t]) for t in item.prompt_ids]  # the page has no tokenizer
    return dict(item_index=item.index, item_key=item.key, prompt=item.text, text=text, token_ids=gen.token_ids,
                extra=extra)


def _score_perplexity(spec, loaded, engines, results, progress):
    """Perplexity of the second half of each held-out window given its first half as a prefix, which a
    cache technique compresses first (so KV methods are scored on what they kept)."""
    from lab.workloads import perplexity_windows

    windows = perplexity_windows(loaded.tokenizer, spec["perplexity_tokens"], spec["perplexity_window"])
    for k, engine in enumerate(engines):
        progress(0.87 + 0.12 * k / len(engines), f"perplexity: {results[k].name}")
        nll = n = 0
        for ids in windows:
            half = len(ids) // 2
            a, b = engine.continuation_nll(ids[:half], ids[half:])
            nll, n = nll + a, n + b
        results[k].samples["perplexity"].append(fidelity.perplexity(nll, n))


def _run_perplexity_workload(spec, loaded, engines, results, progress):
    """Perplexity workload: time one forward per window (prefill throughput) and score the text."""
    import time

    from lab.workloads import perplexity_windows

    n_tokens = spec["prompts"] * spec["perplexity_window"]
    windows = perplexity_windows(loaded.tokenizer, n_tokens, spec["perplexity_window"])
    totals = [[0.0, 0] for _ in engines]
    steps = (spec["warmup"] + spec["repeats"] * len(windows)) * len(engines)
    done = 0
    def score(engine, ids):
        half = len(ids) // 2
        return engine.continuation_nll(ids[:half], ids[half:])

    for _ in range(spec["warmup"]):
        for k, engine in enumerate(engines):
            score(engine, windows[0])
            done += 1
    for r in range(spec["repeats"]):
        for i, ids in enumerate(windows):
            order = [(k + r + i) % len(engines) for k in range(len(engines))]
            rates = {}
            for k in order:
                progress(0.05 + 0.9 * done / steps, f"repeat {r + 1}, window {i + 1}: {results[k].name}")
                t0 = time.perf_counter()
                nll, n = score(engines[k], ids)
                elapsed = time.perf_counter() - t0
                done += 1
                rates[k] = len(ids) / elapsed
                results[k].samples["prefill_tokens_per_s"].append(rates[k])
                if r == 0:
                    totals[k][0] += nll
                    totals[k][1] += n
            for k in range(len(engines)):
                results[k].samples["prefill_speedup"].append(rates[k] / rates[0])
                results[k].samples["speedup"].append(rates[k] / rates[0])
    for k in range(len(engines)):
        results[k].samples["perplexity"].append(fidelity.perplexity(*totals[k]))


def _score_agreement(results: list[VariantResult]) -> None:
    baseline = {o["item_index"]: o["token_ids"] for o in results[0].outputs}
    for res in results:
        for out in res.outputs:
            rate, first = fidelity.agreement(baseline[out["item_index"]], out["token_ids"])
            res.samples["agreement"].append(100.0 * rate)
            res.samples["exact_match"].append(100.0 * (out["token_ids"] == baseline[out["item_index"]]))
            res.samples["first_divergence"].append(first)


def _score_similarity(results: list[VariantResult]) -> None:
    """Cosine similarity of each answer's MiniLM embedding with the baseline's answer to the same item: an answer
    that differs by a word scores near 100, where token agreement drops at the first differing token."""
    from lab.similarity import answer_similarity
    if not results[0].outputs:
        return
    baseline = {o["item_index"]: o["text"] for o in results[0].outputs}
    for res in results:
        res.samples["answer_similarity"].extend(answer_similarity(
            [baseline[o["item_index"]] for o in res.outputs], [o["text"] for o in res.outputs]))


def _score_answers(results: list[VariantResult]) -> None:
    for res in results:
        scored = [o["extra"]["correct"] for o in res.outputs if "correct" in o["extra"]]
        res.samples["answer_accuracy"].extend(100.0 * c for c in scored)


def save(experiment_id: int, results: list[VariantResult]) -> None:
    """Write all runs, metrics and outputs of an experiment in one transaction."""
    with store.session() as s:
        exp = s.get(store.Experiment, experiment_id)
        for position, res in enumerate(results):
            run = store.Run(position=position, variant=res.name, is_baseline=position == 0,
                            params={"techniques": res.techniques, "engine": res.engine},
                            environment=res.environment)
            for name, values in res.samples.items():
                summary = summarize(values, share=definition(name).share)
                run.metrics.append(store.Metric(
                    name=name, value=_finite(summary.median), p10=_finite(summary.p10), p90=_finite(summary.p90),
                    n=summary.n, unit=definition(name).unit, samples=[_finite(v) for v in values]))
            for out in res.outputs:
                run.outputs.append(store.Output(**out))
            exp.runs.append(run)


def _finite(x: float) -> float | None:
    # NaN (e.g. TPOT of a one-token answer) is stored as NULL: SQL and JSON have no portable NaN.
    return float(x) if x is not None and math.isfinite(x) else None
