"""Homunculus: a compiler for in-network machine learning."""

__version__ = "0.1.0"
