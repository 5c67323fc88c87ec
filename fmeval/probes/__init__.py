"""Classifiers on cached feature tensors (no encoders, no I/O)."""
