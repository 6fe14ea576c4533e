"""`load_streaming_dataset`: the train stream matches the map-style train split, validation never overlaps it, and
building reads no training image."""

from __future__ import annotations

import hashlib
import logging

import datasets
import numpy as np
import PIL.Image
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from datasets import Image

from hftransfer.data import (
    BadImageError,
    DataError,
    HubUnavailableError,
    ImageClassificationCollator,
    build_transforms,
    load_image_classification_dataset,
)
from hftransfer.data.loading import StreamingImageClassificationData, load_streaming_dataset


def _key(row: dict) -> tuple:
    image = row["image"]
    assert isinstance(image, PIL.Image.Image)
    pixels = hashlib.sha256(np.asarray(image).tobytes()).hexdigest()[:16]
    return (int(row["label"]), pixels, image.size, *(row[k] for k in sorted(row) if k not in ("image", "label")))


def _keys(rows) -> list[tuple]:
    return [_key(row) for row in rows]


@pytest.fixture
def count_opens(monkeypatch):
    opened = []
    original = PIL.Image.open

    def counting(*args, **kwargs):
        opened.append(args[0] if args else None)
        return original(*args, **kwargs)

    monkeypatch.setattr(PIL.Image, "open", counting)
    return opened


@pytest.fixture(scope="module")
def embedded():
    return load_streaming_dataset("fashion-mnist-subset", extra_feature_columns=["mean_intensity"])


@pytest.fixture(scope="module")
def embedded_map():
    return load_image_classification_dataset("fashion-mnist-subset", extra_feature_columns=["mean_intensity"])


def test_embedded_stream_is_the_map_style_train_split(embedded, embedded_map):
    assert isinstance(embedded, StreamingImageClassificationData)
    assert isinstance(embedded.train, datasets.IterableDataset)
    assert embedded.id2label == embedded_map.id2label and embedded.class_names == embedded_map.class_names
    assert (embedded.image_column, embedded.label_column) == ("image", "label")
    assert embedded.train.features == embedded_map.splits["train"].features
    assert embedded.num_train_rows == len(embedded_map.splits["train"]) == 4500
    streamed = _keys(embedded.train)
    assert streamed == _keys(embedded_map.splits["train"])  # same rows, values and order
    # No validation split in the source: the held-out rows are the map-style validation split, never streamed.
    validation = _keys(embedded.splits["validation"])
    assert validation == _keys(embedded_map.splits["validation"])
    assert not set(validation) & set(streamed)
    assert _keys(embedded.splits["test"]) == _keys(embedded_map.splits["test"])
    assert embedded.splits["validation"].features == embedded_map.splits["validation"].features


def test_max_eval_samples_cuts_like_the_recipe_loader(embedded_map):
    data = load_streaming_dataset("fashion-mnist-subset", max_eval_samples=40, seed=42)
    expected = embedded_map.splits["validation"].shuffle(seed=42).select(range(40))
    assert [r["label"] for r in data.splits["validation"]] == [r["label"] for r in expected]
    assert _keys(data.splits["validation"])[:5] == [
        k[:3] for k in _keys(expected.remove_columns("mean_intensity"))[:5]
    ]
    assert data.splits["test"]["label"] == embedded_map.splits["test"].select(range(40))["label"]
    assert data.num_train_rows == 4500  # the stream is not cut


def test_building_the_stream_decodes_no_image(count_opens):
    data = load_streaming_dataset("fashion-mnist-subset")
    assert count_opens == []
    next(iter(data.train))
    assert len(count_opens) >= 1  # decoded as it is read


