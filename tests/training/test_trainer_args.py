"""Issue 11, item 4: recipes pass any field of the installed transformers.TrainingArguments through, under
`training:` (all stages) and in a stage (that stage), validated and typed, with suggestions, shown by `--help`."""

from __future__ import annotations

import dataclasses
import json

import pytest
import transformers
import yaml

from hftransfer.cli import main
from hftransfer.recipes import RecipeError, recipe_from_dict
from hftransfer.training.staged import _training_arguments


def _recipe(training=None, stages=None):
    return recipe_from_dict(
        {
            "training": {"output_dir": "unused", **(training or {})},
            "stages": stages
            or [
                {"name": "frozen", "epochs": 1, "trainable": "head", "per_device_train_batch_size": 8},
                {"name": "finetune", "epochs": 1, "learning_rate": 1e-4, "trainable": "all", "adam_beta2": "0.99"},
            ],
        }
    )


def test_passthrough_fields_are_typed_applied_with_precedence_and_round_trip(tmp_path):
    recipe = _recipe(
        training={
            "gradient_accumulation_steps": "4",
            "max_grad_norm": 0.5,
            "dataloader_persistent_workers": "true",
            "lr_scheduler_kwargs": {"foo": 1},
            "logging_strategy": "epoch",
        }
    )
    assert recipe.training.trainer_args == {
        "gradient_accumulation_steps": 4,
        "max_grad_norm": 0.5,
        "dataloader_persistent_workers": True,
        "lr_scheduler_kwargs": {"foo": 1},
        "logging_strategy": "epoch",
    }
    assert recipe.stages[1].trainer_args == {"adam_beta2": 0.99}

    frozen = _training_arguments(recipe, recipe.stages[0], tmp_path / "s0", cached=False)
    finetune = _training_arguments(recipe, recipe.stages[1], tmp_path / "s1", cached=False)
    assert frozen.gradient_accumulation_steps == finetune.gradient_accumulation_steps == 4
    assert frozen.max_grad_norm == 0.5 and frozen.logging_strategy == "epoch"
    # A stage's pass-through key overrides training:'s value for that stage only.
    assert (frozen.per_device_train_batch_size, finetune.per_device_train_batch_size) == (8, 32)
    assert (frozen.adam_beta2, finetune.adam_beta2) == (0.999, 0.99)
    # hftransfer's own stage keys win, and what hftransfer needs stays.
    assert (frozen.learning_rate, finetune.learning_rate) == (1e-3, 1e-4)
    assert finetune.output_dir == str(tmp_path / "s1") and finetune.remove_unused_columns is False

    again = recipe_from_dict(yaml.safe_load(recipe.to_yaml()))
    assert again == recipe
    written = yaml.safe_load(recipe.to_yaml())
    assert written["training"]["gradient_accumulation_steps"] == 4  # written as a plain key, as a user writes it
    assert "trainer_args" not in written["training"] and written["stages"][1]["adam_beta2"] == 0.99


@pytest.mark.parametrize(
    "training, stages, message",
    [
        (
            {"gradient_acumulation_steps": 2},
            None,
            "Unknown key 'training.gradient_acumulation_steps' in recipe. Did you mean 'gradient_accumulation_steps'?",
        ),
        (
            {"max_grad_norm": "big"},
            None,
            "training.max_grad_norm='big' is invalid: expected float (transformers.TrainingArguments.max_grad_norm).",
        ),
        (
            {"logging_strategy": "sometimes"},
            None,
            "training.logging_strategy='sometimes' is invalid: expected one of no, steps, epoch "
            "(transformers.TrainingArguments.logging_strategy).",
        ),
        ({"learning_rate": 0.1}, None, "training.learning_rate is a stage key: set it in each stage"),
        (None, [{"name": "a", "num_train_epochs": 3}], "stages[0].num_train_epochs is set by hftransfer: use "),
        (None, [{"name": "a", "seed": 3}], "stages[0].seed holds for the whole run: set training.seed instead."),
        ({"bf16": True}, None, "training.bf16 is set by hftransfer: use training.precision instead."),
    ],
)
def test_passthrough_errors_name_the_key_and_what_is_expected(training, stages, message):
    with pytest.raises(RecipeError) as info:
        _recipe(training, stages)
    assert str(info.value).startswith(message), str(info.value)


def test_train_help_lists_the_installed_trainingarguments_fields(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    out = capsys.readouterr().out
    assert "transformers TrainingArguments pass-through" in out
    assert "gradient_accumulation_steps int (default 1): " in out
    listed = {f.name for f in dataclasses.fields(transformers.TrainingArguments) if f.init and f"  {f.name} " in out}
    assert {"max_grad_norm", "ddp_timeout", "hub_model_id", "fsdp", "deepspeed", "adam_beta2"} <= listed
    assert len(listed) > 60


def test_a_run_trains_with_a_passed_through_field(tmp_path, make_recipe, feature_cache_dir):
    recipe = make_recipe(
        tmp_path / "out",
        feature_cache_dir,
        data={"max_train_samples": 64, "max_eval_samples": 32},
        stages=[{"name": "frozen", "epochs": 1, "learning_rate": 0.003, "trainable": "head"}],
        training={"per_device_train_batch_size": 16, "gradient_accumulation_steps": 2},
    )
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    assert main(["train", str(path)]) == 0
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert metrics["stages"][0]["global_steps"] == 2  # 64 images / (16 x 2 accumulated) per optimizer step
    assert metrics["training"]["trainer_args"] == {"gradient_accumulation_steps": 2}
