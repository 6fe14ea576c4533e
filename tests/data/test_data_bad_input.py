"""Each kind of bad input has a clear outcome: an error naming the bad thing, a conversion, or a logged skip."""

from __future__ import annotations

import logging
import os
import re

import numpy as np
import pytest
import torch
from datasets import Dataset, Features, Image, Value
from torch.utils.data import DataLoader

from hftransfer.data import (
    BadImageError,
    DataError,
    ImageClassificationCollator,
    build_transforms,
    load_image_classification_dataset,
)


def _folder_with(tmp_path, images, bad_name, make_bad):
    root = images.class_folder(tmp_path / "ds", {"cat": 3, "dog": 3})
    bad = make_bad(root / "dog" / bad_name)
    return root, bad


@pytest.mark.parametrize(
    ("bad_name", "how", "reason"),
    [
        ("broken.png", "corrupt", "not an image"),
        ("cut.png", "truncated_png", "corrupt or truncated"),
        ("cut.jpg", "truncated_jpeg", "truncated JPEG"),
        ("empty.jpg", "zero_bytes", r"empty file \(0 bytes\)"),
        ("notes.txt", "text", "not an image"),
    ],
)
def test_a_bad_image_in_a_folder_is_an_error_naming_the_file(tmp_path, images, bad_name, how, reason):
    makers = {
        "corrupt": images.corrupt,
        "truncated_png": lambda p: images.truncated(p, "PNG"),
        "truncated_jpeg": lambda p: images.truncated(p, "JPEG"),
        "zero_bytes": lambda p: (p.write_bytes(b""), p)[1],
        "text": lambda p: (p.write_text("these are my notes\n"), p)[1],
    }
    root, bad = _folder_with(tmp_path, images, bad_name, makers[how])
    with pytest.raises(BadImageError, match=rf"1 bad image: \[train\] {bad} \({reason}") as info:
        load_image_classification_dataset(root)
    assert "on_bad_image='skip'" in str(info.value)
    assert [b.name for b in info.value.bad_images] == [str(bad)]


def test_bad_images_are_skipped_counted_and_logged_when_asked(tmp_path, images, caplog):
    root = images.class_folder(tmp_path / "ds", {"cat": 4, "dog": 4})
    bad = [images.corrupt(root / "cat" / "x.png"), (root / "dog" / "y.jpg"), images.truncated(root / "dog" / "z.png")]
    bad[1].write_bytes(b"")
    data = load_image_classification_dataset(root, on_bad_image="skip")
    assert len(data.splits["train"]) + len(data.splits["validation"]) == 8  # only the good images
    assert sorted(b.name for b in data.skipped_images) == sorted(str(p) for p in bad)
    assert "Skipped 3 bad image(s)" in caplog.text
    for path in bad:
        assert str(path) in caplog.text


def test_the_log_of_skipped_images_is_capped(tmp_path, images, caplog):
    root = images.class_folder(tmp_path / "ds", {"cat": 2, "dog": 2})
    for index in range(12):
        images.corrupt(root / "cat" / f"bad{index:02d}.png")
    data = load_image_classification_dataset(root, on_bad_image="skip")
    assert len(data.skipped_images) == 12
    assert "Skipped 12 bad image(s)" in caplog.text and "and 2 more" in caplog.text
    assert "bad11.png" not in caplog.text


def test_hidden_files_and_os_metadata_are_not_data(tmp_path, images):
    root = images.class_folder(tmp_path / "ds", {"cat": 2, "dog": 2})
    (root / "cat" / ".DS_Store").write_bytes(b"\x00\x01")
    (root / "dog" / "Thumbs.db").write_bytes(b"\x00\x01")
    (root / ".git").mkdir()
    data = load_image_classification_dataset(root, validation_split=0.5)
    assert len(data.splits["train"]) + len(data.splits["validation"]) == 4


