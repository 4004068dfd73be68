"""LLM Lab: build an experiment from the technique declarations, run it in the worker, read the results."""
import os

import streamlit as st

from lab import forms, jobs, results
from lab.experiment import validate
from lab.models import BUILTIN_MODELS, DEFAULT_LLM
from lab.techniques import SpecError, all_techniques
from ui.results_view import show_experiment, show_job_failure

st.set_page_config(page_title="LLM Lab · Efficiency Lab", layout="wide")
st.title("LLM Lab")
st.write("Run a language model with efficiency techniques switched on, against a baseline measured in the same "
         "run. Start with the quick start, or build your own experiment below.")

AUTOSTART = os.environ.get("LAB_WORKER_AUTOSTART", "1") != "0"


def submit(raw: dict) -> None:
    try:
        spec = validate(raw)
    except SpecError as e:
        st.error(f"Cannot run this experiment: {e}")
        return
    exp_id, job_id = jobs.submit(spec)
    if AUTOSTART:
        jobs.ensure_worker()
    st.session_state["job_id"] = job_id
    st.query_params["experiment"] = str(exp_id)


# --- quick start -------------------------------------------------------------------------------------
quick = st.container(border=True)
quick.markdown("**Quick start** — SmolLM2-135M-Instruct in fp32 (baseline) vs bf16 weights on four chat "
               "prompts; about a minute on 2 CPU cores.")
if quick.button("Run quickstart", type="primary"):
    submit(forms.presets()["quickstart"])

# --- build an experiment -----------------------------------------------------------------------------
with st.expander("Build an experiment", expanded=False):
    preset_names = list(forms.presets())
    preset = st.selectbox("Start from preset", preset_names, help="Specs in experiments/*.toml")
    base = forms.presets()[preset]
    c1, c2, c3 = st.columns(3)
    exp_name = c1.text_input("Experiment name", value=base.get("name", preset))
    model_choice = c1.selectbox("Model", [*BUILTIN_MODELS, "other (local folder or cached hub id)"],
                                help=forms.field_help("model"))
    model = model_choice if model_choice in BUILTIN_MODELS else c1.text_input("Model path or hub id",
                                                                              value=base.get("model", DEFAULT_LLM))
    workload = c2.selectbox("Workload", forms.field_choices("workload"),
                            index=forms.field_choices("workload").index(base.get("workload", "chat")),
                            help=forms.field_help("workload"))
    numbers = {}
    for i, name in enumerate(["prompts", "max_new_tokens", "repeats", "warmup", "threads", "perplexity_tokens",
                                "batch_size"]):
        default, lo, hi = forms.field_range(name)
        col = (c1, c2, c3)[i % 3]
        numbers[name] = col.number_input(name, min_value=lo, max_value=hi, value=int(base.get(name, default)),
                                         step=1, help=forms.field_help(name), key=f"f_{name}")
    needle = {}
    if workload == "needle":
        needle["needle_lengths"] = c1.multiselect("Needle context lengths [tokens]", [512, 1024, 2048, 4096, 8192],
                                                  default=base.get("needle_lengths", [1024, 2048]),
                                                  help=forms.field_help("needle_lengths"))
        needle["needle_depths"] = c2.multiselect("Needle depths [%]", [0, 10, 25, 50, 75, 90, 100],
                                                 default=base.get("needle_depths", [0, 50, 100]),
                                                 help=forms.field_help("needle_depths"))
    temperature = c3.number_input("temperature", min_value=0.0, max_value=5.0, step=0.1,
                                  value=float(base.get("temperature", 0.0)), help=forms.field_help("temperature"))
    top_p = c3.number_input("top_p", min_value=0.01, max_value=1.0, step=0.05, value=float(base.get("top_p", 1.0)),
                            help=forms.field_help("top_p"))

    st.markdown("**Variants** — the baseline (no technique) always runs first.")
    techniques = all_techniques()
    preset_variants = [v for v in base.get("variants", []) if v.get("techniques")]
    n_variants = st.number_input("Variants besides the baseline", 0, 6, value=max(1, len(preset_variants)))
    variants = [{"name": "baseline", "techniques": []}]
    for i in range(int(n_variants)):
        pv = preset_variants[i] if i < len(preset_variants) else {}
        box = st.container(border=True)
        vname = box.text_input("Variant name", value=pv.get("name", f"variant-{i + 1}"), key=f"v{i}_name")
        chosen = box.multiselect("Techniques", list(techniques), key=f"v{i}_tech",
                                 default=[t["name"] for t in pv.get("techniques", []) if t["name"] in techniques],
                                 format_func=lambda n: f"{techniques[n].title} ({techniques[n].slot})")
        entries = []
        for tname in chosen:
            cls = techniques[tname]
            box.caption(f"{cls.title}: {cls.summary} Paper: {cls.paper}")
            preset_knobs = next((t for t in pv.get("techniques", []) if t["name"] == tname), {})
            entry = {"name": tname}
            for k in cls.knobs():
                w, key, value = forms.widget_for(k), f"v{i}_{tname}_{k.name}", preset_knobs.get(k.name, k.default)
                label, help_ = forms.knob_label(k), f"{k.help} Allowed: {k.allowed()}."
                if w["widget"] == "select":
                    entry[k.name] = box.selectbox(label, w["options"], index=w["options"].index(value),
                                                  key=key, help=help_)
                elif w["widget"] == "checkbox":
                    entry[k.name] = box.checkbox(label, value=bool(value), key=key, help=help_)
                elif w["widget"] == "number":
                    entry[k.name] = box.number_input(label, value=k.type(value), step=k.type(w["step"]), key=key,
                                                     help=help_)
                else:
                    entry[k.name] = box.text_input(label, value=str(value), key=key, help=help_)
            entries.append(entry)
        variants.append({"name": vname, "techniques": entries})
    if st.button("Run experiment"):
        raw = {"name": exp_name, "model": model, "workload": workload,
               "temperature": temperature, "top_p": top_p, "variants": variants,
               "seed": int(base.get("seed", 0)), "perplexity_window": int(base.get("perplexity_window", 256)),
               **{k: int(v) for k, v in numbers.items()}, **needle}
        submit(raw)


# --- progress and results ----------------------------------------------------------------------------
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
        if AUTOSTART and job.status == "queued" and not jobs.worker_alive():
            jobs.ensure_worker()
        st.progress(min(1.0, job.progress), text=f"Experiment {exp_id} {job.status}: {job.message}")
        if st.button("Cancel run", key="cancel"):
            jobs.cancel(job.id)
        st.session_state["was_running"] = exp_id
    elif st.session_state.get("was_running") == exp_id:
        st.session_state.pop("was_running")
        st.rerun()  # the run just ended: redraw the whole page with its results


exp_id = current_experiment_id()
if exp_id is None:
    recent = results.recent_experiments(1)
    if recent:
        st.caption(f"Latest experiment: #{recent[0]['ID']} {recent[0]['Name']} ({recent[0]['Status']}). "
                   f"Open it with ?experiment={recent[0]['ID']} or from the Compare page.")
else:
    exp = results.load_experiment(exp_id)
    if exp is None:
        st.warning(f"There is no experiment {exp_id} in the store.")
    else:
        job = jobs.job_for_experiment(exp_id)
        if job is not None and job.status in ("queued", "running"):
            progress_panel(exp_id)
        elif job is not None and job.status in ("failed", "cancelled"):
            show_job_failure(job)
        else:
            show_experiment(exp)
