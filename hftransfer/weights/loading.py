"""The public loading API: [`load_backbone_weights`], [`cache_backbone_weights`], [`cached_backbone_weights`].

A parsed source goes to its reader (`keras.py`, `torch_files.py`, `hub.py`); Keras sources go through the conversion
cache (`cache.py`) unless `use_cache=False`.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from ..errors import BackboneWeightsError, WeightsNotFoundError
from .cache import _CacheEntry, _read_cache, _write_cache, default_cache_dir
from .hub import _load_from_hub
from .keras import _load_keras_file, find_keras_imagenet_weights
from .sources import (
    KERAS_IMAGENET,
    RANDOM,
    BackboneWeights,
    _check_backbone,
    _check_keras_backbone,
    _default_normalisation,
    _parse_source,
    _Source,
)
from .torch_files import _load_torch_file

logger = logging.getLogger("hftransfer.weights")  # one logger for the whole package, as before the split


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
