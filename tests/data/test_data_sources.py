"""Every source kind reaches the same normalised form: train/validation(/test), `image`, `label`, id2label."""

from __future__ import annotations

import gzip
import hashlib
import struct
from collections import Counter

import datasets
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from datasets import ClassLabel, Dataset, DatasetDict, Features, Image, Value

from hftransfer.data import (
    FASHION_MNIST_CLASSES,
    DataError,
    HubUnavailableError,
    load_image_classification_dataset,
)
from hftransfer.data import fashion_mnist as fm


def _labels(data, split):
    return [data.id2label[i] for i in data.splits[split]["label"]]


def test_embedded_subset_splits_classes_and_images(subset):
    assert {name: len(ds) for name, ds in subset.splits.items()} == {"train": 4500, "validation": 500, "test": 1000}
    assert subset.id2label == dict(enumerate(FASHION_MNIST_CLASSES))
    assert subset.label2id["Ankle boot"] == 9
    # Balanced: the held-out validation is stratified, 50 per class, and train keeps 450 per class.
    assert set(Counter(subset.splits["validation"]["label"]).values()) == {50}
    assert set(Counter(subset.splits["train"]["label"]).values()) == {450}
    assert set(Counter(subset.splits["test"]["label"]).values()) == {100}
    image = subset.splits["test"][0]["image"]
    assert (image.mode, image.size) == ("L", (28, 28))
    assert isinstance(subset.splits["train"].features["label"], ClassLabel)
    assert "Fashion-MNIST" in subset.source and "MIT" in subset.source


def test_embedded_subset_keeps_original_pixels_and_labels():
    """A shipped image decodes to exactly the original Fashion-MNIST pixels (checked against the Debian set)."""
    if not (fm.DEBIAN_FASHION_MNIST_DIR / "t10k-images-idx3-ubyte.gz").exists():
        pytest.skip("Debian package dataset-fashion-mnist not installed")
    table, _ = fm.read_subset_table()
    originals, labels = fm.read_fashion_mnist_split("test", fm.DEBIAN_FASHION_MNIST_DIR)
    test_rows = table.filter(pa.compute.equal(table.column("split"), "test")).slice(0, 20).to_pylist()
    import io

    import PIL.Image

    for row in test_rows:
        pixels = np.asarray(PIL.Image.open(io.BytesIO(row["image"]["bytes"])))
        np.testing.assert_array_equal(pixels, originals[row["source_index"]])
        assert row["label"] == labels[row["source_index"]]


def _write_idx(path, array: np.ndarray) -> None:
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    with gzip.open(path, "wb") as stream:
        stream.write(header + array.astype(np.uint8).tobytes())


@pytest.fixture
def tiny_idx_dir(tmp_path, monkeypatch):
    """A miniature Fashion-MNIST in IDX format (3 train and 1 test image per class), used via the env variable."""
    rng = np.random.default_rng(0)
    arrays = {}
    for split, per_class in (("train", 3), ("test", 1)):
        labels = np.repeat(np.arange(10), per_class)
        images = rng.integers(0, 256, (len(labels), 28, 28), dtype=np.uint8)
        images_stem, labels_stem = fm.IDX_FILES[split]
        _write_idx(tmp_path / f"{images_stem}.gz", images)
        _write_idx(tmp_path / f"{labels_stem}.gz", labels)
        arrays[split] = (images, labels)
    monkeypatch.setenv(fm.FASHION_MNIST_DIR_ENV, str(tmp_path))
    return arrays


def test_full_fashion_mnist_reads_idx_files(tiny_idx_dir):
    data = load_image_classification_dataset("fashion-mnist")
    assert data.id2label == dict(enumerate(FASHION_MNIST_CLASSES))
    assert len(data.splits["train"]) + len(data.splits["validation"]) == 30
    assert len(data.splits["test"]) == 10
    images, labels = tiny_idx_dir["test"]
    for index in (0, 7):
        row = data.splits["test"][index]
        np.testing.assert_array_equal(np.asarray(row["image"]), images[index])
        assert row["label"] == labels[index]


def test_full_fashion_mnist_missing_says_how_to_install(tmp_path, monkeypatch):
    monkeypatch.delenv(fm.FASHION_MNIST_DIR_ENV, raising=False)
    monkeypatch.setattr(fm, "DEBIAN_FASHION_MNIST_DIR", tmp_path / "not-installed")
    with pytest.raises(DataError, match="apt-get install dataset-fashion-mnist"):
        load_image_classification_dataset("fashion-mnist")


