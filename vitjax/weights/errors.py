"""The errors weight loading raises: a file that cannot be read, and weights that do not fit."""

from __future__ import annotations


class CheckpointError(ValueError):
    """A weight file or directory that cannot be read safely; the message names it."""


class WeightMismatchError(ValueError):
    """Raised when a state_dict does not fit a model: lists every offending key and shape."""
