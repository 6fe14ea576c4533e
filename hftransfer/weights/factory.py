"""Models with pretrained backbones, like timm's `_factory.py`: [`create_model`] and [`load_backbone_into`].

Weights are loaded strictly into `model.backbone` (hftransfer models) or `model.features` (timm VGG); ViT-style
position embeddings learned at another input size are resampled as timm does. The config takes the weights'
`image_mean`, `image_std` and `backbone_weights`, so the matching image processor normalises inputs correctly.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from ..errors import BackboneWeightsError
from .loading import load_backbone_weights
from .sources import KERAS_IMAGENET, BackboneWeights

if TYPE_CHECKING:
    from torch import nn

    from ..image_processing_hftransfer import TransferImageProcessor
    from ..modeling_hftransfer import TransferForImageClassification


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
    from ..configuration_hftransfer import TransferConfig
    from ..image_processing_hftransfer import TransferImageProcessor
    from ..modeling_hftransfer import TransferForImageClassification

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
