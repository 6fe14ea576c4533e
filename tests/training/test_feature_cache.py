"""The cached frozen stage gives the same result as recomputing the backbone; the cache is keyed and safe."""

import json

import pytest
import torch
from testing_common import compute_split_features

from hftransfer import TransferConfig, TransferForImageClassification, TransferImageProcessor
from hftransfer.data import build_transforms, load_image_classification_dataset
from hftransfer.recipes import recipe_from_dict
from hftransfer.training import feature_cache_key, train


def _head_state(output_dir):
    from safetensors.torch import load_file

    state = load_file(str(output_dir / "model.safetensors"))
    return {k: v for k, v in state.items() if k.startswith("head.")}


def test_cached_and_uncached_frozen_stage_give_the_same_head(tmp_path, feature_cache_dir, make_recipe):
    results = {}
    for cache in (True, False):
        recipe = make_recipe(
            tmp_path / f"cache-{cache}",
            feature_cache_dir,
            data={"max_train_samples": 96, "max_eval_samples": 32},
            stages=[
                {"name": "frozen", "epochs": 2, "learning_rate": 0.003, "trainable": "head", "cache_features": cache}
            ],
        )
        results[cache] = train(recipe_from_dict(recipe))
    assert results[True].metrics["stages"][0]["used_feature_cache"] is True
    assert results[False].metrics["stages"][0]["used_feature_cache"] is False
    cached, uncached = _head_state(tmp_path / "cache-True"), _head_state(tmp_path / "cache-False")
    for name in cached:
        torch.testing.assert_close(cached[name], uncached[name], atol=1e-5, rtol=1e-4)
    losses = [
        json.loads((tmp_path / f"cache-{c}" / "metrics.json").read_text())["final"]["test"]["loss"]
        for c in (True, False)
    ]
    assert losses[0] == pytest.approx(losses[1], abs=1e-4)


@pytest.fixture(scope="module")
def small_split():
    data = load_image_classification_dataset("fashion-mnist-subset")
    return data.splits["validation"].select(range(24))


def _compute(model, processor, split, cache_dir):
    return compute_split_features(model, processor, split, cache_dir)


def test_cache_is_reused_then_rebuilt_when_anything_changes(tmp_path, small_split):
    config = TransferConfig(image_size=32, pooling="avg", hidden_sizes=[8], num_labels=10)
    model = TransferForImageClassification(config)
    processor = TransferImageProcessor.from_transfer_config(config)
    first, path, computed = _compute(model, processor, small_split, tmp_path)
    assert computed and (path / "index.json").is_file() and len(first) == 24
    with torch.no_grad():
        expected = model.eval().forward_features(build_transforms(processor)(small_split[:24])["pixel_values"])
    torch.testing.assert_close(first.tensors["pooled_features"], expected, atol=1e-5, rtol=1e-4)
    assert first.tensors["labels"].tolist() == small_split["label"]

    again, same_path, computed = _compute(model, processor, small_split, tmp_path)
    assert not computed and same_path == path

    key = feature_cache_key(model, processor, small_split._fingerprint)
    # Different backbone weights, processor settings or data: a different key.
    with torch.no_grad():
        model.backbone.features[0].bias.add_(1.0)
    assert feature_cache_key(model, processor, small_split._fingerprint) != key
    with torch.no_grad():
        model.backbone.features[0].bias.sub_(1.0)
    other_processor = TransferImageProcessor.from_transfer_config(config, resize_mode="crop")
    assert feature_cache_key(model, other_processor, small_split._fingerprint) != key
    assert feature_cache_key(model, processor, small_split.select(range(12))._fingerprint) != key
    assert feature_cache_key(model, processor, small_split._fingerprint) == key


def test_corrupt_cache_file_is_recomputed_not_trusted(tmp_path, small_split):
    config = TransferConfig(image_size=32, pooling="avg", hidden_sizes=[8], num_labels=10)
    model = TransferForImageClassification(config)
    processor = TransferImageProcessor.from_transfer_config(config)
    good, path, _ = _compute(model, processor, small_split, tmp_path)
    expected = good.tensors["pooled_features"].clone()
    (shard,) = path.glob("shard-*.safetensors")
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])  # truncated, as by a crash mid-write elsewhere
    rebuilt, _, computed = _compute(model, processor, small_split, tmp_path)
    assert computed
    torch.testing.assert_close(rebuilt.tensors["pooled_features"], expected)
    assert not list(tmp_path.rglob("*.tmp"))