@pytest.mark.parametrize(
    ("mode", "suffix", "expected_rgb"),
    [
        ("CMYK", "jpg", (254, 0, 0)),  # print red -> screen red (JPEG rounding aside)
        ("I;16", "png", (255, 255, 255)),  # 16-bit full scale -> white, not clipped garbage
        ("P", "png", (255, 255, 255)),  # transparent palette index -> composited on white
        ("RGBA", "png", (255, 255, 255)),  # fully transparent -> white
        ("L", "png", None),  # grayscale -> three equal channels
    ],
)
def test_unusual_modes_are_converted_not_rejected(tmp_path, images, processor, mode, suffix, expected_rgb):
    root = images.class_folder(tmp_path / "ds", {"a": 2, "b": 2})
    images.write(root / "a" / f"odd.{suffix}", mode=mode)
    data = load_image_classification_dataset(root, validation_split=0.2)
    transform = build_transforms(processor)
    splits = data.with_transforms(transform)
    rows = [row for split in splits.values() for row in split]
    assert all(row["pixel_values"].shape == (3, 32, 32) for row in rows)
    # Undo the normalisation to look at the colours of the odd image.
    mean = torch.tensor(processor.image_mean).view(3, 1, 1)
    std = torch.tensor(processor.image_std).view(3, 1, 1)
    odd = [
        row
        for split in data.splits.values()
        for row in split.cast_column("image", Image(decode=False))
        if row["image"]["path"].endswith(f"odd.{suffix}")
    ]
    assert len(odd) == 1
    pixels = transform({"image": [odd[0]["image"]], "label": [0]})["pixel_values"][0]
    rgb = ((pixels * std + mean) * 255).round()
    if expected_rgb is None:
        assert torch.equal(rgb[0], rgb[1]) and torch.equal(rgb[1], rgb[2])
    else:
        centre = rgb[:, 16, 16].tolist()
        assert np.allclose(centre, expected_rgb, atol=3), centre


def test_an_empty_class_folder_is_an_error_naming_it(tmp_path, images):
    root = images.class_folder(tmp_path / "ds", {"cat": 2, "dog": 2})
    (root / "bird").mkdir()
    with pytest.raises(DataError, match=rf"Empty class folder\(s\): \['{root / 'bird'}'\]"):
        load_image_classification_dataset(root)


def test_a_class_whose_images_are_all_skipped_is_an_error(tmp_path, images):
    root = images.class_folder(tmp_path / "ds", {"cat": 3, "dog": 3})
    images.corrupt(root / "bird" / "only.png")
    with pytest.raises(DataError, match=r"Class\(es\) \['bird'\] .* no usable training image left after skipping 1"):
        load_image_classification_dataset(root, on_bad_image="skip")


def test_a_single_class_is_an_error(tmp_path, images):
    root = images.class_folder(tmp_path / "ds", {"cat": 5})
    with pytest.raises(DataError, match=r"single class \('cat'\); classification needs at least two classes"):
        load_image_classification_dataset(root)


def test_a_split_smaller_than_one_batch_still_gives_a_batch(tmp_path, images, processor, caplog):
    root = tmp_path / "ds"
    images.class_folder(root / "train", {"a": 20, "b": 20})
    images.class_folder(root / "validation", {"a": 2, "b": 1})
    data = load_image_classification_dataset(root, batch_size=8)
    assert "Split 'validation'" in caplog.text and "3 example(s), fewer than one batch of 8" in caplog.text
    loader = DataLoader(
        build_transforms(processor).apply(data.splits["validation"]),
        batch_size=8,
        collate_fn=ImageClassificationCollator(),
    )
    batches = list(loader)
    assert len(batches) == 1
    assert batches[0]["pixel_values"].shape == (3, 3, 32, 32)
    assert sorted(batches[0]["labels"].tolist()) == [0, 0, 1]


def _csv(tmp_path, images, rows: list[str], count: int = 6):
    for i in range(count):
        images.write(tmp_path / f"{i}.png", seed=i)
    path = tmp_path / "data.csv"
    path.write_text("image,label\n" + "\n".join(rows) + "\n")
    return path


