"""ctxq: gap filling for gridded geophysical fields with context-query diffusion models."""

__version__ = "0.1.0"
