"""Home: what the lab is, a tour of the pages in the order a newcomer needs them, and the latest experiments."""
import pandas as pd
import streamlit as st

from lab.views import results
from ui.gallery_view import show_gallery
from ui.navigation import route_through_app

route_through_app()

st.set_page_config(page_title="Efficiency Lab", layout="wide")
st.title("Efficiency Lab")
st.write(
    "Take a real model, switch efficiency techniques on and off, and see what each one does to speed, memory "
    "and output quality — measured against a baseline in the same run, stored, and compared side by side. "
    "Everything runs offline on a CPU with built-in models (SmolLM2-135M-Instruct, and diffusion models the lab "
    "trained on handwritten digits), and on a GPU with any "
    "Hugging Face model you have locally.")

st.subheader("A tour, in the order you will need it")
st.markdown(
    "1. **LLM Lab** — press **Run quickstart**: the default model in fp32 against bf16 weights, about a minute on "
    "2 CPU cores. Read the table (speed, memory, quality against the baseline, each with its spread), the charts "
    "under it, and the outputs side by side. Then pick a preset (KV cache, speculative decoding, quantization, "
    "sparse attention) or build your own variants, sweeps included.\n"
    "2. **Diffusion Lab** — press **Run diffusion quickstart**: feature caching on the lab's digits DiT against "
    "simply taking fewer sampler steps, images side by side with their differences.\n"
    "3. **Compare** — runs from any experiments side by side, the speed–quality Pareto front, and a report to "
    "send (HTML that opens offline, Markdown, CSV, JSON).\n"
    "4. **Techniques** — what each technique does, a picture of it, its paper's claim, and what the lab measured "
    "for it here.\n"
    "5. **What-if calculator** — the arithmetic that says how much a technique can help on a given model and "
    "device before anyone measures it; an estimate, set beside the lab's measurement where there is one.\n\n"
    "Every run is also a command: `python -m lab run experiments/quickstart.toml --wait`.")
c1, c2, c3 = st.columns(3)
c1.page_link("pages/1_LLM_Lab.py", label="Open the LLM Lab", icon=":material/science:")
c2.page_link("pages/2_Diffusion_Lab.py", label="Open the Diffusion Lab", icon=":material/image:")
c3.page_link("pages/3_Compare.py", label="Compare runs", icon=":material/compare_arrows:")

show_gallery()

st.subheader("Recent experiments")
recent = results.recent_experiments(15)
if recent:
    st.table(pd.DataFrame(recent).set_index("ID"))
else:
    st.info("No experiments yet: run the quick start.")
