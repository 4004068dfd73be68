"""The variants editor both lab pages share: techniques picked per variant, knobs drawn from declarations."""
from __future__ import annotations

import importlib.util

import streamlit as st

from lab.spec import MAX_THREADS
from lab.views import forms

ENGINE_HELP = ("lab: the lab's decode loop, where techniques apply; hf_generate: transformers' own generate, "
               "the raw reference (takes no technique); llama_cpp: llama.cpp on the model's GGUF, the engine people "
               "deploy (takes no technique; needs llama-cpp-python, offered only when it is installed).")
THREADS_HELP = ("Threads this variant runs on; 0 = the experiment's. One thread can beat two on a busy machine, "
                "and a thread sweep shows how each engine scales.")
LLAMA_CPP_MISSING = ("engine 'llama_cpp' is not offered: llama-cpp-python is not installed here (pip install "
                     "llama-cpp-python==0.3.36; make test installs it), so this variant runs on another engine.")


def offered_engines(engines: tuple[str, ...]) -> tuple[str, ...]:
    """The engines this machine can run: llama_cpp only where llama-cpp-python is installed (find_spec, not import:
    importing it loads libllama, and pages must open fast)."""
    has_llama_cpp = importlib.util.find_spec("llama_cpp") is not None
    return tuple(e for e in engines if e != "llama_cpp" or has_llama_cpp)


def variant_editor(techniques: dict, preset_variants: list[dict], key: str, max_variants: int = 6,
                   engines: tuple[str, ...] | None = None) -> list[dict]:
    """Widgets for the baseline's name and the other variants, initialised from every variant of the preset
    (names, engines, threads, techniques and their knobs); returns [{'name', 'engine', 'techniques'} (and
    'threads' when set), ...], baseline first.

    `key` prefixes every widget key and must name the preset (forms.form_key): a keyed widget keeps its value
    across reruns even when its default changes, so without it the previous preset's variants would stay.
    `engines` offers an engine per variant (LLM); without it each variant keeps its preset's engine."""
    for error in forms.plugin_errors():
        st.warning(f"A technique of your own was not loaded: {error}")
    baseline_name, others = forms.split_baseline(preset_variants)
    most = max(max_variants, len(others))
    name = st.text_input("Baseline name", value=baseline_name, key=f"{key}baseline_name",
                         help="The variant with no technique; every other variant is measured against it.")
    n_variants = st.number_input("Variants besides the baseline", 0, most, value=len(others), key=f"{key}n_variants")
    variants = [{"name": name, "engine": "lab", "techniques": []}]
    for i in range(int(n_variants)):
        pv = others[i] if i < len(others) else {}
        prefix = f"{key}v{i}_"
        box = st.container(border=True)
        vname = box.text_input("Variant name", value=pv.get("name", "" if pv else f"variant-{i + 1}"),
                               key=f"{prefix}name", placeholder="named after its techniques when empty")
        engine = pv.get("engine", "lab")
        if engines:
            offered = offered_engines(engines)
            if engine in engines and engine not in offered:  # a preset's llama_cpp variant, on a machine without it
                box.caption(LLAMA_CPP_MISSING)
            engine = box.selectbox("Engine", offered, index=forms.choice_index(offered, engine, "lab"),
                                   key=f"{prefix}engine", help=ENGINE_HELP)
        threads = int(pv.get("threads", 0)) if isinstance(pv.get("threads", 0), int) else 0
        if engines:
            threads = box.number_input("Threads", 0, MAX_THREADS, value=min(max(threads, 0), MAX_THREADS),
                                       key=f"{prefix}threads", help=THREADS_HELP)
        preset_techniques = [t for t in pv.get("techniques", []) if isinstance(t, dict)]
        chosen = box.multiselect("Techniques", list(techniques), key=f"{prefix}tech",
                                 default=[t["name"] for t in preset_techniques if t.get("name") in techniques],
                                 format_func=lambda n: f"{techniques[n].title} ({techniques[n].slot})")
        not_offered = [t.get("name") for t in preset_techniques if t.get("name") not in techniques]
        if not_offered:
            box.caption(f"Not offered for this model, left out: {', '.join(map(str, not_offered))}.")
        sweep = bool(chosen) and box.checkbox("Sweep knob values", key=f"{prefix}sweep", help=forms.SWEEP_HELP,
                                              value=forms.has_sweep(preset_techniques, techniques))
        entries = []
        for tname in chosen:
            cls = techniques[tname]
            box.caption(f"{cls.title}: {cls.summary} Paper: {cls.paper}")
            preset_knobs = next((t for t in preset_techniques if t.get("name") == tname), {})
            entries.append({"name": tname, **_knob_widgets(box, cls, preset_knobs, f"{prefix}{tname}", sweep)})
        variants.append({"name": vname, "engine": engine, "techniques": entries, **({"threads": int(threads)}
                                                                                    if threads else {})})
    return variants


def _knob_widgets(box, cls, preset_knobs: dict, prefix: str, sweep: bool) -> dict:
    """A widget per knob; in sweep mode a number or choice knob takes several values (the list a spec holds)."""
    values = {}
    for k in cls.knobs():
        w, key, value = forms.widget_for(k), f"{prefix}_{k.name}", preset_knobs.get(k.name, k.default)
        label, help_ = forms.knob_label(k), f"{k.help} Allowed: {k.allowed()}."
        if sweep and forms.sweepable(k):
            values[k.name] = _sweep_widget(box, k, w, value, f"{key}_values", label, help_)
            continue
        value = forms.single_value(value)
        if w["widget"] == "select":
            index = forms.choice_index(w["options"], value, k.default)
            values[k.name] = box.selectbox(label, w["options"], index=index, key=key, help=help_)
        elif w["widget"] == "checkbox":
            values[k.name] = box.checkbox(label, value=bool(value), key=key, help=help_)
        elif w["widget"] == "slider":
            start = min(max(k.type(value), w["min"]), w["max"])  # a preset beyond the slider's span: its edge
            values[k.name] = box.slider(label, w["min"], w["max"], start, step=w["step"], key=key, help=help_)
        elif w["widget"] == "number":
            values[k.name] = box.number_input(label, value=k.type(value), step=k.type(w["step"]), key=key, help=help_)
        else:
            values[k.name] = box.text_input(label, value=str(value), key=key, help=help_)
    return values


def _sweep_widget(box, k, w: dict, value, key: str, label: str, help_: str):
    """Several values for one knob: a multiselect of its choices, or a text input of numbers."""
    help_ = f"{help_} {forms.SWEEP_HELP}"
    if w["widget"] == "select":
        chosen = box.multiselect(f"{label} values", w["options"], default=forms.sweep_choices(value, w["options"]),
                                 key=key, help=help_)
        return forms.chosen_values(chosen)
    text = box.text_input(f"{label} values", value=forms.sweep_text(value), key=key, help=help_,
                          placeholder="e.g. 0.25, 0.5, 0.75")
    parsed, error = forms.sweep_field(text, k)
    if error:
        box.error(error)
    return parsed
