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
streaming.py     StreamingImageClassificationData and the streaming readers behind load_streaming_dataset
```

[`load_streaming_dataset`], the streaming counterpart of [`load_image_classification_dataset`], is here next to it
(its Hub reader is in `hub_datasets.py`). Every name importable from `hftransfer.data.loading` before the split
still is.
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
from .streaming import (
    PARQUET_SUFFIXES,
    StreamingImageClassificationData,
    _build,
    _embedded_plan,
    _folder_plan,
    _hub_plan,
    _parquet_files,
    _parquet_plan,
)


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


def load_streaming_dataset(
    source: str | os.PathLike,
    *,
    image_column: str | None = None,
    label_column: str | None = None,
    validation_split: float = 0.1,
    seed: int = 42,
    on_bad_image: str = "error",
    extra_feature_columns: Sequence[str] = (),
    max_eval_samples: int | None = None,
) -> StreamingImageClassificationData:
    """Load image-classification data with the `train` split streamed (`data.streaming: true`), validation and test
    in memory.

    The rows of `train` are those of [`load_image_classification_dataset`]'s `train` split for the same source and
    options: the same columns (`image` decoded to a PIL image, `label` an integer id, the extra feature columns), the
    same values, in the same order; `id2label` is the same. So [`build_transforms`] and
    [`ImageClassificationCollator`] work on its rows unchanged (e.g. `data.train.map(transform, batched=True)`).
    Building it reads no image: only parquet footers and their label (split, extra feature) columns, or the file
    names and sizes of an image folder.

    Sources:

    - `"fashion-mnist-subset"`: the embedded subset (its parquet file streamed; `mean_intensity` computed per row).
    - a `.parquet` file, or a folder of them (concatenated in name order, or assigned to splits by file name when
      every name starts with one: `train-00000-of-00004.parquet`, `validation.parquet`, `test-0.parquet`). Images
      are bytes, `{"bytes", "path"}` structs or paths relative to the file; a `split` column assigns rows to splits.
      Each row group is a shard of the stream.
    - an image folder in the map-style layout (one sub-folder per class, optionally under `train/`, `validation/`,
      `test/`); chunks of 1,024 files are the shards.
    - anything else: a Hub dataset, `datasets.load_dataset(name, streaming=True)`, behind the map-style offline
      policy; offline it fails at once with [`HubUnavailableError`]. Its label column must be a `ClassLabel`.

    Validation, when the source has no validation split: for local sources, exactly the map-style rule (seeded,
    stratified [`stratified_split_indices`], every class keeping one training row), computed from the label column
    alone, so validation is the map-style validation split and the stream skips those rows: no row is in both.
    For a Hub dataset without one, the first `max_eval_samples` rows of the stream (else `validation_split` of the
    size the Hub metadata gives) are held out and the stream starts after them; logged, and not stratified.

    Fingerprint: SHA-256 of what the stream reads and how: for local files each file's path, size and modification
    time (nanoseconds), plus for parquet each file's footer (rows, row groups, column chunk sizes); the columns,
    classes, rows held out and options. Cheap (no image is read); a changed, added or removed file changes it, but a
    file rewritten in place with the same size and modification time does not (as for the map-style fingerprints).
    The embedded subset uses its file's SHA-256. A Hub stream's fingerprint covers its name, `datasets`' own
    fingerprint and the options, not its content.

    Limits:

    - Bad images in `train` are found as the stream reads them (a fast header check per row, as the map-style
      load-time check): with `on_bad_image="skip"` they are left out and logged, so the number of training rows
      and the validation split can differ from the map-style loader's when images are bad; with `"error"` a
      [`BadImageError`] names the file (or `row N of file.parquet`) when the stream reaches it.
    - Building reads the image column of the parquet row groups that hold validation or test rows (only those
      rows are kept), so a large validation split costs memory: set `max_eval_samples`.
    - CSV/JSONL files, `save_to_disk` folders, in-memory datasets and the full `fashion-mnist` are not streamed
      (use [`load_image_classification_dataset`]). Integer or name labels of a Hub dataset are not supported.

    Args:
        source (`str` or `os.PathLike`):
            Where the data comes from (see above).
        image_column (`str`, *optional*):
            Column holding the images (parquet, Hub); detected when not given, as map-style.
        label_column (`str`, *optional*):
            Column holding the labels (parquet, Hub); detected when not given, as map-style.
        validation_split (`float`, *optional*, defaults to 0.1):
            Fraction of `train` held out as `validation` when the source has no validation split (see above).
        seed (`int`, *optional*, defaults to 42):
            Seed of the validation split and of the `max_eval_samples` cut.
        on_bad_image (`str`, *optional*, defaults to `"error"`):
            `"error"` or `"skip"` (see the limits above).
        extra_feature_columns (`Sequence[str]`, *optional*):
            Numeric columns kept for fusion models; each must exist and hold numbers without missing values.
        max_eval_samples (`int`, *optional*):
            Cut validation and test to this many rows as `hftransfer.building.load_recipe_data` does (validation
            shuffled with `seed` then cut, test cut in order); only the rows kept are read.

    Returns:
        [`StreamingImageClassificationData`]: `train` (a `datasets.IterableDataset`), `splits` (validation and
        test), `id2label`, `fingerprint`, `num_train_rows` and the attributes of [`ImageClassificationData`].

    Raises:
        [`DataError`] (a `ValueError`) for bad columns, labels, files and layouts, [`BadImageError`] for bad images,
        [`HubUnavailableError`] (a `ConnectionError`) when a Hub dataset cannot be reached (or offline mode is on).
    """
    if not 0.0 < validation_split < 1.0:
        raise ValueError(f"validation_split={validation_split!r} is invalid: expected a fraction in (0, 1).")
    if on_bad_image not in ON_BAD_IMAGE:
        raise ValueError(f"on_bad_image={on_bad_image!r} is invalid: expected one of {ON_BAD_IMAGE}.")
    if max_eval_samples is not None and (isinstance(max_eval_samples, bool) or int(max_eval_samples) < 1):
        raise ValueError(f"max_eval_samples={max_eval_samples!r} is invalid: expected a number of rows >= 1.")
    if isinstance(extra_feature_columns, str):
        extra_feature_columns = (extra_feature_columns,)
    options = {
        "image_column": image_column,
        "label_column": label_column,
        "validation_split": float(validation_split),
        "seed": int(seed),
        "on_bad_image": on_bad_image,
        "extra_feature_columns": tuple(extra_feature_columns),
        "max_eval_samples": None if max_eval_samples is None else int(max_eval_samples),
    }
    if isinstance(source, (Dataset, DatasetDict, datasets.IterableDataset, datasets.IterableDatasetDict)):
        raise DataError(
            "load_streaming_dataset streams files or a Hub dataset; an in-memory datasets object is already loaded: "
            "use load_image_classification_dataset."
        )
    if not isinstance(source, (str, os.PathLike)):
        raise TypeError(f"source must be a Hub dataset name, a path or 'fashion-mnist-subset'; got {type(source)}.")
    if source == "fashion-mnist-subset":
        return _build(_embedded_plan(options), options)
    if source == "fashion-mnist":
        raise DataError("The full 'fashion-mnist' is built in memory and is not streamed: set data.streaming: false.")
    path = Path(source).expanduser()
    if path.is_dir():
        if (path / "dataset_dict.json").is_file() or (path / "state.json").is_file():
            raise DataError(f"{path} was saved with save_to_disk and is not streamed: set data.streaming: false.")
        has_subfolders = any(p.is_dir() and not p.name.startswith(".") for p in path.iterdir())
        if not has_subfolders and any(p.suffix.lower() in PARQUET_SUFFIXES for p in path.iterdir()):
            return _build(
                _parquet_plan(_parquet_files(path.resolve()), f"parquet files in {path.resolve()}", options), options
            )
        return _build(_folder_plan(path, options), options)
    if path.is_file():
        if path.suffix.lower() not in PARQUET_SUFFIXES:
            raise DataError(
                f"{path} is not streamed: streaming reads .parquet files and image folders. Convert it to parquet "
                "or set data.streaming: false."
            )
        path = path.resolve()
        return _build(_parquet_plan([path], f"PARQUET file {path}", options), options)
    text = os.fspath(source)
    if isinstance(source, os.PathLike) or text.startswith((".", "/", "~")) or path.suffix.lower() in TABLE_SUFFIXES:
        raise DataError(
            f"{text!r} does not exist. Expected an image folder, a .parquet file or a folder of them, a Hub dataset "
            "name, or 'fashion-mnist-subset'."
        )
    return _build(_hub_plan(text, options), options)


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
    "StreamingImageClassificationData",
    "load_image_classification_dataset",
    "load_streaming_dataset",
    "stratified_split_indices",
]
