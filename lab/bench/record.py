"""What a run records per variant (samples of every metric, outputs, environment), and how it is saved: all
runs, metrics and outputs of an experiment in one transaction, so nothing is ever half-written (and a transaction
that found the database locked is re-run whole, so nothing is written twice)."""
from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, field

from lab import store
from lab.bench.measure import summarize
from lab.metrics import definition


@dataclass
class VariantResult:
    name: str
    engine: str
    techniques: list
    environment: dict = field(default_factory=dict)
    samples: dict = field(default_factory=lambda: defaultdict(list))  # metric -> values
    outputs: list = field(default_factory=list)  # dicts: item_index, item_key, prompt, text, token_ids, extra
    details: dict = field(default_factory=dict)  # what the techniques found while preparing (per-layer numbers)

    def record(self, values: dict[str, float]) -> None:
        """One sample of each metric named (a technique's own metrics come this way)."""
        for name, value in values.items():
            self.samples[name].append(value)


def save(experiment_id: int, results: list[VariantResult]) -> None:
    """Write all runs, metrics and outputs of an experiment in one transaction. Another writer holding the
    database makes it wait and re-run the transaction whole (store.write_with_retry): never written twice."""
    store.write_with_retry(lambda: _save_once(experiment_id, results), f"saving experiment {experiment_id}")


def _save_once(experiment_id: int, results: list[VariantResult]) -> None:
    with store.session() as s:
        exp = s.get(store.Experiment, experiment_id)
        for position, res in enumerate(results):
            run = store.Run(position=position, variant=res.name, is_baseline=position == 0,
                            params={"techniques": res.techniques, "engine": res.engine, "details": res.details},
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
