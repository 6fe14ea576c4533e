"""Issue 14: `data.streaming: true` trains from a `datasets` stream: the frozen stage builds its feature cache from
the stream (read once, then reused by the next run), later stages read the stream with `max_steps`."""

import json
import logging

import pytest

from hftransfer.recipes import RecipeError, recipe_from_dict
from hftransfer.training import train


def _streaming_recipe(make_recipe, output_dir, cache_dir):
    return make_recipe(
        output_dir,
        cache_dir,
        data={"streaming": True, "streaming_shuffle_buffer": 32, "max_train_samples": 64, "max_eval_samples": 32},
        stages=[
            {"name": "frozen", "epochs": 2, "learning_rate": 0.003, "trainable": "head"},
            {
                "name": "finetune",
                "max_steps": 3,
                "learning_rate": 0.001,
                "trainable": "last_k",
                "last_k_blocks": 1,
                "augmentation": "light",
            },
        ],
        training={"per_device_train_batch_size": 16, "save_strategy": "no", "dataloader_num_workers": 0},
    )


def test_a_streamed_train_split_caches_the_frozen_stage_and_streams_the_next(tmp_path, make_recipe, caplog):
    recipe = _streaming_recipe(make_recipe, tmp_path / "run", tmp_path / "cache")
    with caplog.at_level(logging.INFO, logger="hftransfer"):
        result = train(recipe_from_dict(recipe))
    frozen, finetune = result.metrics["stages"]
    assert frozen["used_feature_cache"] is True
    assert frozen["feature_cache"]["splits"]["train"]["rows"] == 64  # the first 64 rows of the stream, read once
    assert frozen["feature_cache"]["splits"]["validation"]["rows"] == 32
    assert frozen["global_steps"] == 2 * 64 // 16
    assert finetune["used_feature_cache"] is False and finetune["global_steps"] == 3
    assert result.metrics["dataset"]["streaming"] is True
    assert any("train streamed" in r.getMessage() for r in caplog.records)
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["final"]

    # The stream's fingerprint is stable: a second run finds the cache instead of reading the stream again.
    again = _streaming_recipe(make_recipe, tmp_path / "again", tmp_path / "cache")
    rerun = train(recipe_from_dict(again))
    assert rerun.metrics["stages"][0]["feature_cache"]["rows_computed_per_rank"] == [0]


def test_a_streamed_stage_without_max_steps_is_refused(tmp_path, make_recipe):
    recipe = _streaming_recipe(make_recipe, tmp_path / "run", tmp_path / "cache")
    recipe["stages"][1] = {**recipe["stages"][1], "max_steps": -1, "epochs": 1}
    with pytest.raises(RecipeError, match="data.streaming reads train as a stream of unknown length; set max_steps"):
        recipe_from_dict(recipe)
