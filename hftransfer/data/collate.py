"""Batch collation for the Trainer / DataLoader, and the default number of DataLoader workers."""

from __future__ import annotations

import math
import numbers
import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from .images import DataError


def default_num_workers() -> int:
    """DataLoader workers used by default: one per available CPU core, at most 8.

    On the 2-core CPU machines this is 2; on GPU machines with many cores, 8 keep a VGG16 at 64 px fed (see
    `bench/bench_data_pipeline.py`).
    """
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        cores = os.cpu_count() or 1
    return max(1, min(8, cores))


class ImageClassificationCollator:
    """Stack transformed examples into a batch: `pixel_values` (float), `labels` (long) and, when
    `extra_feature_columns` is set, `extra_features` (float, `(N, D)`) for fusion models.

    Args:
        extra_feature_columns (`Sequence[str]`, *optional*):
            Numeric columns concatenated, in this order, into `extra_features`. A column may hold a number or a
            fixed-length list of numbers per example (D is then the sum of their lengths).
    """

    def __init__(self, extra_feature_columns: Sequence[str] = ()):
        if isinstance(extra_feature_columns, str):
            extra_feature_columns = (extra_feature_columns,)
        self.extra_feature_columns = tuple(extra_feature_columns)

    def __call__(self, examples: Sequence[dict[str, Any]]) -> dict[str, torch.Tensor]:
        if not examples:
            raise DataError("Cannot collate an empty batch.")
        first = examples[0]
        if "pixel_values" not in first:
            raise DataError(
                f"Examples have no 'pixel_values' (keys: {sorted(first)}): attach a transform first, e.g. "
                "build_transforms(processor).apply(dataset)."
            )
        label_key = "labels" if "labels" in first else "label"
        if label_key not in first:
            raise DataError(f"Examples have no 'label' or 'labels' (keys: {sorted(first)}).")
        batch = {
            "pixel_values": torch.stack([torch.as_tensor(e["pixel_values"]) for e in examples]).float(),
            "labels": torch.as_tensor([int(e[label_key]) for e in examples], dtype=torch.long),
        }
        if self.extra_feature_columns:
            batch["extra_features"] = torch.tensor(
                [self._extra_row(example) for example in examples], dtype=torch.float32
            )
        return batch

    def _extra_row(self, example: dict[str, Any]) -> list[float]:
        row: list[float] = []
        for column in self.extra_feature_columns:
            if column not in example:
                raise DataError(
                    f"Extra feature column {column!r} is not in the examples (keys: {sorted(example)}); keep it in the "
                    "dataset (load_image_classification_dataset(extra_feature_columns=...))."
                )
            value = example[column]
            values = (
                np.asarray(value).ravel().tolist()
                if isinstance(value, (list, tuple, np.ndarray, torch.Tensor))
                else [value]
            )
            for item in values:
                if (
                    item is None
                    or isinstance(item, (str, bytes))
                    or not isinstance(item, (numbers.Number, np.generic))
                ):
                    raise DataError(
                        f"Extra feature column {column!r} holds {item!r} ({type(item).__name__}); expected numbers."
                    )
                if isinstance(item, float) and math.isnan(item):
                    raise DataError(f"Extra feature column {column!r} holds NaN; fill in missing values first.")
                row.append(float(item))
        return row
