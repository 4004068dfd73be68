"""llama.cpp as a reference engine (engine = "llama_cpp"): the model's own GGUF run through llama-cpp-python.

TO BE WRITTEN (helper): LlamaCppEngine and check_llama_cpp.
"""
from __future__ import annotations
