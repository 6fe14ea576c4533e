"""Batched prediction and evaluation (`hftransfer.inference`) against a direct model forward and hand computations."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import PIL.Image
import pyarrow.parquet as pq
import pytest
import torch
from testing_common import FASHION_PARQUET, tiny_config

import hftransfer
from hftransfer import TransferConfig, TransferForImageClassification, TransferImageProcessor
from hftransfer.data import BadImageError
from hftransfer.inference import InferenceError, collect_image_paths, evaluate_model, load_model_and_processor, predict

# Model label order deliberately differs from the alphabetical order an image folder gives its classes.
CLASSES = ("Trouser", "Bag", "Sneaker")
FASHION_IDS = {"Trouser": 1, "Sneaker": 7, "Bag": 8}


def fashion_images(split: str, per_class: int) -> dict[str, list[bytes]]:
    """PNG bytes of the first `per_class` embedded Fashion-MNIST images of each of `CLASSES`."""
    rows = pq.read_table(FASHION_PARQUET, columns=["image", "label", "split"]).to_pylist()
    by_class: dict[str, list[bytes]] = {name: [] for name in CLASSES}
    for row in rows:
        for name, label in FASHION_IDS.items():
            if row["split"] == split and row["label"] == label and len(by_class[name]) < per_class:
                by_class[name].append(row["image"]["bytes"])
    return by_class


def build_tiny_model(directory: Path) -> Path:
    """A 32 px, 3-class model whose classifier is fitted by least squares on a few images (so predictions vary)."""
    torch.manual_seed(0)
    config = tiny_config(CLASSES, initializer_range=0.2)
    model = TransferForImageClassification(config).eval()
    processor = TransferImageProcessor.from_transfer_config(config)
    fit = fashion_images("train", 20)
    images = [PIL.Image.open(io.BytesIO(data)) for name in CLASSES for data in fit[name]]
    targets = torch.eye(3).repeat_interleave(20, dim=0) * 4 - 2
    with torch.no_grad():
        hidden = model.head(
            model.forward_features(processor(images=images, return_tensors="pt")["pixel_values"]), pre_logits=True
        )
        design = torch.cat([hidden, torch.ones(len(hidden), 1)], dim=1)
        solution = torch.linalg.lstsq(design, targets).solution
        model.head.classifier.weight.copy_(solution[:-1].T)
        model.head.classifier.bias.copy_(solution[-1])
    model.save_pretrained(directory)
    processor.save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny-model"))


@pytest.fixture(scope="module")
def image_dir(tmp_path_factory) -> Path:
    """Fashion-MNIST PNGs in nested folders, plus RGB/RGBA/16-bit images of other sizes and a non-image file."""
    root = tmp_path_factory.mktemp("images")
    for name, images in fashion_images("test", 3).items():
        folder = root / "fashion" / name.lower()
        folder.mkdir(parents=True)
        for i, data in enumerate(images):
            (folder / f"{i}.png").write_bytes(data)
    rng = np.random.default_rng(0)
    PIL.Image.fromarray(rng.integers(0, 256, (50, 40, 3), dtype=np.uint8)).save(root / "rgb.jpg", quality=95)
    PIL.Image.fromarray(rng.integers(0, 256, (20, 30, 4), dtype=np.uint8), mode="RGBA").save(root / "rgba.png")
    PIL.Image.fromarray(rng.integers(0, 65536, (33, 33), dtype=np.uint16)).save(root / "sixteen.png")
    (root / "notes.txt").write_text("not an image, and not collected from a folder")
    (root / ".hidden").mkdir()
    PIL.Image.new("RGB", (8, 8)).save(root / ".hidden" / "skipped.png")
    return root


@pytest.fixture(scope="module")
def labelled_dir(tmp_path_factory) -> Path:
    """An image folder with train/ and test/ class sub-folders (names sorted differently from the model's ids)."""
    root = tmp_path_factory.mktemp("labelled")
    for split, per_class in (("train", 4), ("test", 6)):
        for name, images in fashion_images(split, per_class).items():
            folder = root / split / name
            folder.mkdir(parents=True)
            for i, data in enumerate(images):
                (folder / f"{i}.png").write_bytes(data)
    return root


def direct_probabilities(model_dir: Path, paths: list[Path]) -> torch.Tensor:
    """Softmax of a plain forward of the reloaded model on the processor output: the reference for `predict`."""
    model = TransferForImageClassification.from_pretrained(model_dir).eval()
    processor = TransferImageProcessor.from_pretrained(model_dir)
    images = [hftransfer.convert_to_rgb_image(PIL.Image.open(path)) for path in paths]
    with torch.no_grad():
        return model(pixel_values=processor(images=images, return_tensors="pt")["pixel_values"]).logits.softmax(-1)


def test_collect_image_paths_walks_folders_recursively(image_dir):
    paths = collect_image_paths([image_dir])
    names = [p.relative_to(image_dir).as_posix() for p in paths]
    assert names == sorted(names)
    assert "fashion/bag/0.png" in names and "rgb.jpg" in names and "sixteen.png" in names
    assert "notes.txt" not in names and not any(".hidden" in n for n in names)
    assert len(names) == 9 + 3
    # A file named explicitly is kept whatever its extension; decoding decides.
    assert collect_image_paths(image_dir / "notes.txt") == [image_dir / "notes.txt"]


def test_collect_image_paths_errors(tmp_path):
    with pytest.raises(InferenceError, match="does-not-exist.png does not exist"):
        collect_image_paths([tmp_path / "does-not-exist.png"])
    (tmp_path / "readme.md").write_text("no images here")
    with pytest.raises(InferenceError, match="contains no images"):
        collect_image_paths(tmp_path)


def test_predict_matches_direct_forward(tiny_model, image_dir):
    paths = collect_image_paths([image_dir])
    results = predict(tiny_model, [image_dir], top_k=3, batch_size=4)
    assert [r["path"] for r in results] == [str(p) for p in paths]
    expected = direct_probabilities(tiny_model, paths)
    for result, probabilities in zip(results, expected):
        scores = [p["score"] for p in result["predictions"]]
        assert scores == sorted(scores, reverse=True)
        assert {p["label"] for p in result["predictions"]} == set(CLASSES)
        for prediction in result["predictions"]:
            assert prediction["score"] == pytest.approx(
                float(probabilities[CLASSES.index(prediction["label"])]), abs=1e-5
            )
    # The model is not constant: the fitted head tells the classes apart.
    assert len({r["predictions"][0]["label"] for r in results}) > 1


def test_batching_does_not_change_results(tiny_model, image_dir):
    reference = predict(tiny_model, [image_dir], top_k=2, batch_size=1)
    for batch_size in (3, 64):
        results = predict(tiny_model, [image_dir], top_k=2, batch_size=batch_size)
        assert [r["path"] for r in results] == [r["path"] for r in reference]
        for got, want in zip(results, reference):
            assert [p["label"] for p in got["predictions"]] == [p["label"] for p in want["predictions"]]
            assert [p["score"] for p in got["predictions"]] == pytest.approx(
                [p["score"] for p in want["predictions"]], abs=1e-5
            )


def test_predict_top_k_and_inputs(tiny_model, image_dir):
    model, processor = load_model_and_processor(tiny_model, device="cpu")
    image = PIL.Image.open(image_dir / "fashion" / "bag" / "0.png")
    from_pil = predict(model, image, top_k=10, processor=processor)  # a loaded model, a PIL image; k capped at 3
    from_path = predict(tiny_model, image_dir / "fashion" / "bag" / "0.png", top_k=1)
    assert from_pil[0]["path"] is None and len(from_pil[0]["predictions"]) == 3
    assert sum(p["score"] for p in from_pil[0]["predictions"]) == pytest.approx(1.0, abs=1e-5)
    [best] = from_path[0]["predictions"]
    assert best["label"] == from_pil[0]["predictions"][0]["label"]
    assert best["score"] == pytest.approx(from_pil[0]["predictions"][0]["score"], abs=1e-5)
    with pytest.raises(InferenceError, match="top_k=0"):
        predict(model, image, top_k=0)


def test_bad_image_is_named_or_skipped(tiny_model, image_dir, tmp_path):
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n this is not really a PNG")
    good = image_dir / "rgb.jpg"
    with pytest.raises(BadImageError, match="broken.png"):
        predict(tiny_model, [good, broken])
    results = predict(tiny_model, [good, broken, image_dir / "notes.txt"], on_bad_image="skip", top_k=1)
    assert len(results[0]["predictions"]) == 1 and "error" not in results[0]
    assert results[1]["predictions"] == [] and "broken.png" in results[1]["error"]
    assert results[2]["predictions"] == [] and "not an image" in results[2]["error"]


def test_missing_model_is_a_clear_error(tmp_path):
    with pytest.raises(InferenceError, match="does not exist"):
        load_model_and_processor(tmp_path / "no" / "such" / "model")
    with pytest.raises(InferenceError, match="no config.json"):
        load_model_and_processor(tmp_path)


def _hand_metrics(model_dir: Path, labelled: Path) -> dict:
    paths, references = [], []
    for name in sorted(CLASSES):  # the folder's classes
        for path in sorted((labelled / "test" / name).glob("*.png")):
            paths.append(path)
            references.append(CLASSES.index(name))  # the model's id of that class
    probabilities = direct_probabilities(model_dir, paths).double()
    references = np.array(references)
    predictions = probabilities.argmax(-1).numpy()
    loss = float(-torch.log(probabilities[torch.arange(len(references)), torch.as_tensor(references)]).mean())
    matrix = np.zeros((3, 3), dtype=int)
    for true, predicted in zip(references, predictions):
        matrix[true, predicted] += 1
    precision, recall, f1 = [], [], []
    for c in range(3):
        tp, fp, fn = matrix[c, c], matrix[:, c].sum() - matrix[c, c], matrix[c, :].sum() - matrix[c, c]
        p = tp / (tp + fp) if tp + fp else 0.0
        r = tp / (tp + fn) if tp + fn else 0.0
        precision.append(p), recall.append(r), f1.append(2 * p * r / (p + r) if p + r else 0.0)
    return {
        "accuracy": float((predictions == references).mean()),
        "loss": loss,
        "precision": float(np.mean(precision)),
        "recall": float(np.mean(recall)),
        "f1": float(np.mean(f1)),
        "confusion_matrix": matrix.tolist(),
        "per_class_accuracy": {name: matrix[i, i] / matrix[i].sum() for i, name in enumerate(CLASSES)},
    }


def test_evaluate_matches_hand_computation(tiny_model, labelled_dir, tmp_path):
    out = tmp_path / "eval"
    metrics = evaluate_model(tiny_model, labelled_dir, split="test", batch_size=4, output_dir=out)
    expected = _hand_metrics(tiny_model, labelled_dir)
    assert metrics["num_samples"] == 18
    assert metrics["confusion_matrix"] == expected["confusion_matrix"]
    for key in ("accuracy", "precision", "recall", "f1"):
        assert metrics[key] == pytest.approx(expected[key], abs=1e-9), key
    assert metrics["loss"] == pytest.approx(expected["loss"], abs=1e-5)
    assert metrics["per_class_accuracy"] == pytest.approx(expected["per_class_accuracy"])
    assert metrics["split"] == "test"
    assert json.loads((out / "metrics.json").read_text()) == metrics
    png = (out / "confusion_matrix.png").read_bytes()
    assert png.startswith(b"\x89PNG")
    # Batch size does not change the result.
    again = evaluate_model(tiny_model, labelled_dir, split="test", batch_size=64)
    assert again["confusion_matrix"] == metrics["confusion_matrix"]
    assert again["loss"] == pytest.approx(metrics["loss"], abs=1e-6)


def test_evaluate_rejects_mismatched_labels(tiny_model, labelled_dir, tmp_path):
    other = tmp_path / "other"
    for split in ("train", "test"):
        for name in ("Bag", "Coat"):
            source = labelled_dir / split / ("Bag" if name == "Bag" else "Trouser")
            (other / split / name).mkdir(parents=True)
            for path in source.glob("*.png"):
                (other / split / name / path.name).write_bytes(path.read_bytes())
    with pytest.raises(InferenceError, match=r"\['Coat'\] are not in the model's config.id2label"):
        evaluate_model(tiny_model, other, split="test")
    with pytest.raises(InferenceError, match="no 'nope' split"):
        evaluate_model(tiny_model, labelled_dir, split="nope")


def test_fusion_model_with_extra_features(labelled_dir, tmp_path):
    """A fusion head fed by a numeric CSV column: evaluate reads the columns from the saved recipe.yaml."""
    torch.manual_seed(0)
    config = TransferConfig(
        image_size=32,
        head="fusion",
        pooling="avg",
        fusion_stages=[3, 4],
        extra_features_dim=1,
        hidden_sizes=[8],
        num_labels=3,
        id2label=dict(enumerate(CLASSES)),
        label2id={name: i for i, name in enumerate(CLASSES)},
        initializer_range=0.5,
    )
    model_dir = tmp_path / "fusion-model"
    TransferForImageClassification(config).save_pretrained(model_dir)
    TransferImageProcessor.from_transfer_config(config).save_pretrained(model_dir)
    (model_dir / "recipe.yaml").write_text("data:\n  extra_feature_columns: [brightness]\n")

    def brightness_of(path: Path) -> float:
        return float(np.asarray(PIL.Image.open(path)).mean() / 255)

    rows = ["image,label,split,brightness"]
    for split in ("train", "test"):
        for path in sorted((labelled_dir / split).rglob("*.png")):
            rows.append(f"{path},{path.parent.name},{split},{brightness_of(path)}")
    table = tmp_path / "data.csv"
    table.write_text("\n".join(rows) + "\n")

    model = TransferForImageClassification.from_pretrained(model_dir).eval()
    processor = TransferImageProcessor.from_pretrained(model_dir)
    paths = sorted((labelled_dir / "test").rglob("*.png"))
    images = [hftransfer.convert_to_rgb_image(PIL.Image.open(path)) for path in paths]
    extra = torch.tensor([brightness_of(path) for path in paths]).unsqueeze(1)
    with torch.no_grad():
        logits = model(
            pixel_values=processor(images=images, return_tensors="pt")["pixel_values"], extra_features=extra
        ).logits
    probabilities = logits.softmax(-1)

    results = predict(model_dir, paths, top_k=1, batch_size=5, extra_features=extra.numpy())
    for result, row in zip(results, probabilities):
        [best] = result["predictions"]
        assert best["label"] == CLASSES[int(row.argmax())]
        assert best["score"] == pytest.approx(float(row.max()), abs=1e-5)
    with pytest.raises(InferenceError, match="needs 1 extra features per image"):
        predict(model_dir, paths[:1])

    metrics = evaluate_model(model_dir, table, split="test", batch_size=7)
    references = torch.tensor([CLASSES.index(path.parent.name) for path in paths])
    assert metrics["num_samples"] == len(paths)
    assert metrics["accuracy"] == pytest.approx(float((logits.argmax(-1) == references).double().mean()))
    assert metrics["loss"] == pytest.approx(float(torch.nn.functional.cross_entropy(logits, references)), abs=1e-5)
