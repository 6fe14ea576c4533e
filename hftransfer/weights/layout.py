"""The layout backbone weights must have: keys and shapes taken from timm itself, and the state-dict check.

[`_expected_shapes`] builds timm's model on the meta device (no memory) and lists its state dict;
[`_check_state_dict`] validates any converted or loaded state dict against it, with messages that name missing,
unexpected and mis-shaped keys and the backbone the weights would fit.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping, Sequence

import torch

from ..configuration_hftransfer import SUPPORTED_BACKBONES, VGG_BACKBONES
from ..errors import BackboneWeightsError

# Tensors timm resamples when the input size differs from the checkpoint's (ViT-style absolute position embeddings).
_RESAMPLED_KEYS = ("pos_embed",)


@functools.cache
def _expected_shapes(backbone: str) -> dict[str, tuple[int, ...]]:
    """Key -> shape of the backbone's state dict, built on the meta device (no memory): timm's conv base for VGG
    (`features.0.weight`, ...), the timm model without classifier for others (`conv1.weight`, ...; ViT-style
    position embeddings at the model's default input size)."""
    import timm

    if backbone not in VGG_BACKBONES:
        from ..configuration_hftransfer import TransferConfig
        from ..modeling_hftransfer import TransferBackbone

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
