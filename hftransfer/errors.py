"""Every exception hftransfer raises on purpose derives from `HfTransferError`, defined here once.

Catch `HfTransferError` to handle any error hftransfer explains in its message (the CLI prints those on one line and
exits non-zero). Each class also keeps the built-in base users already catch (`ValueError` for bad input,
`RuntimeError` for a run that stopped, `ConnectionError` for an unreachable Hub, `FileNotFoundError` for a missing
file).

The classes are also importable from the modules that raise them (`hftransfer.weights.BackboneWeightsError`,
`hftransfer.data.DataError`, `hftransfer.hub.HubPushError`, ...): those are the same objects.

This module imports nothing else from hftransfer at import time, so any module (the local Hub server included) can
use it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .data.images import BadImage


class HfTransferError(Exception):
    """Root of all hftransfer errors: the message says what was wrong and what was expected."""


# --- training -------------------------------------------------------------------------------------------------------


class TrainingError(HfTransferError, RuntimeError):
    """A training run stopped (or refused to start) for a reason its message explains."""


class NonFiniteError(TrainingError):
    """The training loss or the weights became NaN/inf; nothing non-finite is saved as a final model."""


class RunLockedError(TrainingError):
    """Another live run holds the lock of the same `training.output_dir`; nothing was changed."""


# --- the Hugging Face Hub -------------------------------------------------------------------------------------------


class HubUnavailableError(HfTransferError, ConnectionError):
    """The Hugging Face Hub (or the `HF_ENDPOINT` in use) cannot be reached, so a Hub dataset cannot be loaded."""


class HubPushError(HfTransferError, RuntimeError):
    """A push to the Hub could not be done. The message says why and what to do; the command line prints it as is."""


# --- backbone weights -----------------------------------------------------------------------------------------------


class BackboneWeightsError(HfTransferError, ValueError):
    """Backbone weights that cannot be used: unreadable file, wrong keys or shapes, wrong backbone."""


class WeightsNotFoundError(BackboneWeightsError, FileNotFoundError):
    """A weights file or the package providing it is missing."""


class HubWeightsUnavailableError(BackboneWeightsError, HubUnavailableError):
    """Weights that need the Hugging Face Hub could not be fetched (offline, unreachable, missing repo).

    Also a [`HubUnavailableError`] (and so a `ConnectionError`): one `except` catches an unreachable Hub for data
    and weights alike.
    """


# --- data -----------------------------------------------------------------------------------------------------------


class DataError(HfTransferError, ValueError):
    """A problem with the user's data (columns, labels, files, splits), with a message that says what to fix."""


class BadImageError(DataError):
    """One or more image files could not be read; the message names them and what was wrong."""

    def __init__(self, bad_images: Sequence[BadImage]):
        from .data.images import format_bad_images  # lazy: the data layer imports PIL

        self.bad_images = tuple(bad_images)
        noun = "image" if len(self.bad_images) == 1 else "images"
        super().__init__(
            f"{len(self.bad_images)} bad {noun}: {format_bad_images(self.bad_images)}. Fix or remove these files, "
            "or pass on_bad_image='skip' to leave them out (they are counted and logged)."
        )


# --- models: prediction, evaluation, export -------------------------------------------------------------------------


class InferenceError(HfTransferError, ValueError):
    """A model, image or dataset given to prediction/evaluation is unusable; the message names it."""


class ExportError(HfTransferError, ValueError):
    """An export that cannot be made or that does not match PyTorch; the message says what and why."""


# --- files read from users ------------------------------------------------------------------------------------------


class RecipeError(HfTransferError, ValueError):
    """A recipe (YAML file or command-line override) is invalid; the message names the key and what is expected."""


class YAMLLimitError(HfTransferError, ValueError):
    """YAML refused before it is built: too large, too many aliases, or aliases that expand too far."""


__all__ = [
    "RecipeError",
    "BackboneWeightsError",
    "BadImageError",
    "DataError",
    "ExportError",
    "HfTransferError",
    "HubPushError",
    "HubUnavailableError",
    "HubWeightsUnavailableError",
    "InferenceError",
    "NonFiniteError",
    "RunLockedError",
    "TrainingError",
    "WeightsNotFoundError",
    "YAMLLimitError",
]
