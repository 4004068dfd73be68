"""The Efficiency Lab backend; docs/ARCHITECTURE.md shows its layers."""
