"""Runs an LLM experiment through the interleaved protocol (lab/bench/protocol.py) and scores it against the
baseline: token agreement, answer similarity, perplexity and, where a workload has answers, accuracy.

Generation workloads time every batch of items through every variant; the perplexity workload times one forward
per text window. Each metric keeps every sample; lab/bench/record.py summarises them when saving.
"""
from __future__ import annotations

import base64
import time
from dataclasses import asdict

import torch

from lab.bench import fidelity
from lab.bench.attention_profile import amdahl_ceiling, attention_maps, attention_share
from lab.bench.batches import run_batch
from lab.bench.engines import make_engine, variant_threads
from lab.bench.floor import bandwidth_gbs, decode_floor, weights_read
from lab.bench.measure import MB
from lab.bench.protocol import run_interleaved, scaled
from lab.bench.provenance import WEIGHTS_KEY, weights_fingerprint
from lab.bench.similarity import answer_similarity
from lab.llm.workloads import chat_items, context_qa_items, grounded_items, needle_items, perplexity_windows
from lab.ops.sampling import GenerationSettings
from lab.spec import Spec


def run_llm(spec: Spec, loaded, results, progress) -> None:
    engines = []
    n_ctx = longest_sequence(spec, loaded.tokenizer)
    for v, res in zip(spec.variants, results):
        progress(0.02, f"preparing {v.name}")
        engine = make_engine(v, loaded, spec, n_ctx=n_ctx)
        engines.append(engine)
        res.environment["dtype"] = engine.dtype_name
        res.environment[WEIGHTS_KEY] = weights_fingerprint(spec.model)  # what a reused result must match
        res.samples["weight_mb"].append(engine.weight_bytes() / MB)
        _record_preparation(res, engine)
    torch.manual_seed(spec.seed)
    if spec.workload == "perplexity":
        _run_perplexity_workload(spec, loaded, engines, results, scaled(progress, 0.05, 0.8))
    else:
        _run_generation(spec, loaded, engines, results, scaled(progress, 0.05, 0.75))
        if spec.perplexity_tokens:
            _score_perplexity(spec, loaded, engines, results, progress)
    for engine, res in zip(engines, results):
        for t in engine.techniques:
            res.record(t.run_metrics())
    if any(t.slot == "attention" for engine in engines for t in engine.techniques):
        progress(0.95, "attention's share of the prefill")
        _record_attention_ceiling(spec, loaded, engines, results)
    _score_agreement(results)
    _score_similarity(results)
    _score_answers(results)


def _record_preparation(res, engine) -> None:
    """Calibration time (spent before any timed run) and what the techniques found while preparing."""
    if engine.calibration is not None and engine.calibration.notes:
        res.samples["calibration_s"].append(engine.calibration.seconds)
        res.environment["calibration"] = f"{'; '.join(engine.calibration.notes)}: {engine.calibration.source}"
    for t in engine.techniques:
        res.details.update(t.details())


def _record_attention_ceiling(spec, loaded, engines, results) -> None:
    """For every unit the timed repeats ran (each item; each perplexity window): attention's share of the
    baseline's prefill of it, and each row's Amdahl ceiling from its kernel's computed share of the same prefill,
    one sample per unit (summarised by the median, like the prefill speedup they bound)."""
    units = _profile_units(spec, loaded.tokenizer)
    first_token = GenerationSettings(1, spec.temperature, spec.top_p, spec.seed)
    with variant_threads(spec.variants[0].threads):  # the share depends on threads: the baseline's own
        shares = [attention_share(engines[0], lambda u=u: _prefill(u, engines[0], results[0].engine, first_token))
                  for u in units]
    for engine, res, variant in zip(engines, results, spec.variants):
        pattern = engine.slots.get("attention")
        if pattern is None:  # dense attention computes every pair
            computed = [1.0] * len(units)
        elif hasattr(pattern, "sequence_shares"):
            with variant_threads(variant.threads):
                computed = [_computed_share(pattern, u, engine, res, first_token, spec.workload) for u in units]
        else:  # an attention technique that does not count what it computes: no ceiling can be stated
            computed = [None] * len(units)
        for share, part in zip(shares, computed):
            res.record({"attention_share": 100 * share})
            if part is not None:
                res.record({"amdahl_ceiling": amdahl_ceiling(share, part)})
    _record_attention_maps(loaded, engines, results, units[0][0])


