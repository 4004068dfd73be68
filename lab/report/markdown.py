"""The report as Markdown, with its charts and image grids written as PNG files into a folder beside it and
linked relatively. Every text from a user or a model is escaped, so a prompt holding a link, a table pipe or
markup shows as the text it is."""
from __future__ import annotations

import base64
import re
from pathlib import Path
from urllib.parse import quote

from lab.report import digest
from lab.report.chartset import ReportChart, comparison_chart, experiment_charts, png
from lab.report.images import image_grids
from lab.views.verdict import verdicts

# what could start a link, an image, code, emphasis, raw HTML or a table cell inside a line
_SPECIAL = re.compile(r"([\\`*_\[\]|~])")


def md_text(text: str) -> str:
    """`text` as Markdown that renders to exactly it, on one line (newlines become <br>, the only HTML we add)."""
    text = text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return _SPECIAL.sub(r"\\\1", text).replace("\r\n", "\n").replace("\n", "<br>")


def _fence(text: str, info: str = "") -> str:
    """A fenced code block longer than any run of backticks inside, so the text cannot close it early."""
    longest = max((len(m) for m in re.findall(r"`+", text)), default=0)
    fence = "`" * max(3, longest + 1)
    return f"{fence}{info}\n{text}\n{fence}"


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(md_text(h) for h in header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(md_text(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


class _Files:
    """Writes a report's PNG files into one folder and gives their links relative to the Markdown beside it."""

    def __init__(self, folder: Path):
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)

    def write(self, name: str, content: bytes, title: str) -> str:
        (self.folder / name).write_bytes(content)
        return f"![{md_text(title)}]({quote(self.folder.name)}/{name})"


def _chart(files: _Files, chart: ReportChart) -> str:
    return files.write(f"{chart.key}.png", png(chart), chart.title) + f"\n\n*{md_text(chart.title)}*"


def _images(files: _Files, exp: dict) -> list[str]:
    parts = []
    for i, g in enumerate(image_grids(exp), start=1):
        parts.append(f"**{md_text(g['variant'])}**: {md_text(', '.join(g['captions']))}")
        for row, label in (("baseline", "baseline"), ("variant", g["variant"]), ("difference", "difference")):
            if g[f"{row}_png"]:
                name = f"experiment-{exp['id']}-images-{i}-{row}.png"
                parts.append(files.write(name, base64.b64decode(g[f"{row}_png"]), label))
    return (["### Images", *parts]) if parts else []


def _outputs(files: _Files, exp: dict) -> list[str]:
    if digest.is_diffusion(exp):
        return _images(files, exp)
    header, rows, total = digest.outputs_table(exp)
    if not rows:
        return []
    more = f" (the first {len(rows)} of {total}; the JSON export holds all)" if total > len(rows) else ""
    return ["### Outputs", f"Each prompt with every variant's output beside it{more}.", _table(header, rows)]


def _experiment(files: _Files, data: dict, exp: dict) -> list[str]:
    parts = [f"## #{exp['id']} {md_text(exp['name'])}",
             "\n".join(f"- **{md_text(k)}**: {md_text(v)}" for k, v in digest.facts(exp))]
    if exp.get("busy_warning"):
        parts.append(f"> **Measured on a busy machine**: {md_text(exp['busy_warning'])}; timings may be wrong.")
    found = verdicts(exp)
    if found:
        parts += ["### Verdict", "\n".join(f"- {md_text(v.line())}" for v in found)]
    header, rows = digest.results_table(data, exp)
    parts += ["### Results", _table(header, rows),
              "median (p10–p90) over n samples; a speedup is paired against the baseline in the same process.",
              "\n".join(f"- **{md_text(k)}**: {md_text(v)}" for k, v in digest.definitions(data, exp))]
    charts = experiment_charts(exp)
    if charts:
        parts += ["### Charts", *(_chart(files, c) for c in charts)]
    parts += _outputs(files, exp)
    env_header, env_rows = digest.environment_table(exp)
    parts += ["### Environment", _table(env_header, env_rows), "### Spec", _fence(digest.spec_json(exp), "json"),
              "### Re-run", _fence(data["rerun"]),
              "with this report exported as JSON (`--format json`), or with the spec above saved as a .json file."]
    return parts


def to_markdown(data: dict, chart_dir: Path) -> str:
    """The report as Markdown (str) meant to be saved in chart_dir's parent folder; its PNG charts and image grids
    are written into chart_dir and linked as chart_dir.name/<file>."""
    files = _Files(Path(chart_dir))
    parts = ["# Efficiency Lab report", f"{len(data['experiments'])} experiment(s); report format {data['version']}."]
    comparison = comparison_chart(data)
    if comparison is not None:
        parts += ["## Across experiments", _chart(files, comparison)]
    for exp in data["experiments"]:
        parts += _experiment(files, data, exp)
    return "\n\n".join(parts) + "\n"