def test_full_fashion_mnist_rejects_a_corrupt_idx_file(tiny_idx_dir, tmp_path):
    path = tmp_path / "t10k-labels-idx1-ubyte.gz"
    with gzip.open(path, "wb") as stream:
        stream.write(b"\x00\x00\x08\x01\x00\x00\x00\x0a" + b"\x01" * 4)  # header says 10 labels, 4 follow
    with pytest.raises(DataError, match=r"t10k-labels-idx1-ubyte.gz is truncated"):
        load_image_classification_dataset("fashion-mnist")


@pytest.mark.skipif(
    not (fm.DEBIAN_FASHION_MNIST_DIR / "train-images-idx3-ubyte.gz").exists(),
    reason="Debian package dataset-fashion-mnist not installed",
)
def test_full_fashion_mnist_from_the_debian_package(monkeypatch):
    monkeypatch.delenv(fm.FASHION_MNIST_DIR_ENV, raising=False)
    data = load_image_classification_dataset("fashion-mnist")
    assert {name: len(ds) for name, ds in data.splits.items()} == {"train": 54000, "validation": 6000, "test": 10000}
    assert Counter(data.splits["test"]["label"]) == dict.fromkeys(range(10), 1000)
    assert data.splits["train"][0]["image"].size == (28, 28)


def test_image_folder_one_folder_per_class(tmp_path, images):
    root = images.class_folder(tmp_path / "pets", {"dog": 10, "cat": 10, "bird": 10})
    data = load_image_classification_dataset(root)
    assert data.id2label == {0: "bird", 1: "cat", 2: "dog"}  # sorted names
    assert (len(data.splits["train"]), len(data.splits["validation"])) == (27, 3)
    assert Counter(_labels(data, "validation")) == {"bird": 1, "cat": 1, "dog": 1}
    assert "test" not in data.splits
    # Each image carries the label of its folder.
    rows = data.splits["train"].cast_column("image", Image(decode=False))
    for row in rows:
        assert f"/{data.id2label[row['label']]}/" in row["image"]["path"]
    assert data.splits["train"][0]["image"].size == (12, 10)


def test_image_folder_with_split_folders(tmp_path, images):
    root = tmp_path / "ds"
    images.class_folder(root / "train", {"a": 4, "b": 4})
    images.class_folder(root / "val", {"a": 2, "b": 1})
    images.class_folder(root / "test", {"a": 1, "b": 3})
    data = load_image_classification_dataset(root)
    assert {name: len(ds) for name, ds in data.splits.items()} == {"train": 8, "validation": 3, "test": 4}
    assert Counter(_labels(data, "test")) == {"a": 1, "b": 3}


def test_image_folder_split_folders_mixed_with_class_folders_is_an_error(tmp_path, images):
    images.class_folder(tmp_path / "train", {"a": 2, "b": 2})
    images.class_folder(tmp_path, {"cat": 2})
    with pytest.raises(DataError, match=r"mixes split folders \(\['train'\]\) with other folders \(\['cat'\]\)"):
        load_image_classification_dataset(tmp_path)


def test_image_folder_without_class_folders_is_an_error(tmp_path, images):
    images.write(tmp_path / "a.png")
    with pytest.raises(DataError, match=r"no class sub-folders \(it holds 1 file\(s\) directly, e.g. 'a.png'\)"):
        load_image_classification_dataset(tmp_path)


def test_csv_with_paths_relative_to_the_file(tmp_path, images):
    for i in range(6):
        images.write(tmp_path / "imgs" / f"{i}.png", seed=i)
    (tmp_path / "meta").mkdir()
    csv = tmp_path / "meta" / "labels.csv"
    csv.write_text("image,label\n" + "".join(f"../imgs/{i}.png,{'cat' if i % 2 else 'dog'}\n" for i in range(6)))
    data = load_image_classification_dataset(csv, validation_split=0.34)
    assert data.id2label == {0: "cat", 1: "dog"}
    assert (len(data.splits["train"]), len(data.splits["validation"])) == (4, 2)
    seen = []
    for split in ("train", "validation"):
        for row in data.splits[split].cast_column("image", Image(decode=False)):
            index = int(row["image"]["path"].rsplit("/", 1)[1].split(".")[0])
            assert row["image"]["path"] == str((tmp_path / "imgs" / f"{index}.png").resolve())
            assert data.id2label[row["label"]] == ("cat" if index % 2 else "dog")
            seen.append(index)
    assert sorted(seen) == list(range(6))


