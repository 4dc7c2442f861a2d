"""DeepSpec: training and evaluation of speculative-decoding draft models."""

__version__ = "0.1.0"
