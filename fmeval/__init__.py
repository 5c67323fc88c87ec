"""fmeval: evaluate vision foundation models on biomedical image classification."""

__version__ = "0.1.0"