def test_duplicate_paths_with_the_same_label_are_dropped_and_logged(tmp_path, images, caplog):
    rows = [f"{i}.png,{'ab'[i % 2]}" for i in range(6)] + ["./0.png,a"]
    data = load_image_classification_dataset(_csv(tmp_path, images, rows), validation_split=0.34)
    assert len(data.splits["train"]) + len(data.splits["validation"]) == 6
    assert "lists 1 image(s) more than once" in caplog.text and "rows 1, 7" in caplog.text


def test_duplicate_paths_with_different_labels_are_an_error(tmp_path, images):
    rows = [f"{i}.png,{'ab'[i % 2]}" for i in range(6)] + ["2.png,b"]
    with pytest.raises(
        DataError, match=r"more than once with different labels: .*2\.png \(rows 3, 7: labels \['a', 'b'\]\)"
    ):
        load_image_classification_dataset(_csv(tmp_path, images, rows))


def test_missing_label_values_are_an_error_naming_the_rows(tmp_path, images):
    rows = ["0.png,a", "1.png,", "2.png,b", "3.png,a", "4.png,", "5.png,b"]
    with pytest.raises(
        DataError, match=r"Label column 'label' of data.csv has 2 missing value\(s\): row 2 \(.*1\.png\), row 5"
    ):
        load_image_classification_dataset(_csv(tmp_path, images, rows))
    ds = Dataset.from_dict(
        {"image": [images.image(seed=i) for i in range(4)], "label": ["a", None, "b", "a"]},
        features=Features({"image": Image(), "label": Value("string")}),
    )
    with pytest.raises(DataError, match=r"has 1 missing value\(s\): row 1"):
        load_image_classification_dataset(ds)


def test_a_csv_path_that_does_not_exist_is_named_with_its_row(tmp_path, images, caplog):
    rows = [f"{i}.png,{'ab'[i % 2]}" for i in range(6)] + ["gone/7.png,a"]
    csv = _csv(tmp_path, images, rows)
    missing = tmp_path / "gone" / "7.png"
    with pytest.raises(BadImageError, match=rf"{missing} \(file does not exist \(row 7 of data.csv\)\)"):
        load_image_classification_dataset(csv)
    data = load_image_classification_dataset(csv, on_bad_image="skip")
    assert [b.name for b in data.skipped_images] == [str(missing)]
    assert "Skipped 1 bad image(s)" in caplog.text


def test_a_bad_image_that_slips_through_is_named_when_decoded(tmp_path, images, processor):
    root = images.class_folder(tmp_path / "ds", {"cat": 3, "dog": 3})
    bad = images.truncated(root / "dog" / "late.png")
    data = load_image_classification_dataset(root, check_images="none", validation_split=0.2)
    paths = {
        name: [v["path"] for v in ds.cast_column("image", Image(decode=False))["image"]]
        for name, ds in data.splits.items()
    }
    split = next(name for name, split_paths in paths.items() if str(bad) in split_paths)
    dataset = build_transforms(processor).apply(data.splits[split])  # lazy: attaching decodes nothing
    with pytest.raises(BadImageError, match=rf"{bad} \(corrupt or truncated"):
        [row for row in dataset]  # noqa: C416


def test_bad_option_values_are_rejected(tmp_path, images):
    root = images.class_folder(tmp_path / "ds", {"a": 2, "b": 2})
    with pytest.raises(ValueError, match=r"on_bad_image='ignore' is invalid: expected one of \('error', 'skip'\)"):
        load_image_classification_dataset(root, on_bad_image="ignore")
    with pytest.raises(ValueError, match=r"check_images='deep' is invalid"):
        load_image_classification_dataset(root, check_images="deep")


