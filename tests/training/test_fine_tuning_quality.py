"""What makes fine-tuning pay off: per-stage augmentation, model selection across stages, early stopping, the
regularisers of unfrozen stages, and the warning for a model that did not learn."""

import json

import numpy as np
import pytest
import torch
from huggingface_hub import ModelCard
from transformers import AutoImageProcessor

from hftransfer import TransferConfig, TransferForImageClassification
from hftransfer.metrics import compute_classification_metrics, training_warnings
from hftransfer.recipes import RecipeError, StageArguments, recipe_from_dict
from hftransfer.training import StagedFineTuner, TransferTrainer, apply_stage_trainable, train
from hftransfer.training.stage_inputs import plan_stage


@pytest.fixture(scope="module")
def selection_run(tmp_path_factory, feature_cache_dir, make_recipe):
    """Stage 1 on cached features; stage 2 augments, smooths labels and barely moves (lr 1e-9), so it never beats
    stage 1: selection must keep stage 1's model and early stopping must end stage 2 after two evaluations."""
    output_dir = tmp_path_factory.mktemp("selection") / "out"
    recipe = make_recipe(
        output_dir,
        feature_cache_dir,
        stages=[
            {"name": "frozen", "epochs": 3, "learning_rate": 0.003, "trainable": "head"},
            {
                "name": "finetune",
                "epochs": 6,
                "learning_rate": 1e-9,
                "trainable": "last_k",
                "last_k_blocks": 1,
                "augmentation": "light",
                "label_smoothing": 0.1,
                "early_stopping_patience": 1,
            },
        ],
    )
    return train(recipe_from_dict(recipe)), recipe


def _evaluations(history: list[dict], metric: str = "eval_accuracy") -> list[tuple[str, float, int, float]]:
    return [
        (stage["stage"], entry["epoch"], entry["step"], entry[metric])
        for stage in history
        for entry in stage["log_history"]
        if metric in entry
    ]


def test_per_stage_augmentation_caches_stage_one_and_augments_stage_two(selection_run):
    result, recipe = selection_run
    frozen, finetune = result.metrics["stages"]
    assert (frozen["augmentation"], frozen["used_feature_cache"]) == ("none", True)
    assert (finetune["augmentation"], finetune["used_feature_cache"]) == ("light", False)

    # Stage 2's training transform is random: the same image comes out different twice; stage 1's is not.
    tuner = StagedFineTuner(recipe_from_dict(recipe))
    tuner.data, _ = tuner._load_data()
    processor = AutoImageProcessor.from_pretrained(result.output_dir)
    plans = [plan_stage(tuner.recipe, stage, result.model, processor, 1, 1, 1) for stage in tuner.recipe.stages]
    stage_one_transform, stage_two_transform = (plan.train_transform for plan in plans)
    assert plans[0].use_feature_cache and stage_one_transform.deterministic
    assert not stage_two_transform.deterministic
    rows = tuner.data.splits["train"].select([0, 0])
    torch.manual_seed(0)
    first, second = rows.with_transform(stage_two_transform)[:2]["pixel_values"]
    assert not torch.equal(first, second)
    first, second = rows.with_transform(stage_one_transform)[:2]["pixel_values"]
    assert torch.equal(first, second)


def test_selection_keeps_the_best_evaluation_across_stages(selection_run):
    result, recipe = selection_run
    out = result.output_dir
    metrics = json.loads((out / "metrics.json").read_text())
    history = json.loads((out / "history.json").read_text())
    evaluations = _evaluations(history)
    best_value = max(value for *_, value in evaluations)
    first_best = next(e for e in evaluations if e[3] == best_value)
    selected = metrics["selected"]
    assert selected["stage"] == first_best[0] == "frozen"
    assert (selected["epoch"], selected["step"], selected["value"]) == pytest.approx(first_best[1:])
    assert selected["metric"] == "accuracy" and selected["policy"] == "best"
    assert "did not improve on stage frozen" in selected["reason"]
    # The final validation numbers are the selected model's, and the saved model reproduces them.
    assert metrics["final"]["validation"]["accuracy"] == pytest.approx(best_value)
    from hftransfer.inference import evaluate_model

    data, _ = StagedFineTuner(recipe_from_dict(recipe))._load_data()  # the run's own validation images
    reloaded = evaluate_model(str(out), data, split="validation", batch_size=64)
    assert reloaded["accuracy"] == pytest.approx(best_value)
    card = (out / "README.md").read_text()
    assert "did not improve on stage frozen" in card and "the stage frozen model" in card


def test_early_stopping_ends_a_stage_that_stopped_improving(selection_run):
    result, _ = selection_run
    finetune = result.metrics["stages"][1]
    steps_per_epoch = 160 // 32
    # patience 1: the first evaluation sets the stage's best, the second does not beat it -> stop after epoch 2.
    assert finetune["global_steps"] == 2 * steps_per_epoch < 6 * steps_per_epoch
    assert finetune["stopped_early_at_step"] == 2 * steps_per_epoch
    assert finetune["regularization"] == {"label_smoothing": 0.1}
    assert result.metrics["stages"][0]["regularization"] == {}
    card = (result.output_dir / "README.md").read_text()
    assert "stopped early at step 10" in card and "label smoothing 0.1" in card


