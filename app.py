"""Efficiency Lab: the app's entry point (`streamlit run app.py`); the pages live in pages/, named and ordered in
ui/navigation.py (the sidebar says Home, LLM Lab, Diffusion Lab, Compare, ...)."""
from ui.navigation import run_app

run_app()
