"""The what-if calculator: roofline arithmetic for LLM inference (LLM-Viewer; Fu 2024, "Challenges in Deploying
Long-Context Transformers"). A model shape, a context, a batch and dtypes on a device from a table give the
parameter count, the weight and KV bytes, the memory-bound floor of a decode step and the compute-bound floor of
prefill, and what each technique family changes. Every number is an estimate (a floor), never a measurement.

Pure arithmetic: no torch (except inside machine.py's measurement, imported lazily), no streamlit.
"""
