"""The measurement protocol: warm-up first (every unit when a kernel compiles per shape), then the interleaved
repeats in rotating order, each group paired."""
import types

from lab.bench.llm_runner import warmup_units
from lab.bench.protocol import run_interleaved
from lab.techniques.registry import build


def _calls(warmup_units: int, n_units: int = 3):
    calls, pairs = [], []
    run_interleaved(2, n_units, repeats=1, warmup=1, run=lambda k, u, r: calls.append((k, u, r)),
                    pair=lambda r, u, outcomes: pairs.append((r, u)), progress=lambda f, m: None,
                    label=str, warmup_units=warmup_units)
    return calls, pairs


def test_the_warm_up_meets_every_unit_only_when_asked():
    calls, pairs = _calls(warmup_units=1)
    assert [c for c in calls if c[2] is None] == [(0, 0, None), (1, 0, None)]
    calls, _ = _calls(warmup_units=3)
    assert sorted(c for c in calls if c[2] is None) == [(k, u, None) for k in (0, 1) for u in range(3)]
    # the timed repeats come after every warm-up call, and are the same either way
    first_timed = next(i for i, c in enumerate(calls) if c[2] is not None)
    assert all(c[2] is None for c in calls[:first_timed]) and len(calls) - first_timed == 6
    assert pairs == [(0, 0), (0, 1), (0, 2)]


def _engine(techniques):
    built = build(techniques, model_kind="llm")
    return types.SimpleNamespace(techniques=built, slots={t.slot: t for t in built})


def test_a_compiled_flex_pattern_warms_every_item_and_the_masked_reference_does_not():
    baseline = _engine([])
    flex = _engine([{"name": "sink_window", "n_sink": 4, "window": 64}])
    masked = _engine([{"name": "sink_window", "n_sink": 4, "window": 64, "kernel": "sdpa_mask"}])
    kv = _engine([{"name": "snapkv", "compression_ratio": 0.5}])
    assert warmup_units([baseline, flex], 3) == 3
    assert warmup_units([baseline, masked, kv], 3) == 1