def test_model_selection_last_keeps_the_end_of_the_last_stage(tmp_path, feature_cache_dir, make_recipe):
    recipe = make_recipe(
        tmp_path / "out",
        feature_cache_dir,
        stages=[{"name": "frozen", "epochs": 2, "learning_rate": 0.003, "trainable": "head"}],
        training={"model_selection": "last", "metric_for_best_model": "loss"},
    )
    result = train(recipe_from_dict(recipe))
    selected = result.metrics["selected"]
    assert (selected["policy"], selected["stage"], selected["step"], selected["metric"]) == (
        "last",
        "frozen",
        10,
        "loss",
    )
    assert selected["value"] == pytest.approx(result.metrics["final"]["validation"]["loss"])


def _batch(model, n=8, seed=0):
    generator = torch.Generator().manual_seed(seed)
    pixels = torch.randn(n, 3, model.config.image_size, model.config.image_size, generator=generator)
    return {"pixel_values": pixels, "labels": torch.arange(n) % model.config.num_labels}


def _trainer(tmp_path, model, **kwargs):
    from transformers import TrainingArguments

    args = TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to=[], remove_unused_columns=False)
    return TransferTrainer(model=model, args=args, **kwargs)


@pytest.fixture
def small_model():
    torch.manual_seed(0)
    model = TransferForImageClassification(
        TransferConfig(backbone="vgg11", image_size=32, pooling="avg", hidden_sizes=[16], num_labels=4)
    )
    with torch.no_grad():  # confident, uneven logits: a freshly initialised head outputs ~0 for every class
        model.head.classifier.bias.copy_(torch.tensor([3.0, -2.0, 1.0, 0.0]))
    return model


def test_label_smoothing_changes_the_training_loss_only(tmp_path, small_model):
    batch = _batch(small_model)
    batch["labels"] = torch.ones_like(batch["labels"])  # all one class: smoothing moves the loss off plain CE
    trainer = _trainer(tmp_path, small_model, label_smoothing=0.2)
    small_model.train()
    logits = small_model(pixel_values=batch["pixel_values"]).logits
    smoothed = torch.nn.functional.cross_entropy(logits, batch["labels"], label_smoothing=0.2)
    plain = torch.nn.functional.cross_entropy(logits, batch["labels"])
    assert trainer.compute_loss(small_model, dict(batch)).item() == pytest.approx(smoothed.item(), rel=1e-5)
    assert abs(smoothed.item() - plain.item()) > 1e-3
    small_model.eval()  # evaluation reports the plain loss, comparable across stages
    assert trainer.compute_loss(small_model, dict(batch)).item() == pytest.approx(plain.item(), rel=1e-5)


@pytest.mark.parametrize("kind", ["mixup_alpha", "cutmix_alpha"])
def test_mixup_and_cutmix_train_on_mixed_images_with_soft_targets(tmp_path, small_model, kind):
    from timm.data import Mixup
    from timm.loss import SoftTargetCrossEntropy

    batch = _batch(small_model)
    trainer = _trainer(tmp_path, small_model, **{kind: 1.0})
    small_model.train()  # no dropout or BatchNorm in this model: the same images give the same logits
    np.random.seed(3)
    loss = trainer.compute_loss(small_model, {k: v.clone() for k, v in batch.items()}).item()  # Mixup works in place
    np.random.seed(3)
    mixer = Mixup(**{"mixup_alpha": 0.0, "cutmix_alpha": 0.0, kind: 1.0}, label_smoothing=0.0, num_classes=4)
    mixed, targets = mixer(batch["pixel_values"].clone(), batch["labels"].clone())
    expected = SoftTargetCrossEntropy()(small_model(pixel_values=mixed).logits, targets).item()
    assert loss == pytest.approx(expected, rel=1e-5)
    # The images were mixed and the targets are soft (no longer one-hot).
    assert not torch.equal(mixed, batch["pixel_values"])
    assert targets.shape == (8, 4) and float(targets.max()) < 1.0


def test_l2sp_penalises_the_distance_from_the_pretrained_backbone(tmp_path, small_model):
    apply_stage_trainable(small_model, StageArguments(trainable="last_k", last_k_blocks=1))
    reference = {
        name: p.detach().clone()
        for name, p in small_model.named_parameters()
        if small_model.backbone_stage_of(name) is not None
    }
    trainer = _trainer(tmp_path, small_model, l2sp_strength=0.5, l2sp_reference=reference)
    assert trainer.l2sp_penalty(small_model).item() == 0.0
    with torch.no_grad():
        trainable = next(p for n, p in small_model.named_parameters() if small_model.backbone_stage_of(n) == 4)
        frozen = next(p for n, p in small_model.named_parameters() if small_model.backbone_stage_of(n) == 0)
        trainable.add_(0.1)
        frozen.add_(0.1)  # frozen parameters do not move in training and are not penalised
    assert trainer.l2sp_penalty(small_model).item() == pytest.approx(0.5 * 0.5 * 0.01 * trainable.numel(), rel=1e-4)
    small_model.train()
    batch = _batch(small_model)
    plain = torch.nn.functional.cross_entropy(small_model(pixel_values=batch["pixel_values"]).logits, batch["labels"])
    total = trainer.compute_loss(small_model, dict(batch)).item()
    assert total == pytest.approx(plain.item() + trainer.l2sp_penalty(small_model).item(), rel=1e-5)


