"""Lazy image transforms: the image processor for evaluation, torchvision augmentation for training."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from datasets import Dataset, Image

from ..image_processing_hftransfer import TransferImageProcessor, convert_to_rgb_image
from .images import DataError, decode_image


@dataclass(frozen=True)
class AugmentationConfig:
    """Training-time augmentation, built from torchvision's `transforms.v2` (nothing hand-rolled).

    The pipeline is: RandomResizedCrop to the processor's output size -> RandomHorizontalFlip -> ColorJitter ->
    float conversion -> Normalize with the processor's rescale factor, mean and std. Steps whose parameters make them
    a no-op are left out; when every step is a no-op the transform is deterministic.

    Args:
        crop_scale (`tuple[float, float]`, *optional*, defaults to `(0.5, 1.0)`):
            Range of the crop's area as a fraction of the image (torchvision's `scale`). `(1.0, 1.0)` with
            `crop_ratio=(1.0, 1.0)` disables cropping (a plain resize).
        crop_ratio (`tuple[float, float]`, *optional*, defaults to `(3/4, 4/3)`):
            Range of the crop's aspect ratio.
        horizontal_flip (`float`, *optional*, defaults to 0.5):
            Probability of a horizontal flip; 0 disables it.
        brightness (`float`, *optional*, defaults to 0.2):
            ColorJitter brightness (factor drawn from `[1 - b, 1 + b]`); 0 disables it.
        contrast (`float`, *optional*, defaults to 0.2):
            ColorJitter contrast.
        saturation (`float`, *optional*, defaults to 0.2):
            ColorJitter saturation.
        hue (`float`, *optional*, defaults to 0.0):
            ColorJitter hue, in `[0, 0.5]`.
    """

    crop_scale: tuple[float, float] = (0.5, 1.0)
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    horizontal_flip: float = 0.5
    brightness: float = 0.2
    contrast: float = 0.2
    saturation: float = 0.2
    hue: float = 0.0

    def __post_init__(self):
        for name in ("crop_scale", "crop_ratio"):
            value = tuple(getattr(self, name))
            if len(value) != 2 or not 0 < value[0] <= value[1]:
                raise ValueError(
                    f"AugmentationConfig.{name}={value!r} is invalid: expected (low, high), 0 < low <= high."
                )
            object.__setattr__(self, name, (float(value[0]), float(value[1])))
        if self.crop_scale[1] > 1:
            raise ValueError(f"AugmentationConfig.crop_scale={self.crop_scale!r} is invalid: areas are at most 1.0.")
        if not 0 <= self.horizontal_flip <= 1:
            raise ValueError(
                f"AugmentationConfig.horizontal_flip={self.horizontal_flip!r} is invalid: expected a probability."
            )
        for name in ("brightness", "contrast", "saturation"):
            if getattr(self, name) < 0:
                raise ValueError(f"AugmentationConfig.{name}={getattr(self, name)!r} is invalid: expected >= 0.")
        if not 0 <= self.hue <= 0.5:
            raise ValueError(f"AugmentationConfig.hue={self.hue!r} is invalid: expected a value in [0, 0.5].")

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> AugmentationConfig:
        """Build from a mapping (e.g. a recipe's YAML), rejecting unknown keys by name."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"Unknown augmentation option(s) {unknown}; expected some of {sorted(known)}.")
        return cls(**values)

    @property
    def crops(self) -> bool:
        return self.crop_scale != (1.0, 1.0) or self.crop_ratio != (1.0, 1.0)

    @property
    def jitters(self) -> bool:
        return any((self.brightness, self.contrast, self.saturation, self.hue))

    @property
    def is_random(self) -> bool:
        return self.crops or self.horizontal_flip > 0 or self.jitters


def processor_output_size(processor: TransferImageProcessor) -> tuple[int, int]:
    """(height, width) of the processor's `pixel_values`; a shortest-edge resize without crop gives a square."""
    if getattr(processor, "do_center_crop", False) and processor.crop_size:
        return int(processor.crop_size["height"]), int(processor.crop_size["width"])
    size = processor.size
    if "height" in size and "width" in size:
        return int(size["height"]), int(size["width"])
    if "shortest_edge" in size:
        return int(size["shortest_edge"]), int(size["shortest_edge"])
    raise DataError(f"Cannot tell the output size of image processor with size={size!r}.")


class ImageTransform:
    """A batch transform for `datasets.Dataset.with_transform`: decodes images, converts them to RGB and returns
    `pixel_values` (a float tensor `(N, 3, H, W)`), keeping every other column (`label`, extra features).

    Built by [`build_transforms`]. Use [`ImageTransform.apply`] to attach it: it also turns off `datasets`' own
    decoding so that an undecodable image raises [`BadImageError`] naming its file, and each image is decoded once.

    Attributes:
        deterministic (`bool`):
            Whether the same image always gives the same `pixel_values` (no random augmentation). The training layer
            may cache frozen-backbone features only when this is `True`.
        output_size (`tuple[int, int]`): `(height, width)` of `pixel_values`.
    """

    def __init__(
        self,
        processor: TransferImageProcessor,
        augmentation: AugmentationConfig | None = None,
        image_column: str = "image",
    ):
        self.processor = processor
        self.augmentation = augmentation
        self.image_column = image_column
        self.output_size = processor_output_size(processor)
        self._pipeline = _augmentation_pipeline(processor, augmentation, self.output_size) if augmentation else None
        self.deterministic = augmentation is None or not augmentation.is_random

    def __call__(self, batch: dict[str, list]) -> dict[str, Any]:
        if self.image_column not in batch:
            raise DataError(
                f"The batch has no {self.image_column!r} column (columns: {list(batch)}); was the transform applied "
                "twice, or to a dataset not normalised by load_image_classification_dataset?"
            )
        images = [convert_to_rgb_image(decode_image(value)) for value in batch[self.image_column]]
        if self._pipeline is None:
            pixel_values = self.processor(images=images, return_tensors="pt")["pixel_values"]
        else:
            pixel_values = torch.stack([self._pipeline(image) for image in images])
        output = {key: value for key, value in batch.items() if key != self.image_column}
        output["pixel_values"] = pixel_values
        return output

    def apply(self, dataset: Dataset) -> Dataset:
        """`dataset` with this transform attached lazily (nothing is decoded until a row is read).

        The image column is switched to `datasets.Image(decode=False)` so that this transform decodes each image
        exactly once and names the file when decoding fails.
        """
        if self.image_column not in dataset.column_names:
            raise DataError(f"Dataset has no {self.image_column!r} column; its columns are {dataset.column_names}.")
        feature = dataset.features[self.image_column]
        if isinstance(feature, Image) and feature.decode:
            dataset = dataset.cast_column(self.image_column, Image(decode=False))
        return dataset.with_transform(self)

    def __repr__(self) -> str:
        kind = f"augmentation={self.augmentation}" if self.augmentation else "processor"
        return f"ImageTransform({kind}, output_size={self.output_size}, deterministic={self.deterministic})"


def _augmentation_pipeline(processor: TransferImageProcessor, augmentation: AugmentationConfig, size: tuple[int, int]):
    from torchvision.transforms import v2

    # Geometry and colour on the PIL image (PIL's C resize and enhancers beat many small tensor ops at these sizes),
    # then one conversion to a float tensor.
    steps: list = []
    if augmentation.crops:
        steps.append(
            v2.RandomResizedCrop(size, scale=augmentation.crop_scale, ratio=augmentation.crop_ratio, antialias=True)
        )
    else:
        steps.append(v2.Resize(size, antialias=True))
    if augmentation.horizontal_flip > 0:
        steps.append(v2.RandomHorizontalFlip(augmentation.horizontal_flip))
    if augmentation.jitters:
        steps.append(
            v2.ColorJitter(
                brightness=augmentation.brightness or None,
                contrast=augmentation.contrast or None,
                saturation=augmentation.saturation or None,
                hue=augmentation.hue or None,
            )
        )
    steps.append(v2.PILToTensor())
    # Same arithmetic as the processor, (x * rescale - mean) / std, written as one Normalize on uint8-valued floats:
    # (x - mean / rescale) / (std / rescale).
    rescale = float(processor.rescale_factor) if getattr(processor, "do_rescale", True) else 1.0
    if getattr(processor, "do_normalize", True):
        mean = [float(m) / rescale for m in processor.image_mean]
        std = [float(s) / rescale for s in processor.image_std]
    else:
        mean, std = [0.0, 0.0, 0.0], [1.0 / rescale] * 3
    steps += [v2.ToDtype(torch.float32, scale=False), v2.Normalize(mean=mean, std=std)]
    return v2.Compose(steps)


def build_transforms(
    processor: TransferImageProcessor, augmentation: AugmentationConfig | Mapping[str, Any] | str | None = None
) -> ImageTransform:
    """The transform for a split: the processor alone (evaluation, or training without augmentation), or the
    augmentation pipeline (training).

    Args:
        processor ([`TransferImageProcessor`]):
            The model's image processor: its output size, rescale factor, mean and std are used in both cases.
        augmentation ([`AugmentationConfig`], `Mapping` or `str`, *optional*):
            Augmentation options, or a preset name (`none`, `light`, `strong`); `None` or `"none"` for the
            deterministic processor transform.

    Returns:
        [`ImageTransform`] with `.deterministic`.
    """
    return ImageTransform(processor, augmentation_config(augmentation))


# Recipe presets (`augmentation: none | light | strong`), as `AugmentationConfig` fields; "none" is deterministic.
AUGMENTATION_PRESETS: dict[str, dict[str, Any] | None] = {
    "none": None,
    "light": {"crop_scale": (0.8, 1.0), "horizontal_flip": 0.5, "brightness": 0.1, "contrast": 0.1, "saturation": 0.0},
    "strong": {
        "crop_scale": (0.5, 1.0),
        "horizontal_flip": 0.5,
        "brightness": 0.3,
        "contrast": 0.3,
        "saturation": 0.3,
    },
}


def augmentation_config(value: str | Mapping[str, Any] | AugmentationConfig | None) -> AugmentationConfig | None:
    """An [`AugmentationConfig`] from a preset name (`none`, `light`, `strong`), a mapping of its fields, or `None`.

    Returns `None` for the deterministic transform (`none`/`None`).
    """
    if value is None or isinstance(value, AugmentationConfig):
        return value
    if isinstance(value, str):
        if value not in AUGMENTATION_PRESETS:
            raise ValueError(f"Unknown augmentation preset {value!r}: expected one of {tuple(AUGMENTATION_PRESETS)}.")
        preset = AUGMENTATION_PRESETS[value]
        return None if preset is None else AugmentationConfig(**preset)
    return AugmentationConfig.from_dict(value)
