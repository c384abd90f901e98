"""knightctl's version: pyproject.toml reads it, and every run records it (tag knightctl.version)."""

__version__ = "0.1.0"
