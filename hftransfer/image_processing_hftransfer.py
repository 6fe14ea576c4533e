"""Image processor of hftransfer models.

This file is copied next to saved checkpoints as remote code: it imports only torch, transformers, PIL/numpy (both
required by transformers' vision stack) and its sibling configuration file (invariant 1), which asks timm for the
backbone's `pretrained_cfg` (interpolation, crop fraction).
"""

from __future__ import annotations

import numpy as np
import PIL.Image
import torch
from transformers.image_processing_backends import TorchvisionBackend
from transformers.image_utils import PILImageResampling
from transformers.utils import logging

from .configuration_hftransfer import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, TransferConfig, timm_pretrained_cfg

logger = logging.get_logger(__name__)

# timm `pretrained_cfg["interpolation"]` -> the processor's resampling filter.
_TIMM_INTERPOLATION = {
    "bilinear": PILImageResampling.BILINEAR,
    "bicubic": PILImageResampling.BICUBIC,
    "nearest": PILImageResampling.NEAREST,
    "lanczos": PILImageResampling.LANCZOS,
}

# `from_pretrained` keyword arguments that say where to read files from (the rest configure the processor).
_HUB_KWARGS = (
    "cache_dir",
    "force_download",
    "proxies",
    "token",
    "local_files_only",
    "revision",
    "subfolder",
    "_from_auto",
    "_from_pipeline",
)


def convert_to_rgb_image(image: PIL.Image.Image) -> PIL.Image.Image:
    """Convert any PIL image to 8-bit RGB the way a user expects to see it.

    Grayscale and CMYK are converted; transparency (RGBA, LA, palette with a transparent index) is composited on
    white; 16-bit and 32-bit integer/float images are rescaled to 0..255 instead of being clipped (PIL's own
    `convert("RGB")` saturates a 16-bit image to white).
    """
    if image.mode == "RGB":
        return image
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        array = np.nan_to_num(np.asarray(image, dtype=np.float64), nan=0.0, posinf=0.0, neginf=0.0)
        # 16-bit containers: full scale is 65535; 32-bit: use the data range when it exceeds 8 bits. Float images
        # whose values all lie in [0, 1] use 1.0 (the usual float convention): 0..255 would make them black.
        if image.mode == "F" and array.size and array.min() >= 0.0 and array.max() <= 1.0:
            full_scale = 1.0
        else:
            full_scale = 65535.0 if image.mode.startswith("I;16") else max(255.0, float(array.max(initial=0)))
        array = np.clip(array * (255.0 / full_scale), 0, 255).round().astype(np.uint8)
        return PIL.Image.fromarray(array, mode="L").convert("RGB")
    if "A" in image.getbands() or image.info.get("transparency") is not None:
        rgba = image.convert("RGBA")
        background = PIL.Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return PIL.Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


