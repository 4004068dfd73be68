"""Submitting an experiment from a page and showing the one in the URL: progress while it runs, then results.
Shared by the LLM and diffusion pages."""
from __future__ import annotations

import os

import streamlit as st

from lab import jobs
from lab.bench.validate import validate
from lab.errors import SpecError
from lab.jobs import reuse
from lab.views import results
from ui.results_view import show_experiment, show_job_failure

AUTOSTART = os.environ.get("LAB_WORKER_AUTOSTART", "1") != "0"


def submit(raw: dict, fresh: bool = False) -> None:
    """Queue the spec, unless (fresh=False) the same spec is already queued or running, or finished here with this
    commit: then show that one and keep a fresh measurement one click away (show_reuse_note)."""
    try:
        spec = validate(raw)
    except SpecError as e:
        st.error(f"Cannot run this experiment: {e}")
        return
    match = None if fresh else reuse.matching_experiment(spec)
    if match is not None:
        st.session_state["reused"] = {**match, "raw": raw}
        st.query_params["experiment"] = str(match["id"])
        return
    st.session_state.pop("reused", None)
    exp_id, job_id = jobs.submit(spec)
    if AUTOSTART:
        jobs.ensure_worker(kind=spec.device)
    st.session_state["job_id"] = job_id
    st.query_params["experiment"] = str(exp_id)


def show_reuse_note(exp_id: int) -> None:
    """Say that the experiment on screen is an earlier one of the same spec, and offer a fresh measurement."""
    reused = st.session_state.get("reused")
    if not reused or reused["id"] != exp_id:
        return
    if reused["status"] == "done":
        when = reused["finished_at"].strftime("%Y-%m-%d %H:%M UTC") if reused["finished_at"] else "earlier"
        st.info(f"Shown at once: this exact spec was measured on this machine at {when} (experiment {exp_id}), "
                f"with this clean version of the lab, the same library versions and model weights, on a machine "
                f"that was not busy. Its numbers stand; measure again only to see the spread yourself.")
    else:
        st.info(f"The same spec is already {reused['status']} as experiment {exp_id}: you are following that run "
                f"instead of queueing another behind it.")
    if st.button("Measure again (a fresh run)", key=f"fresh_{exp_id}"):
        submit(reused["raw"], fresh=True)
        st.rerun()


def current_experiment_id() -> int | None:
    value = st.query_params.get("experiment")
    try:
        return int(value) if value else None
    except ValueError:
        return None


@st.fragment(run_every=2.0)
def progress_panel(exp_id: int) -> None:
    job = jobs.job_for_experiment(exp_id)
    if job is None:
        return
    if job.status in ("queued", "running"):
        jobs.reap_dead()
        if AUTOSTART and job.status == "queued" and not jobs.worker_alive(job.device_kind):
            jobs.ensure_worker(kind=job.device_kind)
        st.progress(min(1.0, job.progress), text=f"Experiment {exp_id} {job.status}: {job.message}")
        if st.button("Cancel run", key="cancel"):
            jobs.cancel(job.id)
        st.session_state["was_running"] = exp_id
    elif st.session_state.get("was_running") == exp_id:
        st.session_state.pop("was_running")
        st.rerun()  # the run just ended: redraw the whole page with its results


def show_current_experiment() -> None:
    if "deleted_note" in st.session_state:
        st.success(st.session_state.pop("deleted_note"))
    exp_id = current_experiment_id()
    if exp_id is None:
        recent = results.recent_experiments(1)
        if recent:
            st.caption(f"Latest experiment: #{recent[0]['ID']} {recent[0]['Name']} ({recent[0]['Status']}). "
                       f"Open it with ?experiment={recent[0]['ID']} or from the Compare page.")
        return
    exp = results.load_experiment(exp_id)
    if exp is None:
        st.warning(f"There is no experiment {exp_id} in the store.")
        return
    show_reuse_note(exp_id)
    job = jobs.job_for_experiment(exp_id)
    if job is not None and job.status in ("queued", "running"):
        progress_panel(exp_id)
    elif job is not None and job.status in ("failed", "cancelled"):
        show_job_failure(job)
    else:
        show_experiment(exp)
