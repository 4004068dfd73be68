"""Diffusion Lab: generate digits with the shipped denoisers, or images from a diffusers pipeline the user
points at; switch feature caching on, see images and counts."""
import streamlit as st

from lab.views import forms
from lab.views.forms import DEFAULT_DIFFUSION, DIFFUSION_MODELS
from ui.experiment_panel import show_current_experiment, submit
from ui.forms_view import variant_editor
from ui.navigation import route_through_app
from ui.workshop_view import show_preset_questions

route_through_app()

st.set_page_config(page_title="Diffusion Lab · Efficiency Lab", layout="wide")
st.title("Diffusion Lab")
st.write("Generate handwritten digits with the lab's own class-conditional diffusion models and switch feature "
         "caching on: every variant starts from the same noise as the baseline, so each image is compared with "
         "the baseline's, and a classifier checks the digit is still the one asked for. On a GPU, point it at a "
         "diffusers pipeline folder (Flux, PixArt, Stable Diffusion...) to apply the same techniques there.")
PIPELINE = "a diffusers pipeline folder…"

quick = st.container(border=True)
quick.markdown("**Quick start** — the digits DiT, one image per digit, 50 DDIM steps: a block cache and a "
               "first-block cache against the same compute spent on 25 steps; about a minute on 2 CPU cores.")
if quick.button("Run diffusion quickstart", type="primary"):
    submit(forms.presets("diffusion")["diffusion_quickstart"])

with st.expander("Build an experiment", expanded=False):
    presets = forms.presets("diffusion")
    preset = st.selectbox("Start from preset", list(presets), key="diffusion_preset",
                          help="Specs in experiments/*.toml (workshop/: the workshop, in order)")
    base = presets[preset]
    show_preset_questions(preset)
    key = forms.form_key("diffusion", preset)  # every widget below belongs to this preset: another loads all of it
    c1, c2, c3 = st.columns(3)
    exp_name = c1.text_input("Experiment name", value=base.get("name", preset), key=f"{key}name")
    names = [*DIFFUSION_MODELS, PIPELINE]
    base_model = base.get("model", DEFAULT_DIFFUSION)
    model = c1.selectbox("Model", names, index=names.index(base_model if base_model in DIFFUSION_MODELS else PIPELINE),
                         format_func=lambda n: n if n == PIPELINE else f"{n} ({DIFFUSION_MODELS[n].architecture})",
                         key=f"{key}model_choice",
                         help=DIFFUSION_MODELS.get(base_model, DIFFUSION_MODELS[DEFAULT_DIFFUSION]).description)
    if model == PIPELINE:
        model = c1.text_input("Pipeline folder", value="" if base_model in DIFFUSION_MODELS else base_model,
                              key=f"{key}pipeline",
                              help="A folder with a model_index.json (saved with save_pretrained, or a snapshot in "
                                   "the Hugging Face cache), or a cached hub id. Nothing is downloaded.").strip()
        architecture, denoiser_class, problem = forms.pipeline_denoiser(model)
        if problem:
            st.error(problem)
        fields = {"workload": "image_prompts", "sampler": "pipeline"}
        c2.caption("Prompts: data/prompts/images.toml, in order. The pipeline runs its own scheduler.")
        wanted = ["prompts", "image_size"]
    else:
        architecture, denoiser_class = DIFFUSION_MODELS[model].architecture, None
        samplers = [s for s in forms.field_choices("sampler") if s != "pipeline"]
        fields = {"workload": "digits",
                  "classes": c2.multiselect("Digits", list(range(10)), default=base.get("classes", list(range(10))),
                                            key=f"{key}classes", help=forms.field_help("classes")),
                  "sampler": c3.selectbox("Sampler", samplers, index=forms.choice_index(samplers, base.get("sampler"),
                                                                                        "ddim"),
                                          key=f"{key}sampler", help=forms.field_help("sampler"))}
        wanted = ["images_per_class"]
    guidance = c3.number_input("guidance", min_value=1.0, max_value=20.0, step=0.5, key=f"{key}guidance",
                               value=float(base.get("guidance", 1.5)), help=forms.field_help("guidance"))
    numbers = {}
    for i, name in enumerate(["steps", *wanted, "batch_size", "seed", "repeats", "warmup", "threads"]):
        default, lo, hi = forms.field_range(name)
        col = (c1, c2, c3)[i % 3]
        numbers[name] = col.number_input(name, min_value=lo, max_value=hi, value=int(base.get(name, default)),
                                         step=1, help=forms.field_help(name), key=f"{key}{name}")
    st.markdown("**Variants** — the baseline (no technique) always runs first. Techniques that do not fit the "
                "chosen model's denoiser are not offered.")
    techniques = forms.techniques_for("diffusion", architecture, denoiser_class)
    variants = variant_editor(techniques, base.get("variants", []), key=key)
    if st.button("Run experiment", key=f"{key}run"):
        # the preset's fields first (description, device, ... have no widget), then what the widgets say
        submit(forms.spec_from_form(base, {"name": exp_name, "model": model, **fields, "guidance": guidance,
                                           **{k: int(v) for k, v in numbers.items()}}, variants))

show_current_experiment()
