"""One entry point from any image-classification source to normalised `datasets` splits.

Every source (Hub name, image folder, CSV/JSONL/parquet file, in-memory `datasets` object, embedded Fashion-MNIST)
is first read into plain `datasets.Dataset` splits by a small reader, then goes through the same normalisation:
column detection, label mapping, image checks, class checks and the validation split. So each rule (and each error
message) exists once.

The entry point and the choice of reader live here; the rest, by concern:

```
dataset.py       ImageClassificationData, _RawSource, split and column names
sources.py       local readers: datasets objects, image folders, table files, Fashion-MNIST
hub_datasets.py  Hub datasets (datasets.load_dataset behind the offline policy)
labels.py        column detection, extra feature columns, labels -> ClassLabel ids
splits.py        the normalisation itself, bad images, stratified_split_indices
```

A streaming counterpart of [`load_image_classification_dataset`] (e.g. `load_streaming_split`) belongs here, next
to it, with its Hub reader in `hub_datasets.py`. Every name importable from `hftransfer.data.loading` before the
split still is.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import datasets
from datasets import Dataset, DatasetDict

from ..errors import HubUnavailableError
from .dataset import (
    EMBEDDED_SOURCES,
    IMAGE_COLUMN_CANDIDATES,
    LABEL_COLUMN_CANDIDATES,
    SPLIT_COLUMN_CANDIDATES,
    SPLITS,
    ImageClassificationData,
    _RawSource,
)
from .hub_datasets import _from_hub
from .images import CHECK_LEVELS, ON_BAD_IMAGE, DataError
from .sources import (
    TABLE_SUFFIXES,
    _describe_dataset,
    _from_datasets,
    _from_fashion_mnist_full,
    _from_fashion_mnist_subset,
    _from_folder,
    _from_table_file,
)
from .splits import _normalise, stratified_split_indices


def load_image_classification_dataset(
    source: str | os.PathLike | Dataset | DatasetDict,
    *,
    image_column: str | None = None,
    label_column: str | None = None,
    class_names: Sequence[str] | None = None,
    validation_split: float = 0.1,
    seed: int = 42,
    on_bad_image: str = "error",
    check_images: str | None = None,
    extra_feature_columns: Sequence[str] = (),
    split_column: str | None = None,
    batch_size: int | None = None,
    hub_kwargs: Mapping[str, Any] | None = None,
) -> ImageClassificationData:
    """Load image-classification data from any supported source into `train` / `validation` (/ `test`) splits.

    Sources, tried in this order when `source` is a string:

    - `"fashion-mnist-subset"`: the balanced Fashion-MNIST subset shipped in the package (5,000 train / 1,000 test).
    - `"fashion-mnist"`: the full Fashion-MNIST from the Debian package `dataset-fashion-mnist` (or
      `$HFTRANSFER_FASHION_MNIST_DIR`).
    - an existing folder: one sub-folder per class, optionally inside `train/`, `validation/` (or `val/`, `valid/`,
      `dev/`) and `test/`; class sub-folders may nest. A folder saved with `Dataset.save_to_disk` also works.
    - an existing `.csv`, `.tsv`, `.jsonl`, `.json` or `.parquet` file whose rows give an image (a path relative to
      the file, or bytes) and a label (a name or an integer id); an optional `split` column assigns rows to splits.
    - anything else: a Hub dataset name, loaded with `datasets.load_dataset` (fails fast when the Hub is
      unreachable; with `HF_HUB_OFFLINE=1` a cached copy is used).

    A `datasets.Dataset` (used as `train`) or `datasets.DatasetDict` may also be passed directly.

    Labels: class names become ids in sorted order (numerically when every name is an integer); integer labels are
    kept as ids; a `ClassLabel` column keeps its names and order; Fashion-MNIST keeps its standard ids 0..9.

    Args:
        source (`str`, `os.PathLike`, `datasets.Dataset` or `datasets.DatasetDict`):
            Where the data comes from (see above).
        image_column (`str`, *optional*):
            Column holding the images. Detected when not given: `image`, `img`, `image_path`, `file_name`, ... or the
            only `datasets.Image` column.
        label_column (`str`, *optional*):
            Column holding the labels. Detected when not given: `label`, `labels`, `class`, ... or the only
            `datasets.ClassLabel` column.
        class_names (`Sequence[str]`, *optional*):
            The classes, in id order. For name labels this fixes the order instead of sorting (and any other name
            is an error); for integer labels it names the ids.
        validation_split (`float`, *optional*, defaults to 0.1):
            Fraction of `train` held out as `validation` when the source has no validation split; stratified by
            label and seeded, each class keeping at least one training image.
        seed (`int`, *optional*, defaults to 42):
            Seed of the validation split.
        on_bad_image (`str`, *optional*, defaults to `"error"`):
            `"error"`: an unreadable, corrupt, truncated, empty or missing image file raises [`BadImageError`] naming
            it. `"skip"`: such images are left out, and their count and names are logged and kept in
            `skipped_images`.
        check_images (`str`, *optional*):
            How images are checked at load time: `"fast"` (open and verify headers; PNG CRCs; JPEGs without an end
            marker are decoded), `"full"` (decode everything) or `"none"`. Defaults to `"fast"` for local files and
            caller-provided datasets, `"none"` for Hub datasets and the embedded Fashion-MNIST. Images that pass and
            still fail to decode raise [`BadImageError`] naming the file when the transform decodes them.
        extra_feature_columns (`Sequence[str]`, *optional*):
            Numeric columns kept for fusion models (see [`ImageClassificationCollator`]); each must exist in every
            split and hold numbers without missing values.
        split_column (`str`, *optional*):
            For table files: column assigning rows to `train` / `validation` / `test`. Defaults to a column named
            `split` when there is one.
        batch_size (`int`, *optional*):
            When given, a split smaller than one batch is reported in the log (training still works: the last, here
            only, batch is simply smaller).
        hub_kwargs (`Mapping`, *optional*):
            Extra keyword arguments for `datasets.load_dataset` (e.g. `name`, `revision`) for Hub datasets.

    Returns:
        [`ImageClassificationData`]: the splits, `id2label`, `label2id`, a description of the source and
        `fingerprint(split)`.

    Raises:
        [`DataError`] (a `ValueError`) for bad columns, labels, files and layouts, [`BadImageError`] for bad images,
        [`HubUnavailableError`] (a `ConnectionError`) when a Hub dataset cannot be reached.
    """
    if not 0.0 < validation_split < 1.0:
        raise ValueError(f"validation_split={validation_split!r} is invalid: expected a fraction in (0, 1).")
    if on_bad_image not in ON_BAD_IMAGE:
        raise ValueError(f"on_bad_image={on_bad_image!r} is invalid: expected one of {ON_BAD_IMAGE}.")
    if check_images is not None and check_images not in CHECK_LEVELS:
        raise ValueError(f"check_images={check_images!r} is invalid: expected one of {CHECK_LEVELS}.")
    if isinstance(extra_feature_columns, str):
        extra_feature_columns = (extra_feature_columns,)
    extra_feature_columns = tuple(extra_feature_columns)
    if class_names is not None:
        class_names = [str(name) for name in class_names]
        duplicates = sorted({name for name in class_names if class_names.count(name) > 1})
        if duplicates:
            raise ValueError(f"class_names lists {duplicates} more than once.")

    raw = _read_source(source, image_column, label_column, split_column, on_bad_image, hub_kwargs or {})
    return _normalise(
        raw,
        image_column=image_column,
        label_column=label_column,
        class_names=class_names,
        validation_split=validation_split,
        seed=seed,
        on_bad_image=on_bad_image,
        check_images=check_images,
        extra_feature_columns=extra_feature_columns,
        batch_size=batch_size,
    )


def _read_source(source, image_column, label_column, split_column, on_bad_image, hub_kwargs) -> _RawSource:
    if isinstance(source, (Dataset, DatasetDict)):
        return _from_datasets(source, _describe_dataset(source))
    if isinstance(source, (datasets.IterableDataset, datasets.IterableDatasetDict)):
        raise DataError("Streaming (iterable) datasets are not supported: load without streaming=True.")
    if not isinstance(source, (str, os.PathLike)):
        raise TypeError(
            f"source must be a Hub dataset name, a path, 'fashion-mnist-subset', or a datasets.Dataset/DatasetDict; "
            f"got {type(source).__name__}."
        )
    if isinstance(source, str) and source in EMBEDDED_SOURCES:
        return _from_fashion_mnist_subset() if source == "fashion-mnist-subset" else _from_fashion_mnist_full()
    path = Path(source).expanduser()
    if path.is_dir():
        if (path / "dataset_dict.json").is_file() or (path / "state.json").is_file():
            return _from_datasets(datasets.load_from_disk(str(path)), f"datasets saved at {path}")
        return _from_folder(path, on_bad_image)
    if path.is_file():
        return _from_table_file(path, image_column, label_column, split_column, on_bad_image)
    text = os.fspath(source)
    if isinstance(source, os.PathLike) or text.startswith((".", "/", "~")) or path.suffix.lower() in TABLE_SUFFIXES:
        raise DataError(
            f"{text!r} does not exist. Expected an image folder, a .csv/.jsonl/.parquet file, a Hub dataset name, "
            f"or one of {sorted(EMBEDDED_SOURCES)}."
        )
    return _from_hub(text, hub_kwargs)


__all__ = [
    "EMBEDDED_SOURCES",
    "IMAGE_COLUMN_CANDIDATES",
    "LABEL_COLUMN_CANDIDATES",
    "SPLITS",
    "SPLIT_COLUMN_CANDIDATES",
    "TABLE_SUFFIXES",
    "HubUnavailableError",
    "ImageClassificationData",
    "load_image_classification_dataset",
    "stratified_split_indices",
]
