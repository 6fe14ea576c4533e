"""Issue 10, item 5: the feature cache is keyed by image content (not only by paths, sizes and mtimes), and a cache
file whose tensors fail their checksum, or whose labels do not fit the model, is recomputed with a warning."""

from __future__ import annotations

import logging
import os
import struct

import numpy as np
import PIL.Image
import pytest
import torch
from safetensors.torch import load_file, save_file
from testing_common import compute_split_features

from hftransfer import TransferConfig, TransferForImageClassification, TransferImageProcessor
from hftransfer.data import load_image_classification_dataset
from hftransfer.recipes import recipe_from_dict
from hftransfer.training import train


def _image_folder(root, black=False):
    rng = np.random.default_rng(0)
    for split, count in (("train", 8), ("validation", 4)):
        for label in ("cat", "dog", "owl"):
            folder = root / split / label
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                pixels = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
                path = folder / f"{i}.bmp"  # fixed-size format: a black image has the same size in bytes
                stat = path.stat() if path.exists() else None
                PIL.Image.fromarray(pixels * 0 if black else pixels).save(path)
                if stat is not None:  # as `cp -p` would: same size, same mtime
                    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    return root


def test_images_replaced_in_place_with_the_same_size_and_mtime_are_recomputed(
    tmp_path, make_recipe, feature_cache_dir, caplog
):
    images = _image_folder(tmp_path / "images")
    sizes = {p: p.stat().st_size for p in images.rglob("*.bmp")}

    def run(name):
        recipe = make_recipe(
            tmp_path / name,
            feature_cache_dir,
            data={"dataset": str(images), "max_train_samples": None, "max_eval_samples": None},
            stages=[{"name": "frozen", "epochs": 1, "learning_rate": 0.003, "trainable": "head"}],
        )
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="hftransfer"):
            train(recipe_from_dict(recipe))
        return [r.getMessage() for r in caplog.records if "train features" in r.getMessage()][0]

    first = run("first")
    assert "train features computed into" in first
    assert "train features loaded from" in run("again")  # same images: the cache is used
    _image_folder(images, black=True)
    assert {p: p.stat().st_size for p in images.rglob("*.bmp")} == sizes
    third = run("black")
    assert "train features computed into" in third, "stale features of the old images were reused"
    assert third.split()[-1] != first.split()[-1]


@pytest.fixture(scope="module")
def split():
    return load_image_classification_dataset("fashion-mnist-subset").splits["validation"].select(range(16))


@pytest.fixture
def model_and_processor():
    config = TransferConfig(image_size=32, pooling="avg", hidden_sizes=[8], num_labels=10)
    return TransferForImageClassification(config), TransferImageProcessor.from_transfer_config(config)


def _compute(model, processor, split, cache_dir):
    return compute_split_features(model, processor, split, cache_dir)


def test_scrambled_tensor_bytes_fail_the_checksum_and_are_recomputed(tmp_path, split, model_and_processor, caplog):
    model, processor = model_and_processor
    good, path, _ = _compute(model, processor, split, tmp_path)
    expected = good.tensors["pooled_features"].clone()
    (shard,) = path.glob("shard-*.safetensors")
    data = bytearray(shard.read_bytes())
    header = 8 + struct.unpack("<Q", data[:8])[0]
    data[header:] = bytes(reversed(data[header:]))  # the header stays valid, the tensor bytes do not
    shard.write_bytes(bytes(data))
    with caplog.at_level(logging.WARNING, logger="hftransfer"):
        rebuilt, _, computed = _compute(model, processor, split, tmp_path)
    assert computed
    assert any("fails its checksum" in r.getMessage() and str(shard) in r.getMessage() for r in caplog.records)
    torch.testing.assert_close(rebuilt.tensors["pooled_features"], expected)


def test_labels_that_do_not_fit_the_model_are_recomputed_not_an_index_error(
    tmp_path, split, model_and_processor, caplog
):
    import hashlib
    import json

    model, processor = model_and_processor
    good, path, _ = _compute(model, processor, split, tmp_path)
    (shard,) = path.glob("shard-*.safetensors")
    tensors = load_file(str(shard))
    tensors["labels"] = torch.full_like(tensors["labels"], 99)  # a consistent entry, but labels of another dataset
    save_file(tensors, str(shard))
    digest = hashlib.sha256(shard.read_bytes()).hexdigest()
    index = json.loads((path / "index.json").read_text())
    index["shards"][0]["sha256"] = digest
    (path / "index.json").write_text(json.dumps(index))
    with caplog.at_level(logging.WARNING, logger="hftransfer"):
        rebuilt, _, computed = _compute(model, processor, split, tmp_path)
    assert computed
    assert any("labels or rows that do not fit the model (10 classes)" in r.getMessage() for r in caplog.records)
    assert rebuilt.tensors["labels"].tolist() == split["label"]
