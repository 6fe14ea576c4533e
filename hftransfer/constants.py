"""Names defined once: environment variables, cache folders and the files a training output folder holds.

Environment variables read by hftransfer:

- `HFTRANSFER_CACHE`: root of hftransfer's caches (default `~/.cache/hftransfer`), with
  `weights/` (backbone weights converted to timm format, see [`weights_cache_dir`]) and
  `features/` (cached frozen-backbone features, see [`features_cache_dir`]).
- `HFTRANSFER_HUB_TIMEOUT`: seconds to wait for the Hugging Face Hub before failing (default 5), see
  `hftransfer._offline`.
- `HFTRANSFER_KERAS_VGG16_ONNX`: a Keras VGG16 `.onnx`/`.h5` file for the `"keras-imagenet"` weights.
- `HFTRANSFER_FASHION_MNIST_DIR`: the folder of the full Fashion-MNIST IDX files.
- `HFTRANSFER_DEBUG`: full tracebacks from the command line.
- `HF_HUB_OFFLINE` / `TRANSFORMERS_OFFLINE` (Hugging Face's own): no network; only local caches are used.

This module imports nothing but the standard library.
"""

from __future__ import annotations

import os
from pathlib import Path

# --- environment variables -------------------------------------------------------------------------------------------

CACHE_ENV = "HFTRANSFER_CACHE"
HUB_TIMEOUT_ENV = "HFTRANSFER_HUB_TIMEOUT"
KERAS_ONNX_ENV = "HFTRANSFER_KERAS_VGG16_ONNX"
FASHION_MNIST_DIR_ENV = "HFTRANSFER_FASHION_MNIST_DIR"
DEBUG_ENV = "HFTRANSFER_DEBUG"
# Hugging Face's offline switches, honoured by every Hub access of hftransfer (see `hftransfer._offline`).
OFFLINE_ENVS = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
# Values of boolean environment variables that mean "on".
TRUTHY = frozenset({"1", "on", "yes", "true"})

# --- defaults --------------------------------------------------------------------------------------------------------

DEFAULT_CACHE_ROOT = Path("~") / ".cache" / "hftransfer"
WEIGHTS_CACHE_SUBDIR = "weights"
FEATURES_CACHE_SUBDIR = "features"
# Seconds a Hub request may wait before hftransfer gives up and names the offline alternatives.
DEFAULT_HUB_TIMEOUT_S = 5.0


def cache_root() -> Path:
    """The hftransfer cache root: `$HFTRANSFER_CACHE`, or `~/.cache/hftransfer` (user folder expanded)."""
    return Path(os.environ.get(CACHE_ENV) or DEFAULT_CACHE_ROOT).expanduser()


def weights_cache_dir(root: str | os.PathLike | None = None) -> Path:
    """Folder of the converted backbone weights: `<root>/weights`, the root defaulting to [`cache_root`]."""
    return (Path(root).expanduser() if root is not None else cache_root()) / WEIGHTS_CACHE_SUBDIR


def features_cache_dir(root: str | os.PathLike | None = None) -> Path:
    """Folder of the cached backbone features: `<root>/features`, the root defaulting to [`cache_root`]."""
    return (Path(root).expanduser() if root is not None else cache_root()) / FEATURES_CACHE_SUBDIR


# --- files of a model / training output folder ----------------------------------------------------------------------

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
WEIGHTS_INDEX_FILE = "model.safetensors.index.json"
LEGACY_WEIGHTS_FILE = "pytorch_model.bin"
PROCESSOR_FILE = "preprocessor_config.json"
CARD_FILE = "README.md"
CARD_TEMPLATE_FILE = "hftransfer_model_card.md"
METRICS_FILE = "metrics.json"
HISTORY_FILE = "history.json"
RECIPE_FILE = "recipe.yaml"
TRAINING_CURVES_FILE = "training_curves.png"
CONFUSION_MATRIX_FILE = "confusion_matrix.png"
ONNX_FILE = "model.onnx"
# Inside a run's output folder: per-stage bookkeeping and the lock of a live run.
STAGE_COMPLETE_FILE = "stage_complete.json"
STAGE_MARKER_FILE = "hftransfer_stage.json"
BEST_MODEL_FILE = "best.safetensors"
RUN_LOCK_FILE = ".hftransfer.lock"


__all__ = [
    "BEST_MODEL_FILE",
    "CACHE_ENV",
    "CARD_FILE",
    "CARD_TEMPLATE_FILE",
    "CONFIG_FILE",
    "CONFUSION_MATRIX_FILE",
    "DEBUG_ENV",
    "DEFAULT_CACHE_ROOT",
    "DEFAULT_HUB_TIMEOUT_S",
    "FASHION_MNIST_DIR_ENV",
    "FEATURES_CACHE_SUBDIR",
    "HISTORY_FILE",
    "HUB_TIMEOUT_ENV",
    "KERAS_ONNX_ENV",
    "LEGACY_WEIGHTS_FILE",
    "METRICS_FILE",
    "OFFLINE_ENVS",
    "ONNX_FILE",
    "PROCESSOR_FILE",
    "RECIPE_FILE",
    "RUN_LOCK_FILE",
    "STAGE_COMPLETE_FILE",
    "STAGE_MARKER_FILE",
    "TRAINING_CURVES_FILE",
    "TRUTHY",
    "WEIGHTS_CACHE_SUBDIR",
    "WEIGHTS_FILE",
    "WEIGHTS_INDEX_FILE",
    "cache_root",
    "features_cache_dir",
    "weights_cache_dir",
]
