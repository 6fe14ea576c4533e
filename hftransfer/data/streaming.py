"""Streamed training data: the train split as a `datasets.IterableDataset`, validation and test in memory.

[`load_streaming_dataset`] (in `loading.py`) picks a reader here. Each reader looks only at what is cheap (parquet
footers and the label column, file names and sizes, Hub metadata), decides the labels exactly as the map-style
loader does (`labels._label_ids`), holds out the validation rows, materialises validation and test as small
`datasets.Dataset`s, and describes the train stream as shards (a parquet row group, or a chunk of image files) that
`_generate_rows` reads lazily, one shard per DataLoader worker at a time.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from datasets import ClassLabel, Dataset, Features, Image, Value

from . import fashion_mnist as fm
from .dataset import (
    _SPLIT_ALIASES,
    IMAGE_COLUMN_CANDIDATES,
    LABEL_COLUMN_CANDIDATES,
    SPLIT_COLUMN_CANDIDATES,
    SPLITS,
    _LabelsMixin,
    _RawSource,
)
from .images import BadImage, BadImageError, DataError, image_problem, log_skipped
from .labels import _check_extra_column, _column, _detect_column, _label_ids
from .sources import _file_manifest, _from_folder, _make_dataset, _path_image_array, _resolve
from .splits import _bad_images_in, _check_classes, stratified_split_indices

logger = logging.getLogger("hftransfer.data")

PARQUET_SUFFIXES = (".parquet", ".pq")
# Image files per shard of a streamed image folder: enough shards for DataLoader workers, few enough to stay cheap.
_FILES_PER_SHARD = 1024
# Parquet rows read per batch by the stream, and kept rows per shard at most.
_PARQUET_BATCH_ROWS = 256
_PARQUET_SHARD_ROWS = 1024
_FINGERPRINT_VERSION = "hftransfer-stream-v1"


@dataclass
class StreamingImageClassificationData(_LabelsMixin):
    """Image-classification data whose `train` split is streamed, the output of [`load_streaming_dataset`].

    The counterpart of [`ImageClassificationData`] for `data.streaming: true`, with the same attribute names
    (`splits`, `id2label`, `label2id`, `num_labels`, `class_names`, `source`, `extra_feature_columns`,
    `skipped_images`), so that training code can read either one.

    Args:
        train (`datasets.IterableDataset`):
            The training rows, read lazily: columns `image` (`datasets.Image`, decoded to a PIL image as each row is
            read), `label` (`datasets.ClassLabel`, an integer) and the extra feature columns, the same columns and
            values as the map-style loader's `train` split. Bad images are checked as each row is read (skipped and
            logged with `on_bad_image="skip"`, else [`BadImageError`] naming the row). Its `n_shards` parquet row
            groups or chunks of image files are shared among DataLoader workers.
        splits (`dict[str, datasets.Dataset]`):
            `validation` and, when the source has one, `test`: in memory, normalised exactly as the map-style
            loader's (images checked at load time), cut to `max_eval_samples`.
        id2label (`dict[int, str]`):
            Class id -> name, ids `0..num_labels-1`; the same names and order as the map-style loader's.
        source (`str`):
            Human-readable description of where the data came from.
        fingerprint (`str`):
            SHA-256 identifying the train stream's content (see [`load_streaming_dataset`]): usable as a cache key.
        num_train_rows (`int`, *optional*):
            Rows in the train stream (before bad images are skipped) when the source says so cheaply, else `None`.
        extra_feature_columns (`tuple[str, ...]`):
            Numeric columns kept for fusion models.
        skipped_images (`tuple[BadImage, ...]`):
            Images left out of `splits` (and files with unusable names left out of `train`) because
            `on_bad_image="skip"`; images the stream skips are logged as it reads them.
        image_column (`str`, defaults to `"image"`):
            Column of the images in `train` and `splits` (always `image` after normalisation, as map-style).
        label_column (`str`, defaults to `"label"`):
            Column of the class ids (always `label` after normalisation, as map-style).
    """

    train: datasets.IterableDataset
    splits: dict[str, Dataset]
    id2label: dict[int, str]
    source: str
    fingerprint: str
    num_train_rows: int | None = None
    extra_feature_columns: tuple[str, ...] = ()
    skipped_images: tuple[BadImage, ...] = ()
    image_column: str = "image"
    label_column: str = "label"

    def __repr__(self) -> str:
        sizes = ", ".join(f"{name}={len(dataset)}" for name, dataset in self.splits.items())
        rows = "?" if self.num_train_rows is None else self.num_train_rows
        return (
            f"StreamingImageClassificationData(source={self.source!r}, num_labels={self.num_labels}, "
            f"train=stream of {rows}, {sizes})"
        )


# --- the stream ---------------------------------------------------------------------------------------------------
def _generate_rows(shards: list[dict], context: dict) -> Any:
    """The train rows of some shards: `{"image": {"bytes", "path"}, "label": id, extras...}`; `datasets` decodes the
    image. Module-level (and fed plain values) so that DataLoader workers can pickle it."""
    for shard in shards:
        rows = _parquet_shard_rows(shard, context) if shard["kind"] == "parquet" else _file_shard_rows(shard)
        for name, row, image, label, extras in rows:
            problem = _row_problem(image, context["check"])
            if problem is not None:
                bad = BadImage(name, f"{problem} ({row})" if row else problem, "train")
                if context["on_bad_image"] == "error":
                    raise BadImageError([bad])
                log_skipped([bad], f"the train stream of {context['description']}")
                continue
            row = {"image": image, "label": label, **extras}
            for column in context["derived"]:
                row[column] = _derived_value(column, image)
            yield row


def _row_problem(image: dict | None, level: str) -> str | None:
    if image is None or (image.get("bytes") is None and not image.get("path")):
        return "no image in this row"
    if image.get("bytes") is None and not os.path.isfile(image["path"]):
        return "file does not exist"
    if level == "none":
        return None
    return image_problem(image["bytes"] if image.get("bytes") is not None else image["path"], level)


def _derived_value(column: str, image: dict) -> Any:
    if column == "mean_intensity":  # the embedded Fashion-MNIST's derived column, as fm.mean_intensity_column
        value = fm.mean_intensity_column(pa.array([image], type=Image().pa_type))[0].as_py()
        return float(np.float32(value))
    raise DataError(f"No derived column {column!r}.")


def _file_shard_rows(shard: dict):
    for path, label in zip(shard["paths"], shard["labels"]):
        yield path, None, {"bytes": None, "path": path}, int(label), {}


def _parquet_shard_rows(shard: dict, context: dict):
    path, keep = shard["path"], np.asarray(shard["keep"], dtype=np.int64)
    if not len(keep):
        return
    columns = [context["image_col"], context["label_col"], *context["extras"]]
    parquet = pq.ParquetFile(path)
    offset = 0
    position = 0  # into keep
    for batch in parquet.iter_batches(
        batch_size=_PARQUET_BATCH_ROWS, row_groups=[shard["row_group"]], columns=columns
    ):
        end = offset + batch.num_rows
        stop = int(np.searchsorted(keep, end))
        if stop > position:
            local = keep[position:stop] - offset
            taken = batch.take(pa.array(local))
            images = _image_values(taken.column(context["image_col"]), Path(path).parent)
            labels = taken.column(context["label_col"]).to_pylist()
            extras = {name: taken.column(name).to_pylist() for name in context["extras"]}
            for i, (image, label) in enumerate(zip(images, labels)):
                file_row = shard["first_row"] + int(local[i]) + offset
                row = f"row {file_row + 1} of {Path(path).name}"
                name = (image or {}).get("path") or row
                yield (
                    name,
                    None if name == row else row,
                    image,
                    _label_id(label, context["label_ids"]),
                    {k: v[i] for k, v in extras.items()},
                )
            position = stop
        offset = end
        if position >= len(keep):
            return


def _label_id(value: Any, names: dict[str, int] | None) -> int:
    return names[value] if names is not None else int(value)


def _image_values(values: pa.Array | pa.ChunkedArray, base: Path) -> list[dict | None]:
    # Paths relative to the parquet file, bytes, or {"bytes", "path"} structs: as the map-style table reader.
    kind = values.type
    items = values.to_pylist()
    if pa.types.is_string(kind) or pa.types.is_large_string(kind):
        return [None if v is None else {"bytes": None, "path": _resolve(base, v)} for v in items]
    if pa.types.is_binary(kind) or pa.types.is_large_binary(kind):
        return [None if v is None else {"bytes": v, "path": None} for v in items]
    return [
        None
        if v is None
        else {
            "bytes": v["bytes"],
            "path": _resolve(base, v["path"]) if v["path"] and not v["bytes"] else v["path"],
        }
        for v in items
    ]


# --- readers --------------------------------------------------------------------------------------------------------
@dataclass
class _StreamPlan:
    description: str
    shards: list[dict]
    context: dict
    features: Features
    splits: dict[str, Dataset]
    id2label: dict[int, str]
    fingerprint: str
    num_train_rows: int | None
    skipped: list[BadImage]


def _digest(*parts: Any) -> str:
    # Options enter as a dict; max_eval_samples only cuts the materialised splits, not the stream.
    parts = [{k: v for k, v in p.items() if k != "max_eval_samples"} if isinstance(p, dict) else p for p in parts]
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


def _holdout(train_ids: np.ndarray, has_validation: bool, validation_split: float, seed: int) -> np.ndarray:
    # The map-style loader's rule, computed from the labels alone: seeded, stratified, every class keeps one image.
    if has_validation:
        return np.array([], dtype=np.int64)
    train_idx, val_idx = stratified_split_indices(train_ids, validation_split, seed)
    return val_idx


def _eval_order(rows: np.ndarray, split: str, limit: int | None, seed: int) -> np.ndarray:
    """The rows a materialised split keeps, in order: `max_eval_samples` cuts as `hftransfer.building` does
    (validation shuffled with `seed`, then cut; test cut in order)."""
    if limit is None or len(rows) <= limit:
        return rows
    if split == "validation":
        return rows[np.random.default_rng(seed).permutation(len(rows))[:limit]]
    return rows[:limit]


def _checked(dataset: Dataset, split: str, level: str, on_bad_image: str, where: str, skipped: list) -> Dataset:
    bad = _bad_images_in(dataset, split, level)
    if not bad:
        return dataset
    if on_bad_image == "error":
        raise BadImageError([image for _, image in bad])
    drop = {row for row, _ in bad}
    skipped.extend(image for _, image in bad)
    log_skipped([image for _, image in bad], f"split {split!r} of {where}")
    return dataset.select([i for i in range(len(dataset)) if i not in drop])


def _folder_plan(root: Path, options: dict) -> _StreamPlan:
    """An image folder: the file scan of the map-style reader (names, sizes, modification times; no image read)."""
    if options["extra_feature_columns"]:
        raise DataError(
            f"Extra feature column {options['extra_feature_columns'][0]!r} not found in image folder {root}: image "
            "folders have only images and labels."
        )
    raw = _from_folder(root, options["on_bad_image"])
    where = raw.description
    labelled, names = _label_ids(raw, dict(raw.splits), None)
    ids = {split: np.asarray(_column(ds, "label").to_numpy(zero_copy_only=False)) for split, ds in labelled.items()}
    _check_classes(ids["train"], names, where)
    held = _holdout(ids["train"], "validation" in labelled, options["validation_split"], options["seed"])
    seed, limit = options["seed"], options["max_eval_samples"]
    skipped = list(raw.skipped)
    if raw.skipped:
        log_skipped(raw.skipped, where)
    splits = {}
    sources = {"validation": ("train", held)} if len(held) else {}
    for split in ("validation", "test"):
        origin, rows = sources.get(split, (split, None))
        if origin not in labelled:
            continue
        rows = np.arange(len(labelled[origin])) if rows is None else rows
        dataset = labelled[origin].select(_eval_order(rows, split, limit, seed))
        splits[split] = _checked(dataset, split, "fast", options["on_bad_image"], where, skipped)

    train = labelled["train"]
    keep = np.setdiff1d(np.arange(len(train)), held)
    paths = [value["path"] for value in train.cast_column("image", Image(decode=False))["image"]]
    shards = [
        {
            "kind": "files",
            "paths": [paths[i] for i in keep[start : start + _FILES_PER_SHARD]],
            "labels": ids["train"][keep[start : start + _FILES_PER_SHARD]].tolist(),
        }
        for start in range(0, len(keep), _FILES_PER_SHARD)
    ]
    fingerprint = _digest(
        _FINGERPRINT_VERSION, "folder", str(root), raw.splits["train"]._fingerprint, names, keep.tolist(), options
    )
    context = {"check": "fast", "derived": (), "description": where}
    return _StreamPlan(
        where, shards, context, _features(names, {}), splits, dict(enumerate(names)), fingerprint, len(keep), skipped
    )


def _features(names: list[str], extras: dict[str, Any]) -> Features:
    return Features({"image": Image(), "label": ClassLabel(names=list(names)), **extras})


def _parquet_files(path: Path) -> dict[str, list[Path]] | list[Path]:
    """The parquet files of a file or folder: `{split: files}` when every file name starts with a split name
    (`train-00000-of-00002.parquet`, `test.parquet`), else the files in name order (one table)."""
    if path.is_file():
        return [path]
    files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in PARQUET_SUFFIXES)
    if not files:
        raise DataError(f"{path} holds no .parquet files.")
    by_split: dict[str, list[Path]] = {}
    for file in files:
        head = file.stem.lower().replace("_", "-").replace(".", "-").split("-")[0]
        split = _SPLIT_ALIASES.get(head)
        if split is None:
            return files
        by_split.setdefault(split, []).append(file)
    return by_split


def _parquet_plan(
    files: dict[str, list[Path]] | list[Path], description: str, options: dict, embedded: bool = False
) -> _StreamPlan:
    """Parquet files: footers, then the label (and split, extra, path) columns only; image bytes stay on disk."""
    image_column, label_column = options["image_column"], options["label_column"]
    all_files = [f for group in files.values() for f in group] if isinstance(files, dict) else list(files)
    schemas = {}
    for file in all_files:
        try:
            schemas[file] = pq.ParquetFile(file)
        except (pa.ArrowInvalid, OSError) as err:
            raise DataError(f"Cannot read {file} as PARQUET: {err}") from err
    first = schemas[all_files[0]].schema_arrow
    columns = first.names
    where = all_files[0].name if len(all_files) == 1 else f"{all_files[0].parent}"
    for file in all_files[1:]:
        if schemas[file].schema_arrow.names != columns:
            raise DataError(f"{file} has columns {schemas[file].schema_arrow.names}; {all_files[0]} has {columns}.")
    image_col = _detect_column(columns, {}, image_column, IMAGE_COLUMN_CANDIDATES, "image", Image, where)
    label_col = _detect_column(columns, {}, label_column, LABEL_COLUMN_CANDIDATES, "label", ClassLabel, where)
    if image_col == label_col:
        raise DataError(f"The image and label columns of {where} are the same column, {image_col!r}.")
    image_type = first.field(image_col).type
    is_path = pa.types.is_string(image_type) or pa.types.is_large_string(image_type)
    if not (
        is_path
        or pa.types.is_binary(image_type)
        or pa.types.is_large_binary(image_type)
        or (pa.types.is_struct(image_type) and {"bytes", "path"} <= {f.name for f in image_type})
    ):
        raise DataError(
            f"Image column {image_col!r} of {where} holds {image_type}; expected file paths (strings), image bytes, "
            "or {'bytes', 'path'} structs."
        )
    split_col = None
    if not isinstance(files, dict):
        split_col = next((c for c in columns if c.lower() in SPLIT_COLUMN_CANDIDATES), None)
        if split_col in (image_col, label_col):
            split_col = None
    derived = tuple(c for c in options["extra_feature_columns"] if embedded and c == "mean_intensity")
    extras = tuple(c for c in options["extra_feature_columns"] if c not in derived)
    clashes = sorted(set(options["extra_feature_columns"]) & {"image", "label", image_col, label_col})
    if clashes:
        raise DataError(f"Extra feature column(s) {clashes} are the image or label column of {where}.")
    for column in extras:
        if column not in columns:
            raise DataError(f"Extra feature column {column!r} not found in {where}; the columns are: {columns}.")

    # One entry per row group, in order: (file, row group, first row in the file, that group's rows by split).
    read = [label_col, *extras, *([split_col] if split_col else []), *([image_col] if is_path else [])]
    groups, parts = [], {split: [] for split in SPLITS}
    for file in all_files:
        file_split = next((s for s, fs in files.items() if file in fs), None) if isinstance(files, dict) else None
        first_row = 0
        for group in range(schemas[file].num_row_groups):
            table = schemas[file].read_row_group(group, columns=read)
            if split_col:
                values = table.column(split_col).to_pylist()
                bad = sorted({str(v) for v in values if v is None or _SPLIT_ALIASES.get(str(v).lower()) is None})
                if bad:
                    raise DataError(
                        f"Split column {split_col!r} of {file.name} has values {bad}; expected train, validation "
                        "(val, valid, dev) or test in every row."
                    )
                row_splits = np.array([_SPLIT_ALIASES[str(v).lower()] for v in values])
            else:
                row_splits = np.full(table.num_rows, file_split or "train")
            for split in SPLITS:
                local = np.flatnonzero(row_splits == split)
                if len(local):
                    parts[split].append((file, group, first_row, local, table.take(pa.array(local))))
            groups.append((file, group, first_row, table.num_rows))
            first_row += table.num_rows
    if not parts["train"]:
        raise DataError(f"{where} has no training rows.")

    # Labels: the map-style rules (labels._label_ids) on label-only datasets.
    if embedded:
        label_feature = ClassLabel(names=list(fm.FASHION_MNIST_CLASSES))
    else:
        label_feature = Features.from_arrow_schema(pa.schema([first.field(label_col).remove_metadata()]))[label_col]
    label_sets = {}
    for split, pieces in parts.items():
        if not pieces:
            continue
        labels = pa.chunked_array([piece[4].column(label_col) for piece in pieces], type=first.field(label_col).type)
        names = [None] * len(labels)
        if is_path:
            names = [
                None if v is None else _resolve(piece[0].parent, v)
                for piece in pieces
                for v in piece[4].column(image_col).to_pylist()
            ]
        label_sets[split] = _make_dataset(
            {"image": _path_image_array(names), "label": labels.combine_chunks()},
            Features({"image": Image(), "label": label_feature}),
            "labels",
            split,
        )
        for column in extras:
            extra = pa.chunked_array([piece[4].column(column) for piece in pieces], type=first.field(column).type)
            extra_ds = _make_dataset(
                {column: extra.combine_chunks()},
                Features.from_arrow_schema(pa.schema([first.field(column).remove_metadata()])),
                "extras",
                split,
            )
            _check_extra_column(extra_ds, column, f"split {split!r} of {where}")
    raw = _RawSource(label_sets, description, class_names=list(fm.FASHION_MNIST_CLASSES) if embedded else None)
    labelled, names = _label_ids(raw, label_sets, None)
    ids = {split: np.asarray(_column(ds, "label").to_numpy(zero_copy_only=False)) for split, ds in labelled.items()}
    _check_classes(ids["train"], names, description)
    label_ids = (
        None
        if isinstance(label_feature, ClassLabel) or _is_numeric(label_feature)
        else dict(zip(names, range(len(names))))
    )
    held = _holdout(ids["train"], "validation" in labelled, options["validation_split"], options["seed"])

    # Materialised splits: only the rows they keep are read.
    extra_features = {
        column: Features.from_arrow_schema(pa.schema([first.field(column).remove_metadata()]))[column]
        for column in extras
    }
    extra_features.update({column: Value("float32") for column in derived})
    features = _features(names, {c: extra_features[c] for c in options["extra_feature_columns"]})
    level = "none" if embedded else "fast"
    skipped: list[BadImage] = []
    splits = {}
    sources = {"validation": ("train", held)} if len(held) else {}
    seed, limit = options["seed"], options["max_eval_samples"]
    for split in ("validation", "test"):
        origin, rows = sources.get(split, (split, None))
        if origin not in labelled:
            continue
        rows = np.arange(len(labelled[origin])) if rows is None else rows
        rows = _eval_order(rows, split, limit, seed)
        dataset = _read_parquet_rows(
            parts[origin], rows, ids[origin], image_col, extras, derived, features, description, split
        )
        splits[split] = _checked(dataset, split, level, options["on_bad_image"], description, skipped)

    # The train stream: per row group, the offsets of the train rows that are not held out.
    held_set = np.zeros(len(ids["train"]), dtype=bool)
    held_set[held] = True
    shards, start, metadata = [], 0, []
    for file, group, first_row, local, _ in parts["train"]:
        keep = local[~held_set[start : start + len(local)]]
        start += len(local)
        # A big row group is cut into several shards (each skips the batches before its rows), so that DataLoader
        # workers share even a single-row-group file such as the embedded subset.
        for chunk in range(0, len(keep), _PARQUET_SHARD_ROWS):
            shards.append(
                {
                    "kind": "parquet",
                    "path": str(file),
                    "row_group": group,
                    "first_row": first_row,
                    "keep": keep[chunk : chunk + _PARQUET_SHARD_ROWS],
                }
            )
    for file in all_files:
        meta = schemas[file].metadata
        metadata.append(
            [
                meta.num_rows,
                [
                    [meta.row_group(g).num_rows, meta.row_group(g).total_byte_size]
                    + [meta.row_group(g).column(c).total_compressed_size for c in range(meta.num_columns)]
                    for g in range(meta.num_row_groups)
                ],
            ]
        )
    fingerprint = _digest(
        _FINGERPRINT_VERSION,
        "parquet",
        _file_manifest([str(f) for f in all_files]),
        metadata,
        [image_col, label_col, split_col],
        names,
        hashlib.sha256(np.flatnonzero(~held_set).tobytes()).hexdigest(),
        options,
    )
    context = {
        "check": level,
        "derived": derived,
        "description": description,
        "image_col": image_col,
        "label_col": label_col,
        "extras": extras,
        "label_ids": label_ids,
    }
    return _StreamPlan(
        description,
        shards,
        context,
        features,
        splits,
        dict(enumerate(names)),
        fingerprint,
        int((~held_set).sum()),
        skipped,
    )


def _is_numeric(feature: Any) -> bool:
    return isinstance(feature, Value) and (
        pa.types.is_integer(feature.pa_type) or pa.types.is_floating(feature.pa_type)
    )


def _read_parquet_rows(
    pieces: list,
    rows: np.ndarray,
    ids: np.ndarray,
    image_col: str,
    extras: Sequence[str],
    derived: Sequence[str],
    features: Features,
    description: str,
    split: str,
) -> Dataset:
    """The given rows (positions in the split, in this order) of a split spread over row-group pieces."""
    bounds = np.cumsum([0] + [len(piece[3]) for piece in pieces])
    wanted: dict[int, list[tuple[int, int]]] = {}
    for order, row in enumerate(rows.tolist()):
        piece = int(np.searchsorted(bounds, row, side="right") - 1)
        wanted.setdefault(piece, []).append((order, row - int(bounds[piece])))
    images: list = [None] * len(rows)
    extra_values = {column: [None] * len(rows) for column in extras}
    for piece_index, items in wanted.items():
        file, group, first_row, local, _ = pieces[piece_index]
        table = pq.ParquetFile(file).read_row_group(group, columns=[image_col, *extras])
        offsets = [int(local[position]) for _, position in items]
        taken = table.take(pa.array(offsets, type=pa.int64()))
        values = _image_values(taken.column(image_col), file.parent)
        for (order, _), offset, value in zip(items, offsets, values):
            if value is None:
                raise DataError(
                    f"Image column {image_col!r} of {file.name} is empty in row {first_row + offset + 1}; every row "
                    "needs an image."
                )
            images[order] = value
        for column in extras:
            for (order, _), value in zip(items, taken.column(column).to_pylist()):
                extra_values[column][order] = value
    columns = {"image": pa.array(images, type=Image().pa_type), "label": pa.array(ids[rows], type=pa.int64())}
    for column in features:
        if column in extra_values:
            columns[column] = pa.array(extra_values[column], type=features[column].pa_type)
        elif column in derived:
            columns[column] = fm.mean_intensity_column(columns["image"])
    fingerprint = _digest(_FINGERPRINT_VERSION, description, split, [str(p[0]) for p in pieces], rows.tolist())[:16]
    return _make_dataset(columns, features, fingerprint, split)


def _embedded_plan(options: dict) -> _StreamPlan:
    path = fm.SUBSET_DIR / fm.SUBSET_FILE
    data = path.read_bytes()  # 3.3 MB: checked against the shipped record, as the map-style reader does
    sha256 = hashlib.sha256(data).hexdigest()
    expected = fm.load_subset_record()["sha256"]
    if sha256 != expected:
        raise DataError(
            f"The embedded Fashion-MNIST subset {path} is damaged (sha256 {sha256}, expected {expected}); reinstall "
            "hftransfer or rebuild it with scripts/build_fashion_mnist_subset.py."
        )
    unknown = [c for c in options["extra_feature_columns"] if c != "mean_intensity"]
    if unknown:
        raise DataError(
            f"Extra feature column {unknown[0]!r} not found in fashion-mnist-subset; the columns are: "
            "['image', 'label', 'mean_intensity']."
        )
    plan = _parquet_plan(
        [path],
        "fashion-mnist-subset (embedded balanced subset of Fashion-MNIST by Zalando SE, MIT licence)",
        {**options, "image_column": "image", "label_column": "label"},
        embedded=True,
    )
    plan.fingerprint = _digest(_FINGERPRINT_VERSION, "fashion-mnist-subset", sha256, plan.fingerprint)
    return plan


def _hub_plan(name: str, options: dict) -> _StreamPlan:
    """A Hub dataset streamed with `datasets`: the label must be a `ClassLabel` (its names fix the classes without
    reading the data). Without a validation split, the first rows of the stream are held out (see the entry point)."""
    from .hub_datasets import _stream_from_hub

    streams = _stream_from_hub(name, {})
    description = f"{name} (Hugging Face Hub, streamed)"
    by_split = {}
    for split_name, stream in streams.items():
        canonical = _SPLIT_ALIASES.get(str(split_name).lower())
        if canonical is not None and canonical not in by_split:
            by_split[canonical] = stream
    if "train" not in by_split:
        raise DataError(f"{description} has no training split: its splits are {list(streams)}.")
    train = by_split["train"]
    features = train.features or Features()
    columns = list(features)
    image_col = _detect_column(
        columns, features, options["image_column"], IMAGE_COLUMN_CANDIDATES, "image", Image, name
    )
    label_col = _detect_column(
        columns, features, options["label_column"], LABEL_COLUMN_CANDIDATES, "label", ClassLabel, name
    )
    if not isinstance(features.get(label_col), ClassLabel):
        raise DataError(
            f"Label column {label_col!r} of {description} is {features.get(label_col)}, not a ClassLabel: the classes "
            "cannot be known without reading the whole stream. Load it without data.streaming."
        )
    names = list(features[label_col].names)
    extras = tuple(options["extra_feature_columns"])
    keep = [image_col, label_col, *extras]

    def normalised(stream: datasets.IterableDataset) -> datasets.IterableDataset:
        stream = stream.select_columns(keep).cast_column(image_col, Image())
        renames = {old: new for old, new in ((image_col, "image"), (label_col, "label")) if old != new}
        return stream.rename_columns(renames) if renames else stream

    train = normalised(train)
    total = getattr((train.info.splits or {}).get("train"), "num_examples", None) if train.info.splits else None
    limit, skipped, splits = options["max_eval_samples"], [], {}
    held = 0
    if "validation" not in by_split:
        held = limit if limit is not None else (round(options["validation_split"] * total) if total else None)
        if not held:
            raise DataError(
                f"{description} has no validation split and no known size: set data.max_eval_samples (the first "
                "rows of the stream are held out) or load it without data.streaming."
            )
        logger.warning(
            "No validation split in %s: the first %d rows of the stream are held out (not stratified: if the data "
            "is ordered by class, provide a validation split).",
            description,
            held,
        )
        by_split["validation"] = train.take(held)
        train = train.skip(held)
    else:
        by_split["validation"] = normalised(by_split["validation"])
    if "test" in by_split:
        by_split["test"] = normalised(by_split["test"])
    for split in ("validation", "test"):
        stream = by_split.get(split)
        if stream is None:
            continue
        if limit is not None and split == "test":
            stream = stream.take(limit)
        rows = list(stream.cast_column("image", Image(decode=False)))
        dataset = Dataset.from_list(rows, features=_features(names, {c: features[c] for c in extras}))
        if limit is not None and split == "validation" and len(dataset) > limit:
            dataset = dataset.shuffle(seed=options["seed"]).select(range(limit))
        splits[split] = _checked(dataset, split, "none", options["on_bad_image"], description, skipped)
    # What identifies a Hub stream cheaply: the name, the revision asked for and the options (not the content).
    fingerprint = _digest(_FINGERPRINT_VERSION, "hub", name, getattr(train, "_fingerprint", None), held, options)
    return _StreamPlan(
        description,
        [],
        {"description": description, "stream": train},
        _features(names, {c: features[c] for c in extras}),
        splits,
        dict(enumerate(names)),
        fingerprint,
        (total - held) if total else None,
        skipped,
    )


def _build(plan: _StreamPlan, options: dict) -> StreamingImageClassificationData:
    if "stream" in plan.context:
        train = plan.context["stream"]
    else:
        context = {**plan.context, "on_bad_image": options["on_bad_image"]}
        context.setdefault("image_col", "image")
        train = datasets.IterableDataset.from_generator(
            _generate_rows, features=plan.features, gen_kwargs={"shards": plan.shards, "context": context}
        )
    return StreamingImageClassificationData(
        train=train,
        splits=plan.splits,
        id2label=plan.id2label,
        source=plan.description,
        fingerprint=plan.fingerprint,
        num_train_rows=plan.num_train_rows,
        extra_feature_columns=tuple(options["extra_feature_columns"]),
        skipped_images=tuple(plan.skipped),
    )
