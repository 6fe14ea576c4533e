"""The conversion cache: timm-format safetensors files under `$HFTRANSFER_CACHE/weights/`, each with a sidecar.

[`save_backbone_weights`] writes weights with their provenance as metadata, byte-for-byte reproducibly, atomically.
A cache entry (`<backbone>--<source>--<key>.safetensors` and its `.json` sidecar, holding the sha256 of the source
and of the file) is only used while intact and up to date with its source; anything else is converted again.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import struct
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from .._io import write_bytes_atomic
from ..constants import cache_root, weights_cache_dir
from ..errors import BackboneWeightsError, HfTransferError
from .layout import _check_state_dict
from .sources import BackboneWeights, _Source

logger = logging.getLogger("hftransfer.weights")  # one logger for the whole package, as before the split

# Bump when the conversion or the cache layout changes: older cache entries are then ignored.
CACHE_FORMAT_VERSION = 1


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
    write_bytes_atomic(Path(path), data)
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
                write_bytes_atomic(entry.meta_file, json.dumps({**meta, **current}, indent=2).encode())
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
    from .. import __version__

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
    write_bytes_atomic(entry.meta_file, json.dumps(meta, indent=2).encode())
    return weights
