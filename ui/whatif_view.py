"""The what-if calculator's widgets: model, workload and device pickers, technique knobs, and the estimate drawn as
tables and a bar chart beside the lab's measured number where the store has one."""
from __future__ import annotations

import altair as alt
import pandas as pd
import streamlit as st

from lab.errors import SpecError
from lab.views import whatif

SOURCES = ("Built-in model", "Local folder or config.json", "Type the shape in")
FLOOR_NOTE = ("Estimate, not a measurement. Each number is a floor: the time if the device moved bytes at its peak "
              "bandwidth and multiplied at its peak FLOPs, whichever takes longer (the roofline). Real kernels "
              "reach a fraction of either peak, so a measured time sits above its floor; compare techniques by how "
              "they move the floor, not by the floor itself.")


def pick_model() -> tuple[whatif.ModelShape, str | None]:
    """The shape, and the name the store knows the model by (None for a typed shape)."""
    builtins = whatif.builtin_models()
    sources = SOURCES if builtins else SOURCES[1:]
    # a built-in when one is prepared, else SmolLM2's sizes typed in: the page always opens on an estimate
    source = st.radio("Model", sources, index=0 if builtins else len(sources) - 1, horizontal=True,
                      key="whatif_source")
    if source == SOURCES[0]:
        name = st.selectbox("Built-in model", list(builtins), key="whatif_builtin")
        return whatif.shape_from_path(builtins[name], name), name
    if source == SOURCES[1]:
        path = st.text_input("Path to a local Hugging Face model folder or its config.json", key="whatif_path")
        if not path.strip():
            st.info("Type a path to a folder holding a config.json (or to the file itself).")
            st.stop()
        folder = path.strip().removesuffix("/config.json")  # the store names a local model by its folder
        return whatif.shape_from_path(path.strip()), folder
    return typed_shape(), None


def typed_shape() -> whatif.ModelShape:
    """Seven sizes typed in (SmolLM2-135M's by default) and whether the LM head is tied to the embedding."""
    columns = st.columns(4)
    sizes = {field: columns[i % 4].number_input(field.replace("_", " "), min_value=1, value=default, step=1,
                                                 key=f"whatif_{field}")
             for i, (field, default) in enumerate(whatif.SMOLLM2_SHAPE.items())}
    tied = columns[3].checkbox("tied embeddings", value=True, key="whatif_tied")
    return whatif.shape_from_numbers(**{k: int(v) for k, v in sizes.items()}, tied=tied)


def pick_scenario(shape) -> whatif.Scenario:
    left, mid, right, last = st.columns(4)
    context = left.number_input("Context [tokens]", min_value=1, max_value=10_000_000, value=4096, step=256,
                                key="whatif_context")
    batch = mid.number_input("Batch [sequences]", min_value=1, max_value=100_000, value=1, key="whatif_batch")
    weights = right.selectbox("Weights dtype", whatif.WEIGHT_DTYPES, index=1, key="whatif_wdtype")
    kv = last.selectbox("KV dtype", whatif.KV_DTYPES, index=1, key="whatif_kvdtype")
    return whatif.Scenario(shape, int(context), int(batch), weights, kv)


def pick_device() -> whatif.Device:
    devices = whatif.devices()
    left, right = st.columns([3, 1])
    # the button is drawn first so that its run can still pick the new device in the select box below
    if right.button("Measure this machine (about 10 s)", key="whatif_measure"):
        with st.spinner("Timing a 256 MB copy and fp32 / bf16 matmuls..."):
            st.session_state["whatif_device"] = whatif.measure_this_machine().name
        st.rerun()
    name = left.selectbox("Device", list(devices), index=len(devices) - 1 if whatif.machine_measured() else 0,
                          key="whatif_device")
    device = devices[name]
    peaks = ", ".join(f"{d} {v:g}" for d, v in device.peak_tflops.items())
    st.caption(f"{device.bandwidth_gbs:g} GB/s; peak TFLOP/s {peaks}. Source: {device.source}")
    return device


