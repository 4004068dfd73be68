"""What every readable format shows, as plain strings from the report data: the results table (each cell with its
spread and n), the metric definitions, outputs side by side, the environment and the spec. HTML and Markdown only
escape and lay these out, so the two never disagree."""
from __future__ import annotations

import json

from lab.views.results import RATIOS, SUMMARY_METRICS, fmt, ordered_metric_names, ratio_note

OUTPUT_ITEMS = 20  # items shown side by side; the JSON export holds them all
PROMPT_CHARS = 600  # a needle or context_qa prompt runs to thousands of tokens: shown cut, kept whole in JSON
DIFFUSION_WORKLOADS = ("digits", "image_prompts")


def is_diffusion(experiment: dict) -> bool:
    return (experiment.get("spec") or {}).get("workload") in DIFFUSION_WORKLOADS


def metric_names(experiment: dict) -> list[str]:
    """Every metric of the experiment: the page's summary order first, then the rest in the catalogue's order."""
    present = ordered_metric_names({m["name"] for r in experiment["runs"] for m in r["metrics"]})
    return [n for n in SUMMARY_METRICS if n in present] + [n for n in present if n not in SUMMARY_METRICS]


def metric_title(data: dict, name: str) -> str:
    d = data["metrics"].get(name) or {"label": name, "unit": ""}
    return f"{d['label']} [{d['unit']}]" if d["unit"] else d["label"]


def cell(metric: dict, note: str | None = None) -> str:
    """'median (p10–p90) n=N', the spread left out when there is none, with a ratio's noise note after it."""
    spread = f" ({fmt(metric['p10'])}–{fmt(metric['p90'])})" if metric["n"] > 1 and metric["p10"] != metric["p90"] \
        else ""
    return fmt(metric["median"]) + spread + f" n={metric['n']}" + (f" · {note}" if note else "")


def results_table(data: dict, experiment: dict) -> tuple[list[str], list[list[str]]]:
    """Header and rows: one row per run, one column per metric (in the catalogue's order)."""
    names = metric_names(experiment)
    warmup = (experiment.get("spec") or {}).get("warmup", 1)
    rows = []
    for run in experiment["runs"]:
        by_name = {m["name"]: m for m in run["metrics"]}
        baseline = run["is_baseline"] and "baseline" not in run["variant"].lower()
        row = [run["variant"] + (" (baseline)" if baseline else "")]
        for name in names:
            m = by_name.get(name)
            note = ratio_note(m["p10"], m["p90"], m["n"], warmup) \
                if m is not None and name in RATIOS and not run["is_baseline"] else None
            row.append("–" if m is None else cell(m, note))
        rows.append(row)
    return ["Variant", *(metric_title(data, n) for n in names)], rows


def definitions(data: dict, experiment: dict) -> list[tuple[str, str]]:
    """(metric title, definition with its better direction) for each metric of the experiment."""
    out = []
    for name in metric_names(experiment):
        d = data["metrics"].get(name) or {"definition": "", "higher_is_better": None}
        direction = {True: " Higher is better.", False: " Lower is better."}.get(d["higher_is_better"], "")
        out.append((metric_title(data, name), (d["definition"] + direction).strip()))
    return out


def short(text: str, limit: int = PROMPT_CHARS) -> str:
    return text if len(text) <= limit else text[:limit] + f" … ({len(text)} characters in all)"


def outputs_table(experiment: dict, limit: int = OUTPUT_ITEMS) -> tuple[list[str], list[list[str]], int]:
    """Header (Item, Prompt, one column per variant), rows of the first `limit` items and how many items there
    are. Items are matched across variants by their key."""
    runs = experiment["runs"]
    keys = list(dict.fromkeys(o["item_key"] for r in runs for o in sorted(r["outputs"], key=lambda o: o["item_index"])))
    texts = [{o["item_key"]: o for o in r["outputs"]} for r in runs]
    rows = []
    for key in keys[:limit]:
        prompt = next((t[key]["prompt"] for t in texts if key in t), "")
        rows.append([key, short(prompt), *(short(t[key]["text"]) if key in t else "–" for t in texts)])
    return ["Item", "Prompt", *(r["variant"] for r in runs)], rows, len(keys)


def environment_table(experiment: dict) -> tuple[list[str], list[list[str]]]:
    """Header (Key, one column per variant) and one row per environment key any run recorded, sorted."""
    runs = experiment["runs"]
    keys = sorted({k for r in runs for k in (r["environment"] or {})})
    rows = [[k, *(_text((r["environment"] or {}).get(k)) for r in runs)] for k in keys]
    return ["Key", *(r["variant"] for r in runs)], rows


def _text(value) -> str:
    if value is None:
        return "–"
    return value if isinstance(value, str) else json.dumps(value, sort_keys=True, ensure_ascii=False)


def spec_json(experiment: dict) -> str:
    return json.dumps(experiment.get("spec"), indent=2, sort_keys=True, ensure_ascii=False)


def facts(experiment: dict) -> list[tuple[str, str]]:
    """(what, value) lines describing an experiment: where it ran, when, where it came from."""
    spec = experiment.get("spec") or {}
    lines = [("Status", experiment["status"]), ("Model", str(spec.get("model"))),
             ("Workload", str(spec.get("workload"))), ("Created (UTC)", experiment["created_at"] or "–"),
             ("Finished (UTC)", experiment["finished_at"] or "–"), ("Origin", experiment.get("origin") or "local")]
    if experiment.get("imported_from"):
        lines.append(("Imported from", _text(experiment["imported_from"])))
    if experiment.get("tags"):
        lines.append(("Tags", ", ".join(experiment["tags"])))
    if experiment.get("note"):
        lines.append(("Note", experiment["note"]))
    if spec.get("description"):
        lines.append(("Description", spec["description"]))
    return lines
