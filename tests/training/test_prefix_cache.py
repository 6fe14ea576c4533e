"""Issue 14: a `last_k` stage with deterministic transforms trains its last blocks and head on the cached output of
the frozen blocks, with the same result as recomputing them every epoch; `auto` says why it did or did not."""

import json
import logging
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from hftransfer.recipes import RecipeError, recipe_from_dict
from hftransfer.training import train


def _last_k_recipe(make_recipe, output_dir, cache_dir, mode, **stage):
    return make_recipe(
        output_dir,
        cache_dir,
        data={"max_train_samples": 64, "max_eval_samples": 32},
        stages=[
            {
                "name": "finetune",
                "epochs": 2,
                "learning_rate": 0.001,
                "trainable": "last_k",
                "last_k_blocks": 2,
                "backbone_lr_scale": 0.5,
                "cache_frozen_prefix": mode,
                **stage,
            }
        ],
        training={"per_device_train_batch_size": 16, "save_strategy": "no"},
    )


def test_prefix_cached_stage_gives_the_same_weights_as_recomputing(tmp_path, make_recipe, feature_cache_dir, caplog):
    results = {}
    for mode in ("always", "never"):
        recipe = _last_k_recipe(make_recipe, tmp_path / mode, feature_cache_dir, mode)
        with caplog.at_level(logging.INFO, logger="hftransfer"):
            results[mode] = train(recipe_from_dict(recipe))
    cached, recomputed = (results[m].metrics["stages"][0] for m in ("always", "never"))
    assert cached["used_prefix_cache"] is True and recomputed["used_prefix_cache"] is False
    assert cached["global_steps"] == recomputed["global_steps"] == 8
    # VGG16 at 32 px: blocks 1-3 (0-based stages 0..2) are frozen; their output is 256 x 4 x 4 float32 per image.
    assert cached["prefix_cache"]["prefix_stage"] == 2
    assert cached["prefix_cache"]["bytes_per_image"] == 256 * 4 * 4 * 4
    assert cached["feature_cache"]["kind"] == "prefix"
    assert cached["feature_cache"]["rows"] == 64 + 32
    assert cached["feature_cache"]["rows_computed_per_rank"] in ([96], [0])
    first, second = (load_file(str(tmp_path / m / "model.safetensors")) for m in ("always", "never"))
    from hftransfer.building import build_model_and_processor as _build_model

    pretrained, _ = _build_model(recipe_from_dict(recipe), {i: str(i) for i in range(10)})
    # The unfrozen block 5 really trained on the cached prefix; block 1 stayed as pretrained.
    assert not torch.allclose(
        first["backbone.features.28.weight"], pretrained.state_dict()["backbone.features.28.weight"]
    )
    torch.testing.assert_close(
        first["backbone.features.0.weight"], pretrained.state_dict()["backbone.features.0.weight"]
    )
    # Float tolerance: the cache pass runs channels_last (a different convolution algorithm, ~1e-6 apart), and Adam
    # turns such differences in near-zero gradients into steps of up to the learning rate (5e-4 here) on a handful
    # of weights; everything else agrees to 1e-5.
    for name in first:
        torch.testing.assert_close(first[name], second[name], atol=5e-4, rtol=0, msg=name)
        assert ((first[name] - second[name]).abs() > 1e-5).float().mean() < 1e-4, name
    assert cached["validation"]["accuracy"] == pytest.approx(recomputed["validation"]["accuracy"])
    assert any("caching the frozen prefix (backbone stages 0-2" in r.getMessage() for r in caplog.records)


def test_auto_explains_why_the_prefix_is_not_cached(tmp_path, make_recipe, feature_cache_dir, caplog):
    recipe = recipe_from_dict(
        _last_k_recipe(make_recipe, tmp_path / "one-epoch", feature_cache_dir, "auto", epochs=1, max_steps=2)
    )
    from hftransfer.building import build_model_and_processor as _build_model
    from hftransfer.data import build_transforms
    from hftransfer.training.stage_inputs import prefix_cache_decision

    model, processor = _build_model(recipe, {i: str(i) for i in range(10)})
    deterministic = build_transforms(processor)
    decision = prefix_cache_decision(recipe, recipe.stages[0], model, deterministic, 96, 64, 1)
    # 2 steps x 16 images over 64 training images: half an epoch, so the cache pass would save nothing.
    assert decision["used"] is False and decision["epochs"] == 0.5
    assert "the stage runs 0.5 epochs" in decision["reason"]
    assert decision["flop_share"] > 0.5  # blocks 1-3 of VGG16: most of the multiply-adds
    enough = recipe_from_dict(_last_k_recipe(make_recipe, tmp_path / "x", feature_cache_dir, "auto"))
    assert prefix_cache_decision(enough, enough.stages[0], model, deterministic, 96, 64, 1)["used"] is True
    augmented = build_transforms(processor, augmentation="light")
    random = prefix_cache_decision(enough, enough.stages[0], model, augmented, 96, 64, 1)
    assert random["used"] is False and "random" in random["reason"]
    always = recipe_from_dict(_last_k_recipe(make_recipe, tmp_path / "y", feature_cache_dir, "always"))
    with pytest.raises(RecipeError, match="cache_frozen_prefix is 'always' but .*random"):
        prefix_cache_decision(always, always.stages[0], model, augmented, 96, 64, 1)


