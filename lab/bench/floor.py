"""The memory-bound floor beside every decode measurement.

A decode step must at least stream every weight byte and every cached K/V byte once from memory: one new token
multiplies each weight once, and attends over every key and value the cache holds, and at batch 1 none of it
stays in the CPU's (or GPU's) caches from one step to the next. So bytes read / memory bandwidth is a time no
decode step can beat; the arithmetic, the per-op overhead (Python, kernel launches, small-matrix inefficiency)
and whatever else the step does come on top. Beside every generation the runner records:

- `decode_mb_per_token`: the bytes the decode forwards read, over the tokens they decoded (every token after
  the first, which the prefill produced). Plain decoding runs one forward per token; speculative decoding one
  verify forward per round (`extra["target_forwards"]`), which reads the weights once for up to k+1 tokens.
  Each forward reads the target's weights and the K/V the cache held when it started (the `kv_trace` point at
  the tokens the cache had seen then; the forward's own new K/V is not counted). A draft model's own weights
  (the decoding technique's `extra_weight_bytes`) are read once per drafted token (`extra["drafted"]`: a draft
  model runs one forward per token it proposes). Not counted, so the floor errs low as a floor may: a draft
  model's KV cache (only its size at the end is known), and the draft forwards of a draft that is the target's
  own first layers (layer_skip adds no weights of its own, so its floor counts the verify forwards only).
- `floor_ms`: those bytes over the machine's measured memory bandwidth, in ms per token.
- `tpot_over_floor`: the measured TPOT over the floor: 1 would be a decode loop that only streams memory;
  how far above 1 a row sits is what compute and overhead cost it.

With batch > 1 every sequence's TPOT is the step time of the whole batch, which reads the weights once for all
of them: a sequence's floor counts the weights once per forward and its own row of the KV cache only (the
other rows would add to it), so it stays a floor.

What the floor assumes: every weight byte a forward uses and every cached K/V byte is read from memory once per
forward (nothing stays in cache between steps), nothing else is read, and memory delivers the bandwidth below.

The bandwidth: on the CPU, the best of several reads over 512 MB with torch on the run's own thread count
(lab/whatif/machine.py read_bandwidth_gbs: a read, as a decode step mostly reads; one thread reads less than two,
so each thread count has its own), measured once in each process that runs an experiment (about a second) until
TRIES measurements are stored under the data folder for that host and thread count; the stored value is the best
of them and only ever rises: a weaker measurement (a busy machine) never replaces a stronger one, so the floor
never errs high because of one. On a
CUDA GPU, a device-to-device copy timed with CUDA events, stored per GPU name the same way. A CPU measurement says
nothing about another device's memory, so any other device gets no floor.
"""
from __future__ import annotations

import json
import math
import os
import platform
from datetime import datetime, timezone
from pathlib import Path

import torch

from lab.bench.measure import MB
from lab.ops.generation import Generation
from lab.paths import data_dir
from lab.whatif import machine

CUDA_COPY_BYTES = 512 * 2**20  # far beyond any GPU's L2 cache
TRIES = 3  # measurements (one per experiment process) a stored bandwidth is the best of; then it is only read
_measured: dict[str, float] = {}  # device key -> GB/s, this process


def cache_path() -> Path:
    return data_dir() / "cache" / "bandwidth.json"


def device_key(device: str, threads: int) -> str | None:
    """What a bandwidth is stored under: "cpu:<host>:<n> threads", "cuda:<GPU name>", or None for a device without
    a floor."""
    device = str(device)
    if device == "cpu":
        return f"cpu:{platform.node()}:{threads} thread" + ("s" if threads != 1 else "")
    if device.startswith("cuda") and torch.cuda.is_available():
        return f"cuda:{torch.cuda.get_device_name(torch.device(device))}"
    return None


