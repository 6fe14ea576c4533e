"""Small models, labels and data paths shared by the test files (PEFT's `testing_common` habit): defined once here,
imported where used (`from testing_common import ...`; tests/ is on sys.path through its conftest.py)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import hftransfer
from hftransfer.data.fashion_mnist import FASHION_MNIST_CLASSES

# The ten Fashion-MNIST class names, by class id.
FASHION_LABELS = list(FASHION_MNIST_CLASSES)
# The 2,000-image Fashion-MNIST subset shipped with hftransfer (columns image, label, split).
FASHION_PARQUET = Path(hftransfer.__file__).parent / "data" / "fashion_mnist_subset" / "fashion_mnist_subset.parquet"


def tiny_config(labels: Sequence[str], **overrides: Any) -> hftransfer.TransferConfig:
    """A 32 px VGG16 `TransferConfig` with an average-pooled Dense(8) head for `labels` (by position)."""
    values = {
        "image_size": 32,
        "pooling": "avg",
        "hidden_sizes": [8],
        "num_labels": len(labels),
        "id2label": dict(enumerate(labels)),
        "label2id": {name: i for i, name in enumerate(labels)},
        **overrides,
    }
    return hftransfer.TransferConfig(**values)


def save_tiny_model(directory: Path, labels: Sequence[str], **overrides: Any) -> Path:
    """Save a randomly initialised [`tiny_config`] model and its processor to `directory` (seed it first)."""
    config = tiny_config(labels, **overrides)
    hftransfer.TransferForImageClassification(config).save_pretrained(directory)
    hftransfer.TransferImageProcessor.from_transfer_config(config).save_pretrained(directory)
    return directory


def compute_split_features(model, processor, split, cache_dir):
    """`load_or_compute_features` of a small split with its deterministic transform, on CPU, no workers."""
    import torch

    from hftransfer.data import ImageClassificationCollator, build_transforms
    from hftransfer.training import load_or_compute_features

    return load_or_compute_features(
        model,
        processor,
        split.with_transform(build_transforms(processor)),
        split._fingerprint,
        ImageClassificationCollator(),
        batch_size=8,
        num_workers=0,
        device=torch.device("cpu"),
        cache_dir=cache_dir,
    )
