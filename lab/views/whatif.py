"""What the what-if page shows: the models and devices to pick from, the estimate and each technique's floors as
table rows with units, and beside them the lab's own measured TPOT of the model where the store holds one.
No Streamlit, no torch (the machine measurement imports torch only when the button asks for it)."""
from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import selectinload

from lab import store
from lab.paths import model_cache_dir
from lab.store import Experiment, Run
from lab.views.results import fmt
from lab.whatif import estimate as est
from lab.whatif import machine
from lab.whatif.devices import Device, load_devices
from lab.whatif.estimate import KV_DTYPES, WEIGHT_DTYPES, Scenario
from lab.whatif.model import ModelShape, shape_from_numbers, shape_from_path
from lab.whatif.techniques import DIFFUSION_CACHING, Effect, Knobs, all_effects

# what the page's widgets take from lab.whatif, named here so ui needs only this module
__all__ = ["DIFFUSION_CACHING", "KV_DTYPES", "WEIGHT_DTYPES", "Knobs", "Scenario", "ModelShape", "shape_from_numbers",
           "shape_from_path", "Device"]
SMOLLM2_SHAPE = dict(layers=30, hidden=576, heads=9, kv_heads=3, head_dim=64, intermediate=1536, vocab=49152)
NEAR = 0.25  # a stored prompt length within 25% of the context counts as that context
UNITS = {"bytes": ((1e9, "GB"), (1e6, "MB"), (1e3, "KB"), (1, "B")),
         "s": ((1, "s"), (1e-3, "ms"), (1e-6, "µs")),
         "flops": ((1e12, "TFLOP"), (1e9, "GFLOP"), (1e6, "MFLOP"), (1, "FLOP"))}


def builtin_models() -> dict[str, Path]:
    """Built-in models prepared under data/cache/models (`make prepare`): name -> config.json."""
    return {path.parent.name: path for path in sorted(model_cache_dir().glob("*/config.json"))}


def devices() -> dict[str, Device]:
    """The device table, then this machine when it has been measured."""
    table = load_devices()
    measured = machine.load_measured()
    return {**table, measured.name: measured} if measured else table


def machine_measured() -> bool:
    return machine.load_measured() is not None


def measure_this_machine() -> Device:
    """Time this machine now (about 10 s) and keep the result; only a button calls this."""
    return machine.measure_machine()


def scaled(value: float, kind: str) -> tuple[str, str]:
    """(number, unit) with the unit that keeps the number readable: 257 MB, 4.2 ms."""
    for factor, unit in UNITS[kind]:
        if abs(value) >= factor:
            return fmt(value / factor), unit
    factor, unit = UNITS[kind][-1]
    return fmt(value / factor), unit


def _row(quantity: str, value: float, kind: str | None, how: str, unit: str = "") -> dict:
    if kind:
        number, unit = scaled(value, kind)
    else:
        number = f"{value:,}" if isinstance(value, int) else fmt(value)
    return {"Quantity": quantity, "Value": number, "Unit": unit, "How": how}


def estimate_rows(s: Scenario, device: Device) -> list[dict]:
    """The estimate as rows (Quantity, Value, Unit, How): sizes, then the decode step and prefill floors."""
    decode, pre = est.decode_step(s, device), est.prefill(s, device)
    fits = est.max_batch(s, device)
    rows = [_row("Parameters", s.shape.params, None, "embeddings + L x (attention + MLP + 2 norms) + norm"),
            _row("Weights", est.weight_bytes(s.shape, s.weight_dtype), "bytes", f"P x {est.BYTES[s.weight_dtype]:g} "
                 f"bytes ({s.weight_dtype})"),
            _row("KV per token", est.kv_bytes_per_token(s.shape, s.kv_dtype), "bytes", "2 x L x G x d x bytes"),
            _row("KV at the context", est.kv_bytes(s), "bytes", "per token x kept tokens x batch"),
            _row("Memory needed", est.memory_needed(s), "bytes", "weights + KV (activations not counted)")]
    if fits is not None:
        rows.append(_row("Sequences that fit", fits, None, f"(memory {device.memory_gb:g} GB - weights) / KV per "
                         "sequence (Fu 2024)", "seq"))
    rows += [_row("Decode step: bytes moved", decode.bytes, "bytes", "weights read + KV read + new KV written"),
             _row("Decode step: FLOPs", decode.flops, "flops", "B x (2 x matmul params + attention)"),
             _row("Decode step: floor", decode.floor_s, "s", f"max(bytes / bandwidth, FLOPs / {decode.peak_dtype} "
                  f"peak): {decode.bound}-bound"),
             _row("Decode: tokens/s ceiling", s.batch / decode.floor_s, None, "batch / step floor", "tok/s"),
             _row("Prefill: FLOPs", pre.flops, "flops", "B x (2 x matmul params x n + 2 x 2 x L x H x d x n²/2)"),
             _row("Prefill: floor", pre.floor_s, "s", f"max(bytes / bandwidth, FLOPs / {pre.peak_dtype} peak): "
                  f"{pre.bound}-bound"),
             _row("Attention share, decode", 100 * est.decode_attention_share(s, device), None,
                  "cache read / bytes moved (memory-bound), or attention / all FLOPs: Amdahl's f", "%"),
             _row("Attention share, prefill", 100 * est.prefill_attention_share(s, device), None,
                  "attention FLOPs / all FLOPs (compute-bound), or cache written / bytes", "%"),
             _row("Arithmetic intensity, decode", decode.intensity, None, "FLOPs / bytes", "FLOP/B"),
             _row("Arithmetic intensity, prefill", pre.intensity, None, "FLOPs / bytes", "FLOP/B"),
             _row("Ridge point", est.ridge(device, est.compute_dtype(s.weight_dtype)), None,
                  "peak / bandwidth: below it a phase is memory-bound", "FLOP/B")]
    return rows


