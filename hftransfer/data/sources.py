"""Local readers, source -> `_RawSource`: in-memory `datasets` objects, image folders, table files, Fashion-MNIST.

- in-memory `datasets.Dataset` / `DatasetDict` (and folders saved with `save_to_disk`): splits mapped to
  train / validation / test by name;
- image folders: one sub-folder per class, optionally inside `train/`, `validation/`, `test/`;
- `.csv` / `.tsv` / `.jsonl` / `.json` / `.parquet` files whose rows give an image and a label;
- the embedded Fashion-MNIST subset and the full Fashion-MNIST from the Debian package.

Hub datasets are read in `hub_datasets.py`.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path

import datasets
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from datasets import ClassLabel, Dataset, DatasetDict, Features, Image, Value
from datasets.fingerprint import Hasher
from datasets.table import InMemoryTable

from . import fashion_mnist as fm
from .dataset import (
    _SPLIT_ALIASES,
    IMAGE_COLUMN_CANDIDATES,
    LABEL_COLUMN_CANDIDATES,
    SPLIT_COLUMN_CANDIDATES,
    SPLITS,
    _RawSource,
)
from .images import MAX_LISTED, BadImage, BadImageError, DataError
from .labels import _detect_column, _fmt_rows, _missing_labels_error

logger = logging.getLogger("hftransfer.data")

TABLE_SUFFIXES = {
    ".csv": "csv",
    ".tsv": "tsv",
    ".jsonl": "json",
    ".ndjson": "json",
    ".json": "json",
    ".parquet": "parquet",
    ".pq": "parquet",
}
# Files that operating systems and archivers leave in folders; never images, never worth an error.
_JUNK_NAMES = {"thumbs.db", "desktop.ini", "__macosx"}


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
