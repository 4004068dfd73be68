"""A report written to a file in one of four formats (what `python -m lab report` does). Markdown's PNG charts go
into a folder beside it, named after the file (report.md -> report_files/)."""
from __future__ import annotations

from pathlib import Path

from lab.report.collect import report_data
from lab.report.html import to_html
from lab.report.markdown import to_markdown
from lab.report.tabular import to_csv, to_json

FORMATS = {"html": ".html", "md": ".md", "csv": ".csv", "json": ".json"}


def format_of(path: str | None) -> str | None:
    """The format a file name asks for by its suffix (report.md -> "md"), or None."""
    suffix = Path(path).suffix.lower() if path else ""
    return next((f for f, ext in FORMATS.items() if ext == suffix or (f == "md" and suffix == ".markdown")), None)


def chart_folder(output: Path) -> Path:
    return output.with_name(output.stem + "_files")


def write_report(output: str | Path, fmt: str, experiment_ids: list[int] | None = None,
                 run_ids: list[int] | None = None) -> list[Path]:
    """Write the report of the experiments (or runs) to `output` as `fmt`; the paths written (Markdown: the file
    and the folder of its PNGs). Nothing is written when the selection is refused (collect.NotInStore,
    SelectionError)."""
    output = Path(output)
    rerun_file = output.name if fmt == "json" else "report.json"
    data = report_data(experiment_ids, run_ids, report_file=rerun_file)
    output.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "md":
        folder = chart_folder(output)
        output.write_text(to_markdown(data, folder), encoding="utf-8", newline="")
        return [output, folder]
    render = {"html": to_html, "csv": to_csv, "json": to_json}[fmt]
    output.write_text(render(data), encoding="utf-8", newline="")
    return [output]
