"""What-if calculator: roofline floors of LLM inference for a model, context, batch and dtypes on a device from
a table (or this machine, measured once), what each technique family changes, and the lab's measured number
beside the estimate where one exists."""
import streamlit as st

from ui.navigation import route_through_app
from ui.whatif_view import show_whatif

route_through_app()

st.set_page_config(page_title="What-if calculator · Efficiency Lab", layout="wide")
st.title("What-if calculator")
st.write("The arithmetic of LLM-Viewer and of Fu (2024), \"Challenges in Deploying Long-Context Transformers\": "
         "what a model at a context and batch needs in memory, the fastest a decode step and a prefill could go "
         "on a device, and how each technique family moves those floors.")
show_whatif()
