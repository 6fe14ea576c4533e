"""Issue 10, item 18: a training log has no "Writing model shards" bar per save and no "mtime may not be reliable"
line; progress bars of long work (feature caching, training) stay."""

from __future__ import annotations

import subprocess
import sys

import pytest
import yaml

pytestmark = pytest.mark.slow


def test_routine_saves_do_not_flood_the_training_log(tmp_path, make_recipe, feature_cache_dir):
    recipe = make_recipe(
        tmp_path / "out",
        tmp_path / "features",  # a fresh cache: the caching progress bar shows
        data={"max_train_samples": 64, "max_eval_samples": 32},
        stages=[
            {"name": "frozen", "epochs": 1, "learning_rate": 0.003, "trainable": "head"},
            {"name": "finetune", "max_steps": 3, "learning_rate": 0.001, "trainable": "last_k", "last_k_blocks": 1},
        ],
        training={"per_device_train_batch_size": 16, "save_strategy": "steps", "save_steps": 1},
    )
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    result = subprocess.run(
        [sys.executable, "-m", "hftransfer", "train", str(path)], capture_output=True, text=True, timeout=600
    )
    log = result.stdout + result.stderr
    assert result.returncode == 0, log[-3000:]
    assert len(list((tmp_path / "out" / "stages").glob("*/checkpoint-*"))) >= 4  # many saves happened
    assert log.count("Writing model shards") == 0
    assert log.count("mtime may not be reliable") == 0
    assert "caching train backbone features" in log and "it/s]" in log  # long work keeps its progress bars
