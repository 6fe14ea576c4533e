"""One entry point from any image-classification source to normalised `datasets` splits.

Every source (Hub name, image folder, CSV/JSONL/parquet file, in-memory `datasets` object, embedded Fashion-MNIST)
is first read into plain `datasets.Dataset` splits by a small reader, then goes through the same normalisation:
column detection, label mapping, image checks, class checks and the validation split. So each rule (and each error
message) exists once.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import datasets
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from datasets import ClassLabel, Dataset, DatasetDict, Features, Image, Value
from datasets.fingerprint import Hasher
from datasets.table import InMemoryTable

from .._offline import hub_offline, hub_timeout, probe_hub
from ..errors import HubUnavailableError
from . import fashion_mnist as fm
from .images import (
    CHECK_LEVELS,
    MAX_LISTED,
    ON_BAD_IMAGE,
    BadImage,
    BadImageError,
    DataError,
    find_bad_images,
    log_skipped,
)

if TYPE_CHECKING:
    from .transforms import ImageTransform

logger = logging.getLogger("hftransfer.data")

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
TABLE_SUFFIXES = {
    ".csv": "csv",
    ".tsv": "tsv",
    ".jsonl": "json",
    ".ndjson": "json",
    ".json": "json",
    ".parquet": "parquet",
    ".pq": "parquet",
}
EMBEDDED_SOURCES = {
    "fashion-mnist-subset": "the embedded balanced Fashion-MNIST subset (5,000 train / 1,000 test, 28x28 grayscale)",
    "fashion-mnist": "the full Fashion-MNIST (60,000 train / 10,000 test) from the Debian package dataset-fashion-mnist",
}
# Files that operating systems and archivers leave in folders; never images, never worth an error.
_JUNK_NAMES = {"thumbs.db", "desktop.ini", "__macosx"}


@dataclass
class ImageClassificationData:
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

    @property
    def label2id(self) -> dict[str, int]:
        return {name: index for index, name in self.id2label.items()}

    @property
    def num_labels(self) -> int:
        return len(self.id2label)

    @property
    def class_names(self) -> list[str]:
        return [self.id2label[index] for index in range(len(self.id2label))]

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


# ---------------------------------------------------------------------------------------------------------------
# Readers: source -> _RawSource


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


def _describe_dataset(obj: Dataset | DatasetDict) -> str:
    first = obj if isinstance(obj, Dataset) else next(iter(obj.values()), None)
    name = getattr(getattr(first, "info", None), "dataset_name", None) if first is not None else None
    kind = type(obj).__name__
    return f"datasets.{kind} {name!r}" if name else f"in-memory datasets.{kind}"


def _from_datasets(obj: Dataset | DatasetDict, description: str, remote: bool = False) -> _RawSource:
    if isinstance(obj, Dataset):
        return _RawSource({"train": obj}, description, remote=remote)
    splits: dict[str, Dataset] = {}
    ignored = []
    for name, dataset in obj.items():
        canonical = _SPLIT_ALIASES.get(str(name).lower())
        if canonical is None:
            ignored.append(name)
            continue
        if canonical in splits:
            raise DataError(f"{description} has two splits that both mean {canonical!r}; keep one of them.")
        splits[canonical] = dataset
    if "train" not in splits:
        raise DataError(
            f"{description} has no training split: its splits are {list(obj)}; expected 'train' (and optionally "
            "'validation'/'val'/'valid'/'dev' and 'test')."
        )
    if ignored:
        logger.warning("%s: ignoring split(s) %s (only train, validation and test are used).", description, ignored)
    return _RawSource(splits, description, remote=remote)


def _from_hub(name: str, hub_kwargs: Mapping[str, Any]) -> _RawSource:
    from huggingface_hub import constants as hf_constants

    endpoint = hf_constants.ENDPOINT
    offline = hub_offline()
    alternatives = (
        "Use a local image folder, a .csv/.jsonl/.parquet file, a datasets.Dataset, or the embedded "
        "'fashion-mnist-subset'; with HF_HUB_OFFLINE=1 a copy already in the local datasets cache is used."
    )
    if not offline:
        _require_reachable(endpoint, f"Cannot load the Hub dataset {name!r}", alternatives)
    try:
        loaded = datasets.load_dataset(name, **hub_kwargs)
    except datasets.exceptions.DatasetNotFoundError as err:
        raise DataError(f"Hub dataset {name!r} was not found at {endpoint} (or is private or gated): {err}") from err
    except (ConnectionError, TimeoutError, OSError) as err:
        state = "offline mode (HF_HUB_OFFLINE=1) and not in the local cache" if offline else f"{endpoint} failed"
        raise HubUnavailableError(f"Cannot load the Hub dataset {name!r}: {state} ({err}). {alternatives}") from err
    except Exception as err:
        # httpx/requests errors do not all derive from OSError; anything that is a connectivity problem says so.
        if "connect" in type(err).__name__.lower() or "timeout" in type(err).__name__.lower():
            raise HubUnavailableError(f"Cannot load the Hub dataset {name!r}: {err}. {alternatives}") from err
        raise
    if not isinstance(loaded, (Dataset, DatasetDict)):
        raise DataError(f"Hub dataset {name!r} loaded as {type(loaded).__name__}; expected a Dataset or DatasetDict.")
    return _from_datasets(loaded, f"{name} (Hugging Face Hub)", remote=True)


def _require_reachable(endpoint: str, what: str, alternatives: str) -> None:
    # The shared offline policy (hftransfer._offline): one quick HEAD request, where the client would retry longer.
    probe_hub(what, alternatives, url=endpoint, timeout=hub_timeout(DataError), error=HubUnavailableError)


def _is_junk(name: str) -> bool:
    return name.startswith(".") or name.lower() in _JUNK_NAMES


def _file_manifest(paths: Sequence[str]) -> list[tuple[str, int, int]]:
    # Sizes and modification times: cheap, and they change whenever a file is replaced or edited.
    manifest = []
    for path in paths:
        try:
            stat = os.stat(path)
            manifest.append((path, stat.st_size, stat.st_mtime_ns))
        except OSError:
            manifest.append((path, -1, -1))
    return manifest


def _path_image_array(paths: Sequence[str]) -> pa.StructArray:
    return pa.StructArray.from_arrays(
        [pa.nulls(len(paths), pa.binary()), pa.array(list(paths), pa.string())], names=["bytes", "path"]
    )


def _make_dataset(columns: dict[str, pa.Array], features: Features, fingerprint: str, split: str) -> Dataset:
    table = pa.table(columns)
    return Dataset(
        InMemoryTable(table),
        info=datasets.DatasetInfo(features=features),
        split=datasets.NamedSplit(split),
        fingerprint=fingerprint,
    )


def _from_folder(root: Path, on_bad_image: str = "error") -> _RawSource:
    root = root.resolve()
    subdirs = sorted(p for p in root.iterdir() if p.is_dir() and not _is_junk(p.name))
    split_dirs = {p: _SPLIT_ALIASES.get(p.name.lower()) for p in subdirs}
    if any(split_dirs.values()):
        others = [p.name for p, split in split_dirs.items() if split is None]
        if others:
            raise DataError(
                f"{root} mixes split folders ({[p.name for p, s in split_dirs.items() if s]}) with other folders "
                f"({others}). Use either one folder per class, or train/ (validation/, test/) folders that each hold "
                "one folder per class."
            )
        layout: dict[str, Path] = {}
        for folder, split in split_dirs.items():
            if split in layout:
                raise DataError(
                    f"{root} has two folders for the {split} split: {layout[split].name}/ and {folder.name}/."
                )
            layout[split] = folder
        if "train" not in layout:
            raise DataError(f"{root} has split folders {sorted(p.name for p in subdirs)} but no train/ folder.")
    else:
        layout = {"train": root}

    splits, manifest, declared, skipped = {}, [], set(), []
    features = Features({"image": Image(), "label": Value("string")})
    for split in (s for s in SPLITS if s in layout):
        paths, labels, bad_names = _scan_class_folders(layout[split], split)
        if bad_names and on_bad_image == "error":
            raise BadImageError(bad_names)
        skipped.extend(bad_names)
        declared.update(labels)
        split_manifest = _file_manifest(paths)
        manifest.append((split, split_manifest, labels))
        fingerprint = Hasher.hash(["hftransfer-imagefolder", str(root), split, split_manifest, labels])
        splits[split] = _make_dataset(
            {"image": _path_image_array(paths), "label": pa.array(labels, pa.string())}, features, fingerprint, split
        )
    return _RawSource(
        splits,
        f"image folder {root}",
        image_column="image",
        label_column="label",
        declared_classes=sorted(declared),
        skipped=skipped,
    )


def _shown_path(path: str) -> str:
    # A path as it can be printed and stored: bytes that are not UTF-8 appear as \xNN escapes.
    return path.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def _is_utf8(name: str) -> bool:
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:  # os.listdir gives undecodable bytes as lone surrogates
        return False
    return True


def _scan_class_folders(folder: Path, split: str | None = None) -> tuple[list[str], list[str], list[BadImage]]:
    """Image paths and labels of one split folder, and files whose names cannot be used (not UTF-8).

    Directory symlinks inside class folders are not followed (logged instead): a link such as `loop -> ..` would
    otherwise loop, or pull another class's images in under this label. A class folder that is itself a symlink is
    used, unless it points at a folder that holds it (a loop).
    """
    class_dirs = sorted(p for p in folder.iterdir() if p.is_dir() and not _is_junk(p.name))
    folder_real = os.path.realpath(folder)
    for class_dir in class_dirs:
        if not _is_utf8(class_dir.name):
            raise DataError(
                f"Class folder name {_shown_path(str(class_dir))} is not valid UTF-8: class names become labels, "
                "so rename the folder (e.g. with convmv)."
            )
        if class_dir.is_symlink():
            target = os.path.realpath(class_dir)
            if folder_real == target or folder_real.startswith(target.rstrip(os.sep) + os.sep):
                raise DataError(
                    f"Class folder {class_dir} is a symlink to {target}, which holds it: scanning it would loop. "
                    "Remove the link, or point it at a folder outside the dataset."
                )
    loose = sorted(p.name for p in folder.iterdir() if p.is_file() and not _is_junk(p.name))
    if not class_dirs:
        held = f" (it holds {len(loose)} file(s) directly, e.g. {loose[0]!r})" if loose else ""
        raise DataError(
            f"{folder} has no class sub-folders{held}: expected one sub-folder per class, e.g. {folder}/cat/1.jpg and "
            f"{folder}/dog/2.jpg (optionally under train/, validation/ and test/)."
        )
    if loose:
        logger.warning(
            "Ignoring %d file(s) directly in %s (images must be inside a class sub-folder): %s",
            len(loose),
            folder,
            ", ".join(loose[:MAX_LISTED]),
        )
    paths, labels, empty, links, bad_names = [], [], [], [], []
    for class_dir in class_dirs:
        found = []
        # Every file inside a class folder must be an image (a stray .txt is reported, not silently ignored);
        # hidden files and OS metadata (.DS_Store, Thumbs.db) are not data.
        for dirpath, dirnames, filenames in os.walk(class_dir):
            # os.walk lists directory symlinks in dirnames but does not enter them (followlinks=False).
            links.extend(
                os.path.join(dirpath, d) for d in sorted(dirnames) if os.path.islink(os.path.join(dirpath, d))
            )
            dirnames[:] = sorted(
                d for d in dirnames if not _is_junk(d) and not os.path.islink(os.path.join(dirpath, d))
            )
            for name in sorted(filenames):
                if _is_junk(name):
                    continue
                if not (_is_utf8(name) and _is_utf8(dirpath)):
                    shown = _shown_path(os.path.join(dirpath, name))
                    bad_names.append(BadImage(shown, "file name is not valid UTF-8: rename the file", split))
                    continue
                found.append(os.path.join(dirpath, name))
        if not found and not any(bad.name.startswith(_shown_path(str(class_dir)) + os.sep) for bad in bad_names):
            empty.append(str(class_dir))
        paths.extend(found)
        labels.extend([class_dir.name] * len(found))
    if links:
        logger.warning(
            "In %s: not following %d directory symlink(s) inside class folders (a link could loop or bring in "
            "another class's images; link the image files, or make the class folder itself a link): %s",
            folder,
            len(links),
            ", ".join(f"{_shown_path(link)} -> {_shown_path(os.path.realpath(link))}" for link in links[:MAX_LISTED])
            + (f" and {len(links) - MAX_LISTED} more" if len(links) > MAX_LISTED else ""),
        )
    if empty:
        raise DataError(
            f"Empty class folder(s): {empty}. Each class folder needs at least one image: add images or remove it."
        )
    return paths, labels, bad_names


def _read_table(path: Path) -> pa.Table:
    import pyarrow.csv as pacsv
    import pyarrow.json as pajson
    import pyarrow.parquet as pq

    kind = TABLE_SUFFIXES.get(path.suffix.lower())
    if kind is None:
        raise DataError(
            f"{path} is not a folder nor a supported table file: expected one of {sorted(TABLE_SUFFIXES)}."
        )
    try:
        if kind in ("csv", "tsv"):
            return pacsv.read_csv(
                path,
                parse_options=pacsv.ParseOptions(delimiter="\t" if kind == "tsv" else ","),
                convert_options=pacsv.ConvertOptions(strings_can_be_null=True),
            )
        if kind == "parquet":
            return pq.read_table(path)
        try:
            return pajson.read_json(path)
        except pa.ArrowInvalid:
            # A .json holding one array of records rather than JSON lines.
            records = json.loads(path.read_text())
            if not isinstance(records, list):
                raise
            return pa.Table.from_pylist(records)
    except (pa.ArrowInvalid, OSError, ValueError) as err:
        raise DataError(f"Cannot read {path} as {kind.upper()}: {err}") from err


def _read_label_column_as_text(path: Path, label_col: str) -> pa.ChunkedArray:
    import pyarrow.csv as pacsv

    tsv = TABLE_SUFFIXES.get(path.suffix.lower()) == "tsv"
    try:
        return pacsv.read_csv(
            path,
            parse_options=pacsv.ParseOptions(delimiter="\t" if tsv else ","),
            convert_options=pacsv.ConvertOptions(
                include_columns=[label_col],
                column_types={label_col: pa.string()},
                null_values=[""],
                strings_can_be_null=True,
            ),
        ).column(label_col)
    except (pa.ArrowInvalid, OSError, ValueError) as err:
        raise DataError(f"Cannot read the label column {label_col!r} of {path}: {err}") from err


def _from_table_file(
    path: Path, image_column: str | None, label_column: str | None, split_column: str | None, on_bad_image: str
) -> _RawSource:
    path = path.resolve()
    table = _read_table(path)
    where = f"{path.name}"
    if table.num_rows == 0:
        raise DataError(f"{path} has no rows.")
    columns = table.column_names
    image_col = _detect_column(columns, {}, image_column, IMAGE_COLUMN_CANDIDATES, "image", Image, where)
    label_col = _detect_column(columns, {}, label_column, LABEL_COLUMN_CANDIDATES, "label", ClassLabel, where)
    if split_column is not None and split_column not in columns:
        raise DataError(f"Split column {split_column!r} not found in {where}; the columns are: {columns}.")
    split_col = split_column or next((c for c in columns if c.lower() in SPLIT_COLUMN_CANDIDATES), None)
    if split_col in (image_col, label_col):
        split_col = None
    rows = np.arange(1, table.num_rows + 1)  # 1-based data rows, what a user sees in a spreadsheet under the header

    # Images: paths relative to the file, bytes, or {"bytes", "path"} structs (the datasets layout).
    values = table.column(image_col)
    image_type = values.type
    images = values.to_pylist()
    missing_image = [int(r) for r, v in zip(rows, images) if v is None]
    if missing_image:
        raise DataError(
            f"Image column {image_col!r} of {where} is empty in {len(missing_image)} row(s) "
            f"(rows {_fmt_rows(missing_image)}); every row needs an image."
        )
    if pa.types.is_string(image_type) or pa.types.is_large_string(image_type):
        structs = [{"bytes": None, "path": _resolve(path.parent, value)} for value in images]
    elif pa.types.is_binary(image_type) or pa.types.is_large_binary(image_type):
        structs = [{"bytes": value, "path": None} for value in images]
    elif pa.types.is_struct(image_type) and {"bytes", "path"} <= {f.name for f in image_type}:
        structs = [
            {
                "bytes": v["bytes"],
                "path": _resolve(path.parent, v["path"]) if v["path"] and not v["bytes"] else v["path"],
            }
            for v in images
        ]
    else:
        raise DataError(
            f"Image column {image_col!r} of {where} holds {image_type}; expected file paths (strings), image bytes, "
            "or {'bytes', 'path'} structs."
        )

    labels = table.column(label_col)
    # pyarrow reads "NA", "null", "NaN", "N/A", ... as missing in every column; labels are names, and a class can be
    # called "NA". Re-read a text label column as text where only an empty cell is missing.
    text_labels = (
        pa.types.is_string(labels.type) or pa.types.is_large_string(labels.type) or pa.types.is_null(labels.type)
    )
    if labels.null_count and text_labels and TABLE_SUFFIXES.get(path.suffix.lower()) in ("csv", "tsv"):
        labels = _read_label_column_as_text(path, label_col)
        table = table.set_column(table.column_names.index(label_col), label_col, labels)
    if labels.null_count:
        null_rows = [int(r) for r, v in zip(rows, labels.is_null().to_pylist()) if v]
        raise _missing_labels_error(label_col, where, null_rows, [structs[r - 1]["path"] for r in null_rows])

    keep = np.ones(table.num_rows, dtype=bool)
    skipped: list[BadImage] = []
    # Files that do not exist: named with their row, an error unless on_bad_image="skip".
    missing = [
        (i, BadImage(s["path"], f"file does not exist (row {i + 1} of {where})"))
        for i, s in enumerate(structs)
        if s["bytes"] is None and not os.path.isfile(s["path"])
    ]
    if missing:
        if on_bad_image == "error":
            raise BadImageError([bad for _, bad in missing])
        keep[[i for i, _ in missing]] = False
        skipped.extend(bad for _, bad in missing)

    _drop_duplicate_paths(structs, labels.to_pylist(), keep, where)

    if split_col is not None:
        split_values = table.column(split_col).to_pylist()
        bad = sorted({str(v) for v in split_values if v is None or _SPLIT_ALIASES.get(str(v).lower()) is None})
        if bad:
            raise DataError(
                f"Split column {split_col!r} of {where} has values {bad}; expected train, validation (val, valid, dev) "
                "or test in every row."
            )
        row_splits = np.array([_SPLIT_ALIASES[str(v).lower()] for v in split_values])
    else:
        row_splits = np.full(table.num_rows, "train")
    if "train" not in set(row_splits[keep]):
        raise DataError(f"{where} has no training rows (split column {split_col!r}).")

    other_columns = [c for c in columns if c not in (image_col, split_col)]
    image_paths = sorted({s["path"] for s in structs if s["bytes"] is None})
    base = ["hftransfer-table", str(path), _file_manifest([str(path)]), _file_manifest(image_paths)]
    splits = {}
    for split in SPLITS:
        selected = np.flatnonzero(keep & (row_splits == split))
        if not len(selected):
            continue
        sub = table.select(other_columns).take(pa.array(selected))
        cols = {image_col: pa.array([structs[i] for i in selected], type=Image().pa_type)}
        cols.update({name: sub.column(name) for name in other_columns})
        features = Features.from_arrow_schema(pa.table(cols).schema)
        features[image_col] = Image()
        splits[split] = _make_dataset(cols, features, Hasher.hash([*base, split, selected]), split)
    return _RawSource(
        splits,
        f"{path.suffix.lstrip('.').upper()} file {path}",
        image_column=image_col,
        label_column=label_col,
        skipped=skipped,
    )


def _resolve(base: Path, value: str) -> str:
    candidate = Path(value).expanduser()
    return str(candidate if candidate.is_absolute() else (base / candidate).resolve())


def _drop_duplicate_paths(structs: list[dict], labels: list, keep: np.ndarray, where: str) -> None:
    # The same file twice would leak between train and validation; with two labels it is ambiguous.
    rows_by_path: dict[str, list[int]] = {}
    for index, image in enumerate(structs):
        if image["bytes"] is None and keep[index]:
            rows_by_path.setdefault(image["path"], []).append(index)
    duplicates = {p: idx for p, idx in rows_by_path.items() if len(idx) > 1}
    if not duplicates:
        return
    conflicting = {p: idx for p, idx in duplicates.items() if len({str(labels[i]) for i in idx}) > 1}
    if conflicting:
        listed = "; ".join(
            f"{p} (rows {_fmt_rows([i + 1 for i in idx])}: labels {sorted({str(labels[i]) for i in idx})})"
            for p, idx in list(conflicting.items())[:MAX_LISTED]
        )
        more = f" and {len(conflicting) - MAX_LISTED} more" if len(conflicting) > MAX_LISTED else ""
        raise DataError(
            f"{where} lists {len(conflicting)} image(s) more than once with different labels: {listed}{more}."
        )
    dropped = 0
    for idx in duplicates.values():
        keep[idx[1:]] = False
        dropped += len(idx) - 1
    listed = ", ".join(
        f"{p} (rows {_fmt_rows([i + 1 for i in idx])})" for p, idx in list(duplicates.items())[:MAX_LISTED]
    )
    logger.warning(
        "%s lists %d image(s) more than once with the same label; kept the first row of each, dropped %d row(s): %s",
        where,
        len(duplicates),
        dropped,
        listed,
    )


# Both Fashion-MNIST sources: the image, its label and a derived numeric column for fusion heads.
_FASHION_MNIST_FEATURES = Features(
    {
        "image": Image(),
        "label": ClassLabel(names=list(fm.FASHION_MNIST_CLASSES)),
        "mean_intensity": Value("float32"),
    }
)


def _from_fashion_mnist_subset() -> _RawSource:
    table, sha256 = fm.read_subset_table()
    splits = {}
    for split in ("train", "test"):
        part = table.filter(pc.equal(table.column("split"), split))
        fingerprint = Hasher.hash(["hftransfer-fashion-mnist-subset-v2", sha256, split])
        columns = {
            "image": part.column("image"),
            "label": part.column("label"),
            "mean_intensity": fm.mean_intensity_column(part.column("image").combine_chunks()),
        }
        splits[split] = _make_dataset(columns, _FASHION_MNIST_FEATURES, fingerprint, split)
    return _RawSource(
        splits,
        "fashion-mnist-subset (embedded balanced subset of Fashion-MNIST by Zalando SE, MIT licence)",
        class_names=list(fm.FASHION_MNIST_CLASSES),
        trusted_images=True,
    )


def _from_fashion_mnist_full() -> _RawSource:
    signature = fm.full_set_signature()  # raises the apt-get hint when the Debian package is missing
    splits = {}
    for split in ("train", "test"):
        table = fm.build_full_table(split)
        fingerprint = Hasher.hash(["hftransfer-fashion-mnist-v2", signature, split])
        columns = {name: table.column(name) for name in ("image", "label", "mean_intensity")}
        splits[split] = _make_dataset(columns, _FASHION_MNIST_FEATURES, fingerprint, split)
    return _RawSource(
        splits,
        f"fashion-mnist (Fashion-MNIST by Zalando SE, MIT licence, read from {fm.fashion_mnist_dir()})",
        class_names=list(fm.FASHION_MNIST_CLASSES),
        trusted_images=True,
    )


# ---------------------------------------------------------------------------------------------------------------
# Normalisation: _RawSource -> ImageClassificationData


def _fmt_rows(rows: Sequence[int], limit: int = MAX_LISTED) -> str:
    text = ", ".join(str(r) for r in rows[:limit])
    return text + (f" and {len(rows) - limit} more" if len(rows) > limit else "")


def _missing_labels_error(label_col: str, where: str, rows: list[int], names: list) -> DataError:
    examples = ", ".join(f"row {r}" + (f" ({n})" if n else "") for r, n in list(zip(rows, names))[:MAX_LISTED])
    more = f" and {len(rows) - MAX_LISTED} more" if len(rows) > MAX_LISTED else ""
    return DataError(
        f"Label column {label_col!r} of {where} has {len(rows)} missing value(s): {examples}{more}. Fill them in or "
        "remove those rows."
    )


def _detect_column(
    columns: Sequence[str],
    features: Mapping[str, Any],
    requested: str | None,
    candidates: Sequence[str],
    kind: str,
    feature_type: type,
    where: str,
) -> str:
    if requested is not None:
        if requested not in columns:
            raise DataError(
                f"{kind.capitalize()} column {requested!r} not found in {where}; the columns are: {list(columns)}."
            )
        return requested
    by_lower = {c.lower(): c for c in columns}
    for candidate in candidates:
        if candidate in by_lower:
            return by_lower[candidate]
    typed = [c for c in columns if isinstance(features.get(c), feature_type)]
    if len(typed) == 1:
        return typed[0]
    raise DataError(
        f"No {kind} column found in {where}: looked for {list(candidates)}; the columns are: {list(columns)}. "
        f"Pass {kind}_column=... to choose one."
    )


def _column(dataset: Dataset, name: str) -> pa.ChunkedArray:
    # Respects an indices mapping (select/shuffle), unlike dataset.data, and reads only this column.
    return dataset.select_columns([name]).with_format("arrow")[:].column(name)


def _image_names(dataset: Dataset, rows: Sequence[int], split: str) -> list[str]:
    if not len(rows):
        return []
    images = dataset.select(list(rows)).select_columns(["image"]).cast_column("image", Image(decode=False))
    return [(value or {}).get("path") or f"{split} row {row}" for row, value in zip(rows, images["image"])]


def _normalise_image_column(dataset: Dataset, column: str, where: str) -> Dataset:
    feature = dataset.features[column]
    if isinstance(feature, Image):
        return dataset
    is_struct = isinstance(feature, dict) and {"bytes", "path"} <= set(feature)
    if is_struct or (
        isinstance(feature, Value) and feature.dtype in ("string", "large_string", "binary", "large_binary")
    ):
        return dataset.cast_column(column, Image())
    raise DataError(
        f"Image column {column!r} of {where} holds {feature}; expected images (datasets.Image), file paths or bytes."
    )


def _check_extra_column(dataset: Dataset, column: str, where: str) -> None:
    if column not in dataset.column_names:
        raise DataError(
            f"Extra feature column {column!r} not found in {where}; the columns are: {dataset.column_names}."
        )
    feature = dataset.features[column]
    inner = feature
    while isinstance(inner, (datasets.Sequence, datasets.List, datasets.LargeList)):
        inner = inner.feature
    numeric = isinstance(inner, Value) and (
        pa.types.is_integer(inner.pa_type) or pa.types.is_floating(inner.pa_type) or pa.types.is_boolean(inner.pa_type)
    )
    if not numeric:
        raise DataError(
            f"Extra feature column {column!r} of {where} holds {feature}; expected numbers (int, float or bool, or "
            "fixed-length lists of them)."
        )
    values = _column(dataset, column)
    if values.null_count:
        rows = [i for i, v in enumerate(values.is_null().to_pylist()) if v]
        raise DataError(
            f"Extra feature column {column!r} of {where} has {len(rows)} missing value(s) (rows {_fmt_rows(rows)}); "
            "fill them in (e.g. with a mean and an indicator column) or drop those rows."
        )


def _sort_names(names: set[str]) -> list[str]:
    # Sorted names; numerically when every name is an integer, so that "10" comes after "9".
    if names and all(name.lstrip("-").isdigit() for name in names):
        return sorted(names, key=int)
    return sorted(names)


def _label_ids(
    raw: _RawSource, splits: dict[str, Dataset], class_names: list[str] | None
) -> tuple[dict[str, Dataset], list[str]]:
    """Map every split's `label` column to ClassLabel ids, checking missing and unknown labels."""
    train_feature = splits["train"].features["label"]
    fixed = class_names or raw.class_names
    out: dict[str, Dataset] = {}
    if isinstance(train_feature, ClassLabel):
        names = list(train_feature.names)
        if class_names is not None and class_names != names:
            raise DataError(
                f"{raw.description} defines the classes {names} (a ClassLabel); class_names={class_names} differs."
            )
        for split, dataset in splits.items():
            feature = dataset.features["label"]
            if not isinstance(feature, ClassLabel) or list(feature.names) != names:
                raise DataError(
                    f"Split {split!r} of {raw.description} has label feature {feature}, train has ClassLabel({names})."
                )
            ids = np.asarray(_column(dataset, "label").to_numpy(zero_copy_only=False))
            _raise_missing(dataset, split, ids < 0, raw.description)
            out[split] = dataset
        return out, names

    kinds = {split: _label_kind(ds.features["label"], split, raw.description) for split, ds in splits.items()}
    if len(set(kinds.values())) > 1:
        raise DataError(f"Label columns of {raw.description} mix names and integer ids across splits: {kinds}.")
    kind = kinds["train"]
    columns = {split: _column(ds, "label") for split, ds in splits.items()}
    for split, dataset in splits.items():
        _raise_missing(dataset, split, np.asarray(columns[split].is_null().to_pylist(), dtype=bool), raw.description)

    if kind == "name":
        names = fixed or _sort_names({str(v) for v in pc.unique(columns["train"]).to_pylist()})
        for split, values in columns.items():
            unknown = sorted(set(pc.unique(values).to_pylist()) - set(names))
            if unknown:
                known = "the classes of the training split" if fixed is None else "class_names"
                raise DataError(
                    f"Split {split!r} of {raw.description} has label(s) {unknown[:MAX_LISTED]} that are not among "
                    f"{known} {names}."
                )
        id_columns = {split: pc.index_in(values, value_set=pa.array(names)) for split, values in columns.items()}
    else:
        id_columns = {}
        for split, values in columns.items():
            as_float = values.cast(pa.float64()).to_numpy(zero_copy_only=False)
            fractional = sorted({float(v) for v in as_float if v != int(v)})
            if fractional:
                raise DataError(
                    f"Label column of split {split!r} of {raw.description} holds non-integer numbers "
                    f"{fractional[:MAX_LISTED]}; labels must be class names or integer ids."
                )
            id_columns[split] = as_float.astype(np.int64)
        max_id = max(int(ids.max()) for ids in id_columns.values() if len(ids))
        names = fixed or [str(i) for i in range(max_id + 1)]
        for split, ids in id_columns.items():
            unknown = sorted({int(i) for i in ids if i < 0 or i >= len(names)})
            if unknown:
                raise DataError(
                    f"Split {split!r} of {raw.description} has label id(s) {unknown[:MAX_LISTED]} outside "
                    f"0..{len(names) - 1} (class_names has {len(names)} names)."
                    if fixed
                    else f"Split {split!r} of {raw.description} has negative label id(s) {unknown[:MAX_LISTED]}."
                )
    feature = ClassLabel(names=list(names))
    for split, dataset in splits.items():
        ids = np.asarray(id_columns[split].to_numpy(zero_copy_only=False) if kind == "name" else id_columns[split])
        dataset = dataset.remove_columns("label").add_column("label", ids.astype(np.int64), feature=feature)
        out[split] = dataset.select_columns(
            ["image", "label", *[c for c in dataset.column_names if c not in ("image", "label")]]
        )
    return out, list(names)