def test_full_check_catches_what_the_fast_check_cannot(tmp_path, images):
    # A GIF cut short: PIL's verify() does not read GIF image data, decoding does.
    import PIL.Image

    root = images.class_folder(tmp_path / "ds", {"a": 2, "b": 2})
    gif = root / "a" / "cut.gif"
    images.image(size=(64, 64), seed=5).convert("P").save(gif)
    gif.write_bytes(gif.read_bytes()[: gif.stat().st_size // 2])
    assert PIL.Image.open(gif).format == "GIF"
    load_image_classification_dataset(root, validation_split=0.25)  # fast check: passes
    with pytest.raises(BadImageError, match=rf"{gif} \(corrupt or truncated"):
        load_image_classification_dataset(root, check_images="full")


def test_a_logger_warning_is_emitted_for_loose_files(tmp_path, images, caplog):
    root = images.class_folder(tmp_path / "ds", {"a": 2, "b": 2})
    (root / "README.md").write_text("about this data")
    with caplog.at_level(logging.WARNING, logger="hftransfer.data"):
        load_image_classification_dataset(root, validation_split=0.5)
    assert "Ignoring 1 file(s) directly in" in caplog.text and "README.md" in caplog.text


# --- issue 10: symlink loops, non-UTF-8 file names, classes named like missing values -------------------------------


def _all_labels(data) -> list[str]:
    names = data.id2label
    return sorted(names[i] for split in ("train", "validation") for i in data.splits[split]["label"])


@pytest.mark.parametrize("on_bad_image", ["error", "skip"])
def test_a_symlink_loop_in_an_image_folder_is_not_followed(tmp_path, images, caplog, on_bad_image):
    # train/animals/loop -> .. used to pull every image of every class in again, over and over, as "animals".
    root = tmp_path / "ds"
    images.class_folder(root / "train", {"animals": 4, "plants": 3})
    (root / "train" / "animals" / "loop").symlink_to("..", target_is_directory=True)
    (root / "train" / "plants" / "other").symlink_to("../animals", target_is_directory=True)
    with caplog.at_level(logging.WARNING, logger="hftransfer.data"):
        data = load_image_classification_dataset(root, on_bad_image=on_bad_image)
    assert _all_labels(data) == ["animals"] * 4 + ["plants"] * 3
    assert "not following 2 directory symlink(s)" in caplog.text
    assert f"{root / 'train' / 'animals' / 'loop'} -> {root / 'train'}" in caplog.text


def test_a_class_folder_that_links_to_its_parent_is_an_error(tmp_path, images):
    root = images.class_folder(tmp_path / "ds", {"cat": 3, "dog": 3})
    (root / "again").symlink_to(".", target_is_directory=True)
    with pytest.raises(DataError, match=rf"Class folder {root / 'again'} is a symlink to {root}, which holds it"):
        load_image_classification_dataset(root)


def test_a_non_utf8_file_name_is_named_and_can_be_skipped(tmp_path, images, caplog):
    root = images.class_folder(tmp_path / "ds", {"cat": 3, "dog": 3})
    raw = os.fsencode(root / "dog") + b"/caf\xe9.png"  # Latin-1 "café.png": not valid UTF-8
    with open(raw, "wb") as handle:
        handle.write(images.encoded())
    shown = f"{root / 'dog'}/caf\\xe9.png"
    with pytest.raises(BadImageError, match=re.escape(f"{shown} (file name is not valid UTF-8")) as info:
        load_image_classification_dataset(root)
    assert "on_bad_image='skip'" in str(info.value)
    with caplog.at_level(logging.WARNING, logger="hftransfer.data"):
        data = load_image_classification_dataset(root, on_bad_image="skip")
    assert _all_labels(data) == ["cat"] * 3 + ["dog"] * 3
    assert [b.name for b in data.skipped_images] == [shown]
    assert "Skipped 1 bad image(s)" in caplog.text and shown in caplog.text


@pytest.mark.parametrize("name", ["NA", "null", "NaN", "N/A", "None", "nan"])
def test_a_csv_class_named_like_a_missing_value_stays_a_label(tmp_path, images, name):
    rows = [f"{i}.png,{(name, 'dog')[i % 2]}" for i in range(6)]
    data = load_image_classification_dataset(_csv(tmp_path, images, rows), validation_split=0.34)
    assert sorted(data.id2label.values()) == sorted([name, "dog"])
    assert _all_labels(data) == sorted([name] * 3 + ["dog"] * 3)
    # An empty cell is still a missing label.
    with pytest.raises(DataError, match=r"has 1 missing value\(s\): row 7"):
        load_image_classification_dataset(_csv(tmp_path, images, [*rows, "0.png,"]))