def test_jsonl_with_a_split_column(tmp_path, images):
    lines = []
    for i in range(9):
        images.write(tmp_path / f"{i}.png", seed=i)
        split = ["train", "valid", "test"][i % 3]
        lines.append(f'{{"img": "{i}.png", "class": "{"ab"[i % 2]}", "split": "{split}"}}')
    path = tmp_path / "data.jsonl"
    path.write_text("\n".join(lines) + "\n")
    data = load_image_classification_dataset(path)
    assert {name: len(ds) for name, ds in data.splits.items()} == {"train": 3, "validation": 3, "test": 3}
    assert _labels(data, "test") == ["a", "b", "a"]  # rows 2, 5, 8 keep their order


def test_parquet_with_image_bytes_and_integer_ids(tmp_path, images):
    table = pa.table(
        {
            "image": pa.array([images.encoded("PNG", seed=i) for i in range(8)], pa.binary()),
            "label": pa.array([0, 1, 2, 3] * 2, pa.int64()),
        }
    )
    path = tmp_path / "data.parquet"
    pq.write_table(table, path)
    data = load_image_classification_dataset(path, validation_split=0.5)
    assert data.id2label == {0: "0", 1: "1", 2: "2", 3: "3"}
    assert sorted(data.splits["validation"]["label"]) == [0, 1, 2, 3]
    image = data.splits["validation"][0]["image"]
    assert image.size == (12, 10)


def test_parquet_in_the_datasets_layout_with_class_names(tmp_path, images):
    structs = [{"bytes": images.encoded("JPEG", seed=i), "path": f"photo{i}.jpg"} for i in range(6)]
    table = pa.table({"image": pa.array(structs, Image().pa_type), "label": [2, 0, 1, 2, 0, 1]})
    pq.write_table(table, tmp_path / "d.parquet")
    data = load_image_classification_dataset(tmp_path / "d.parquet", class_names=["ant", "bee", "cow"])
    assert data.id2label == {0: "ant", 1: "bee", 2: "cow"}
    assert data.splits["train"][0]["image"].mode == "RGB"


def test_an_in_memory_dataset_is_the_training_split(images):
    ds = Dataset.from_dict(
        {"image": [images.image(seed=i) for i in range(10)], "label": ["x", "y"] * 5, "other": list(range(10))},
        features=Features({"image": Image(), "label": Value("string"), "other": Value("int64")}),
    )
    data = load_image_classification_dataset(ds, validation_split=0.2)
    assert data.id2label == {0: "x", 1: "y"}
    assert data.splits["train"].column_names == ["image", "label"]  # unrequested columns are dropped
    assert Counter(data.splits["validation"]["label"]) == {0: 1, 1: 1}


def test_a_dataset_dict_keeps_its_class_label_order_and_split_aliases(images):
    features = Features({"img": Image(), "labels": ClassLabel(names=["zebra", "ant"])})
    dd = DatasetDict(
        {
            "train": Dataset.from_dict(
                {"img": [images.image(seed=i) for i in range(4)], "labels": [0, 1, 0, 1]}, features=features
            ),
            "dev": Dataset.from_dict({"img": [images.image(seed=9)], "labels": [1]}, features=features),
        }
    )
    data = load_image_classification_dataset(dd)
    assert data.id2label == {0: "zebra", 1: "ant"}  # a ClassLabel's order is the dataset's, not sorted
    assert list(data.splits) == ["train", "validation"]
    assert data.splits["validation"]["label"] == [1]


def test_a_dataset_saved_to_disk(tmp_path, images):
    ds = Dataset.from_dict(
        {"image": [images.image(seed=i) for i in range(4)], "label": [0, 1, 0, 1]},
        features=Features({"image": Image(), "label": ClassLabel(names=["no", "yes"])}),
    )
    DatasetDict({"train": ds, "test": ds}).save_to_disk(str(tmp_path / "saved"))
    data = load_image_classification_dataset(tmp_path / "saved", validation_split=0.5)
    assert data.id2label == {0: "no", 1: "yes"}
    assert {name: len(d) for name, d in data.splits.items()} == {"train": 2, "validation": 2, "test": 4}


