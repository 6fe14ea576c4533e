"""Every exception hftransfer raises on purpose derives from `HfTransferError`, defined here once.

Catch `HfTransferError` to handle any error hftransfer explains in its message (the CLI prints those on one line and
exits non-zero). Each class also keeps the built-in base users already catch (`ValueError` for bad input,
`RuntimeError` for a run that stopped, `ConnectionError` for an unreachable Hub).
"""

from __future__ import annotations


class HfTransferError(Exception):
    """Root of all hftransfer errors: the message says what was wrong and what was expected."""


class TrainingError(HfTransferError, RuntimeError):
    """A training run stopped (or refused to start) for a reason its message explains."""


class NonFiniteError(TrainingError):
    """The training loss or the weights became NaN/inf; nothing non-finite is saved as a final model."""


class RunLockedError(TrainingError):
    """Another live run holds the lock of the same `training.output_dir`; nothing was changed."""


__all__ = ["HfTransferError", "NonFiniteError", "RunLockedError", "TrainingError"]
