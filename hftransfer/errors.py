"""Errors of a training run that a user can cause or meet, with messages meant for them (the CLI prints them on one
line and exits non-zero)."""

from __future__ import annotations


class TrainingError(RuntimeError):
    """A training run stopped (or refused to start) for a reason its message explains."""


class NonFiniteError(TrainingError):
    """The training loss or the weights became NaN/inf; nothing non-finite is saved as a final model."""


class RunLockedError(TrainingError):
    """Another live run holds the lock of the same `training.output_dir`; nothing was changed."""


__all__ = ["NonFiniteError", "RunLockedError", "TrainingError"]
