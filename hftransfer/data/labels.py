"""Columns and labels: finding the image and label columns, checking extra feature columns, label -> class id.

Labels become `datasets.ClassLabel` ids: class names in sorted order (numerically when every name is an integer),
integer ids kept as they are, a `ClassLabel` column keeping its names; missing and unknown labels are errors that
name rows and files.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import datasets
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from datasets import ClassLabel, Dataset, Image, Value

from .dataset import _RawSource
from .images import MAX_LISTED, DataError


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


def _unlabelled(dataset: Dataset) -> bool:
    values = _column(dataset, "label")
    if values.null_count == len(values):
        return True
    if isinstance(dataset.features["label"], ClassLabel):
        return bool(pc.all(pc.less(values, 0)).as_py())
    return False
