"""The catalogue of metrics: unit, one-line definition, and which direction is better.

Pages, CLI tables and reports read definitions from here so a number is never shown without them.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class MetricDef:
    name: str
    label: str
    unit: str
    definition: str
    higher_is_better: bool | None  # None: neither (a descriptive count)
    kind: str = "measured"  # "measured" (timed or counted here) or "quality" (scored against the baseline)
    share: bool = False  # a 0/100 score per item: summarised by its mean (a median of 0s and 100s says nothing)


_DEFS = [
    MetricDef("speedup", "Speedup", "x", "The workload's headline, paired with the baseline per item (or image batch) "
              "and repeat in the same process, baseline interleaved; median of the ratios. chat and grounded: the "
              "decode speedup (baseline TPOT / variant TPOT); needle and context_qa: the prefill speedup (baseline "
              "TTFT / variant TTFT); perplexity: prefill tokens/s ratio; diffusion: images/s ratio. None of these "
              "moves with how many tokens a variant chooses to generate.", True),
    MetricDef("decode_speedup", "Decode speedup", "x", "Baseline time per output token over the variant's (batch > "
              "1: decode throughput ratio), paired per item and repeat; median of the ratios.", True),
    MetricDef("prefill_speedup", "Prefill speedup", "x", "Baseline time to first token over the variant's (the "
              "prefill of prompt or context, question included), paired per item and repeat; median.", True),
    MetricDef("tokens_per_s", "Tokens/s", "tok/s", "New tokens divided by end-to-end latency of one generation, "
              "prefill included (moves with answer length: the speedups above do not).", True),
    MetricDef("decode_tokens_per_s", "Decode tokens/s", "tok/s", "1 / TPOT: output tokens per second once the "
              "first is known.", True),
    MetricDef("ttft_s", "TTFT", "s", "Time to first token: from the start of prefill until the first new token "
              "is known.", False),
    MetricDef("tpot_ms", "TPOT", "ms", "Time per output token after the first: decode time divided by "
              "(new tokens - 1).", False),
    MetricDef("decode_mb_per_token", "Bytes read per token", "MB", "Bytes a decode step must stream from memory "
              "per token after the first: the weights once per decode forward (speculative: per verify forward, "
              "plus a draft model's own weights per drafted token) and the KV cache as it stood before each "
              "forward, summed over the generation's decode forwards and divided by (new tokens - 1).", False),
    MetricDef("floor_ms", "Memory floor", "ms", "The memory-bound floor of TPOT: bytes read per token divided by "
              "the memory bandwidth on the row's threads (CPU: the best read over 512 MB this host has measured "
              "on that thread count; in the run's environment as memory_bandwidth_gbs). It assumes each forward "
              "reads every weight it uses and every cached K/V byte once from memory, nothing stays in cache "
              "between steps and nothing else is read; compute and per-op overhead come on top. CPU and CUDA "
              "only.", None),
    MetricDef("tpot_over_floor", "TPOT / floor", "x", "Measured TPOT divided by the memory floor: how far the "
              "decode loop is from only streaming its weights and KV cache (1 = memory-bound, nothing else "
              "spent).", False),
    MetricDef("latency_s", "Latency", "s", "End-to-end time of one generation, prefill included.", False),
    MetricDef("new_tokens", "New tokens", "tok", "Tokens generated (stops at max_new_tokens or end of sequence).",
              None),
    MetricDef("peak_mem_mb", "Peak memory", "MB", "Peak process RSS (CPU: the kernel's high-water mark) or peak CUDA "
              "memory allocated (GPU) while the variant runs the workload's first unit, in a fresh process of its "
              "own that imports only what the variant needs, on the variant's threads, after one unmeasured run "
              "of the same unit (compiles, caches); = runtime + weights + work.", False),
    MetricDef("mem_runtime_mb", "Memory: runtime", "MB", "RSS of that fresh process before any weight is loaded: "
              "Python and the libraries the variant runs with (torch and transformers; llama.cpp's row: "
              "libllama, no torch). 0 on a GPU.", False),
    MetricDef("mem_weights_mb", "Memory: weights", "MB", "RSS the loaded model adds to the runtime, with only this "
              "variant's own copy alive and every page touched (llama.cpp: also the context it allocates on "
              "opening, its KV cache sized to the run's longest sequence).", False),
    MetricDef("mem_rise_mb", "Memory: work", "MB", "Peak above runtime + weights: the working memory of the "
              "workload's first unit (activations, KV cache, temporaries) and what its unmeasured first run "
              "left (compiled kernels, a static cache).", False),
    MetricDef("weight_mb", "Weights", "MB", "Bytes of the model's parameters and buffers as held in memory "
              "(tied weights counted once), plus a draft model's own weights.", False),
    MetricDef("kv_cache_mb", "KV cache", "MB", "Bytes of the target's KV cache at the end of a generation, "
              "summed from the cache's tensors (batch > 1: this sequence's row, holes included).", False),
    MetricDef("agreement", "Agreement", "%", "Tokens equal to the baseline's greedy tokens at the same position, "
              "divided by the longer of the two outputs (100% = identical; stopping early or running on both "
              "count against it).", True, "quality"),
    MetricDef("answer_similarity", "Answer similarity", "%", "Cosine similarity x 100 of the sentence embeddings "
              "(all-MiniLM-L6-v2, mean-pooled, unit length) of the variant's answer and the baseline's for the "
              "same prompt; 100 = identical text, a one-word change scores in the 90s, unrelated text near 0.",
              True, "quality"),
    MetricDef("first_divergence", "First divergence", "tok", "Position of the first token where the variant's "
              "output differs from the baseline's (= output length when identical).", True, "quality"),
    MetricDef("perplexity", "Perplexity", "ppl", "exp(mean negative log-likelihood) of the second half of each "
              "held-out English window (CPython's pydoc topics) given the first half, which a KV technique "
              "compresses first; lower is better.", False, "quality"),
    MetricDef("kv_compression", "KV compression", "x", "Baseline KV bytes divided by the variant's for the same "
              "item, both read from the cache tensors when the two caches had seen the same number of tokens "
              "(the shorter generation's end), so stopping early does not look like compression.", True),
    MetricDef("answer_accuracy", "Answer accuracy", "%", "Share of items whose expected answer (the needle's "
              "pass key) appears in the generated text.", True, "quality", share=True),
    MetricDef("exact_match", "Exact match", "%", "Share of items whose whole output equals the baseline's token "
              "for token. Speculative decoding with greedy verification must score 100%.", True, "quality", share=True),
    MetricDef("batch_tokens_per_s", "Batch tokens/s", "tok/s", "All new tokens of a batch divided by the time "
              "until its last sequence finished (batch_size > 1).", True),
    MetricDef("s_per_image", "Time per image", "s", "Diffusion: sampling time of a batch divided by its images.",
              False),
    MetricDef("s_per_step", "Time per step", "s", "Diffusion: sampling time of a batch divided by the sampler steps "
              "it ran (all images of the batch denoised together).", False),
    MetricDef("images_per_s", "Images/s", "img/s", "Diffusion: images of a batch divided by its sampling time.",
              True),
    MetricDef("blocks_computed", "Blocks computed", "%", "Diffusion: denoiser work actually computed, as a share "
              "of the baseline's (its steps x every block): DiT attention and MLP, UNet resnets and attentions, "
              "counted per image row by forward hooks (deterministic). Fewer steps count as less work.", False),
    MetricDef("psnr_db", "PSNR", "dB", "Diffusion: peak signal-to-noise ratio of each image against the baseline's "
              "image from the same seed (range [-1, 1]); identical images (inf) are left out of the median.",
              True, "quality"),
    MetricDef("ssim", "SSIM", "", "Diffusion: structural similarity (7x7 window) of each image against the "
              "baseline's image from the same seed; 1 = identical.", True, "quality"),
    MetricDef("class_accuracy", "Class accuracy", "%", "Diffusion: share of images a digit classifier (a small CNN "
              "trained on the real digits, 99.7% on held-out digits) labels as the requested class.", True,
              "quality", share=True),
    MetricDef("image_exact", "Identical images", "%", "Diffusion: share of images equal to the baseline's bit for "
              "bit (float32, before quantising to pixels).", True, "quality", share=True),
    MetricDef("attention_share", "Attention share", "%", "Share of the baseline's prefill spent in the attention "
              "op (SDPA over q, k, v), timed after the timed runs in the same calls they make (an item's prompt "
              "and question up to its first token; a perplexity window's two forwards, the second with every "
              "position's logits), on the baseline's threads, the faster of two runs; one sample per item or "
              "window of the workload, median over them. The same for every row.", None),
    MetricDef("amdahl_ceiling", "Ceiling", "x", "Amdahl bound on the prefill speedup, per item or window: "
              "1 / (1 - s (1 - a)), with s its attention share and a the computed share of its prefill (the "
              "causal pairs the row's kernel computes, counted while the row runs the same prefill again); median "
              "over items, which bounds the median prefill speedup when each item's bound holds. It holds only if "
              "the rest of the prefill costs what the baseline's does and attention's time shrinks in proportion "
              "to the pairs computed: a kernel cheaper per computed pair than dense SDPA, or noise, can pass it. "
              "1 for a row that computes every pair (no pattern, or kernel sdpa_mask); free attention gives "
              "1 / (1 - s).", None),
    MetricDef("calibration_s", "Calibration", "s", "Time a technique spent calibrating before the timed runs (or "
              "loading a stored calibration): statistics of held-out text that no workload scores. Never inside a "
              "timed repeat.", False),
    MetricDef("prefill_tokens_per_s", "Prefill tokens/s", "tok/s", "Prompt tokens over the time to first token "
              "(perplexity workload: window tokens over the time of its one forward).", True),
]
METRICS: dict[str, MetricDef] = {m.name: m for m in _DEFS}
ORDER = [m.name for m in _DEFS]  # technique metrics follow the built-ins, in the order they were declared
_OWNER: dict[str, str] = {}  # technique metric -> the technique that declared it first


def add(metrics, owner: str) -> None:
    """Add a technique's own metrics to the catalogue. A family's techniques may share one declaration; a name
    that means something else (a built-in, or another declaration) is refused."""
    for m in metrics:
        known = METRICS.get(m.name)
        if known is not None and (known != m or m.name not in _OWNER):
            raise TypeError(f"technique '{owner}': metric {m.name!r} is already declared "
                            f"{'by the lab' if m.name not in _OWNER else f'by {_OWNER[m.name]!r}'} with another "
                            f"meaning; give it another name")
        if known is None:
            METRICS[m.name], _OWNER[m.name] = m, owner
            ORDER.append(m.name)


def remove(names, owner: str) -> None:
    """Take a technique's metrics out of the catalogue again (when its technique is unregistered)."""
    for name in names:
        if _OWNER.get(name) == owner:
            del METRICS[name], _OWNER[name]
            ORDER.remove(name)


def definition(name: str) -> MetricDef:
    return METRICS.get(name) or MetricDef(name, name, "", "", None)


def declared_by(name: str) -> str | None:
    """The technique that declared this metric, or None for the lab's own (or an unknown) metric."""
    return _OWNER.get(name)
