"""Sparse attention techniques (the attention slot): each layer attends to a subset of the causal keys."""