def test_hub_dataset_fails_fast_when_the_hub_is_unreachable(monkeypatch):
    import socket

    from huggingface_hub import constants

    with socket.socket() as sock:  # a port that nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    monkeypatch.setattr(constants, "ENDPOINT", f"http://127.0.0.1:{port}")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(datasets, "load_dataset", lambda *a, **k: pytest.fail("load_dataset must not be tried"))
    with pytest.raises(HubUnavailableError) as info:
        load_image_classification_dataset("someone/beans")
    message = str(info.value)
    assert "'someone/beans'" in message and "unreachable" in message and "fashion-mnist-subset" in message


def test_hub_dataset_in_offline_mode_and_not_cached(monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    with pytest.raises(HubUnavailableError, match=r"'someone/beans'.*offline mode"):
        load_image_classification_dataset("someone/beans")


def test_hub_dataset_honours_transformers_offline_and_never_probes(monkeypatch):
    # The one offline policy (hftransfer._offline): the environment switches count even when huggingface_hub read
    # its settings earlier; then only the local cache is tried, and a miss names offline mode.
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")  # a probe would fail with "unreachable", not "offline mode"

    def cache_miss(*args, **kwargs):
        raise ConnectionError("not in the cache")

    monkeypatch.setattr(datasets, "load_dataset", cache_miss)
    with pytest.raises(HubUnavailableError, match=r"'someone/beans'.*offline mode"):
        load_image_classification_dataset("someone/beans")


def test_hub_dataset_with_an_invalid_hub_timeout_is_a_data_error(monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("HFTRANSFER_HUB_TIMEOUT", "soon")
    with pytest.raises(DataError, match="HFTRANSFER_HUB_TIMEOUT='soon' is not a number of seconds"):
        load_image_classification_dataset("someone/beans")


def test_hub_dataset_online_path_normalises_what_load_dataset_returns(monkeypatch, images):
    from hftransfer.data import hub_datasets

    features = Features({"image": Image(), "labels": ClassLabel(names=["angular_leaf_spot", "bean_rust", "healthy"])})
    calls = []

    def fake_load_dataset(name, **kwargs):
        calls.append((name, kwargs))
        make = lambda n: Dataset.from_dict(  # noqa: E731
            {"image": [images.image(seed=i) for i in range(n)], "labels": [i % 3 for i in range(n)]}, features=features
        )
        return DatasetDict({"train": make(9), "validation": make(3), "test": make(3)})

    monkeypatch.setattr(hub_datasets, "_require_reachable", lambda *args: None)  # patched where it is called
    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    data = load_image_classification_dataset("AI-Lab-Makerere/beans", hub_kwargs={"revision": "main"})
    assert calls == [("AI-Lab-Makerere/beans", {"revision": "main"})]
    assert data.id2label[1] == "bean_rust"
    assert {name: len(ds) for name, ds in data.splits.items()} == {"train": 9, "validation": 3, "test": 3}
    assert data.source == "AI-Lab-Makerere/beans (Hugging Face Hub)"


def test_a_path_that_does_not_exist_is_not_mistaken_for_a_hub_name(tmp_path):
    with pytest.raises(DataError, match=r"'\./missing\.csv' does not exist"):
        load_image_classification_dataset("./missing.csv")
    with pytest.raises(DataError, match="does not exist"):
        load_image_classification_dataset(tmp_path / "nowhere")


def test_fingerprints_are_stable_and_follow_content(tmp_path, images):
    root = images.class_folder(tmp_path / "ds", {"a": 5, "b": 5})
    first = load_image_classification_dataset(root)
    again = load_image_classification_dataset(root)
    assert first.fingerprint("train") == again.fingerprint("train")
    assert first.fingerprint("train") != first.fingerprint("validation")
    assert load_image_classification_dataset(root, seed=7).fingerprint("train") != first.fingerprint("train")
    images.write(root / "a" / "a_0.png", size=(14, 14), seed=99)  # a changed file changes the fingerprint
    assert load_image_classification_dataset(root).fingerprint("train") != first.fingerprint("train")
    with pytest.raises(KeyError, match="No split 'test'"):
        first.fingerprint("test")


def test_embedded_subset_fingerprint_is_derived_from_the_file(subset):
    sha256 = hashlib.sha256((fm.SUBSET_DIR / fm.SUBSET_FILE).read_bytes()).hexdigest()
    assert load_image_classification_dataset("fashion-mnist-subset").fingerprint("test") == subset.fingerprint("test")
    assert sha256 == fm.load_subset_record()["sha256"]
