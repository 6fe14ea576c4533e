"""Staged fine-tuning end to end: what trains in each stage, what is written, what the cache does."""

import json
import logging

import PIL.Image
import pytest
import torch
from huggingface_hub import ModelCard
from safetensors.torch import load_file

from hftransfer import TransferConfig, TransferForImageClassification
from hftransfer.recipes import StageArguments, recipe_from_dict
from hftransfer.training import TransferTrainer, apply_stage_trainable, build_parameter_groups, train
from hftransfer.weights import load_backbone_weights


def _backbone(state: dict) -> dict:
    return {k.removeprefix("backbone."): v for k, v in state.items() if k.startswith("backbone.")}


def _head(state: dict) -> dict:
    return {k: v for k, v in state.items() if k.startswith("head.")}


def test_each_stage_trains_exactly_its_parameters(trained_run):
    stages_dir = trained_run.output_dir / "stages"
    after_frozen = load_file(str(stages_dir / "00-frozen" / "final" / "model.safetensors"))
    after_finetune = load_file(str(stages_dir / "01-finetune" / "final" / "model.safetensors"))
    imagenet = load_backbone_weights("keras-imagenet").state_dict

    # Stage 1 (head only): the backbone is bit-identical to the ImageNet weights.
    for name, tensor in _backbone(after_frozen).items():
        assert torch.equal(tensor, imagenet[name]), name
    # Stage 2 (last 2 blocks): blocks 1-3 unchanged, blocks 4-5 trained, head keeps training.
    model = TransferForImageClassification(TransferConfig(image_size=32, pooling="avg", hidden_sizes=[32]))
    for name, tensor in _backbone(after_finetune).items():
        stage = model.backbone.stage_of_layer(int(name.split(".")[1]))
        assert torch.equal(tensor, imagenet[name]) == (stage < 3), name
    for name, tensor in _head(after_finetune).items():
        assert not torch.equal(tensor, after_frozen[name]), name


def test_stage_records_and_final_outputs(trained_run):
    out = trained_run.output_dir
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics == json.loads(json.dumps(trained_run.metrics))
    frozen, finetune = metrics["stages"]
    assert frozen["used_feature_cache"] is True and finetune["used_feature_cache"] is False
    assert frozen["trainable_parameters"] == 512 * 32 + 32 + 32 * 10 + 10
    block4_and_5 = (256 * 512 * 9 + 512) + 5 * (512 * 512 * 9 + 512)  # 6 convs, the first one 256 -> 512
    assert finetune["trainable_parameters"] == frozen["trainable_parameters"] + block4_and_5
    assert frozen["global_steps"] == 2 * 5 and finetune["global_steps"] == 5  # 160 images / batch 32
    for split in ("validation", "test"):
        result = metrics["final"][split]
        assert 0.0 <= result["accuracy"] <= 1.0
        assert len(result["confusion_matrix"]) == 10
        assert sum(map(sum, result["confusion_matrix"])) == result["num_samples"] == 64
        assert set(result["per_class_accuracy"]) == set(metrics["id2label"].values())
    # Real ImageNet features on real images: well above chance (0.1) after a few seconds of training.
    assert metrics["final"]["test"]["accuracy"] > 0.3
    history = json.loads((out / "history.json").read_text())
    assert [h["stage"] for h in history] == ["frozen", "finetune"]
    assert any("eval_accuracy" in entry for entry in history[0]["log_history"])
    for name in (
        "training_curves.png",
        "confusion_matrix.png",
        "confusion_matrix_frozen.png",
        "confusion_matrix_finetune.png",
    ):
        with PIL.Image.open(out / name) as image:
            assert image.width > 200 and image.height > 200
    card = ModelCard.load(out / "README.md")
    accuracy = {(r.dataset_split, r.metric_type): r.metric_value for r in card.data.eval_results}
    assert accuracy[("test", "accuracy")] == pytest.approx(metrics["final"]["test"]["accuracy"])
    assert (out / "recipe.yaml").is_file() and (out / "preprocessor_config.json").is_file()


def test_reloaded_model_reproduces_the_reported_test_accuracy(trained_run):
    from hftransfer.data import load_image_classification_dataset
    from hftransfer.inference import evaluate_model

    data = load_image_classification_dataset("fashion-mnist-subset")
    data.splits["test"] = data.splits["test"].select(range(64))
    reloaded = evaluate_model(str(trained_run.output_dir), data, split="test", batch_size=64)
    assert reloaded["accuracy"] == pytest.approx(trained_run.metrics["final"]["test"]["accuracy"])


def test_rerun_into_a_used_output_dir_is_refused(trained_run, feature_cache_dir, make_recipe):
    recipe = recipe_from_dict(make_recipe(trained_run.output_dir, feature_cache_dir))
    before = (trained_run.output_dir / "metrics.json").read_bytes()
    with pytest.raises(FileExistsError, match="--resume"):
        train(recipe)
    assert (trained_run.output_dir / "metrics.json").read_bytes() == before


