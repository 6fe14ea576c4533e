"""Issue 14: under two real ranks (gloo DDP on CPU) each rank computes the features of its own half of the data, the
shards form one cache equal to a single process's, and the head trained on it equals the single-process head."""

import json
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from hftransfer.recipes import recipe_from_dict
from hftransfer.training import train

pytestmark = pytest.mark.slow


def _frozen_recipe(make_recipe, output_dir, cache_dir, batch_size):
    return make_recipe(
        output_dir,
        cache_dir,
        data={"max_train_samples": 128, "max_eval_samples": 32},
        stages=[{"name": "frozen", "epochs": 2, "learning_rate": 0.003, "trainable": "head"}],
        training={"per_device_train_batch_size": batch_size, "save_strategy": "no"},
    )


def test_two_ranks_each_cache_their_half_and_train_the_single_process_head(tmp_path, make_recipe, two_ranks):
    # 2 ranks x 16 images per step = the single process's 32: the same global batches, the same head.
    two = _frozen_recipe(make_recipe, tmp_path / "two", tmp_path / "cache-two", batch_size=16)
    recipe_path = tmp_path / "recipe.yaml"
    recipe_path.write_text(yaml.safe_dump(two))
    two_ranks(recipe_path)
    single = train(recipe_from_dict(_frozen_recipe(make_recipe, tmp_path / "one", tmp_path / "cache-one", 32)))

    stage = json.loads((tmp_path / "two" / "metrics.json").read_text())["stages"][0]
    report = stage["feature_cache"]
    assert report["splits"]["train"]["rows_computed_per_rank"] == [64, 64]
    assert report["splits"]["validation"]["rows_computed_per_rank"] == [16, 16]
    assert report["rows_computed_per_rank"] == [80, 80] and report["rows"] == 160 and report["bytes"] > 0
    assert single.metrics["stages"][0]["feature_cache"]["rows_computed_per_rank"] == [160]

    # The two-rank cache (two shards) holds what the single process computed (one shard), row for row.
    for split in ("train", "validation"):
        two_dir = Path(report["splits"][split]["path"])
        one_dir = Path(single.metrics["stages"][0]["feature_cache"]["splits"][split]["path"])
        assert two_dir.name == one_dir.name  # the same key: the cache does not depend on the world size
        assert len(list(two_dir.glob("shard-*-of-00002.safetensors"))) == 2
        two_rows = {
            k: torch.cat([load_file(str(p))[k] for p in sorted(two_dir.glob("shard-*.safetensors"))])
            for k in ("pooled_features", "labels")
        }
        (one_shard,) = one_dir.glob("shard-*.safetensors")
        one_rows = load_file(str(one_shard))
        assert torch.equal(two_rows["labels"], one_rows["labels"])
        torch.testing.assert_close(two_rows["pooled_features"], one_rows["pooled_features"], atol=1e-5, rtol=1e-5)

    heads = [load_file(str(tmp_path / run / "model.safetensors")) for run in ("two", "one")]
    for name in heads[0]:
        if name.startswith("head."):
            torch.testing.assert_close(heads[0][name], heads[1][name], atol=1e-5, rtol=1e-4, msg=name)
