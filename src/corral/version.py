"""corral's version, in a module of its own: any part reads it without the package root."""

__version__ = "0.1.0"