class TransferImageProcessor(TorchvisionBackend):
    r"""
    Image processor for hftransfer models: RGB conversion, resize (exact size, or shortest edge + center crop),
    rescale to [0, 1] and normalisation with the backbone weights' mean/std.

    Args:
        do_resize (`bool`, *optional*, defaults to `True`):
            Whether to resize.
        size (`dict[str, int]`, *optional*, defaults to `{"height": 224, "width": 224}`):
            `{"height", "width"}` for an exact resize, or `{"shortest_edge": S}` to keep the aspect ratio (use with
            `do_center_crop` and `crop_size`).
        resample (`PILImageResampling`, *optional*, defaults to `BILINEAR`):
            Resampling filter.
        do_center_crop (`bool`, *optional*, defaults to `False`):
            Whether to center-crop to `crop_size` after resizing.
        crop_size (`dict[str, int]`, *optional*):
            `{"height", "width"}` of the center crop.
        do_rescale (`bool`, *optional*, defaults to `True`):
            Whether to multiply by `rescale_factor` (1/255: uint8 -> [0, 1]).
        do_normalize (`bool`, *optional*, defaults to `True`):
            Whether to normalise with `image_mean` / `image_std`.
        image_mean (`list[float]`, *optional*, defaults to timm's ImageNet mean):
            Per-channel mean, in the [0, 1] scale.
        image_std (`list[float]`, *optional*, defaults to timm's ImageNet std):
            Per-channel std, in the [0, 1] scale.
        do_convert_rgb (`bool`, *optional*, defaults to `True`):
            Convert grayscale, RGBA (composited on white), palette, CMYK and 16-bit images to 8-bit RGB.
    """

    model_input_names = ["pixel_values"]
    resample = PILImageResampling.BILINEAR
    image_mean = list(IMAGENET_DEFAULT_MEAN)
    image_std = list(IMAGENET_DEFAULT_STD)
    size = {"height": 224, "width": 224}
    crop_size = {"height": 224, "width": 224}
    do_resize = True
    do_center_crop = False
    do_rescale = True
    do_normalize = True
    do_convert_rgb = True

    @classmethod
    def from_transfer_config(
        cls, config: TransferConfig, resize_mode: str = "exact", crop_pct: float | None = None, **kwargs
    ) -> TransferImageProcessor:
        """The processor matching a model config: its image size, mean and std, and the resampling filter and crop
        fraction of timm's `pretrained_cfg` for the backbone weights (bilinear and 0.875 for VGG).

        Args:
            config ([`TransferConfig`]): The model's configuration.
            resize_mode (`str`, *optional*, defaults to `"exact"`):
                `"exact"` resizes to `image_size` x `image_size`; `"crop"` resizes the shortest edge to
                `image_size / crop_pct` and center-crops `image_size` (the ImageNet evaluation protocol).
            crop_pct (`float`, *optional*):
                Crop fraction for `resize_mode="crop"`; defaults to the backbone's `pretrained_cfg["crop_pct"]`
                (0.875 when timm has none).
            kwargs: Other processor attributes (`resample`, `do_convert_rgb`, ...); they override the config's.
        """
        pretrained_cfg = timm_pretrained_cfg(config.backbone, config.backbone_weights)
        if crop_pct is None:
            crop_pct = pretrained_cfg.get("crop_pct") or 0.875
        resample = _TIMM_INTERPOLATION.get(pretrained_cfg.get("interpolation"), PILImageResampling.BILINEAR)
        side = config.image_size
        if resize_mode == "exact":
            geometry = {"size": {"height": side, "width": side}, "do_center_crop": False}
        elif resize_mode == "crop":
            if not 0 < crop_pct <= 1:
                raise ValueError(f"crop_pct={crop_pct!r} is invalid: expected a fraction in (0, 1].")
            geometry = {
                "size": {"shortest_edge": int(round(side / crop_pct))},
                "do_center_crop": True,
                "crop_size": {"height": side, "width": side},
            }
        else:
            raise ValueError(f"resize_mode={resize_mode!r} is invalid: expected 'exact' or 'crop'.")
        # Explicit keyword arguments (e.g. `size=...`) win over what the config implies.
        return cls(
            **{
                "image_mean": list(config.image_mean),
                "image_std": list(config.image_std),
                "resample": resample,
                **geometry,
                **kwargs,
            }
        )

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, **kwargs) -> TransferImageProcessor:
        """Load a saved processor (`preprocessor_config.json`); for an hftransfer model saved without one (only
        `config.json`), derive it from the model config with [`~TransferImageProcessor.from_transfer_config`].

        Args:
            pretrained_model_name_or_path (`str` or `os.PathLike`):
                A folder or Hub repo id, as for [`~transformers.ImageProcessingMixin.from_pretrained`].
            kwargs:
                Hub arguments (`cache_dir`, `revision`, `token`, `local_files_only`, `subfolder`, ...) and processor
                attributes to override (`size={"height": 64, "width": 64}`, ...).
        """
        try:
            return super().from_pretrained(pretrained_model_name_or_path, *args, **kwargs)
        except OSError as missing:
            hub_kwargs = {key: kwargs[key] for key in _HUB_KWARGS if key in kwargs}
            try:
                config_dict, _ = TransferConfig.get_config_dict(pretrained_model_name_or_path, **hub_kwargs)
            except (OSError, ValueError):
                raise missing from None
            if config_dict.get("model_type") != TransferConfig.model_type:
                raise missing
            overrides = {key: value for key, value in kwargs.items() if key not in _HUB_KWARGS}
            overrides.pop("return_unused_kwargs", None)
            logger.info(
                f"No preprocessor_config.json in {pretrained_model_name_or_path}: using the processor its config.json "
                "implies (image_size, image_mean, image_std)."
            )
            return cls.from_transfer_config(TransferConfig.from_dict(config_dict), **overrides)

    @property
    def output_size(self) -> tuple[int, int]:
        """(height, width) of `pixel_values`."""
        if self.do_center_crop:
            return self.crop_size["height"], self.crop_size["width"]
        if "height" in self.size:
            return self.size["height"], self.size["width"]
        raise ValueError("size={'shortest_edge': ...} without a center crop gives images of varying size.")

    def process_image(self, image, do_convert_rgb: bool | None = None, **kwargs) -> torch.Tensor:
        if isinstance(image, PIL.Image.Image) and do_convert_rgb:
            image = convert_to_rgb_image(image)
        return super().process_image(image, do_convert_rgb=do_convert_rgb, **kwargs)


__all__ = ["TransferImageProcessor", "convert_to_rgb_image"]
