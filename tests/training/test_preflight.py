"""Checks before any data are loaded: `report_to` integrations that are not installed (issue 11, item 5), a launch
whose world size differs from what its flags asked for (issue 11, item 5), and `model.init_from` against the
recipe's architecture keys (issue 10, item 6)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest
import torch
import yaml

from hftransfer import TransferConfig, TransferForImageClassification, TransferImageProcessor
from hftransfer.cli import main


def _error_line(err: str) -> str:
    return next(line for line in err.splitlines() if line.startswith("error: "))


def _recipe_file(tmp_path, make_recipe, feature_cache_dir, **sections):
    recipe = make_recipe(tmp_path / "out", feature_cache_dir, **sections)
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


def test_report_to_an_integration_that_is_not_installed_fails_before_anything_runs(
    tmp_path, make_recipe, feature_cache_dir, capsys
):
    path = _recipe_file(tmp_path, make_recipe, feature_cache_dir, training={"report_to": ["tensorboard"]})
    code = main(["train", str(path)])
    err = capsys.readouterr().err
    assert code == 2, err[-2000:]
    assert _error_line(err) == (
        "error: training.report_to: 'tensorboard' needs the 'tensorboard' package, which is not installed: pip install "
        "tensorboard, or remove 'tensorboard' from training.report_to. Nothing was run."
    )
    assert not (tmp_path / "out").exists(), "no output folder for a run that cannot start"

    path = _recipe_file(tmp_path, make_recipe, feature_cache_dir, training={"report_to": ["tensorbord"]})
    assert main(["train", str(path)]) == 2
    assert "Did you mean 'tensorboard'?" in _error_line(capsys.readouterr().err)


def test_world_size_warning_names_the_flags_that_start_two_ranks():
    from hftransfer.training.staged import launch_world_size_warning

    launcher = ["/usr/bin/python3", "/venv/bin/accelerate", "launch", "--cpu", "--num_processes", "2", "-m", "x"]
    warning = launch_world_size_warning(launcher, world_size=1)
    assert warning.startswith("accelerate launch asked for 2 processes but this run has world size 1")
    assert "--multi_gpu --num_processes 2 --num_machines 1 --mixed_precision no --dynamo_backend no" in warning
    assert launch_world_size_warning(launcher, world_size=2) is None
    assert launch_world_size_warning(["python", "-m", "hftransfer", "train", "--num_processes", "2"], 1) is None
    assert launch_world_size_warning([*launcher[:4], "--num_processes=4"], 1).startswith(
        "accelerate launch asked for 4"
    )


@pytest.mark.slow
def test_accelerate_launch_cpu_with_two_processes_warns_before_training(tmp_path, make_recipe, feature_cache_dir):
    # A report_to that cannot work stops the run right after the launch checks, so nothing trains here.
    path = _recipe_file(tmp_path, make_recipe, feature_cache_dir, training={"report_to": ["wandb"]})
    accelerate = shutil.which("accelerate", path=os.path.dirname(sys.executable))
    command = [accelerate, "launch", "--cpu", "--num_processes", "2", "-m", "hftransfer", "train", str(path)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode != 0
    assert "accelerate launch asked for 2 processes but this run has world size 1" in result.stderr, result.stderr
    assert "accelerate launch --multi_gpu --num_processes 2 --num_machines 1" in result.stderr
    assert "'wandb' needs the 'wandb' package" in result.stderr


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory):
    torch.manual_seed(0)
    labels = [f"class{i}" for i in range(10)]
    config = TransferConfig(
        image_size=32,
        pooling="avg",
        hidden_sizes=[8],
        num_labels=10,
        id2label=dict(enumerate(labels)),
        label2id={name: i for i, name in enumerate(labels)},
    )
    folder = tmp_path_factory.mktemp("init") / "model"
    TransferForImageClassification(config).save_pretrained(folder)
    TransferImageProcessor.from_transfer_config(config).save_pretrained(folder)
    return folder


def test_init_from_with_other_architecture_keys_is_a_clear_error(
    tmp_path, make_recipe, feature_cache_dir, saved_model, capsys
):
    path = _recipe_file(
        tmp_path,
        make_recipe,
        feature_cache_dir,
        model={"init_from": str(saved_model), "image_size": 64, "pooling": "max", "hidden_sizes": [8]},
    )
    code = main(["train", str(path)])
    err = capsys.readouterr().err
    assert code == 2, err[-2000:]
    message = _error_line(err)
    assert f"model.init_from={str(saved_model)!r} continues training that model with its own architecture" in message
    assert "model.image_size=64 (the model has 32)" in message
    assert "model.pooling='max' (the model has 'avg')" in message
    assert "hidden_sizes" not in message  # equal to the model's
    assert not (tmp_path / "out").exists()


def test_init_from_recipe_records_the_loaded_architecture(saved_model):
    from hftransfer.recipes import recipe_from_dict
    from hftransfer.training.staged import reconcile_init_from

    recipe = recipe_from_dict({"model": {"init_from": str(saved_model)}})
    assert (recipe.model.image_size, recipe.model.pooling, recipe.model.hidden_sizes) == (224, "flatten", [1024])
    reconcile_init_from(recipe)
    assert (recipe.model.image_size, recipe.model.pooling, recipe.model.hidden_sizes) == (32, "avg", [8])
    assert "image_size: 32" in recipe.to_yaml()