def cuda_copy_bandwidth_gbs(device: str = "cuda", nbytes: int = CUDA_COPY_BYTES, repeats: int = 5) -> float:
    """GB/s of a device-to-device copy of `nbytes` on a CUDA GPU, best of `repeats` after one untimed copy,
    timed with CUDA events: 2n / t, as the CPU copy counts it. Smaller when the GPU has little memory free."""
    dev = torch.device(device)
    with torch.cuda.device(dev):  # the events record on this GPU's current stream
        free, _total = torch.cuda.mem_get_info(dev)
        nbytes = max(min(nbytes, free // 4), 2**20)
        source = torch.ones(nbytes, dtype=torch.uint8, device=dev)
        target = torch.empty_like(source)
        target.copy_(source)
        torch.cuda.synchronize(dev)
        best = float("inf")
        for _ in range(repeats):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            target.copy_(source)
            end.record()
            end.synchronize()
            best = min(best, start.elapsed_time(end) / 1000)  # ms -> s
        del source, target
    torch.cuda.empty_cache()  # give the copy's memory back before the model's runs
    return 2 * nbytes / best / 1e9


def stored_table() -> dict:
    try:
        table = json.loads(cache_path().read_text())
        return table if isinstance(table, dict) else {}
    except (OSError, ValueError):
        return {}


def _stored(key: str) -> float | None:
    try:
        value = float(stored_table()[key]["bandwidth_gbs"])
        return value if value > 0 else None
    except (KeyError, TypeError, ValueError):
        return None


def _tries(key: str) -> int:
    try:
        return int(stored_table()[key].get("tries", 1))
    except (KeyError, TypeError, ValueError, AttributeError):
        return 0


def _store(key: str, gbs: float, how: str, tries: int) -> None:
    """Record the best bandwidth so far and how many measurements it is the best of (only a stronger one replaces
    the value; every one counts as a try)."""
    table = stored_table()
    best = _stored(key)
    if best is None or gbs > best:
        when = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
        table[key] = {"bandwidth_gbs": round(gbs, 2), "measured_at": when, "source": how}
    table[key]["tries"] = tries
    path = cache_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(f".partial-{os.getpid()}")
    partial.write_text(json.dumps(table, indent=2))
    partial.replace(path)  # atomic: a reader never sees half a file


def _measure(device: str, threads: int) -> tuple[float, str]:
    if str(device) == "cpu":
        gbs = machine.read_bandwidth_gbs(threads)  # looked up at call time, so tests can stand in for it
        plural = "s" if threads != 1 else ""
        return gbs, (f"torch sum over {machine.READ_BYTES // MB} MB on {threads} thread{plural}, best of "
                     f"{machine.READ_REPEATS}, n / t")
    how = f"CUDA device-to-device copy of up to {CUDA_COPY_BYTES // MB} MB, best of 5, 2n / t"
    return cuda_copy_bandwidth_gbs(device), how


def bandwidth_gbs(device: str = "cpu", threads: int | None = None) -> float | None:
    """The memory bandwidth of `device` on `threads` threads (None: torch's current count) in GB/s (10^9 bytes/s):
    measured once in each process until the host and thread count have TRIES measurements stored, the best of them
    kept (a busy moment costs one try, never the floor). None where no floor can be given (a device other than the
    CPU or a CUDA GPU)."""
    threads = threads or torch.get_num_threads()
    key = device_key(device, threads)
    if key is None:
        return None
    if key not in _measured:
        tries = _tries(key)
        if tries < TRIES:
            fresh, how = _measure(device, threads)
            _store(key, fresh, how, tries + 1)
        _measured[key] = _stored(key)
    return _measured[key]


def weights_read(engine) -> tuple[int, int]:
    """(bytes of weights one target forward reads, bytes one draft forward reads): a variant's weight bytes less
    what its decoding technique adds beside the model (a draft model's own weights), and that."""
    total = engine.weight_bytes()
    draft = sum(t.extra_weight_bytes(engine) for t in getattr(engine, "techniques", ()) if t.slot == "decoding")
    return total - draft, draft


def _kv_at(gen: Generation, seen: int) -> int:
    """KV bytes the cache held once it had seen `seen` tokens. Without a trace (transformers' generate) the cache
    is taken to have grown evenly to its size at the end."""
    if not gen.kv_trace:
        return round(gen.kv_bytes * seen / max(gen.tokens_seen, 1))
    held = [b for s, b in gen.kv_trace if s <= seen]
    return held[-1] if held else gen.kv_trace[0][1]


def _tokens_before_forwards(gen: Generation, decoded: int) -> list[int]:
    """For each decode forward, how many new tokens existed when it started (the prefill made the first)."""
    x = gen.extra or {}
    if "target_forwards" not in x:
        return list(range(1, decoded + 1))  # one forward per token after the first
    forwards = int(x["target_forwards"])
    rounds = x.get("spec_rounds")
    if rounds is not None and len(rounds) == forwards:
        before, emitted = [], 1
        for r in rounds:
            before.append(emitted)
            emitted += r["accepted"] + 1  # accepted drafts and the target's own token
        return before
    return [1 + (r * decoded) // max(forwards, 1) for r in range(forwards)]  # spread evenly when not recorded


def decode_floor(gen: Generation, weight_bytes: int, bandwidth: float | None, *, draft_weight_bytes: int = 0) -> dict:
    """The floor metrics of one generation (see the module docstring): `weight_bytes` read by every target
    forward, `draft_weight_bytes` by every draft forward, `bandwidth` in GB/s. Empty when nothing was decoded
    after the first token or there is no bandwidth to divide by."""
    decoded = len(gen.token_ids) - 1
    if decoded < 1 or not bandwidth or bandwidth <= 0:
        return {}
    before = _tokens_before_forwards(gen, decoded)
    total = sum(weight_bytes + _kv_at(gen, gen.prompt_len + e - 1) for e in before)
    total += draft_weight_bytes * int((gen.extra or {}).get("drafted", 0))
    per_token = total / decoded
    floor_s = per_token / (bandwidth * 1e9)
    values = {"decode_mb_per_token": per_token / MB, "floor_ms": floor_s * 1000}
    if math.isfinite(gen.tpot) and floor_s > 0:
        values["tpot_over_floor"] = gen.tpot / floor_s
    return values
