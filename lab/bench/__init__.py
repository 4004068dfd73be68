"""Measurement: runs a validated spec's variants interleaved and records what they did."""