def _label_kind(feature: Any, split: str, where: str) -> str:
    if isinstance(feature, Value):
        if feature.dtype in ("string", "large_string"):
            return "name"
        if pa.types.is_integer(feature.pa_type) or pa.types.is_floating(feature.pa_type):
            return "id"
    raise DataError(
        f"Label column of split {split!r} of {where} holds {feature}; expected class names (strings), integer ids or "
        "a ClassLabel."
    )


def _raise_missing(dataset: Dataset, split: str, mask: np.ndarray, where: str) -> None:
    rows = np.flatnonzero(mask)
    if len(rows):
        names = _image_names(dataset, rows[:MAX_LISTED].tolist(), split)
        raise _missing_labels_error("label", f"split {split!r} of {where}", rows.tolist(), names)


def _bad_images_in(dataset: Dataset, split: str, level: str) -> list[tuple[int, BadImage]]:
    if level == "none":
        return []
    images = dataset.select_columns(["image"]).cast_column("image", Image(decode=False))
    bad: list[tuple[int, BadImage]] = []
    offset = 0
    for batch in images.iter(batch_size=512):
        items = []
        for row, value in enumerate(batch["image"], start=offset):
            value = value or {}
            name = value.get("path") or f"{split} row {row}"
            items.append((name, value["bytes"] if value.get("bytes") is not None else value.get("path") or b""))
        bad.extend((offset + position, image) for position, image in find_bad_images(items, level, split))
        offset += len(items)
    return bad