def pick_knobs() -> whatif.Knobs:
    with st.expander("Technique knobs", expanded=True):
        a, b, c, d = st.columns(4)
        kv_ratio = a.number_input("KV compression ratio r", 1.0, 1000.0, 4.0, key="whatif_r")
        kv_bits = b.selectbox("KV bits", (8, 4), index=1, key="whatif_kvbits")
        weight_bits = c.selectbox("Weight bits", (8, 4), index=1, key="whatif_wbits")
        drafts = d.number_input("Draft tokens k", 1, 64, 4, key="whatif_k")
        a, b, c, d = st.columns(4)
        acceptance = a.slider("Acceptance rate a", 0.0, 1.0, 0.7, key="whatif_a")
        draft_cost = b.number_input("Draft cost c (x one target step)", 0.0, 10.0, 0.05, key="whatif_c")
        attended = c.slider("Attended share s", 0.01, 1.0, 0.25, key="whatif_s")
        share = d.slider("Attention share f (Amdahl)", 0.0, 1.0, 0.5, key="whatif_f") \
            if d.toggle("Type attention's share", key="whatif_f_on") else None
    return whatif.Knobs(float(kv_ratio), kv_bits, weight_bits, int(drafts), acceptance, draft_cost, attended, share)


def show_results(scenario, device, knobs, model_name: str | None) -> None:
    st.subheader("Estimate")
    st.caption(FLOOR_NOTE)
    st.table(pd.DataFrame(whatif.estimate_rows(scenario, device)).set_index("Quantity"))
    found = whatif.effects(scenario, device, knobs)
    st.subheader("What each technique family changes (estimated floors)")
    st.table(pd.DataFrame(whatif.effect_rows(found)).set_index("Technique"))
    frame = pd.DataFrame(whatif.chart_rows(found))
    chart = alt.Chart(frame).mark_bar().encode(
        x=alt.X("Decode floor (ms per token):Q"), y=alt.Y("Technique:N", sort=None, title=None),
        tooltip=["Technique", "Setting", alt.Tooltip("Decode floor (ms per token):Q", format=".4g")],
    ).properties(height=200)
    st.altair_chart(chart, width="stretch")
    st.caption("Decode-step floor per output token, each family alone with its knob. " + whatif.DIFFUSION_CACHING)
    show_measured(model_name, scenario, found[0].decode_s)


def show_measured(model_name: str | None, scenario, floor_s: float) -> None:
    """The lab's measured TPOT of this model beside the floor, with the ratio and the length it was taken at."""
    if model_name is None:
        st.caption("A typed shape has no stored runs: pick a built-in or local model to see the lab's measured TPOT "
                   "beside the floor.")
        return
    m = whatif.measured_decode(model_name, scenario.context, scenario.batch)
    if m is None:
        st.caption(f"No finished experiment in the store ran {model_name} at batch {scenario.batch}: run one on the "
                   "LLM Lab page to see the measured number beside the estimate.")
        return
    where = "at" if m.near else "nearest this context, at"
    st.markdown(f"**Measured here** (experiment {m.experiment_id}, {m.workload}, baseline, {where} "
                f"{m.prompt_tokens} prompt tokens): TPOT {m.tpot_ms:.3g} ms (n={m.n}), {m.ratio(floor_s):.3g}x the "
                f"estimated floor of {floor_s * 1e3:.3g} ms.")
    st.caption(f"Measured with {m.dtype or 'unknown'} weights on {m.device or 'an unrecorded device'}; the estimate "
               f"uses {scenario.weight_dtype} weights on the device picked above: pick this machine and the same "
               "dtype for a like-for-like ratio.")


def show_whatif() -> None:
    try:
        shape, model_name = pick_model()
        scenario = pick_scenario(shape)
        device = pick_device()
        knobs = pick_knobs()
    except SpecError as err:
        st.error(str(err))
        st.stop()
    show_results(scenario, device, knobs, model_name)
