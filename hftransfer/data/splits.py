"""Normalisation of raw splits into [`ImageClassificationData`]: columns, image checks, classes, validation split.

`_normalise` applies every rule once, whatever the source: column selection and renaming, label ids (`labels.py`),
bad images (error or skip), class checks, and the seeded, stratified validation split
([`stratified_split_indices`]) when the source has none.
"""

from __future__ import annotations

import logging

import numpy as np
from datasets import ClassLabel, Dataset, DatasetDict, Image

from .dataset import IMAGE_COLUMN_CANDIDATES, LABEL_COLUMN_CANDIDATES, SPLITS, ImageClassificationData, _RawSource
from .images import BadImage, BadImageError, DataError, find_bad_images, log_skipped
from .labels import _check_extra_column, _column, _detect_column, _label_ids, _normalise_image_column, _unlabelled

logger = logging.getLogger("hftransfer.data")


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
    _check_classes(train_ids, names, where)

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


def _check_classes(train_ids: np.ndarray, names: list[str], where: str) -> None:
    """At least two classes have training examples (an error otherwise); a class without any is logged."""
    counts = np.bincount(train_ids, minlength=len(names))
    present = [names[i] for i in np.flatnonzero(counts)]
    if len(present) < 2:
        raise DataError(
            f"The training data of {where} has a single class ({present[0] if present else 'none'!r}); "
            "classification needs at least two classes."
        )
    absent = [names[i] for i in np.flatnonzero(counts == 0)]
    if absent:
        logger.warning("Class(es) %s of %s have no training example; the model cannot learn them.", absent, where)
