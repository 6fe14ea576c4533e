import logging

import pytest
from transformers import ResNetConfig

from hftransfer import TransferConfig
from hftransfer.configuration_hftransfer import SUPPORTED_BACKBONES


@pytest.mark.parametrize(
    ("kwargs", "field", "expected"),
    [
        ({"backbone": "resnet5"}, "backbone", "close matches: resnet50"),
        ({"backbone": "vgg16_xx"}, "backbone", "close matches: vgg16"),
        ({"backbone": "resnet50.a1_in1k"}, "backbone", "backbone='resnet50' with backbone_weights='timm/resnet50"),
        ({"image_size": 100}, "image_size", "multiple of 32"),
        ({"image_size": 16}, "image_size", ">= 32"),
        ({"image_mean": [0.5, 0.5]}, "image_mean", "3 numbers"),
        ({"image_std": [0.2, 0.0, 0.2]}, "image_std", "strictly positive"),
        ({"head": "detection"}, "head", "classification, fusion"),
        ({"pooling": "median"}, "pooling", "flatten, avg, max, avgmax"),
        ({"head": "fusion", "pooling": "flatten"}, "pooling", "global pooling"),
        ({"hidden_sizes": [1024, 0]}, "hidden_sizes", "positive integers"),
        ({"hidden_sizes": [-5]}, "hidden_sizes", "positive integers"),
        ({"activation": "swishy"}, "activation", "relu"),
        ({"dropout": 1.0}, "dropout", "[0, 1)"),
        ({"dropout": -0.1}, "dropout", "[0, 1)"),
        ({"head": "fusion", "pooling": "avg", "fusion_stages": [2, 5]}, "fusion_stages", "0..4"),
        ({"head": "fusion", "pooling": "avg", "fusion_stages": [-1]}, "fusion_stages", "0..4"),
        ({"head": "fusion", "pooling": "avg", "fusion_stages": [3, 3]}, "fusion_stages", "distinct"),
        ({"head": "fusion", "pooling": "avg", "fusion_stages": []}, "fusion_stages", "non-empty"),
        ({"head": "fusion", "pooling": "avg", "extra_features_dim": -1}, "extra_features_dim", ">= 0"),
        ({"extra_features_dim": 4}, "extra_features_dim", "head='fusion'"),
        ({"id2label": {0: "a", 1: "b"}, "label2id": {"a": 0}}, "label2id", "2 entries, like id2label"),
        ({"num_labels": 2.5}, "num_labels", "positive integer"),
        ({"num_labels": 0}, "num_labels", "positive integer"),
        ({"problem_type": "ranking"}, "problem_type", "single_label_classification"),
    ],
)
def test_invalid_values_raise_value_error_naming_field_value_and_expectation(kwargs, field, expected):
    with pytest.raises(ValueError) as excinfo:
        TransferConfig(**kwargs)
    message = str(excinfo.value)
    assert f"TransferConfig.{field}=" in message
    assert expected in message


def test_defaults_describe_the_keras_classic():
    config = TransferConfig(num_labels=10)
    assert (config.backbone, config.head, config.pooling, config.hidden_sizes) == (
        "vgg16",
        "classification",
        "flatten",
        [1024],
    )
    assert config.image_size == 224 and config.dropout == 0.0 and config.activation == "relu"
    assert config.fusion_stages is None


def test_fusion_defaults_to_the_last_three_stages():
    assert TransferConfig(head="fusion", pooling="avg").fusion_stages == [2, 3, 4]


@pytest.mark.parametrize("backbone", SUPPORTED_BACKBONES)
def test_every_supported_backbone_is_accepted(backbone):
    assert TransferConfig(backbone=backbone).backbone_uses_batchnorm == backbone.endswith("_bn")


def test_round_trip_through_json(tmp_path):
    config = TransferConfig(
        head="fusion",
        pooling="avgmax",
        fusion_stages=(1, 4),
        extra_features_dim=3,
        hidden_sizes=(64, 32),
        image_size=64,
        id2label={0: "cat", 1: "dog"},
        label2id={"cat": 0, "dog": 1},
    )
    config.save_pretrained(tmp_path)
    loaded = TransferConfig.from_pretrained(tmp_path)
    assert loaded.to_dict() == config.to_dict()
    assert loaded.fusion_stages == [1, 4] and loaded.hidden_sizes == [64, 32]
    assert loaded.id2label == {0: "cat", 1: "dog"}


LABELS = {i: name for i, name in enumerate("abcdefghij")}


def test_num_labels_that_disagrees_with_id2label_rebuilds_the_labels_like_pretrained_config(caplog):
    # PretrainedConfig semantics (ResNetConfig as the reference): warn, then LABEL_0..LABEL_{n-1}.
    with caplog.at_level(logging.WARNING):
        config = TransferConfig(num_labels=5, id2label=LABELS, label2id={v: k for k, v in LABELS.items()})
    reference = ResNetConfig(num_labels=5, id2label=LABELS, label2id={v: k for k, v in LABELS.items()})
    assert config.num_labels == 5
    assert config.id2label == reference.id2label == {i: f"LABEL_{i}" for i in range(5)}
    assert config.label2id == reference.label2id == {f"LABEL_{i}": i for i in range(5)}
    assert "You passed `num_labels=5` which is incompatible to the `id2label` map of length `10`" in caplog.text


def test_from_pretrained_with_another_num_labels(tmp_path):
    TransferConfig(id2label=LABELS, label2id={v: k for k, v in LABELS.items()}, image_size=64).save_pretrained(
        tmp_path
    )
    same = TransferConfig.from_pretrained(tmp_path, num_labels=10)
    assert same.id2label == LABELS  # the same size keeps the names
    reloaded = TransferConfig.from_pretrained(tmp_path, num_labels=5)
    assert reloaded.num_labels == 5 and reloaded.id2label == {i: f"LABEL_{i}" for i in range(5)}
    assert reloaded.image_size == 64  # everything else comes from the checkpoint
    reloaded.num_labels = 3  # the property setter, as on any PretrainedConfig
    assert reloaded.label2id == {"LABEL_0": 0, "LABEL_1": 1, "LABEL_2": 2}