def test_resnet_prefix_is_not_cached_and_says_why(tmp_path, make_recipe, feature_cache_dir):
    from hftransfer import TransferConfig, TransferForImageClassification
    from hftransfer.data import build_transforms
    from hftransfer.image_processing_hftransfer import TransferImageProcessor
    from hftransfer.training.stage_inputs import prefix_cache_decision

    config = TransferConfig(backbone="resnet18", image_size=32, pooling="avg", hidden_sizes=[8], num_labels=3)
    model = TransferForImageClassification(config)
    recipe = recipe_from_dict(
        json.loads(json.dumps(_last_k_recipe(make_recipe, tmp_path, feature_cache_dir, "auto")))
        | {"model": {"backbone": "resnet18", "backbone_weights": "random", "image_size": 32}}
    )
    transform = build_transforms(TransferImageProcessor.from_transfer_config(config))
    decision = prefix_cache_decision(recipe, recipe.stages[0], model, transform, 96, 64, 1)
    assert decision["used"] is False and "cannot resume from an intermediate stage" in decision["reason"]


def test_head_stage_computes_the_next_stages_prefix_in_its_own_pass(tmp_path, make_recipe, caplog):
    """Head stage on cached features, then a last-2-blocks stage on a cached prefix: the frozen blocks run over the
    data once. Stage 1 caches the prefix and derives its pooled features from it; stage 2 finds the prefix."""
    stages = [
        {"name": "head", "epochs": 1, "learning_rate": 0.001, "trainable": "head", "cache_features": True},
        {
            "name": "finetune",
            "epochs": 2,
            "learning_rate": 0.001,
            "trainable": "last_k",
            "last_k_blocks": 2,
            "cache_frozen_prefix": "always",
        },
    ]
    data = {"max_train_samples": 64, "max_eval_samples": 32}
    training = {"per_device_train_batch_size": 16, "save_strategy": "no"}
    with caplog.at_level(logging.INFO, logger="hftransfer"):
        shared = train(
            recipe_from_dict(
                make_recipe(tmp_path / "shared", tmp_path / "cache", data=data, stages=stages, training=training)
            )
        )
    head, finetune = shared.metrics["stages"]
    assert head["feature_cache"]["shared_prefix"]["stage"] == 2
    assert {s: v["rows_computed_per_rank"] for s, v in head["feature_cache"]["shared_prefix"]["splits"].items()} == {
        "train": [64],
        "validation": [32],
    }
    assert head["feature_cache"]["rows_computed_per_rank"] == [96]  # pooled features: from the prefix
    assert finetune["used_prefix_cache"] is True
    assert finetune["feature_cache"]["rows_computed_per_rank"] == [0]  # no second pass of blocks 1-3
    assert any("one pass of the frozen blocks over the data for both" in r.getMessage() for r in caplog.records)

    # The same recipe without the prefix stage computes the pooled features from pixels: the same entry (key), the
    # same values to float rounding.
    alone = make_recipe(tmp_path / "alone", tmp_path / "other-cache", data=data, stages=stages[:1], training=training)
    alone_metrics = train(recipe_from_dict(alone)).metrics["stages"][0]["feature_cache"]
    assert "shared_prefix" not in alone_metrics
    for split in ("train", "validation"):
        derived = Path(head["feature_cache"]["splits"][split]["path"])
        direct = Path(alone_metrics["splits"][split]["path"])
        assert derived.name == direct.name  # the cache key
        derived_rows, direct_rows = (
            {k: v for d in sorted(p.glob("shard-*.safetensors")) for k, v in load_file(str(d)).items()}
            for p in (derived, direct)
        )
        torch.testing.assert_close(derived_rows["labels"], direct_rows["labels"], atol=0, rtol=0)
        torch.testing.assert_close(
            derived_rows["pooled_features"], direct_rows["pooled_features"], atol=1e-5, rtol=1e-5
        )
