"""Lazy transforms (processor for evaluation, torchvision augmentation for training) and the batch collator."""

from __future__ import annotations

import pytest
import torch
from datasets import Dataset, Features, Image, Value
from torch.utils.data import DataLoader

from hftransfer.data import (
    AugmentationConfig,
    DataError,
    ImageClassificationCollator,
    build_transforms,
    default_num_workers,
    load_image_classification_dataset,
)
from hftransfer.image_processing_hftransfer import TransferImageProcessor


def test_evaluation_transform_is_the_image_processor(subset, processor):
    transform = build_transforms(processor)
    assert transform.deterministic is True
    assert transform.output_size == (32, 32)
    rows = subset.splits["test"].select(range(4))
    expected = processor(images=list(rows["image"]), return_tensors="pt")["pixel_values"]
    transformed = transform.apply(rows)
    got = torch.stack([transformed[i]["pixel_values"] for i in range(4)])
    torch.testing.assert_close(got, expected, rtol=0, atol=0)
    assert transformed[0]["label"] == rows[0]["label"]
    assert set(transformed[0]) == {"pixel_values", "label"}


def test_augmentation_is_random_and_shaped_like_the_processor_output(subset, processor):
    transform = build_transforms(processor, AugmentationConfig())
    assert transform.deterministic is False
    dataset = transform.apply(subset.splits["train"].select(range(8)))
    torch.manual_seed(0)
    first = torch.stack([row["pixel_values"] for row in dataset])
    second = torch.stack([row["pixel_values"] for row in dataset])
    assert first.shape == (8, 3, 32, 32) and first.dtype == torch.float32
    assert not torch.equal(first, second)  # a new draw every epoch
    # Still normalised with the processor's statistics: values of black/white pixels bound the range.
    mean, std = torch.tensor(processor.image_mean), torch.tensor(processor.image_std)
    assert first.amin() >= (-mean / std).min() - 1e-4
    assert first.amax() <= ((1 - mean) / std).max() + 1e-4


def test_augmentation_without_random_steps_matches_the_processor(subset, processor):
    still = AugmentationConfig(
        crop_scale=(1, 1), crop_ratio=(1, 1), horizontal_flip=0, brightness=0, contrast=0, saturation=0
    )
    transform = build_transforms(processor, still)
    assert transform.deterministic is True
    rows = subset.splits["test"].select(range(4))
    expected = processor(images=list(rows["image"]), return_tensors="pt")["pixel_values"]
    got = transform({"image": list(rows["image"])})["pixel_values"]
    # Same resize and normalisation arithmetic, done in another order: equal to float rounding.
    torch.testing.assert_close(got, expected, rtol=0, atol=0.05)


def test_flip_only_augmentation_mirrors_the_evaluation_image(subset, processor):
    flip = AugmentationConfig(
        crop_scale=(1, 1), crop_ratio=(1, 1), horizontal_flip=1.0, brightness=0, contrast=0, saturation=0
    )
    image = subset.splits["test"][0]["image"]
    flipped = build_transforms(processor, flip)({"image": [image]})["pixel_values"][0]
    plain = build_transforms(processor)({"image": [image]})["pixel_values"][0]
    torch.testing.assert_close(flipped, plain.flip(-1), rtol=0, atol=0.05)


def test_augmentation_uses_the_crop_size_of_a_crop_processor():
    processor = TransferImageProcessor(
        size={"shortest_edge": 40}, do_center_crop=True, crop_size={"height": 36, "width": 36}
    )
    transform = build_transforms(processor, {"crop_scale": (0.8, 1.0)})
    assert transform.output_size == (36, 36)
    from PIL import Image as PILImage

    out = transform({"image": [PILImage.new("RGB", (50, 30))], "label": [1]})
    assert out["pixel_values"].shape == (1, 3, 36, 36) and out["label"] == [1]


def test_augmentation_options_are_validated():
    with pytest.raises(ValueError, match=r"Unknown augmentation option\(s\) \['rotate'\]"):
        AugmentationConfig.from_dict({"rotate": 10})
    with pytest.raises(ValueError, match=r"crop_scale=\(0\.5, 1\.5\) is invalid"):
        AugmentationConfig(crop_scale=(0.5, 1.5))
    with pytest.raises(ValueError, match=r"horizontal_flip=2 is invalid"):
        AugmentationConfig(horizontal_flip=2)


