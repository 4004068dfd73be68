"""Torch building blocks the engine and the techniques share (sampling, ragged batches, cache bytes)."""
