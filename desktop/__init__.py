"""Marble Studio: an offline text-to-image studio over diffusers."""

__version__ = "0.1.0"