def test_parameter_groups_give_the_backbone_a_scaled_learning_rate():
    model = TransferForImageClassification(TransferConfig(image_size=32, pooling="avg", hidden_sizes=[8]))
    apply_stage_trainable(model, StageArguments(trainable="last_k", last_k_blocks=1))
    groups = build_parameter_groups(model, learning_rate=1e-3, backbone_lr_scale=0.1, weight_decay=0.01)
    by_name = {(g["name"], g["weight_decay"]): g for g in groups}
    assert by_name[("backbone.stage4", 0.01)]["lr"] == pytest.approx(1e-4)
    assert by_name[("head", 0.01)]["lr"] == pytest.approx(1e-3)
    assert by_name[("backbone.stage4", 0.0)]["lr"] == pytest.approx(1e-4)  # biases: no weight decay
    backbone_params = {id(p) for g in groups if g["name"].startswith("backbone") for p in g["params"]}
    assert backbone_params == {id(p) for p in model.backbone.stage_parameters(4)}

    apply_stage_trainable(model, StageArguments(trainable="head"))
    assert {g["name"] for g in build_parameter_groups(model, 1e-3, 0.1, 0.0)} == {"head"}


def test_layer_lr_decay_slows_each_earlier_block_and_l2sp_drops_backbone_weight_decay():
    model = TransferForImageClassification(TransferConfig(image_size=32, pooling="avg", hidden_sizes=[8]))
    apply_stage_trainable(model, StageArguments(trainable="all"))
    groups = build_parameter_groups(model, 1e-3, 0.1, 0.05, layer_lr_decay=0.5, backbone_weight_decay=False)
    rates = {g["name"]: g["lr"] for g in groups}
    assert rates == pytest.approx({"head": 1e-3, **{f"backbone.stage{s}": 1e-4 * 0.5 ** (4 - s) for s in range(5)}})
    # L2-SP replaces plain weight decay on the backbone; the head's weights still decay.
    assert {g["weight_decay"] for g in groups if g["name"].startswith("backbone")} == {0.0}
    assert {g["weight_decay"] for g in groups if g["name"] == "head"} == {0.0, 0.05}
    trained = {id(p) for g in groups for p in g["params"]}
    assert trained == {id(p) for p in model.parameters()}


def test_trainer_optimizer_uses_the_groups(tmp_path):
    from transformers import TrainingArguments

    model = TransferForImageClassification(TransferConfig(image_size=32, pooling="avg", hidden_sizes=[8]))
    apply_stage_trainable(model, StageArguments(trainable="all"))
    args = TrainingArguments(output_dir=str(tmp_path), learning_rate=2e-3, report_to=[], use_cpu=True)
    trainer = TransferTrainer(model=model, args=args, backbone_lr_scale=0.25)
    optimizer = trainer.create_optimizer()
    rates = sorted({g["lr"] for g in optimizer.param_groups})
    assert rates == pytest.approx([5e-4, 2e-3])
    assert sum(p.numel() for g in optimizer.param_groups for p in g["params"]) == sum(
        p.numel() for p in model.parameters()
    )


def test_augmentation_disables_the_cache_and_says_why(tmp_path, feature_cache_dir, caplog, make_recipe):
    recipe = make_recipe(
        tmp_path / "out",
        feature_cache_dir,
        data={"augmentation": "light", "max_train_samples": 32, "max_eval_samples": 32},
        stages=[{"name": "frozen", "epochs": 1, "trainable": "head"}],
    )
    with caplog.at_level(logging.WARNING, logger="hftransfer"):
        result = train(recipe_from_dict(recipe))
    assert result.metrics["stages"][0]["used_feature_cache"] is False
    assert "not caching backbone features because data.augmentation='light'" in caplog.text


def test_fusion_recipe_with_an_extra_feature_column(tmp_path, feature_cache_dir, make_recipe):
    recipe = make_recipe(
        tmp_path / "fusion",
        feature_cache_dir,
        model={"head": "fusion", "pooling": "avg", "fusion_stages": [2, 3, 4]},
        data={"extra_feature_columns": ["mean_intensity"], "max_train_samples": 64, "max_eval_samples": 32},
        stages=[{"name": "frozen", "epochs": 2, "learning_rate": 0.003, "trainable": "head"}],
    )
    result = train(recipe_from_dict(recipe))
    assert result.metrics["stages"][0]["used_feature_cache"] is True
    config = result.model.config
    assert config.extra_features_dim == 1 and config.fusion_stages == [2, 3, 4]
    # Head input: pooled block3 (256) + block4 (512) + block5 (512) + 1 extra feature.
    assert result.model.head.hidden[0].in_features == 256 + 512 + 512 + 1
    with pytest.raises(ValueError, match="extra_features"):
        result.model(torch.randn(1, 3, 32, 32))
