"""Download buttons for a report of the experiment (or Compare selection) on screen; the file is built when the
button is clicked (lab/report/download.py), not on every rerun."""
from __future__ import annotations

import streamlit as st

from lab.report import download


def show_downloads(experiment_ids: list[int] | None = None, run_ids: list[int] | None = None,
                   key: str = "report") -> None:
    st.markdown("**Export a report** — for colleagues without the lab: it opens offline; the JSON one re-runs "
                "(`python -m lab run FILE.json`) and imports (`python -m lab import FILE.json`).")
    columns = st.columns(len(download.MIME))
    for column, fmt in zip(columns, download.MIME):
        column.download_button(
            download.LABELS[fmt], data=lambda fmt=fmt: download.report_bytes(fmt, experiment_ids, run_ids),
            file_name=download.file_name(fmt, experiment_ids, run_ids), mime=download.MIME[fmt],
            key=f"{key}_{fmt}", on_click="ignore")