def test_transform_errors_are_clear(processor):
    transform = build_transforms(processor)
    with pytest.raises(DataError, match=r"no 'image' column \(columns: \['pixel_values'\]\)"):
        transform({"pixel_values": [0]})
    with pytest.raises(DataError, match=r"Dataset has no 'image' column; its columns are \['x'\]"):
        transform.apply(Dataset.from_dict({"x": [1]}))


def test_collator_stacks_pixels_labels_and_extra_features():
    examples = [
        {"pixel_values": torch.full((3, 4, 4), float(i)), "label": i % 2, "age": 20 + i, "scores": [0.5, i]}
        for i in range(3)
    ]
    batch = ImageClassificationCollator(extra_feature_columns=["age", "scores"])(examples)
    assert batch["pixel_values"].shape == (3, 3, 4, 4) and batch["pixel_values"].dtype == torch.float32
    assert batch["labels"].tolist() == [0, 1, 0] and batch["labels"].dtype == torch.long
    assert batch["extra_features"].dtype == torch.float32
    assert batch["extra_features"].tolist() == [[20, 0.5, 0], [21, 0.5, 1], [22, 0.5, 2]]
    assert set(ImageClassificationCollator()(examples)) == {"pixel_values", "labels"}


@pytest.mark.parametrize(
    ("example", "message"),
    [
        ({"label": 0}, r"no 'pixel_values' .* build_transforms\(processor\)\.apply\(dataset\)"),
        ({"pixel_values": torch.zeros(3, 2, 2)}, r"no 'label' or 'labels'"),
        ({"pixel_values": torch.zeros(3, 2, 2), "label": 0}, r"Extra feature column 'age' is not in the examples"),
        (
            {"pixel_values": torch.zeros(3, 2, 2), "label": 0, "age": "old"},
            r"'age' holds 'old' \(str\); expected numbers",
        ),
        ({"pixel_values": torch.zeros(3, 2, 2), "label": 0, "age": None}, r"'age' holds None"),
        ({"pixel_values": torch.zeros(3, 2, 2), "label": 0, "age": float("nan")}, r"'age' holds NaN"),
    ],
)
def test_collator_errors_name_the_problem(example, message):
    with pytest.raises(DataError, match=message):
        ImageClassificationCollator(extra_feature_columns=["age"])([example])


def test_a_dataloader_with_the_default_workers_feeds_the_model_shapes(subset, processor):
    splits = subset.with_transforms(build_transforms(processor, AugmentationConfig()), build_transforms(processor))
    assert set(splits) == {"train", "validation", "test"}
    assert default_num_workers() >= 1
    loader = DataLoader(
        splits["validation"].select(range(40)),
        batch_size=32,
        num_workers=min(2, default_num_workers()),
        collate_fn=ImageClassificationCollator(),
    )
    batches = list(loader)
    assert [b["pixel_values"].shape for b in batches] == [(32, 3, 32, 32), (8, 3, 32, 32)]
    assert torch.cat([b["labels"] for b in batches]).tolist() == subset.splits["validation"]["label"][:40]


def test_fusion_data_from_load_to_batch(images, processor):
    ds = Dataset.from_dict(
        {"image": [images.image(seed=i) for i in range(6)], "label": ["a", "b"] * 3, "age": [1.0, 2, 3, 4, 5, 6]},
        features=Features({"image": Image(), "label": Value("string"), "age": Value("float32")}),
    )
    data = load_image_classification_dataset(ds, extra_feature_columns=["age"], validation_split=0.34)
    train = build_transforms(processor).apply(data.splits["train"])
    batch = ImageClassificationCollator(data.extra_feature_columns)([train[i] for i in range(len(train))])
    assert batch["extra_features"].shape == (4, 1)
    assert sorted(batch["extra_features"].flatten().tolist()) == sorted(data.splits["train"]["age"])
