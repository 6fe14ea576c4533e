"""`hftransfer train --data PATH` without a recipe, the auto-recipe rule, test-time augmentation, and `evaluate`'s
default split."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import PIL.Image
import pyarrow.parquet as pq
import pytest
import torch
import yaml
from testing_common import FASHION_PARQUET

from hftransfer import TransferConfig, TransferForImageClassification, TransferImageProcessor
from hftransfer.auto_recipe import auto_recipe, choose_image_size, finetune_epochs, head_epochs
from hftransfer.cli import main
from hftransfer.inference import evaluate_model, predict, tta_views

CLASSES = {1: "Trouser", 7: "Sneaker", 8: "Bag"}


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory) -> Path:
    """A user's folder of real Fashion-MNIST PNGs: train/<class>/ only (no validation or test split), 12 per class."""
    root = tmp_path_factory.mktemp("auto") / "clothes"
    rows = pq.read_table(FASHION_PARQUET, columns=["image", "label", "split"]).to_pylist()
    counts: dict[int, int] = {}
    for row in rows:
        if row["split"] != "train" or row["label"] not in CLASSES or counts.get(row["label"], 0) >= 12:
            continue
        index = counts[row["label"]] = counts.get(row["label"], 0) + 1
        path = root / "train" / CLASSES[row["label"]] / f"{index}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(row["image"]["bytes"])
    return root


def test_the_rule_picks_size_and_schedule_from_the_data():
    assert choose_image_size(28, "cpu") == 64  # small images are upsampled to the CPU minimum
    assert choose_image_size(300, "cpu") == 128  # large ones capped by the CPU budget
    assert choose_image_size(100, "cpu") == 96
    assert choose_image_size(300, "gpu") == 224 and choose_image_size(40, "gpu") == 128
    assert [head_epochs(n) for n in (300, 5_000, 50_000)] == [20, 10, 5]
    assert [finetune_epochs(n, "cpu") for n in (300, 4_500, 100_000)] == [30, 4, 2]
    assert finetune_epochs(4_500, "gpu") == 30
    # The budget is compute: 128 px images cost ~4x the 64 px ones, so 675 photos get 6 epochs, not 23.
    assert finetune_epochs(675, "cpu", image_size=128) == 6 and finetune_epochs(675, "cpu", image_size=64) == 23


def test_auto_recipe_for_a_folder(image_folder, tmp_path):
    recipe = auto_recipe(str(image_folder), output_dir=str(tmp_path / "out"), budget="cpu")
    assert recipe["model"]["image_size"] == 64  # 28 px images
    assert recipe["data"]["dataset"] == str(image_folder)
    frozen, finetune = recipe["stages"]
    assert (frozen["trainable"], frozen["cache_features"], frozen["epochs"]) == ("head", True, 20)
    assert (finetune["trainable"], finetune["last_k_blocks"], finetune["augmentation"]) == ("last_k", 2, "light")
    assert finetune["early_stopping_patience"] == 3 and "mixup_alpha" not in finetune
    assert recipe["training"]["model_selection"] == "best"


def test_print_recipe_shows_what_data_would_train(image_folder, capsys):
    argv = ["train", "--data", str(image_folder), "--budget", "cpu", "--print-recipe", "--stages.finetune.epochs", "1"]
    assert main(argv) == 0
    recipe = yaml.safe_load(capsys.readouterr().out)
    assert recipe["name"] == "auto-clothes" and recipe["model"]["image_size"] == 64
    assert recipe["stages"][1]["epochs"] == 1.0  # overrides apply on top of the chosen recipe
    assert recipe["training"]["output_dir"] == "outputs/clothes"


def test_train_needs_a_recipe_or_data(capsys):
    assert main(["train"]) == 2
    assert "Give a RECIPE" in capsys.readouterr().err


