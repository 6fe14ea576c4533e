"""Column detection and overrides, label mapping, and the stratified validation split."""

from __future__ import annotations

import logging
from collections import Counter

import numpy as np
import pytest
from datasets import ClassLabel, Dataset, DatasetDict, Features, Image, Value

from hftransfer.data import DataError, load_image_classification_dataset, stratified_split_indices


def _dataset(images, columns: dict, image_name: str = "image", n: int | None = None) -> Dataset:
    n = n or len(next(iter(columns.values())))
    data = {image_name: [images.image(seed=i) for i in range(n)], **columns}
    features = Features({image_name: Image(), **{k: _feature(v) for k, v in columns.items()}})
    return Dataset.from_dict(data, features=features)


def _feature(values):
    sample = next(v for v in values if v is not None)
    if isinstance(sample, str):
        return Value("string")
    if isinstance(sample, float):
        return Value("float64")
    if isinstance(sample, list):
        return [Value("float32")]
    return Value("int64")


@pytest.mark.parametrize(
    ("image_name", "label_name"),
    [("image", "label"), ("img", "labels"), ("Image", "class"), ("file_name", "Label")],
)
def test_columns_are_detected(tmp_path, images, image_name, label_name):
    for i in range(4):
        images.write(tmp_path / f"{i}.png", seed=i)
    csv = tmp_path / "data.csv"
    csv.write_text(f"{image_name},{label_name}\n" + "".join(f"{i}.png,{'ab'[i % 2]}\n" for i in range(4)))
    data = load_image_classification_dataset(csv, validation_split=0.5)
    assert data.splits["train"].column_names == ["image", "label"]
    assert data.id2label == {0: "a", 1: "b"}


def test_columns_are_detected_by_feature_type(images):
    ds = Dataset.from_dict(
        {"picture": [images.image(seed=i) for i in range(4)], "kind": [0, 1, 0, 1]},
        features=Features({"picture": Image(), "kind": ClassLabel(names=["p", "q"])}),
    )
    data = load_image_classification_dataset(ds, validation_split=0.5)
    assert data.splits["train"].column_names == ["image", "label"]
    assert data.id2label == {0: "p", 1: "q"}


def test_column_overrides_win_over_detection(images):
    ds = _dataset(images, {"label": ["wrong"] * 4, "species": ["a", "b", "a", "b"]})
    data = load_image_classification_dataset(ds, label_column="species", validation_split=0.5)
    assert data.id2label == {0: "a", 1: "b"}
    ds = Dataset.from_dict(
        {"image": [images.image(seed=i) for i in range(4)], "mask": [images.image(seed=9)] * 4, "label": [0, 1, 0, 1]},
        features=Features({"image": Image(), "mask": Image(), "label": Value("int64")}),
    )
    data = load_image_classification_dataset(ds, image_column="mask", validation_split=0.5)
    assert np.asarray(data.splits["train"][0]["image"]).tolist() == np.asarray(images.image(seed=9)).tolist()


def test_a_missing_column_lists_the_columns_that_exist(images):
    paths = Dataset.from_dict({"picture": ["a.png", "b.png"], "species": ["a", "b"]})
    with pytest.raises(DataError, match=r"No image column found .*the columns are: \['picture', 'species'\]"):
        load_image_classification_dataset(paths)
    ds = _dataset(images, {"species": ["a", "b", "a", "b"]}, image_name="picture_data")
    # The only Image column is found by its type; no column looks like a label.
    with pytest.raises(DataError, match=r"No label column found .*Pass label_column="):
        load_image_classification_dataset(ds)
    with pytest.raises(
        DataError, match=r"Label column 'kind' not found .*the columns are: \['picture_data', 'species'\]"
    ):
        load_image_classification_dataset(ds, image_column="picture_data", label_column="kind")


def test_a_column_missing_from_one_split_names_that_split(images):
    train = _dataset(images, {"label": ["a", "b"] * 2})
    test = _dataset(images, {"category": ["a", "b"]})
    with pytest.raises(DataError, match=r"Label column 'label' not found in split 'test'.*\['image', 'category'\]"):
        load_image_classification_dataset(DatasetDict({"train": train, "test": test}))


def test_an_image_column_of_the_wrong_type_is_an_error(images):
    ds = Dataset.from_dict({"image": [1, 2, 3, 4], "label": ["a", "b"] * 2})
    with pytest.raises(DataError, match=r"Image column 'image' .* holds Value\('int64'\); expected images"):
        load_image_classification_dataset(ds)


def test_names_are_sorted_numerically_when_they_are_all_integers(images):
    ds = _dataset(images, {"label": ["10", "2", "1", "2", "10", "1"]})
    assert load_image_classification_dataset(ds).id2label == {0: "1", 1: "2", 2: "10"}


def test_class_names_fix_the_order_and_reject_other_names(images):
    ds = _dataset(images, {"label": ["b", "a", "c", "a", "b", "c"]})
    data = load_image_classification_dataset(ds, class_names=["c", "b", "a"])
    assert data.id2label == {0: "c", 1: "b", 2: "a"}
    with pytest.raises(DataError, match=r"label\(s\) \['c'\] that are not among class_names \['a', 'b'\]"):
        load_image_classification_dataset(ds, class_names=["a", "b"])


