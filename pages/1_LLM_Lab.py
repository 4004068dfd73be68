"""LLM Lab: build an experiment from the technique declarations, run it in the worker, read the results."""
import streamlit as st

from lab import forms
from lab.models import BUILTIN_MODELS, DEFAULT_LLM
from ui.experiment_panel import show_current_experiment, submit
from ui.variant_form import variant_editor

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
with st.expander("Build an experiment", expanded=False):
    presets = forms.presets("llm")
    preset = st.selectbox("Start from preset", list(presets), help="Specs in experiments/*.toml")
    base = presets[preset]
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
    techniques = forms.techniques_for("llm")
    variants = variant_editor(techniques, [v for v in base.get("variants", []) if v.get("techniques")])
    if st.button("Run experiment"):
        raw = {"name": exp_name, "model": model, "workload": workload,
               "temperature": temperature, "top_p": top_p, "variants": variants,
               "seed": int(base.get("seed", 0)), "perplexity_window": int(base.get("perplexity_window", 256)),
               **{k: int(v) for k, v in numbers.items()}, **needle}
        submit(raw)


# --- progress and results ----------------------------------------------------------------------------
show_current_experiment()
