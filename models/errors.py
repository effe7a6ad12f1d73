"""Errors of the model package that callers catch without loading it (no torch import)."""

__all__ = ["CheckpointError"]


class CheckpointError(ValueError):
    """A checkpoint that cannot be loaded; the message names the offending key or field."""