def test_a_label_outside_the_training_classes_is_named(images):
    train = _dataset(images, {"label": ["cat", "dog"] * 3})
    test = _dataset(images, {"label": ["cat", "wolf"]})
    with pytest.raises(
        DataError, match=r"Split 'test' .* label\(s\) \['wolf'\] that are not among the classes of the training split"
    ):
        load_image_classification_dataset(DatasetDict({"train": train, "test": test}))


def test_integer_ids_are_kept_and_checked(images):
    data = load_image_classification_dataset(_dataset(images, {"label": [0, 2, 1, 2, 0, 1]}))
    assert data.id2label == {0: "0", 1: "1", 2: "2"}
    named = load_image_classification_dataset(_dataset(images, {"label": [0, 1] * 3}), class_names=["neg", "pos"])
    assert named.id2label == {0: "neg", 1: "pos"}
    with pytest.raises(DataError, match=r"label id\(s\) \[2\] outside 0\.\.1"):
        load_image_classification_dataset(_dataset(images, {"label": [0, 1, 2, 0]}), class_names=["neg", "pos"])
    with pytest.raises(DataError, match=r"negative label id\(s\) \[-3\]"):
        load_image_classification_dataset(_dataset(images, {"label": [0, 1, -3, 0]}))
    floats = load_image_classification_dataset(_dataset(images, {"label": [0.0, 1.0] * 3}))
    assert floats.id2label == {0: "0", 1: "1"}
    with pytest.raises(DataError, match=r"non-integer numbers \[0\.5\]"):
        load_image_classification_dataset(_dataset(images, {"label": [0.0, 1.0, 0.5, 1.0]}))


def test_a_test_split_without_any_label_is_left_out(images, caplog):
    features = Features({"image": Image(), "label": ClassLabel(names=["a", "b"])})
    make = lambda labels: Dataset.from_dict(  # noqa: E731
        {"image": [images.image(seed=i) for i in range(len(labels))], "label": labels}, features=features
    )
    data = load_image_classification_dataset(DatasetDict({"train": make([0, 1] * 3), "test": make([-1, -1])}))
    assert "test" not in data.splits
    assert "Split 'test'" in caplog.text and "no labels at all" in caplog.text


def test_validation_split_is_stratified_and_seeded(images, caplog):
    labels = ["a"] * 40 + ["b"] * 20 + ["c"] * 10
    ds = _dataset(images, {"label": labels})
    with caplog.at_level(logging.INFO, logger="hftransfer.data"):
        data = load_image_classification_dataset(ds, validation_split=0.2, seed=3)
    assert "held out 14 of 70" in caplog.text
    assert Counter(data.splits["validation"]["label"]) == {0: 8, 1: 4, 2: 2}
    assert Counter(data.splits["train"]["label"]) == {0: 32, 1: 16, 2: 8}
    same = load_image_classification_dataset(ds, validation_split=0.2, seed=3)
    other = load_image_classification_dataset(ds, validation_split=0.2, seed=4)
    pixels = lambda d: [np.asarray(img).tobytes() for img in d.splits["validation"]["image"]]  # noqa: E731
    assert pixels(same) == pixels(data)
    assert pixels(other) != pixels(data)


def test_stratified_split_keeps_every_class_in_train():
    labels = np.array([0] * 9 + [1] * 2 + [2])
    train, validation = stratified_split_indices(labels, 0.3, seed=0)
    assert sorted(np.concatenate([train, validation]).tolist()) == list(range(12))
    assert len(validation) == 4  # round(0.3 * 12)
    assert set(labels[train]) == {0, 1, 2}  # the single example of class 2 stays in train
    assert Counter(labels[validation].tolist()) == {0: 3, 1: 1}
    with pytest.raises(DataError, match="Cannot hold out a validation split"):
        stratified_split_indices(np.array([0, 1]), 0.5, seed=0)


@pytest.mark.parametrize("fraction", [0.0, 1.0, -0.1, 1.5])
def test_validation_split_must_be_a_fraction(images, fraction):
    with pytest.raises(ValueError, match=rf"validation_split={fraction!r} is invalid"):
        load_image_classification_dataset(_dataset(images, {"label": ["a", "b"]}), validation_split=fraction)


def test_extra_feature_columns_are_kept_and_checked(images):
    ds = _dataset(images, {"label": ["a", "b"] * 3, "age": [1.0, 2.0, 3.0, 4.0, 5.0, 6.0], "name": ["x"] * 6})
    data = load_image_classification_dataset(ds, extra_feature_columns=["age"])
    assert data.splits["train"].column_names == ["image", "label", "age"]
    assert data.extra_feature_columns == ("age",)
    with pytest.raises(
        DataError, match=r"Extra feature column 'height' not found .*\['image', 'label', 'age', 'name'\]"
    ):
        load_image_classification_dataset(ds, extra_feature_columns=["height"])
    with pytest.raises(DataError, match=r"Extra feature column 'name' .* holds Value\('string'\); expected numbers"):
        load_image_classification_dataset(ds, extra_feature_columns=["name"])
    gappy = _dataset(images, {"label": ["a", "b"] * 2, "age": [1.0, None, 3.0, None]})
    with pytest.raises(DataError, match=r"Extra feature column 'age' .* 2 missing value\(s\) \(rows 1, 3\)"):
        load_image_classification_dataset(gappy, extra_feature_columns=["age"])
