"""The answer before the evidence: one verdict per variant, read from its stored metrics and their noise flags
(speed with its spread, memory in MB and %, quality against the baseline, the technique's own figure). Pages and
reports show these above the table. Plain data in, plain strings out; no torch, no store."""
from __future__ import annotations

from dataclasses import dataclass, field

from lab.metrics import declared_by
from lab.views.results import busy_runs, definition, fmt, ordered_metric_names, ratio_note

# the lab's own metrics a verdict reads by name; any other metric a run holds is a technique's own figure
SPEED = ("speedup",)
MEMORY = (("weight_mb", "weights"), ("kv_cache_mb", "KV cache"), ("peak_mem_mb", "peak"))
RELATIVE_QUALITY = (("perplexity", "perplexity"), ("psnr_db", "PSNR"))  # against the baseline's value
SHARE_QUALITY = (("agreement", "agreement"), ("answer_similarity", "answer similarity"),
                 ("answer_accuracy", "answer accuracy"), ("class_accuracy", "class accuracy"))
FAMILY_FIGURES = ("kv_compression", "blocks_computed")  # the lab's own columns that are a family's key figure
TECHNIQUE_FIGURES = 2  # a technique's own metrics shown in its verdict, in the order it declared them


@dataclass
class Verdict:
    variant: str
    headline: str  # the speed answer: "1.32x faster (1.28–1.33)"
    parts: list[str] = field(default_factory=list)  # memory, quality, the technique's own figure
    flags: list[str] = field(default_factory=list)  # why the headline may not hold: noise, a busy machine

    def flag_note(self) -> str:
        """' (within noise; busy machine: ...)' after the headline, or nothing."""
        return f" ({'; '.join(self.flags)})" if self.flags else ""

    def line(self) -> str:
        return f"{self.variant}: {self.headline}{self.flag_note()}" + "".join(f" · {p}" for p in self.parts)


def verdicts(experiment: dict) -> list[Verdict]:
    """One verdict per variant other than the baseline. `experiment` as a report holds it (lab/report/collect.py):
    its runs with metrics {name, median, p10, p90, n}, its spec and busy_warning."""
    runs = experiment.get("runs") or []
    baseline = next((r for r in runs if r.get("is_baseline")), None)
    if baseline is None:
        return []
    base = _by_name(baseline)
    warmup = (experiment.get("spec") or {}).get("warmup", 1)
    busy = experiment.get("busy_warning")
    return [_verdict(run, base, warmup, busy) for run in runs if run is not baseline]


def of_experiment(exp) -> list[Verdict]:
    """verdicts() of a stored experiment (lab.store.Experiment with its runs and metrics loaded)."""
    return verdicts({"spec": exp.spec, "busy_warning": busy_runs(exp), "runs": [
        {"variant": r.variant, "is_baseline": r.is_baseline,
         "metrics": [{"name": m.name, "median": m.value, "p10": m.p10, "p90": m.p90, "n": m.n} for m in r.metrics]}
        for r in exp.runs]})


def _by_name(run: dict) -> dict[str, dict]:
    return {m["name"]: m for m in run.get("metrics") or [] if m.get("median") is not None}


def _verdict(run: dict, base: dict[str, dict], warmup: int, busy: str | None) -> Verdict:
    metrics = _by_name(run)
    headline, flags = _speed(metrics, warmup)
    if busy:
        flags.append(f"busy machine: {busy}")
    parts = [p for p in (_memory(metrics, base) + _quality(metrics, base) + _figures(metrics)) if p]
    return Verdict(run["variant"], headline, parts, flags)


def _speed(metrics: dict[str, dict], warmup: int) -> tuple[str, list[str]]:
    m = next((metrics[n] for n in SPEED if n in metrics), None)
    if m is None:
        return "speed not measured", []
    spread = f" ({fmt(m['p10'])}–{fmt(m['p90'])})" if m["n"] > 1 and m["p10"] != m["p90"] else ""
    note = ratio_note(m["p10"], m["p90"], m["n"], warmup)
    ratio = m["median"]
    word = "faster" if ratio > 1 else "slower" if ratio < 1 else "as fast"
    headline = f"{fmt(ratio)}x {'as fast' if note and 'within noise' in note else word}{spread}"
    return headline, [note] if note else []


def _change(value: float, reference: float, unit: str) -> str:
    """'257 MB (−50%)': the variant's value and its change against the baseline's."""
    if not reference:
        return f"{fmt(value)} {unit}".strip()
    percent = 100.0 * (value - reference) / reference
    sign = "+" if percent > 0 else "−" if percent < 0 else "±"
    return f"{fmt(value)} {unit} ({sign}{fmt(abs(percent), 2)}%)".replace("  ", " ")


def _memory(metrics: dict[str, dict], base: dict[str, dict]) -> list[str]:
    return [f"{label} {_change(metrics[name]['median'], base[name]['median'], 'MB')}"
            for name, label in MEMORY if name in metrics and name in base]


def _quality(metrics: dict[str, dict], base: dict[str, dict]) -> list[str]:
    parts = [f"{label} {_change(metrics[name]['median'], base[name]['median'], definition(name).unit)}"
             for name, label in RELATIVE_QUALITY if name in metrics and name in base]
    parts += [f"{label} {fmt(metrics[name]['median'])}%" for name, label in SHARE_QUALITY if name in metrics]
    return parts


def _figures(metrics: dict[str, dict]) -> list[str]:
    """The family's key figure: KV compression, blocks computed, or the technique's own metrics (acceptance,
    computed share...), which any technique declares in its own file."""
    parts = [_figure(name, metrics[name]) for name in FAMILY_FIGURES
             if name in metrics and metrics[name]["median"] != (1.0 if name == "kv_compression" else 100.0)]
    own = [n for n in ordered_metric_names(metrics) if declared_by(n)]  # it loads the techniques' declarations
    return parts + [_figure(name, metrics[name]) for name in own[:TECHNIQUE_FIGURES]]


def _figure(name: str, m: dict) -> str:
    d = definition(name)
    return f"{d.label} {fmt(m['median'])}{'' if d.unit in ('%', 'x') else ' '}{d.unit}".strip()
