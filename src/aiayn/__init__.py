"""aiayn: the Transformer of "Attention Is All You Need", exact and fast."""

__version__ = "0.1.0"
