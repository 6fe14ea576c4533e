import copy
import os
import subprocess
import sys

import pytest
import yaml


def tiny_recipe(output_dir, cache_dir, **sections) -> dict:
    """A recipe that trains in seconds on 2 CPU cores: 32 px Fashion-MNIST, real ImageNet VGG16 weights."""
    recipe = {
        "name": "tiny",
        "model": {"backbone_weights": "keras-imagenet", "image_size": 32, "pooling": "avg", "hidden_sizes": [32]},
        "data": {"dataset": "fashion-mnist-subset", "max_train_samples": 160, "max_eval_samples": 64},
        "stages": [
            {"name": "frozen", "epochs": 2, "learning_rate": 0.003, "trainable": "head"},
            {
                "name": "finetune",
                "epochs": 1,
                "learning_rate": 0.001,
                "trainable": "last_k",
                "last_k_blocks": 2,
                "backbone_lr_scale": 0.1,
            },
        ],
        "training": {
            "output_dir": str(output_dir),
            "per_device_train_batch_size": 32,
            "per_device_eval_batch_size": 64,
            "logging_steps": 1,
            "dataloader_num_workers": 0,
            "feature_cache_dir": str(cache_dir),
            "save_total_limit": 3,
        },
    }
    for section, values in sections.items():
        if isinstance(values, dict):
            recipe[section] = {**recipe.get(section, {}), **copy.deepcopy(values)}
        else:
            recipe[section] = copy.deepcopy(values)
    return recipe


def write_recipe(path, recipe: dict):
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    return path


@pytest.fixture(scope="session")
def make_recipe():
    """`make_recipe(output_dir, cache_dir, **section_overrides)` -> a tiny recipe mapping."""
    return tiny_recipe


@pytest.fixture(scope="session")
def feature_cache_dir(session_dir):
    return session_dir / "feature_cache"


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory, feature_cache_dir):
    """One real two-stage run shared by the tests that only read its outputs."""
    from hftransfer.recipes import recipe_from_dict
    from hftransfer.training import train

    output_dir = tmp_path_factory.mktemp("run") / "out"
    return train(recipe_from_dict(tiny_recipe(output_dir, feature_cache_dir)))


def launch_two_ranks(recipe_path, env=None) -> subprocess.CompletedProcess:
    """`hftransfer train RECIPE` on two real ranks (gloo DDP on CPU); asserts it succeeded."""
    # `--cpu --num_processes 2` would start ONE process here; this is the launch that gives two ranks (DESIGN.md).
    command = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--multi_gpu",
        "--num_processes",
        "2",
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        "--main_process_port",
        "0",
        "-m",
        "hftransfer",
        "train",
        str(recipe_path),
    ]
    completed = subprocess.run(command, capture_output=True, text=True, env={**os.environ, **(env or {})}, timeout=900)
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    return completed


@pytest.fixture(scope="session")
def two_ranks():
    """`two_ranks(recipe_path, env=None)`: run a recipe on two real ranks (see `launch_two_ranks`)."""
    return launch_two_ranks