def _profile_units(spec, tokenizer) -> list[tuple[list[int], object]]:
    """The units the timed repeats ran, as (token ids, workload item or None for a perplexity window)."""
    if spec.workload == "perplexity":
        windows = perplexity_windows(tokenizer, spec.prompts * spec.perplexity_window, spec.perplexity_window)
        return [(ids, None) for ids in windows]
    return [(item.prompt_ids + (item.question_ids or []), item) for item in _items(spec, tokenizer)]


def _prefill(unit, engine, engine_name: str, first_token) -> float:
    """Seconds of a unit's prefill, doing what its timed run does: a perplexity window's two forwards
    (continuation_nll, the second with every position's logits), timed whole; an item's prompt and question up
    to its first token through the variant's own path (run_batch), its TTFT (what the prefill speedup compares)."""
    ids, item = unit
    if item is None:
        start = time.perf_counter()
        engine.continuation_nll(ids[:len(ids) // 2], ids[len(ids) // 2:])
        return time.perf_counter() - start
    return run_batch(engine, engine_name, [item], first_token)[0].ttft


def _computed_share(pattern, unit, engine, res, first_token, workload: str) -> float:
    """The fraction of causal pairs the row's kernel computes in the unit's prefill, counted by the pattern while
    the unit runs again. The perplexity workload makes no generation that measure() could count: its shares are
    recorded from these runs."""
    _prefill(unit, engine, res.engine, first_token)
    ids, item = unit
    shares = pattern.sequence_shares(len(ids) - (item is None))  # a window's last token is never fed
    if workload == "perplexity":
        res.record(shares)
    return shares["attended_share"] / 100


def _record_attention_maps(loaded, engines, results, ids: list[int]) -> None:
    """The page's picture: the dense attention of the first input at three layers (on the baseline) and what
    each pattern keeps of the same queries and keys, per head, in 64 x 64 cells (float16, base64)."""
    n_layers = loaded.model.config.num_hidden_layers
    layers = tuple(sorted({0, n_layers // 2, n_layers - 1}))
    patterns = {res.name: engine.slots["attention"] for engine, res in zip(engines, results)
                if hasattr(engine.slots.get("attention"), "token_mask")}
    maps = attention_maps(engines[0], ids, patterns, layers)
    results[0].details["attention_maps"] = {"length": len(ids), "layers": list(layers),
                                            "dense": {str(k): _encoded(v) for k, v in maps["dense"].items()}}
    for res in results:
        kept = {str(layer): _encoded(v) for (name, layer), v in maps["kept"].items() if name == res.name}
        if kept:
            res.details["attention_maps"] = {"length": len(ids), "layers": list(layers), "kept": kept}


def _encoded(array) -> dict:
    return {"shape": list(array.shape), "float16": base64.b64encode(array.tobytes()).decode()}


def _items(spec, tokenizer):
    if spec.workload == "needle":
        return needle_items(tokenizer, spec.needle_lengths, spec.needle_depths, spec.seed)
    if spec.workload == "context_qa":
        return context_qa_items(tokenizer, spec.prompts)
    if spec.workload == "grounded":
        return grounded_items(tokenizer, spec.prompts)
    return chat_items(tokenizer, spec.prompts)


# The speedup each workload leads with: one no variant can game by the length of its answers. Chat and
# grounded spend their time decoding, so time per output token; needle and context_qa spend it prefilling a
# long context, so time to first token. Latency-based tokens/s would reward a variant that rambles on.
HEADLINE_SPEEDUP = {"chat": "decode_speedup", "grounded": "decode_speedup", "needle": "prefill_speedup",
                    "context_qa": "prefill_speedup"}


def settings_for(spec: Spec):
    return GenerationSettings(spec.max_new_tokens, spec.temperature, spec.top_p, spec.seed)


def first_batch(spec: Spec, tokenizer) -> list:
    return _items(spec, tokenizer)[:spec.batch_size]


def longest_sequence(spec: Spec, tokenizer) -> int:
    """Tokens of the longest sequence any variant holds in this run: an item's prompt and question with every new
    token, or a perplexity window (llama.cpp's context is sized from it)."""
    lengths = [spec.perplexity_window] if spec.workload == "perplexity" or spec.perplexity_tokens else []
    if spec.workload != "perplexity":
        lengths += [len(it.prompt_ids) + len(it.question_ids or []) + spec.max_new_tokens
                    for it in _items(spec, tokenizer)]
    return max(lengths)


def probe_work(spec: Spec, tokenizer) -> dict:
    """What the memory probe's children run (lab/bench/memory_probe.py), as plain data: the workload's first unit
    as token ids (a llama.cpp child has no tokenizer and no torch), each variant's thread count as the timed runs
    used it, and llama.cpp's context size."""
    work = {"threads": [v.threads or torch.get_num_threads() for v in spec.variants],
            "n_ctx": longest_sequence(spec, tokenizer), "eos_token_id": tokenizer.eos_token_id}
    if spec.workload == "perplexity":
        work["perplexity_ids"] = perplexity_windows(tokenizer, spec.perplexity_window, spec.perplexity_window)[0]
        return work
    work["batch"] = [{"prompt_ids": list(it.prompt_ids), "question_ids": list(it.question_ids or []) or None}
                     for it in first_batch(spec, tokenizer)]
    work["settings"] = asdict(settings_for(spec))
    return work


def _run_generation(spec: Spec, loaded, engines, results, progress):
    """Generation workloads: every batch of items through every variant, interleaved per repeat."""
    items = _items(spec, loaded.tokenizer)
    batches = [items[i:i + spec.batch_size] for i in range(0, len(items), spec.batch_size)]
    settings = settings_for(spec)
    device = results[0].environment.get("device", "cpu")
    # on each variant's own threads: one thread reads memory slower than two, so its floor is its own
    bandwidths = [bandwidth_gbs(device, v.threads or torch.get_num_threads()) for v in spec.variants]
    weights = [weights_read(e) for e in engines]  # (bytes a target forward reads, bytes a draft forward reads)
    for res, bandwidth in zip(results, bandwidths):
        if bandwidth:
            res.environment["memory_bandwidth_gbs"] = round(bandwidth, 1)

    def run(k: int, b: int, repeat: int | None) -> list:
        with variant_threads(spec.variants[k].threads) as threads:
            gens = run_batch(engines[k], results[k].engine, batches[b], settings)
        results[k].environment["threads"] = threads  # what torch ran with, not what the spec asked for
        if repeat is None:  # warm-up
            return gens
        res = results[k]
        if len(gens) > 1:  # all its tokens over the time its last sequence finished
            res.samples["batch_tokens_per_s"].append(sum(len(g.token_ids) for g in gens) / max(g.latency for g in gens))
        for item, gen in zip(batches[b], gens):
            _record_generation(res, gen, engines[k].techniques)
            res.record(decode_floor(gen, weights[k][0], bandwidths[k], draft_weight_bytes=weights[k][1]))
            if repeat == 0:
                res.outputs.append(_output(loaded.tokenizer, item, gen, engines[k].techniques, detail=item is items[0]))
        return gens

    def pair(_r: int, _b: int, gens_of: dict) -> None:
        for k in gens_of:  # paired: same items, same repeat, adjacent in time
            _record_pair(results[k].samples, gens_of[0], gens_of[k], HEADLINE_SPEEDUP[spec.workload])

    run_interleaved(len(engines), len(batches), spec.repeats, spec.warmup, run, pair, progress,
                    lambda k: results[k].name, warmup_units=warmup_units(engines, len(batches)))


def warmup_units(engines, n_units: int) -> int:
    """How many units the warm-up runs: all of them when a variant compiles a kernel per input shape (items of
    different lengths are different shapes), so compiling never lands in a timed repeat; else the first."""
    per_shape = any(t.compiles_per_shape() for e in engines for t in e.techniques)
    return n_units if per_shape else 1


def _record_generation(res, gen, techniques) -> None:
    res.record({"ttft_s": gen.ttft, "tpot_ms": gen.tpot * 1000, "latency_s": gen.latency,
                "tokens_per_s": len(gen.token_ids) / gen.latency, "prefill_tokens_per_s": gen.prompt_len / gen.ttft,
                "decode_tokens_per_s": 1.0 / gen.tpot, "new_tokens": len(gen.token_ids),
                "kv_cache_mb": gen.kv_bytes / MB})
    for t in techniques:  # the metrics a technique declares beside its knobs
        res.record(t.measure(gen))


def _run_perplexity_workload(spec: Spec, loaded, engines, results, progress):
    """Perplexity workload: time one forward per window (prefill throughput) and score the text."""
    windows = perplexity_windows(loaded.tokenizer, spec.prompts * spec.perplexity_window, spec.perplexity_window)
    totals = [[0.0, 0] for _ in engines]

    def run(k: int, i: int, repeat: int | None) -> float:
        ids = windows[i]
        with variant_threads(spec.variants[k].threads) as threads:
            start = time.perf_counter()
            nll, n = engines[k].continuation_nll(ids[:len(ids) // 2], ids[len(ids) // 2:])
            rate = len(ids) / (time.perf_counter() - start)
        results[k].environment["threads"] = threads  # as in _run_generation
        if repeat is not None:
            results[k].samples["prefill_tokens_per_s"].append(rate)
        if repeat == 0:
            totals[k][0] += nll
            totals[k][1] += n
        return rate

    def pair(_r: int, _i: int, rates: dict) -> None:
        for k in rates:
            results[k].record({"prefill_speedup": rates[k] / rates[0], "speedup": rates[k] / rates[0]})

    run_interleaved(len(engines), len(windows), spec.repeats, spec.warmup, run, pair, progress,
                    lambda k: results[k].name, unit="window")
    for k in range(len(engines)):
        results[k].samples["perplexity"].append(fidelity.perplexity(*totals[k]))


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


def _output(tokenizer, item, gen, techniques, detail: bool) -> dict:
    """One output as the store keeps it: the text, its timings, the item's answer check, and what each technique
    adds for its page view (detail: the one item whose heavy views, such as kept tokens, are stored)."""
    text = tokenizer.decode(gen.token_ids, skip_special_tokens=True)
    extra = {"prompt_tokens": gen.prompt_len, "token_times": gen.token_times, "stopped_by": gen.stopped_by}
    if item.info:
        extra.update(item.info)
    if item.answer is not None:
        extra["answer"] = item.answer
        extra["correct"] = item.answer in text
    for t in techniques:  # the page has no tokenizer: texts are decoded here
        extra.update(t.output_extra(gen, tokenizer.decode, item.prompt_ids, detail))
    return dict(item_index=item.index, item_key=item.key, prompt=item.text, text=text, token_ids=gen.token_ids,
                extra=extra)


def _score_perplexity(spec, loaded, engines, results, progress):
    """Perplexity of the second half of each held-out window given its first half as a prefix, which a
    cache technique compresses first (so KV methods are scored on what they kept)."""
    windows = perplexity_windows(loaded.tokenizer, spec.perplexity_tokens, spec.perplexity_window)
    for k, engine in enumerate(engines):
        progress(0.8 + 0.1 * k / len(engines), f"perplexity: {results[k].name}")
        nll = n = 0
        for ids in windows:
            half = len(ids) // 2
            with variant_threads(spec.variants[k].threads):
                a, b = engine.continuation_nll(ids[:half], ids[half:])
            nll, n = nll + a, n + b
        results[k].samples["perplexity"].append(fidelity.perplexity(nll, n))


def _score_agreement(results: list) -> None:
    baseline = {o["item_index"]: o["token_ids"] for o in results[0].outputs}
    for res in results:
        for out in res.outputs:
            rate, first = fidelity.agreement(baseline[out["item_index"]], out["token_ids"])
            res.samples["agreement"].append(100.0 * rate)
            res.samples["exact_match"].append(100.0 * (out["token_ids"] == baseline[out["item_index"]]))
            res.samples["first_divergence"].append(first)


def _score_similarity(results: list) -> None:
    """Cosine similarity of each answer's MiniLM embedding with the baseline's answer to the same item: an answer
    that differs by a word scores near 100, where token agreement drops at the first differing token."""
    if not results[0].outputs:
        return
    baseline = {o["item_index"]: o["text"] for o in results[0].outputs}
    for res in results:
        res.samples["answer_similarity"].extend(answer_similarity(
            [baseline[o["item_index"]] for o in res.outputs], [o["text"] for o in res.outputs]))


def _score_answers(results: list) -> None:
    for res in results:
        scored = [o["extra"]["correct"] for o in res.outputs if "correct" in o["extra"]]
        res.samples["answer_accuracy"].extend(100.0 * c for c in scored)
