"""Streamlit widgets shared by the pages (rendering only; the logic they show lives in lab/)."""
