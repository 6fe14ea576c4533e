"""Local PyTorch weight files (`.safetensors`, `.pth`, `.pt`, `.bin`): reading, key extraction, normalisation.

A file may hold a timm/torchvision VGG, a timm model, or an hftransfer checkpoint (`backbone.`-prefixed keys); only
the backbone is kept. The normalisation comes from hftransfer's safetensors metadata or a `config.json` beside the
file (also used for Hub downloads, see `hub.py`).
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from ..configuration_hftransfer import VGG_BACKBONES
from ..constants import CONFIG_FILE
from ..errors import BackboneWeightsError
from .layout import _check_state_dict, _expected_shapes, _format_keys
from .sources import BackboneWeights, _default_normalisation

logger = logging.getLogger("hftransfer.weights")  # one logger for the whole package, as before the split

_FEATURES_KEY = re.compile(r"^((?:[^.]+\.)*?)features\.(\d+)\.(\w+)$")


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