def test_transforms_and_collator_batch_the_stream(embedded, embedded_map, processor):
    transform = build_transforms(processor)
    stream = embedded.train.map(transform, batched=True, batch_size=8, remove_columns=["image"])
    loader = torch.utils.data.DataLoader(
        stream, batch_size=8, collate_fn=ImageClassificationCollator(["mean_intensity"])
    )
    batch = next(iter(loader))
    assert batch["pixel_values"].shape == (8, 3, 32, 32) and batch["pixel_values"].dtype == torch.float32
    assert batch["labels"].shape == (8,) and batch["labels"].dtype == torch.long
    assert batch["extra_features"].shape == (8, 1)
    # The same transform and collator on map-style rows give the same batch.
    expected = ImageClassificationCollator(["mean_intensity"])(
        list(transform.apply(embedded_map.splits["train"].select(range(8))))
    )
    assert torch.equal(batch["labels"], expected["labels"])
    assert torch.allclose(batch["pixel_values"], expected["pixel_values"])


# --- an image folder -------------------------------------------------------------------------------------------------
def test_image_folder_without_validation(tmp_path, images, count_opens):
    root = images.class_folder(tmp_path / "pets", {"cat": 6, "dog": 5, "10": 4, "9": 3})
    data = load_streaming_dataset(root, seed=3)
    # Building opened only the validation images (checked as map-style), not one training image.
    validation_files = {
        row["image"]["path"] for row in data.splits["validation"].cast_column("image", Image(decode=False))
    }
    assert sorted(handle.name for handle in count_opens) == sorted(validation_files)
    reference = load_image_classification_dataset(root, seed=3)
    assert data.id2label == reference.id2label == {0: "10", 1: "9", 2: "cat", 3: "dog"}
    assert data.num_train_rows == len(reference.splits["train"])
    streamed = _keys(data.train)
    assert streamed == _keys(reference.splits["train"])
    assert _keys(data.splits["validation"]) == _keys(reference.splits["validation"])
    assert not set(streamed) & set(_keys(data.splits["validation"]))
    assert len(streamed) + len(data.splits["validation"]) == 18


def test_image_folder_with_its_own_splits(tmp_path, images):
    root = tmp_path / "data"
    images.class_folder(root / "train", {"a": 5, "b": 5})
    images.class_folder(root / "val", {"a": 2, "b": 1})
    images.class_folder(root / "test", {"a": 1, "b": 2})
    data = load_streaming_dataset(root)
    reference = load_image_classification_dataset(root)
    assert data.id2label == reference.id2label
    assert sorted(_keys(data.train)) == sorted(_keys(reference.splits["train"]))
    assert len(_keys(data.train)) == 10
    for split in ("validation", "test"):
        assert _keys(data.splits[split]) == _keys(reference.splits[split])


def test_fingerprint_changes_when_an_image_file_changes(tmp_path, images):
    root = images.class_folder(tmp_path / "pets", {"cat": 4, "dog": 4})
    first = load_streaming_dataset(root).fingerprint
    assert load_streaming_dataset(root).fingerprint == first  # stable
    target = sorted((root / "cat").iterdir())[-1]
    images.write(target, size=(14, 10), seed=99)  # new pixels, new bytes
    assert load_streaming_dataset(root).fingerprint != first
    assert load_streaming_dataset(root, seed=7).fingerprint != load_streaming_dataset(root).fingerprint


def test_bad_training_image_errors_or_is_skipped_in_the_stream(tmp_path, images, caplog):
    root = tmp_path / "data"
    images.class_folder(root / "train", {"a": 3, "b": 3})
    images.class_folder(root / "validation", {"a": 1, "b": 1})
    bad = images.corrupt(root / "train" / "b" / "broken.png")
    data = load_streaming_dataset(root)  # lazy: the bad file is not read yet
    with pytest.raises(BadImageError, match="broken.png"):
        list(data.train)
    skipping = load_streaming_dataset(root, on_bad_image="skip")
    with caplog.at_level(logging.WARNING, logger="hftransfer.data"):
        rows = list(skipping.train)
    assert len(rows) == 6 and skipping.num_train_rows == 7
    assert str(bad) in caplog.text


