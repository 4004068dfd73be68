"""LLM Lab: build an experiment from the technique declarations, run it in the worker, read the results."""
import streamlit as st

from lab.views import forms
from lab.views.forms import BUILTIN_MODELS, DEFAULT_LLM
from ui.experiment_panel import show_current_experiment, submit
from ui.forms_view import variant_editor
from ui.navigation import route_through_app
from ui.workshop_view import show_preset_questions

route_through_app()

st.set_page_config(page_title="LLM Lab · Efficiency Lab", layout="wide")
st.title("LLM Lab")
st.write("Run a language model with efficiency techniques switched on, against a baseline measured in the same "
         "run. Start with the quick start, or build your own experiment below.")

# --- quick start -------------------------------------------------------------------------------------
quick = st.container(border=True)
quick.markdown("**Quick start** — SmolLM2-135M-Instruct in fp32 (baseline) vs bf16 weights on four chat "
               "prompts; about a minute on 2 CPU cores.")
if quick.button("Run quickstart", type="primary"):
    submit(forms.presets()["quickstart"])

# --- build an experiment -----------------------------------------------------------------------------
OTHER_MODEL = "other (local folder or cached hub id)"
# 8192 is SmolLM2's whole context: the question and the answer would not fit beside it (validation refuses it)
NEEDLE_LENGTHS, NEEDLE_DEPTHS = [512, 1024, 2048, 4096], [0, 10, 25, 50, 75, 90, 100]
with st.expander("Build an experiment", expanded=False):
    presets = forms.presets("llm")
    preset = st.selectbox("Start from preset", list(presets), key="llm_preset",
                          help="Specs in experiments/*.toml (workshop/: the workshop, in order)")
    base = presets[preset]
    show_preset_questions(preset)
    key = forms.form_key("llm", preset)  # every widget below belongs to this preset: choosing another loads all of it
    c1, c2, c3 = st.columns(3)
    exp_name = c1.text_input("Experiment name", value=base.get("name", preset), key=f"{key}name")
    base_model = base.get("model", DEFAULT_LLM)
    model_options = [*BUILTIN_MODELS, OTHER_MODEL]
    model_choice = c1.selectbox("Model", model_options, key=f"{key}model_choice",
                                index=model_options.index(base_model if base_model in BUILTIN_MODELS else OTHER_MODEL),
                                help=forms.field_help("model"))
    model = model_choice if model_choice in BUILTIN_MODELS else c1.text_input("Model path or hub id",
                                                                              value=base_model, key=f"{key}model")
    workloads = list(forms.field_choices("workload"))
    workload = c2.selectbox("Workload", workloads, index=forms.choice_index(workloads, base.get("workload", "chat")),
                            key=f"{key}workload", help=forms.field_help("workload"))
    numbers = {}
    for i, name in enumerate(["prompts", "max_new_tokens", "repeats", "warmup", "threads", "perplexity_tokens",
                              "batch_size", "perplexity_window", "seed"]):
        default, lo, hi = forms.field_range(name)
        col = (c1, c2, c3)[i % 3]
        numbers[name] = col.number_input(name, min_value=lo, max_value=hi, value=int(base.get(name, default)),
                                         step=1, help=forms.field_help(name), key=f"{key}{name}")
    needle = {}
    if workload == "needle":
        lengths = base.get("needle_lengths", [1024, 2048])
        depths = base.get("needle_depths", [0, 50, 100])
        needle["needle_lengths"] = c1.multiselect("Needle context lengths [tokens]",
                                                  sorted({*NEEDLE_LENGTHS, *lengths}), default=lengths,
                                                  key=f"{key}needle_lengths", help=forms.field_help("needle_lengths"))
        needle["needle_depths"] = c2.multiselect("Needle depths [%]", sorted({*NEEDLE_DEPTHS, *depths}),
                                                 default=depths, key=f"{key}needle_depths",
                                                 help=forms.field_help("needle_depths"))
    temperature = c3.number_input("temperature", min_value=0.0, max_value=5.0, step=0.1, key=f"{key}temperature",
                                  value=float(base.get("temperature", 0.0)), help=forms.field_help("temperature"))
    top_p = c3.number_input("top_p", min_value=0.01, max_value=1.0, step=0.05, value=float(base.get("top_p", 1.0)),
                            key=f"{key}top_p", help=forms.field_help("top_p"))

    st.markdown("**Variants** — the baseline (no technique) always runs first.")
    techniques = forms.techniques_for("llm")
    variants = variant_editor(techniques, base.get("variants", []), key=key, engines=forms.VARIANT_ENGINES)
    if st.button("Run experiment", key=f"{key}run"):
        # the preset's fields first (description, device, ... have no widget), then what the widgets say
        submit(forms.spec_from_form(base, {"name": exp_name, "model": model, "workload": workload,
                                           "temperature": temperature, "top_p": top_p,
                                           **{k: int(v) for k, v in numbers.items()}, **needle}, variants))


# --- progress and results ----------------------------------------------------------------------------
show_current_experiment()
