"""What the data layer hands around: [`ImageClassificationData`] (the result of loading) and `_RawSource`.

A reader (`sources.py`, `hub_datasets.py`) turns a source into a `_RawSource`: plain `datasets.Dataset` splits with
the source's own column names, and what the reader knows about them (fixed class names, declared classes, whether
images need checking). The normalisation (`splits.py`) turns that into an `ImageClassificationData`. The split
names and the column names looked for are defined here too.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from datasets import Dataset, DatasetDict

from .images import BadImage

if TYPE_CHECKING:
    from .transforms import ImageTransform

SPLITS = ("train", "validation", "test")
_SPLIT_ALIASES = {
    "train": "train",
    "training": "train",
    "validation": "validation",
    "valid": "validation",
    "val": "validation",
    "dev": "validation",
    "test": "test",
    "testing": "test",
}
# Checked in this order, case-insensitively; then a single column of the right `datasets` feature type is used.
IMAGE_COLUMN_CANDIDATES = ("image", "img", "image_path", "image_file", "file_name", "filename", "filepath", "path")
LABEL_COLUMN_CANDIDATES = ("label", "labels", "class", "class_name", "category", "target")
SPLIT_COLUMN_CANDIDATES = ("split",)
EMBEDDED_SOURCES = {
    "fashion-mnist-subset": "the embedded balanced Fashion-MNIST subset (5,000 train / 1,000 test, 28x28 grayscale)",
    "fashion-mnist": "the full Fashion-MNIST (60,000 train / 10,000 test) from the Debian package dataset-fashion-mnist",
}


class _LabelsMixin:
    """`label2id`, `num_labels` and `class_names` from `id2label`, shared by the map-style and streamed data."""

    id2label: dict[int, str]

    @property
    def label2id(self) -> dict[str, int]:
        return {name: index for index, name in self.id2label.items()}

    @property
    def num_labels(self) -> int:
        return len(self.id2label)

    @property
    def class_names(self) -> list[str]:
        return [self.id2label[index] for index in range(len(self.id2label))]


@dataclass
class ImageClassificationData(_LabelsMixin):
    """Normalised image-classification data, the output of [`load_image_classification_dataset`].

    Args:
        splits (`datasets.DatasetDict`):
            `train`, `validation` and, when the source has one, `test`. Columns: `image` (`datasets.Image`, decoded
            lazily), `label` (`datasets.ClassLabel`) and the requested extra feature columns.
        id2label (`dict[int, str]`):
            Class id -> name, ids `0..num_labels-1`.
        source (`str`):
            Human-readable description of where the data came from (for model cards and logs).
        extra_feature_columns (`tuple[str, ...]`):
            Numeric columns kept for fusion models.
        skipped_images (`tuple[BadImage, ...]`):
            Images left out because `on_bad_image="skip"` (also logged).
    """

    splits: DatasetDict
    id2label: dict[int, str]
    source: str
    extra_feature_columns: tuple[str, ...] = ()
    skipped_images: tuple[BadImage, ...] = ()

    def fingerprint(self, split: str) -> str:
        """A stable identifier of a split's content (the `datasets` fingerprint), usable as a cache key.

        The same files, options and seed give the same fingerprint in another process; a changed file (size or
        modification time) or option gives another. For in-memory `datasets` objects passed in by the caller it is
        whatever fingerprint `datasets` gave them.
        """
        if split not in self.splits:
            raise KeyError(f"No split {split!r}; the splits are {list(self.splits)}.")
        return self.splits[split]._fingerprint

    def with_transforms(
        self, train_transform: ImageTransform, eval_transform: ImageTransform | None = None
    ) -> DatasetDict:
        """The splits with lazy transforms attached: `train_transform` on `train`, `eval_transform` (defaults to
        `train_transform`) on the others. See [`ImageTransform.apply`]."""
        eval_transform = eval_transform or train_transform
        return DatasetDict(
            {
                name: (train_transform if name == "train" else eval_transform).apply(dataset)
                for name, dataset in self.splits.items()
            }
        )

    def __repr__(self) -> str:
        sizes = ", ".join(f"{name}={len(dataset)}" for name, dataset in self.splits.items())
        return f"ImageClassificationData(source={self.source!r}, num_labels={self.num_labels}, {sizes})"


@dataclass
class _RawSource:
    # What a reader hands to the normalisation: splits with the source's own column names, plus what it knows.
    splits: dict[str, Dataset]
    description: str
    image_column: str | None = None
    label_column: str | None = None
    class_names: list[str] | None = None  # fixed names and order, e.g. Fashion-MNIST's
    declared_classes: list[str] | None = None  # classes that must keep at least one image (class folders)
    trusted_images: bool = False  # shipped with the package and checksummed: no need to check each image
    remote: bool = False
    skipped: list[BadImage] = field(default_factory=list)