# --- parquet ---------------------------------------------------------------------------------------------------------
def _write_parquet(path, images, n=24, split=True, row_group_size=5, labels=("zebra", "ant", "moth")):
    encoded = [images.encoded(seed=i) for i in range(n)]
    columns = {
        "img": [{"bytes": b, "path": None} for b in encoded],
        "kind": [labels[i % len(labels)] for i in range(n)],
        "weight": [float(i) / 2 for i in range(n)],
    }
    if split:
        columns["split"] = ["train"] * (n - 8) + ["validation"] * 4 + ["test"] * 4
    pq.write_table(pa.table(columns), path, row_group_size=row_group_size)
    return path


@pytest.mark.parametrize("split", [True, False])
def test_parquet_file_streams_the_map_style_train_split(tmp_path, images, count_opens, split):
    path = _write_parquet(tmp_path / "rows.parquet", images, split=split)
    options = {"image_column": "img", "label_column": "kind", "extra_feature_columns": ["weight"]}
    data = load_streaming_dataset(path, **options)
    assert len(count_opens) == sum(len(d) for d in data.splits.values())  # the materialised splits' checks only
    reference = load_image_classification_dataset(path, **options)
    assert data.id2label == reference.id2label == {0: "ant", 1: "moth", 2: "zebra"}
    assert data.num_train_rows == len(reference.splits["train"])
    assert data.train.n_shards > 1  # one per row group
    streamed = _keys(data.train)
    assert streamed == _keys(reference.splits["train"])
    assert set(data.splits) == set(reference.splits) - {"train"}
    for name in data.splits:
        assert _keys(data.splits[name]) == _keys(reference.splits[name])
    assert not set(streamed) & set(_keys(data.splits["validation"]))


def test_folder_of_parquet_files_split_by_name(tmp_path, images):
    folder = tmp_path / "shards"
    folder.mkdir()
    _write_parquet(folder / "train-00000-of-00002.parquet", images, n=9, split=False)
    _write_parquet(folder / "train-00001-of-00002.parquet", images, n=6, split=False)
    _write_parquet(folder / "test.parquet", images, n=3, split=False)
    data = load_streaming_dataset(folder, image_column="img", label_column="kind")
    assert data.id2label == {0: "ant", 1: "moth", 2: "zebra"}
    assert data.num_train_rows + len(data.splits["validation"]) == 15 and len(data.splits["test"]) == 3
    assert len(list(data.train)) == data.num_train_rows


def test_parquet_fingerprint_follows_the_file(tmp_path, images):
    path = _write_parquet(tmp_path / "rows.parquet", images)
    first = load_streaming_dataset(path, label_column="kind").fingerprint
    assert load_streaming_dataset(path, label_column="kind").fingerprint == first
    _write_parquet(path, images, labels=("zebra", "moth", "ant"))
    assert load_streaming_dataset(path, label_column="kind").fingerprint != first


def test_parquet_missing_image_file_names_the_row(tmp_path, images):
    images.write(tmp_path / "a.png")
    table = pa.table({"image": ["a.png", "missing.png", "a.png", "a.png"], "label": ["x", "y", "y", "x"]})
    pq.write_table(table, tmp_path / "paths.parquet")
    data = load_streaming_dataset(tmp_path / "paths.parquet", validation_split=0.25)
    with pytest.raises(BadImageError, match=r"missing\.png.*row 2 of paths\.parquet"):
        list(data.train)


# --- other sources ---------------------------------------------------------------------------------------------------
def test_hub_name_offline_fails_at_once(monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets, "load_dataset", lambda *a, **k: pytest.fail("load_dataset must not be tried"))
    with pytest.raises(HubUnavailableError, match=r"'someone/beans'.*offline mode") as info:
        load_streaming_dataset("someone/beans")
    assert "fashion-mnist-subset" in str(info.value)


def test_sources_that_do_not_stream_say_so(tmp_path):
    (tmp_path / "rows.csv").write_text("image,label\na.png,x\n")
    with pytest.raises(DataError, match="not streamed"):
        load_streaming_dataset(tmp_path / "rows.csv")
    with pytest.raises(DataError, match="does not exist"):
        load_streaming_dataset("./nothing.parquet")
    with pytest.raises(ValueError, match="validation_split"):
        load_streaming_dataset("fashion-mnist-subset", validation_split=1.5)