@pytest.mark.slow
def test_train_on_a_folder_without_a_recipe_then_evaluate_defaults_to_its_split(image_folder, tmp_path, capsys):
    out = tmp_path / "run"
    argv = [
        "train",
        "--data",
        str(image_folder),
        "--output-dir",
        str(out),
        "--budget",
        "cpu",
        "--model.image_size",
        "32",
        "--stages.frozen.epochs",
        "2",
        "--stages.finetune.epochs",
        "1",
        "--training.feature_cache_dir",
        str(tmp_path / "cache"),
    ]
    assert main(argv) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["recipe_name"] == "auto-clothes" and metrics["evaluation_split"] == "validation"
    assert [s["name"] for s in metrics["stages"]] == ["frozen", "finetune"]
    assert metrics["stages"][0]["used_feature_cache"] and metrics["stages"][1]["augmentation"] == "light"
    assert "test" not in metrics["final"]
    capsys.readouterr()
    # No test split: evaluate uses the split training reported on, and says so.
    assert main(["evaluate", str(out), "--data", str(image_folder), "--no-save", "--json"]) == 0
    captured = capsys.readouterr()
    result = json.loads(captured.out)
    assert result["split"] == "validation" and "evaluating the 'validation' split" in captured.err
    assert result["accuracy"] == pytest.approx(metrics["final"]["validation"]["accuracy"])


@pytest.fixture(scope="module")
def small_model(tmp_path_factory):
    torch.manual_seed(0)
    config = TransferConfig(
        backbone="vgg11",
        image_size=32,
        pooling="avg",
        hidden_sizes=[8],
        num_labels=3,
        id2label=dict(enumerate(CLASSES.values())),
        label2id={name: i for i, name in enumerate(CLASSES.values())},
        initializer_range=0.3,
    )
    folder = tmp_path_factory.mktemp("tta") / "model"
    TransferForImageClassification(config).save_pretrained(folder)
    TransferImageProcessor.from_transfer_config(config).save_pretrained(folder)
    return folder


def test_tta_views():
    batch = torch.arange(2 * 3 * 8 * 8, dtype=torch.float32).reshape(2, 3, 8, 8)
    flip = tta_views(batch, "flip")
    assert len(flip) == 2 and torch.equal(flip[1], batch.flip(-1)) and torch.equal(flip[0], batch)
    crops = tta_views(batch, "flip-crops")
    assert len(crops) == 7 and all(view.shape == batch.shape for view in crops)
    assert tta_views(batch, None) == [batch]
    with pytest.raises(ValueError, match="tta='rotate' is invalid"):
        tta_views(batch, "rotate")


def test_predict_with_tta_averages_the_flipped_probabilities(small_model, image_folder):
    image = next((image_folder / "train" / "Bag").glob("*.png"))
    mirrored = image.parent.parent.parent / "mirrored.png"
    PIL.Image.open(image).transpose(PIL.Image.Transpose.FLIP_LEFT_RIGHT).save(mirrored)
    plain = {p["label"]: p["score"] for p in predict(str(small_model), [image], top_k=3)[0]["predictions"]}
    flipped = {p["label"]: p["score"] for p in predict(str(small_model), [mirrored], top_k=3)[0]["predictions"]}
    averaged = {
        p["label"]: p["score"] for p in predict(str(small_model), [image], top_k=3, tta="flip")[0]["predictions"]
    }
    for label in plain:
        assert averaged[label] == pytest.approx((plain[label] + flipped[label]) / 2, abs=1e-5)
    assert max(abs(plain[k] - flipped[k]) for k in plain) > 1e-4  # the flip really changed the input


def test_evaluate_reports_its_tta(small_model, image_folder, capsys):
    plain = evaluate_model(str(small_model), str(image_folder), split="train")
    with_tta = evaluate_model(str(small_model), str(image_folder), split="train", tta="flip-crops")
    assert plain["tta"] is None and with_tta["tta"] == "flip-crops"
    assert with_tta["num_samples"] == plain["num_samples"] and with_tta["loss"] != pytest.approx(plain["loss"])
    assert (
        main(["evaluate", str(small_model), "--data", str(image_folder), "--split", "train", "--tta", "--no-save"])
        == 0
    )
    assert "tta        flip (averaged probabilities)" in capsys.readouterr().out
    assert np.isfinite(with_tta["loss"])
