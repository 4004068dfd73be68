"""Techniques: every registered technique by family, with its idea, a picture of what it does, its knobs, its
paper's claim and what this lab measured for it; ?technique=NAME opens one directly."""
import streamlit as st

from ui.navigation import route_through_app
from ui.techniques_view import show_catalogue

route_through_app()

st.set_page_config(page_title="Techniques · Efficiency Lab", layout="wide")
st.title("Techniques")
st.write("Every technique the lab can switch on, grouped by family and written from its own declaration: the idea, "
         "a small picture of what it does, its knobs, what its paper claims and where, and what this lab measured "
         "for it on this machine. A paper's numbers come from its own model and hardware; the lab's come from yours "
         "(a result recorded on another machine, such as the shipped gallery or an imported report, says so).")
show_catalogue(st.query_params.get("technique"))
