"""A report as the bytes a page's download button hands over: HTML, CSV and JSON as one file, Markdown as a zip
of the .md and its folder of PNGs (a browser downloads one file). Same selection, same bytes."""
from __future__ import annotations

import io
import tempfile
import zipfile
from pathlib import Path

from lab.report.export import FORMATS, write_report

MIME = {"html": "text/html", "md": "application/zip", "csv": "text/csv", "json": "application/json"}
LABELS = {"html": "HTML (opens offline)", "md": "Markdown + PNG charts (zip)", "csv": "CSV (one row per metric)",
          "json": "JSON (everything; re-runs and imports)"}
ZIP_TIME = (2000, 1, 1, 0, 0, 0)  # a fixed timestamp in the zip: exporting twice gives the same bytes


def file_name(fmt: str, experiment_ids: list[int] | None = None, run_ids: list[int] | None = None) -> str:
    stem = ("experiment-" + "-".join(map(str, experiment_ids)) if experiment_ids
            else "runs-" + "-".join(map(str, sorted(run_ids or []))))
    return stem + (".zip" if fmt == "md" else FORMATS[fmt])


def report_bytes(fmt: str, experiment_ids: list[int] | None = None, run_ids: list[int] | None = None) -> bytes:
    if fmt not in FORMATS:
        raise ValueError(f"report format {fmt!r}: allowed {', '.join(FORMATS)}")
    with tempfile.TemporaryDirectory() as tmp:
        output = Path(tmp) / file_name(fmt, experiment_ids, run_ids).replace(".zip", ".md")
        written = write_report(output, fmt, experiment_ids, run_ids)
        if fmt != "md":
            return output.read_bytes()
        return _zipped(Path(tmp), [p for w in written for p in ([w] if w.is_file() else sorted(w.rglob("*")))])


def _zipped(root: Path, files: list[Path]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for path in sorted(files):
            if path.is_file():
                info = zipfile.ZipInfo(str(path.relative_to(root)), date_time=ZIP_TIME)
                info.compress_type = zipfile.ZIP_DEFLATED
                archive.writestr(info, path.read_bytes())
    return buffer.getvalue()
