"""The home page's gallery: results the lab recorded on the default models, browsable without running anything."""
from __future__ import annotations

import streamlit as st

from lab.report import gallery


def show_gallery() -> None:
    info = gallery.summary()
    if info is None:
        return
    st.subheader("Browse recorded results")
    st.write(f"The lab recorded the workshop's {len(info['names'])} experiments on {info['machine']} "
             f"(finished {info['recorded_at'][:16].replace('T', ' ')} UTC, commit {info['commit']}). Open them to "
             f"see every family's results at once, without running anything; they are marked as recorded and "
             f"read-only, and your own runs sit beside them in Compare.")
    ids = info["loaded_ids"]
    if not ids:
        # a callback: it loads before the page reruns, so the links below appear on that very rerun
        st.button("Open the recorded results", icon=":material/folder_open:", on_click=gallery.load)
    for exp_id, name, diffusion in zip(ids, info["names"], info["diffusion"]):
        page = "pages/2_Diffusion_Lab.py" if diffusion else "pages/1_LLM_Lab.py"
        st.page_link(page, label=f"{name} (recorded)", icon=":material/history:",
                     query_params={"experiment": str(exp_id)})