def test_regularisers_are_off_unless_a_stage_sets_them(tmp_path, small_model):
    assert not _trainer(tmp_path, small_model).regularizes_loss
    assert _trainer(tmp_path, small_model, label_smoothing=0.1).regularizes_loss


def test_collapse_warning_fires_on_a_model_that_predicts_one_class(small_model):
    with torch.no_grad():
        small_model.head.classifier.bias.copy_(torch.tensor([0.0, 0.0, 50.0, 0.0]))
    small_model.eval()
    batch = _batch(small_model, n=40)
    predictions = small_model(pixel_values=batch["pixel_values"]).logits.argmax(-1)
    metrics = compute_classification_metrics(predictions, batch["labels"], ["a", "b", "c", "d"])
    warnings = training_warnings(metrics, ["a", "b", "c", "d"], "the final model")
    assert any("predicts 'c' for 100% of the 40 validation images" in w for w in warnings)
    assert any("at chance level" in w for w in warnings)
    healthy = compute_classification_metrics(batch["labels"], batch["labels"], ["a", "b", "c", "d"])
    assert training_warnings(healthy, ["a", "b", "c", "d"], "the final model") == []


def test_warnings_go_to_metrics_and_the_top_of_the_card(tmp_path, feature_cache_dir, make_recipe):
    recipe = make_recipe(
        tmp_path / "out",
        feature_cache_dir,
        model={"backbone_weights": "random"},
        stages=[{"name": "frozen", "epochs": 1, "learning_rate": 1e-9, "trainable": "head"}],
    )
    result = train(recipe_from_dict(recipe))
    warnings = json.loads((tmp_path / "out" / "metrics.json").read_text())["warnings"]
    assert any("not transfer learning" in w for w in warnings)
    assert any("Training failed" in w for w in warnings), warnings
    card = ModelCard.load(tmp_path / "out" / "README.md")
    body = card.text.split("\n## ")[0]
    assert "> **Warning:** Training failed" in body
    assert result.metrics["warnings"] == warnings


@pytest.mark.parametrize(
    ("stage", "message"),
    [
        ({"warmup_ratio": 5}, "warmup_ratio=5.0 is invalid"),
        ({"learning_rate": float("inf")}, "expected a finite number"),
        ({"early_stopping_patience": 0}, "early_stopping_patience=0 is invalid"),
        ({"label_smoothing": 1.0}, "label_smoothing=1.0 is invalid"),
        ({"layer_lr_decay": 0}, "layer_lr_decay=0.0 is invalid"),
        ({"augmentation": "heavy"}, "augmentation='heavy' is invalid"),
        ({"augmentation": {"flip": 0.5}}, "Unknown augmentation option"),
    ],
)
def test_bad_stage_values_are_clear_errors(stage, message):
    with pytest.raises(RecipeError, match=message.replace("(", r"\(").replace("[", r"\[")):
        recipe_from_dict({"stages": [{"name": "s", **stage}]})


def test_bad_selection_settings_are_clear_errors():
    with pytest.raises(RecipeError, match="metric_for_best_model='top5' is invalid"):
        recipe_from_dict({"training": {"metric_for_best_model": "top5"}})
    with pytest.raises(RecipeError, match="model_selection='first' is invalid"):
        recipe_from_dict({"training": {"model_selection": "first"}})


def test_mixup_keeps_every_evaluation_image_and_trains_an_odd_batch_unmixed(tmp_path, small_model):
    # Regression: mixup stages used dataloader_drop_last, which the Trainer also applies to evaluation (448 of 500
    # validation images were scored). An odd (last) training batch now trains unmixed instead.
    from hftransfer.training.staged import _training_arguments

    recipe = recipe_from_dict({"stages": [{"name": "mix", "trainable": "all", "mixup_alpha": 0.2}]})
    args = _training_arguments(recipe, recipe.stages[0], tmp_path, cached=False)
    assert args.dataloader_drop_last is False
    batch = _batch(small_model, n=7)
    trainer = _trainer(tmp_path, small_model, mixup_alpha=1.0)
    small_model.train()
    plain = torch.nn.functional.cross_entropy(small_model(pixel_values=batch["pixel_values"]).logits, batch["labels"])
    loss = trainer.compute_loss(small_model, {k: v.clone() for k, v in batch.items()})
    assert loss.item() == pytest.approx(plain.item(), rel=1e-5)
