"""Efficiency Lab home: what the lab is, how to start, and the latest experiments."""
import pandas as pd
import streamlit as st

from lab.views import results

st.set_page_config(page_title="Efficiency Lab", layout="wide")
st.title("Efficiency Lab")
st.write(
    "Take a real model, switch efficiency techniques on and off, and see what each one does to speed, memory "
    "and output quality — measured against a baseline in the same run, stored, and compared side by side. "
    "Everything runs offline on a CPU with built-in models (SmolLM2-135M-Instruct, and diffusion models the lab "
    "trained on handwritten digits), and on a GPU with any "
    "Hugging Face model you have locally.")

st.subheader("Quick start")
st.markdown(
    "1. Open the **LLM Lab** page and press **Run quickstart**: the default model in fp32 against bf16 "
    "weights, about a minute on 2 CPU cores.\n"
    "2. Read the results table: speed (TTFT, TPOT, tokens/s), memory, and quality against the baseline "
    "(greedy agreement, perplexity), each with its spread.\n"
    "3. Open the **Diffusion Lab** and press **Run diffusion quickstart**: the lab's digits DiT with feature "
    "caching against fewer sampler steps, images side by side with their differences.\n"
    "4. Open **Compare** to put runs from any experiments side by side.\n\n"
    "The same experiments run from a terminal: `python -m lab run experiments/quickstart.toml --wait`.")
st.page_link("pages/1_LLM_Lab.py", label="Open the LLM Lab", icon="🧪")
st.page_link("pages/2_Diffusion_Lab.py", label="Open the Diffusion Lab", icon="🎨")
st.page_link("pages/3_Compare.py", label="Compare runs", icon="📊")

st.subheader("Recent experiments")
recent = results.recent_experiments(15)
if recent:
    st.table(pd.DataFrame(recent).set_index("ID"))
else:
    st.info("No experiments yet: run the quick start.")
