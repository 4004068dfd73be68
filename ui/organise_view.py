"""Rename, tag, annotate or delete the experiment on screen (lab/catalog.py does the work)."""
from __future__ import annotations

import streamlit as st

from lab import catalog
from lab.errors import SpecError
from lab.views import experiments


def show_labels(exp) -> None:
    """Tags and note under the experiment's title, as plain text (user text is never rendered as Markdown)."""
    if exp.tags:
        st.text(f"Tags: {experiments.tags_text(exp.tags)}")
    if exp.note:
        st.text(f"Note: {exp.note}")
    if exp.origin == catalog.store.ORIGIN_IMPORTED:
        source = (exp.imported_from or {}).get("file", "a report")
        st.info(f"Imported from {source}: measured on the colleague's machine (see Environment), not here.")
    elif exp.origin == catalog.store.ORIGIN_GALLERY:
        env = exp.runs[0].environment if exp.runs else {}
        st.info(f"Recorded result (the lab's gallery, read-only): measured on {env.get('device_name', '?')} at "
                f"{env.get('time', '?')}, commit {str(env.get('lab_commit', '?'))[:12]}; not run here. Run its "
                f"preset to measure it on your machine.")


def show_organise(exp) -> None:
    if exp.origin == catalog.store.ORIGIN_GALLERY:
        return  # read-only
    with st.expander("Rename, tag, annotate or delete"):
        with st.form(f"organise_{exp.id}"):
            name = st.text_input("Name", value=exp.name)
            tags = st.text_input("Tags (comma-separated)", value=experiments.tags_text(exp.tags))
            note = st.text_area("Note", value=exp.note or "")
            saved = st.form_submit_button("Save")
        if saved:
            _save(exp.id, name, tags, note)
        sure = st.checkbox(f"Delete experiment {exp.id} with all its runs (cannot be undone)", key=f"sure_{exp.id}")
        if st.button("Delete experiment", disabled=not sure, key=f"delete_{exp.id}"):
            _delete(exp.id)


def _save(exp_id: int, name: str, tags: str, note: str) -> None:
    try:
        parsed = experiments.parse_tags(tags)
        catalog.checked_name(name)  # every field checked before any is written
        catalog.rename_experiment(exp_id, name)
        catalog.set_tags(exp_id, parsed)
        catalog.set_note(exp_id, note)
    except (SpecError, LookupError) as e:
        st.error(f"Not saved: {e}")
        return
    st.rerun()


def _delete(exp_id: int) -> None:
    try:
        removed = catalog.delete_experiment(exp_id)
    except (catalog.ExperimentBusy, LookupError) as e:
        st.error(f"Not deleted: {e}")
        return
    st.query_params.pop("experiment", None)
    st.session_state["deleted_note"] = (f"Deleted experiment {exp_id} ({removed['runs']} runs, "
                                        f"{removed['outputs']} outputs).")
    st.rerun()