def effects(s: Scenario, device: Device, knobs: Knobs) -> list[Effect]:
    return all_effects(s, device, knobs)


def effect_rows(found: list[Effect]) -> list[dict]:
    """One row per technique: floors in ms and the decode speedup over the first (the baseline)."""
    base = found[0].decode_s
    return [{"Technique": e.family, "Setting": e.setting, "Decode floor [ms/token]": fmt(e.decode_s * 1e3),
             "vs baseline [x]": fmt(base / e.decode_s), "Prefill floor [ms]": fmt(e.prefill_s * 1e3),
             "What it changes": e.changes} for e in found]


def chart_rows(found: list[Effect]) -> list[dict]:
    """Decode-step floor per technique, for the bar chart."""
    return [{"Technique": e.family, "Setting": e.setting, "Decode floor (ms per token)": e.decode_s * 1e3}
            for e in found]


@dataclass(frozen=True)
class MeasuredDecode:
    """A stored baseline run's TPOT at a prompt length: the lab's measured number beside the estimate."""
    experiment_id: int
    workload: str
    prompt_tokens: int
    tpot_ms: float
    n: int
    near: bool  # the prompt length is within NEAR of the context asked for
    dtype: str | None
    device: str | None

    def ratio(self, floor_s: float) -> float:
        """Measured over estimated: how many times the floor the measurement took."""
        return self.tpot_ms / (floor_s * 1e3)


def measured_decode(model: str, context: int, batch: int = 1) -> MeasuredDecode | None:
    """The stored finished baseline run of `model` at `batch` whose prompt length is nearest `context` (its
    TPOT and length; `near` says whether it is within 25%), or None when the store holds none. Only runs made
    on this lab's machine count (imported experiments are someone else's)."""
    with store.session() as s:
        experiments = s.scalars(select(Experiment).where(
            Experiment.status == "done", Experiment.origin == store.ORIGIN_LOCAL)).all()
        ids = [e.id for e in experiments if (e.spec or {}).get("model") == model
               and (e.spec or {}).get("batch_size", 1) == batch]
        runs = s.scalars(select(Run).where(Run.experiment_id.in_(ids), Run.is_baseline.is_(True)).options(
            selectinload(Run.metrics), selectinload(Run.outputs), selectinload(Run.experiment))).all()
    found = [m for run in runs for m in _measurements(run, context)]
    return min(found, key=lambda m: (abs(math.log(m.prompt_tokens / context)), -m.experiment_id), default=None)


def _measurements(run: Run, context: int) -> list[MeasuredDecode]:
    """A run's TPOT per prompt length. One length (within 2x): the run's tpot_ms metric (every repeat). Several
    (needle lengths): per length, the median of its outputs' TPOT from their token times (the first repeat)."""
    spec, env = run.experiment.spec or {}, run.environment or {}
    metric = next((m for m in run.metrics if m.name == "tpot_ms" and m.value is not None), None)
    timed = [(o.extra.get("length") or o.extra["prompt_tokens"], o.extra["prompt_tokens"], o.extra.get("token_times"))
             for o in run.outputs if isinstance(o.extra, dict) and o.extra.get("prompt_tokens")]
    lengths = [t[1] for t in timed] or spec.get("needle_lengths") or []
    if not lengths or metric is None:
        return []

    def made(tokens: float, tpot: float, n: int) -> MeasuredDecode:
        return MeasuredDecode(run.experiment_id, spec.get("workload", "?"), round(tokens), tpot, n,
                              abs(tokens - context) <= NEAR * context, env.get("dtype"), env.get("device_name"))
    if max(lengths) < 2 * min(lengths):
        return [made(statistics.median(lengths), metric.value, metric.n)]
    groups: dict = {}
    for nominal, tokens, times in timed:
        if times and len(times) > 1:  # TPOT = (last token time - first) / (tokens - 1), as lab/ops/generation.py
            groups.setdefault(nominal, []).append((tokens, (times[-1] - times[0]) / (len(times) - 1) * 1e3))
    return [made(statistics.median(t for t, _ in g), statistics.median(v for _, v in g), len(g))
            for g in groups.values()]
