"""Sparse attention techniques: on LLMs the attention slot (each layer attends to a subset of the causal keys);
on DiTs the denoiser slot (dit_sparse.py: top-k keys chosen at refresh steps and reused between them)."""