def stratified_split_indices(labels: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded, stratified train/validation indices.

    `round(fraction * N)` examples go to validation, shared among classes in proportion to their size (largest
    remainders first), and every class keeps at least one training example (a class with a single example stays
    entirely in train).

    Args:
        labels (`np.ndarray`): Integer labels.
        fraction (`float`): Fraction for validation.
        seed (`int`): Seed of the per-class shuffles.

    Returns:
        `(train_indices, validation_indices)`, each sorted.
    """
    labels = np.asarray(labels)
    classes, counts = np.unique(labels, return_counts=True)
    capacity = counts - 1
    total = min(max(1, int(round(fraction * len(labels)))), int(capacity.sum()))
    if total <= 0:
        raise DataError(
            f"Cannot hold out a validation split: the {len(labels)} training example(s) leave none to spare (every "
            "class keeps one for training). Add data or provide a validation split."
        )
    exact = counts * total / len(labels)
    take = np.minimum(np.floor(exact).astype(int), capacity)
    order = np.argsort(-(exact - take), kind="stable")
    while take.sum() < total:
        for index in order:
            if take.sum() >= total:
                break
            if take[index] < capacity[index]:
                take[index] += 1
    rng = np.random.default_rng(seed)
    validation = []
    for cls, n in zip(classes, take):
        members = np.flatnonzero(labels == cls)
        validation.extend(rng.permutation(members)[:n].tolist())
    validation = np.sort(np.array(validation, dtype=np.int64))
    train = np.setdiff1d(np.arange(len(labels)), validation)
    return train, validation


def _normalise(
    raw: _RawSource,
    *,
    image_column: str | None,
    label_column: str | None,
    class_names: list[str] | None,
    validation_split: float,
    seed: int,
    on_bad_image: str,
    check_images: str | None,
    extra_feature_columns: tuple[str, ...],
    batch_size: int | None,
) -> ImageClassificationData:
    where = raw.description
    train = raw.splits["train"]
    image_col = raw.image_column or _detect_column(
        train.column_names, train.features, image_column, IMAGE_COLUMN_CANDIDATES, "image", Image, where
    )
    label_col = raw.label_column or _detect_column(
        train.column_names, train.features, label_column, LABEL_COLUMN_CANDIDATES, "label", ClassLabel, where
    )
    if image_col == label_col:
        raise DataError(f"The image and label columns of {where} are the same column, {image_col!r}.")
    clashes = sorted(set(extra_feature_columns) & {"image", "label", image_col, label_col})
    if clashes:
        raise DataError(f"Extra feature column(s) {clashes} are the image or label column of {where}.")

    splits: dict[str, Dataset] = {}
    for split, dataset in raw.splits.items():
        split_where = f"split {split!r} of {where}"
        for kind, name in (("image", image_col), ("label", label_col)):
            if name not in dataset.column_names:
                raise DataError(
                    f"{kind.capitalize()} column {name!r} not found in {split_where}; the columns are: "
                    f"{dataset.column_names}."
                )
        for column in extra_feature_columns:
            _check_extra_column(dataset, column, split_where)
        dataset = dataset.select_columns([image_col, label_col, *extra_feature_columns])
        dataset = _normalise_image_column(dataset, image_col, split_where)
        renames = {old: new for old, new in ((image_col, "image"), (label_col, "label")) if old != new}
        if renames:
            dataset = dataset.rename_columns(renames)
        if len(dataset) == 0:
            if split == "train":
                raise DataError(f"The training split of {where} is empty.")
            logger.warning("%s is empty; left out.", split_where)
            continue
        splits[split] = dataset

    # A non-training split without any label (e.g. a Hub test split marked -1) cannot be evaluated: leave it out.
    for split in [s for s in splits if s != "train"]:
        if _unlabelled(splits[split]):
            logger.warning("Split %r of %s has no labels at all; left out.", split, where)
            del splits[split]

    splits, names = _label_ids(raw, splits, class_names)

    level = check_images or ("none" if raw.trusted_images or raw.remote else "fast")
    skipped = list(raw.skipped)
    for split, dataset in list(splits.items()):
        bad = _bad_images_in(dataset, split, level)
        if not bad:
            continue
        if on_bad_image == "error":
            raise BadImageError([image for _, image in bad])
        drop = {row for row, _ in bad}
        splits[split] = dataset.select([i for i in range(len(dataset)) if i not in drop])
        skipped.extend(image for _, image in bad)
        log_skipped([image for _, image in bad], f"split {split!r} of {where}")
    if raw.skipped:
        log_skipped(raw.skipped, where)

    train_ids = np.asarray(_column(splits["train"], "label").to_numpy(zero_copy_only=False))
    counts = np.bincount(train_ids, minlength=len(names))
    if raw.declared_classes:
        emptied = [name for name in raw.declared_classes if counts[names.index(name)] == 0]
        if emptied:
            raise DataError(
                f"Class(es) {emptied} of {where} have no usable training image left after skipping "
                f"{len(skipped)} bad image(s); fix the files or remove the class."
            )
    present = [names[i] for i in np.flatnonzero(counts)]
    if len(present) < 2:
        raise DataError(
            f"The training data of {where} has a single class ({present[0] if present else 'none'!r}); "
            "classification needs at least two classes."
        )
    absent = [names[i] for i in np.flatnonzero(counts == 0)]
    if absent:
        logger.warning("Class(es) %s of %s have no training example; the model cannot learn them.", absent, where)

    if "validation" not in splits:
        train_idx, val_idx = stratified_split_indices(train_ids, validation_split, seed)
        train_ds = splits["train"]
        splits["validation"] = train_ds.select(val_idx)
        splits["train"] = train_ds.select(train_idx)
        logger.info(
            "No validation split in %s: held out %d of %d training examples (%.0f%%, stratified, seed %d).",
            where,
            len(val_idx),
            len(train_idx) + len(val_idx),
            100 * validation_split,
            seed,
        )
        for cls in (names[i] for i in np.flatnonzero(counts == 1)):
            logger.warning("Class %r of %s has one example: it stays in train, validation has none.", cls, where)

    if batch_size is not None:
        for split, dataset in splits.items():
            if len(dataset) < batch_size:
                logger.warning(
                    "Split %r of %s has %d example(s), fewer than one batch of %d: it is a single smaller batch, "
                    "and its metrics are noisy.",
                    split,
                    where,
                    len(dataset),
                    batch_size,
                )

    ordered = DatasetDict({split: splits[split] for split in SPLITS if split in splits})
    return ImageClassificationData(
        splits=ordered,
        id2label=dict(enumerate(names)),
        source=where,
        extra_feature_columns=extra_feature_columns,
        skipped_images=tuple(skipped),
    )


def _unlabelled(dataset: Dataset) -> bool:
    values = _column(dataset, "label")
    if values.null_count == len(values):
        return True
    if isinstance(dataset.features["label"], ClassLabel):
        return bool(pc.all(pc.less(values, 0)).as_py())
    return False


# Expose for type checkers / docs without importing transforms at module import.
__all__ = [
    "EMBEDDED_SOURCES",
    "HubUnavailableError",
    "ImageClassificationData",
    "load_image_classification_dataset",
    "stratified_split_indices",
]
