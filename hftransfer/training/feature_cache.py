"""Cached frozen-backbone outputs: a stage runs its frozen part once instead of once per epoch.

Two kinds, one mechanism:

- **pooled features** (`pooled_features`): backbone + pooler, for a head-only stage;
- **frozen-prefix activations** (`backbone_hidden_state`): the output of the last frozen backbone stage, for a
  `last_k` stage, whose trainable blocks and head then run on it every epoch.

With deterministic transforms the frozen part's output for an image never changes during the stage (no dropout in
it, frozen BatchNorm stays in eval mode), so training on cached outputs gives the same result as recomputing them
(tests/training prove it).

Layout: one folder per cache key, `<cache_dir>/<key>/`, holding `shard-RRRRR-of-WWWWW.safetensors` files (rank R of
W computed rows `[n*R/W, n*(R+1)/W)`: under `accelerate launch` every rank computes its own share, none idles), a
`.json` sidecar per shard with its SHA-256, and `index.json`, written last by rank 0, that makes the entry visible.
The key covers the frozen tensors, pooler, image processor settings, storage dtype, dataset fingerprint and a hash
of the image content (an image folder's rows hold paths: a file replaced in place, even with its size and mtime
kept, changes the key). Reads are memory-mapped: the dataset holds file mappings, not tensors, so resident memory
does not grow with the cache, and ranks on one machine share the page cache. A shard that fails its checksum, or
whose labels do not fit the model, is recomputed with a warning. Shards and the index are written atomically
(temp file + `os.replace`) under a file lock, so concurrent jobs sharing a cache directory never see half a file.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import struct
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from filelock import FileLock
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from .._io import replace_with_umask_mode, write_json_atomic
from ..constants import features_cache_dir
from ..image_processing_hftransfer import TransferImageProcessor
from ..modeling_hftransfer import TransferForImageClassification
from .distributed import Ranks

logger = logging.getLogger(__name__)

CACHE_FORMAT_VERSION = 3
INDEX_FILE = "index.json"
POOLED_FEATURES = "pooled_features"
PREFIX_FEATURES = "backbone_hidden_state"
STORAGE_DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
}
# safetensors dtype tag -> (numpy dtype of the mapping, torch dtype it is viewed as). NumPy has no bfloat16: its bytes
# are mapped as int16 and viewed as bfloat16 by torch, without a copy.
_SAFETENSORS_DTYPES: dict[str, tuple[np.dtype, torch.dtype]] = {
    "F32": (np.dtype("<f4"), torch.float32),
    "F16": (np.dtype("<f2"), torch.float16),
    "BF16": (np.dtype("<i2"), torch.bfloat16),
    "I64": (np.dtype("<i8"), torch.int64),
    "I32": (np.dtype("<i4"), torch.int32),
}
_TORCH_TO_SAFETENSORS = {torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16", torch.int64: "I64"}


def feature_cache_key(
    model: TransferForImageClassification,
    processor: TransferImageProcessor,
    dataset_fingerprint: str,
    *,
    prefix_stage: int | None = None,
    dtype: str = "float32",
    weights_digest: str | None = None,
) -> str:
    """Hash of everything the cached outputs depend on: the frozen tensors, pooler, processor, dtype and data.

    Pooled features depend on the whole backbone; frozen-prefix activations only on stages `0..prefix_stage`, so a
    `last_k` stage resumed after its trainable blocks changed still finds its cache.
    """
    digest = hashlib.sha256()
    settings = {
        "version": CACHE_FORMAT_VERSION,
        "kind": "pooled" if prefix_stage is None else f"prefix:{prefix_stage}",
        "backbone": model.config.backbone,
        "pooling": model.config.pooling if prefix_stage is None else None,
        "pooler_stages": list(model.pooler.stages) if prefix_stage is None else None,
        "image_size": model.config.image_size,
        "processor": {k: v for k, v in processor.to_dict().items() if k not in ("auto_map", "_processor_class")},
        "dtype": dtype,
        "dataset": dataset_fingerprint,
    }
    digest.update(json.dumps(settings, sort_keys=True, default=str).encode())
    digest.update((weights_digest or frozen_weights_digest(model, prefix_stage)).encode())
    return digest.hexdigest()[:32]


def frozen_weights_digest(model: TransferForImageClassification, prefix_stage: int | None = None) -> str:
    """SHA-256 of the backbone tensors the cached outputs depend on (all of them, or stages `0..prefix_stage`).

    Hashing VGG16's 59 MB of weights takes a noticeable fraction of a small stage: compute it once per stage and pass
    it to [`feature_cache_key`] / [`load_or_compute_features`] for each split."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.backbone.state_dict().items()):
        if prefix_stage is not None and (model.backbone.stage_of(name) or 0) > prefix_stage:
            continue
        digest.update(name.encode())
        # reshape(-1): 0-d buffers (BatchNorm num_batches_tracked) cannot be viewed as bytes directly.
        digest.update(tensor.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def image_content_fingerprint(dataset, column: str = "image") -> str:
    """SHA-256 of every image's encoded bytes, in row order: the image bytes a row stores, else its file's bytes.

    A dataset's fingerprint covers what its table holds; for an image folder that is paths, not pixels. Reading the
    files once per run costs far less than one backbone pass over them.
    """
    from datasets import Image

    digest = hashlib.sha256()
    if column not in getattr(dataset, "column_names", ()):
        return "no-images"
    raw = dataset.select_columns([column])
    if isinstance(raw.features[column], Image):
        raw = raw.cast_column(column, Image(decode=False))
    for batch in raw.iter(batch_size=256):
        for value in batch[column]:
            value = value or {}
            data = value.get("bytes") if isinstance(value, dict) else None
            if data is None and isinstance(value, dict) and value.get("path"):
                digest.update(b"f" + _file_sha256(value["path"], missing_ok=True).encode())
            else:
                digest.update(b"b" + hashlib.sha256(data or repr(value).encode()).digest())
    return digest.hexdigest()


def _file_sha256(path: str | os.PathLike, missing_ok: bool = False) -> str:
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 22), b""):
                digest.update(chunk)
    except OSError as err:
        if not missing_ok:
            raise
        return f"unreadable:{path}:{err.errno}"
    return digest.hexdigest()


# --- shard files ------------------------------------------------------------------------------------------------
class _ShardWriter:
    """Writes one safetensors shard batch by batch, so a rank never holds its whole share in memory.

    The features go to disk as they are computed (their row count is known up front, their per-row shape from the
    first batch); labels and extra features, a few bytes per row, are written after them. Everything written is
    hashed on the way: the SHA-256 covers the file byte for byte.
    """

    def __init__(self, handle, rows: int, feature_name: str, dtype: torch.dtype, metadata: dict[str, str]):
        self.handle, self.rows, self.feature_name, self.dtype, self.metadata = (
            handle,
            rows,
            feature_name,
            dtype,
            metadata,
        )
        self.digest = hashlib.sha256()
        self.written = 0
        self.labels: list[torch.Tensor] = []
        self.extra: list[torch.Tensor] = []
        self.size = 0

    def _write(self, data: bytes) -> None:
        self.handle.write(data)
        self.digest.update(data)
        self.size += len(data)

    def _header(self, row_shape: tuple[int, ...], extra_dim: int | None) -> bytes:
        entries: dict[str, Any] = {"__metadata__": self.metadata}
        offset = 0
        layout = [(self.feature_name, self.dtype, (self.rows, *row_shape)), ("labels", torch.int64, (self.rows,))]
        if extra_dim is not None:
            layout.append(("extra_features", torch.float32, (self.rows, extra_dim)))
        for name, dtype, shape in layout:
            size = int(np.prod(shape)) * torch.empty((), dtype=dtype).element_size()
            entries[name] = {
                "dtype": _TORCH_TO_SAFETENSORS[dtype],
                "shape": list(shape),
                "data_offsets": [offset, offset + size],
            }
            offset += size
        header = json.dumps(entries, separators=(",", ":")).encode()
        header += b" " * (-len(header) % 8)  # the data section starts 8-byte aligned (safetensors pads the same way)
        return struct.pack("<Q", len(header)) + header

    def add(self, features: torch.Tensor, labels: torch.Tensor, extra: torch.Tensor | None) -> None:
        if self.written == 0:
            self._write(self._header(tuple(features.shape[1:]), None if extra is None else extra.shape[1]))
        # `.contiguous()`: a channels_last activation must be stored in NCHW order, as its shape says.
        stored = features.detach().to("cpu", self.dtype).contiguous()
        self._write((stored.view(torch.int16) if self.dtype == torch.bfloat16 else stored).numpy().tobytes())
        self.labels.append(labels.detach().to("cpu", torch.int64))
        if extra is not None:
            self.extra.append(extra.detach().to("cpu", torch.float32))
        self.written += len(features)

    def close(self) -> tuple[str, int]:
        if self.written != self.rows:
            raise RuntimeError(f"feature shard got {self.written} rows, expected {self.rows}")
        self._write(torch.cat(self.labels).contiguous().numpy().tobytes())
        if self.extra:
            self._write(torch.cat(self.extra).contiguous().numpy().tobytes())
        return self.digest.hexdigest(), self.size


def _map_shard(path: Path) -> dict[str, np.ndarray]:
    """Memory-map every tensor of a safetensors file (read-only pages; copy-on-write, so torch may view them).

    `safetensors.safe_open` reads a tensor or a contiguous slice into memory; a shuffled batch gathers scattered rows,
    which a NumPy mapping does in one indexing call, so the header is read here to find each tensor's offsets.
    """
    with open(path, "rb") as handle:
        (header_size,) = struct.unpack("<Q", handle.read(8))
        header = json.loads(handle.read(header_size))
    start = 8 + header_size
    arrays = {}
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        np_dtype, _ = _SAFETENSORS_DTYPES[entry["dtype"]]
        begin, end = entry["data_offsets"]
        shape = tuple(entry["shape"])
        if end - begin != int(np.prod(shape)) * np_dtype.itemsize:
            raise ValueError(f"tensor {name!r} has {end - begin} bytes for shape {shape}")
        if end == begin:
            arrays[name] = np.empty(shape, dtype=np_dtype)
        else:
            arrays[name] = np.memmap(path, dtype=np_dtype, mode="c", offset=start + begin, shape=shape)
    return arrays


class CachedFeatureDataset(Dataset):
    """Rows of `{feature_name, "labels"[, "extra_features"]}` for `TransferForImageClassification.forward`, read
    from memory-mapped shard files.

    `__getitems__` gathers a whole batch in one indexing call per shard (the DataLoader uses it), which is what keeps
    the per-step cost of a head-only stage small. Features are returned as float32 whatever the storage dtype.

    Args:
        shards (`list[dict[str, np.ndarray]]`): Arrays of each shard, in row order (memory-mapped files).
        feature_name (`str`): `"pooled_features"` or `"backbone_hidden_state"`.
        storage_dtype (`torch.dtype`): The dtype the features are stored as.
        constants (`dict`, *optional*): Values added to every batch (`backbone_hidden_stage` for a prefix cache).
        info (`dict`, *optional*): Where the cache came from (path, rows, bytes, seconds), reported in `metrics.json`.
    """

    def __init__(
        self,
        shards: Sequence[dict[str, np.ndarray]],
        feature_name: str = POOLED_FEATURES,
        storage_dtype: torch.dtype = torch.float32,
        constants: dict[str, Any] | None = None,
        info: dict[str, Any] | None = None,
    ):
        self.shards = [shard for shard in shards if len(shard["labels"])]
        self.feature_name = feature_name
        self.storage_dtype = storage_dtype
        self.constants = dict(constants or {})
        self.info = dict(info or {})
        self.offsets = np.cumsum([0] + [len(shard["labels"]) for shard in self.shards])
        self.length = int(self.offsets[-1])

    def __len__(self) -> int:
        return self.length

    def _column(self, name: str, array: np.ndarray) -> torch.Tensor:
        tensor = torch.from_numpy(np.ascontiguousarray(array))
        if name == self.feature_name:
            if self.storage_dtype == torch.bfloat16:
                tensor = tensor.view(torch.bfloat16)
            return tensor.float()
        return tensor

    def _gather(self, indices: np.ndarray) -> dict[str, np.ndarray]:
        if indices.size and (indices.min() < 0 or indices.max() >= self.length):
            raise IndexError(f"row index out of range for {self.length} cached rows")
        shard_of = np.searchsorted(self.offsets, indices, side="right") - 1
        names = list(self.shards[0]) if self.shards else []
        if self.shards and (shard_of == shard_of[0]).all():
            shard = self.shards[int(shard_of[0])]
            local = indices - self.offsets[shard_of[0]]
            return {name: shard[name][local] for name in names}
        out = {
            name: np.empty((len(indices), *self.shards[0][name].shape[1:]), self.shards[0][name].dtype)
            for name in names
        }
        for s in np.unique(shard_of):
            where = shard_of == s
            local = indices[where] - self.offsets[s]
            for name in names:
                out[name][where] = self.shards[int(s)][name][local]
        return out

    def __getitems__(self, indices: Sequence[int]) -> dict[str, Any]:
        arrays = self._gather(np.asarray(indices, dtype=np.int64))
        batch: dict[str, Any] = {name: self._column(name, array) for name, array in arrays.items()}
        batch.update(self.constants)
        return batch

    def __getitem__(self, index: int) -> dict[str, Any]:
        arrays = self._gather(np.asarray([index], dtype=np.int64))
        row: dict[str, Any] = {name: self._column(name, array)[0] for name, array in arrays.items()}
        row.update(self.constants)
        return row

    @property
    def tensors(self) -> dict[str, torch.Tensor]:
        """Every column as one tensor (reads the whole cache into memory: for inspection and tests)."""
        return {k: v for k, v in self.__getitems__(range(self.length)).items() if k not in self.constants}


def collate_cached_features(batch: dict[str, Any] | list[dict[str, Any]]) -> dict[str, Any]:
    """Data collator of a [`CachedFeatureDataset`]: its `__getitems__` already returns the batch."""
    if isinstance(batch, dict):
        return batch
    out: dict[str, Any] = {}
    for name, value in batch[0].items():
        out[name] = torch.stack([row[name] for row in batch]) if isinstance(value, torch.Tensor) else value
    return out


# --- computing --------------------------------------------------------------------------------------------------
def feature_function(
    model: TransferForImageClassification, prefix_stage: int | None, from_stage: int | None = None
) -> Callable:
    """What is cached: `forward_features` (pooled), or the output of backbone stage `prefix_stage`. With
    `from_stage`, the input is the output of that backbone stage (a cached prefix) instead of pixels."""
    if from_stage is not None:
        if prefix_stage is not None:
            raise ValueError("only pooled features can be computed from a cached prefix (prefix_stage must be None)")
        return lambda hidden: model.pooler(model.backbone.forward_from_stage(hidden, from_stage, model.pooler.stages))
    if prefix_stage is None:
        return model.forward_features
    return lambda pixel_values: model.backbone.forward_intermediates(
        pixel_values, [prefix_stage], stop_early=True, intermediates_only=True
    )[0]


def _frozen_outputs(
    model: TransferForImageClassification,
    dataset,
    collate_fn,
    *,
    prefix_stage: int | None,
    batch_size: int,
    num_workers: int,
    device: torch.device,
    channels_last: bool,
    description: str,
    show_progress: bool,
    from_stage: int | None = None,
):
    """Run the frozen part over `dataset` once (eval mode, inference mode, batched): yields `(outputs, labels,
    extra_features or None)` per batch. With `from_stage`, `dataset` holds cached outputs of that backbone stage."""
    was_training = model.training
    model.eval()
    forward = feature_function(model, prefix_stage, from_stage)
    input_name = "pixel_values" if from_stage is None else PREFIX_FEATURES
    loader = DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=False,
        collate_fn=collate_fn,
        num_workers=num_workers,
        pin_memory=device.type == "cuda",
        persistent_workers=False,
    )
    try:
        for batch in tqdm(loader, desc=description, unit="batch", disable=not show_progress):
            inputs = batch[input_name].to(device, non_blocking=True)
            if channels_last:
                inputs = inputs.contiguous(memory_format=torch.channels_last)
            with torch.inference_mode():
                outputs = forward(inputs)
            yield outputs, batch["labels"], batch.get("extra_features")
    finally:
        model.train(was_training)


def write_shard(
    path: Path,
    rows: int,
    batches,
    *,
    feature_name: str = POOLED_FEATURES,
    dtype: str = "float32",
    start: int = 0,
    key: str = "",
) -> dict[str, Any]:
    """Write `batches` of `(features, labels, extra_features or None)`, `rows` rows in all, as the shard `path`
    (atomically) and its sidecar; returns the sidecar (file, start, rows, sha256, bytes)."""
    digest, size = "", 0
    if rows:
        fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as handle:
                metadata = {"key": key, "start": str(start), "rows": str(rows)}
                writer = _ShardWriter(handle, rows, feature_name, STORAGE_DTYPES[dtype], metadata)
                for features, labels, extra in batches:
                    writer.add(features, labels, extra)
                digest, size = writer.close()
                handle.flush()
                os.fsync(handle.fileno())
            replace_with_umask_mode(tmp_name, path)
        finally:
            if os.path.exists(tmp_name):
                os.unlink(tmp_name)
    sidecar = {
        "format_version": CACHE_FORMAT_VERSION,
        "file": path.name,
        "start": start,
        "rows": rows,
        "sha256": digest,
        "bytes": size,
    }
    write_json_atomic(path.with_suffix(".json"), sidecar)
    return sidecar


@dataclass
class _Entry:
    """An on-disk cache entry: its folder and the index that lists its shards."""

    path: Path
    index: dict[str, Any] = field(default_factory=dict)

    @property
    def index_file(self) -> Path:
        return self.path / INDEX_FILE


def _shard_name(rank: int, world_size: int) -> str:
    return f"shard-{rank:05d}-of-{world_size:05d}.safetensors"


def _valid_shard(path: Path, rows: int) -> dict[str, Any] | None:
    """The sidecar of a complete shard of `rows` rows whose file still matches its SHA-256, else None."""
    sidecar = path.with_suffix(".json")
    try:
        meta = json.loads(sidecar.read_text())
        if meta.get("rows") != rows or meta.get("format_version") != CACHE_FORMAT_VERSION:
            return None
        if rows and _file_sha256(path) != meta.get("sha256"):
            logger.warning("Feature cache shard %s fails its checksum (damaged or edited); recomputing.", path)
            return None
        return meta
    except (OSError, ValueError, AttributeError):
        return None


def _open_entry(entry: _Entry, expected_rows: int | None, num_labels: int | None) -> CachedFeatureDataset | None:
    """Open a complete, verified entry; None (with a warning when something was there but wrong) otherwise.

    `expected_rows` is None for a streamed dataset (its length is what the index says)."""
    try:
        index = json.loads(entry.index_file.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as err:
        logger.warning("Ignoring unreadable feature cache index %s (%s); recomputing.", entry.index_file, err)
        return None
    if index.get("format_version") != CACHE_FORMAT_VERSION or (
        expected_rows is not None and index.get("rows") != expected_rows
    ):
        logger.warning(
            "Feature cache %s does not match the dataset (%s rows expected); recomputing.", entry.path, expected_rows
        )
        return None
    expected_rows = index.get("rows") if expected_rows is None else expected_rows
    shards = []
    for shard in index.get("shards", []):
        path = entry.path / shard["file"]
        if shard["rows"] == 0:
            continue
        try:
            if _file_sha256(path) != shard["sha256"]:
                logger.warning("Feature cache %s fails its checksum (damaged or edited); recomputing.", path)
                return None
            arrays = _map_shard(path)
        except (OSError, ValueError, KeyError, struct.error) as err:  # truncated or corrupt: rebuild, never trust it
            logger.warning("Ignoring unreadable feature cache %s (%s); recomputing.", path, err)
            return None
        labels = arrays.get("labels")
        feature = arrays.get(index["feature_name"])
        if (
            feature is None
            or labels is None
            or labels.shape != (shard["rows"],)
            or any(len(values) != shard["rows"] for values in arrays.values())
            or int(labels.min()) < 0
            or (num_labels is not None and int(labels.max()) >= num_labels)
        ):
            logger.warning(
                "Feature cache %s holds labels or rows that do not fit the model (%s classes); recomputing.",
                path,
                num_labels,
            )
            return None
        shards.append(arrays)
    if sum(len(s["labels"]) for s in shards) != expected_rows:
        return None
    constants = {}
    if index["kind"].startswith("prefix:"):
        constants["backbone_hidden_stage"] = int(index["kind"].split(":")[1])
    info = {"path": str(entry.path), "rows": expected_rows, "bytes": index.get("bytes"), "dtype": index["dtype"]}
    return CachedFeatureDataset(shards, index["feature_name"], STORAGE_DTYPES[index["dtype"]], constants, info)


def _write_shard(
    entry: _Entry,
    model,
    dataset,
    collate_fn,
    rank: int,
    world_size: int,
    *,
    key: str,
    prefix_stage: int | None,
    dtype: str,
    **compute_kwargs,
) -> tuple[dict[str, Any], int]:
    """Compute this rank's share into its shard (unless a complete one is already there); returns (sidecar, rows
    computed)."""
    rows = len(dataset)
    start, stop = rows * rank // world_size, rows * (rank + 1) // world_size
    path = entry.path / _shard_name(rank, world_size)
    with FileLock(str(path) + ".lock"):
        existing = _valid_shard(path, stop - start)
        if existing is not None:  # an interrupted run, or another job, already computed this share
            return existing, 0
        share = (
            dataset.select(range(start, stop))
            if hasattr(dataset, "select")
            else torch.utils.data.Subset(dataset, range(start, stop))
        )
        batches = _frozen_outputs(model, share, collate_fn, prefix_stage=prefix_stage, **compute_kwargs)
        feature_name = POOLED_FEATURES if prefix_stage is None else PREFIX_FEATURES
        sidecar = write_shard(
            path, stop - start, batches, feature_name=feature_name, dtype=dtype, start=start, key=key
        )
    return sidecar, stop - start


def _write_streamed_shards(
    entry: _Entry,
    model,
    dataset,
    collate_fn,
    rank: int,
    world_size: int,
    *,
    key: str,
    prefix_stage: int | None,
    dtype: str,
    chunk_bytes: int = 256 << 20,
    **compute_kwargs,
) -> tuple[list[dict[str, Any]], int]:
    """A streamed dataset (no length): this rank's share of the stream (`dataset.shard(rank, world_size)`) goes into
    shards of at most `chunk_bytes` each, written as they fill; returns (sidecars, rows computed)."""
    share = dataset.shard(rank, world_size) if world_size > 1 else dataset
    feature_name = POOLED_FEATURES if prefix_stage is None else PREFIX_FEATURES
    sidecars, pending, pending_rows, part, total = [], [], 0, 0, 0

    def flush():
        nonlocal pending, pending_rows, part
        name = f"shard-{rank:05d}-of-{world_size:05d}-part-{part:05d}.safetensors"
        sidecars.append(
            write_shard(
                entry.path / name, pending_rows, iter(pending), feature_name=feature_name, dtype=dtype, key=key
            )
        )
        pending, pending_rows, part = [], 0, part + 1

    for outputs, labels, extra in _frozen_outputs(
        model, share, collate_fn, prefix_stage=prefix_stage, **compute_kwargs
    ):
        row_bytes = outputs[0].numel() * STORAGE_DTYPES[dtype].itemsize
        pending.append((outputs.to("cpu", STORAGE_DTYPES[dtype]), labels, extra))
        pending_rows += len(outputs)
        total += len(outputs)
        if pending_rows * row_bytes >= chunk_bytes:
            flush()
    if pending_rows or not sidecars:
        flush()
    return sidecars, total


def publish_index(
    path: Path, key: str, prefix_stage: int | None, dtype: str, rows: int, sidecars: list[dict[str, Any]]
) -> None:
    """Write `index.json`, which makes a cache entry of these shards visible (the last file written)."""
    index_file = path / INDEX_FILE
    with FileLock(str(index_file) + ".lock"):
        index = {
            "format_version": CACHE_FORMAT_VERSION,
            "key": key,
            "kind": "pooled" if prefix_stage is None else f"prefix:{prefix_stage}",
            "feature_name": POOLED_FEATURES if prefix_stage is None else PREFIX_FEATURES,
            "dtype": dtype,
            "rows": rows,
            "bytes": sum(s["bytes"] for s in sidecars),
            "shards": sidecars,
        }
        write_json_atomic(index_file, index)


def open_cache_entry(path: str | Path, rows: int, num_labels: int | None = None) -> CachedFeatureDataset | None:
    """The verified [`CachedFeatureDataset`] of the entry folder `path` holding `rows` rows, or None."""
    return _open_entry(_Entry(Path(path)), rows, num_labels)


def load_or_compute_features(
    model: TransferForImageClassification,
    processor: TransferImageProcessor,
    dataset,
    dataset_fingerprint: str,
    collate_fn,
    *,
    batch_size: int,
    num_workers: int,
    device: torch.device,
    cache_dir: str | Path | None = None,
    description: str = "Caching backbone features",
    dtype: str = "float32",
    prefix_stage: int | None = None,
    channels_last: bool | None = None,
    ranks: Ranks | None = None,
    weights_digest: str | None = None,
    from_prefix_stage: int | None = None,
) -> tuple[CachedFeatureDataset, Path, bool]:
    """Return the cached frozen outputs of `dataset`, computing and writing them first when absent or stale.

    Call it on every rank of a multi-process run: each rank computes its share of the rows (no rank idles), rank 0
    then publishes the index, and every rank maps the same files. In one process it computes everything. A streamed
    `dataset` (an iterable without a length, with a `shard(rank, world_size)` method) is read once, each rank its
    `shard`, into shards of at most 256 MiB written as they fill.

    Args:
        model ([`TransferForImageClassification`]): Its frozen part is run (in eval mode).
        processor ([`TransferImageProcessor`]): Part of the key (the images' preprocessing).
        dataset: Map-style dataset of transformed rows (deterministic transforms), in the order to cache.
        dataset_fingerprint (`str`): Identifies the rows and their content (part of the key).
        collate_fn: Turns rows into `{"pixel_values", "labels"[, "extra_features"]}`.
        batch_size (`int`), num_workers (`int`), device (`torch.device`): How the pass runs.
        cache_dir (`str` or `Path`, *optional*): Defaults to `$HFTRANSFER_CACHE/features`.
        dtype (`str`, *optional*, defaults to `"float32"`): Storage dtype: `"float32"`, `"float16"`, `"bfloat16"`.
        prefix_stage (`int`, *optional*): Cache the output of this backbone stage (a frozen prefix) instead of the
            pooled features.
        channels_last (`bool`, *optional*, defaults to `True`): Feed the pass channels_last inputs.
        ranks ([`Ranks`], *optional*): The process group's ranks (default: from torch.distributed).
        weights_digest (`str`, *optional*): [`frozen_weights_digest`] of the model, when already computed.
        from_prefix_stage (`int`, *optional*): `dataset` is a [`CachedFeatureDataset`] of the output of this backbone
            stage (a frozen-prefix entry, collated by [`collate_cached_features`]); the pooled features are computed
            from it by the later stages only. Same entry (key) as from images: the values agree to float rounding.

    Returns:
        `(dataset, path, was_computed)`: the [`CachedFeatureDataset`] (its `info` holds rows, rows computed per rank,
        bytes and seconds), the entry's folder, and whether any rank computed rows in this call.
    """
    if dtype not in STORAGE_DTYPES:
        raise ValueError(f"feature cache dtype {dtype!r} is invalid: expected one of {tuple(STORAGE_DTYPES)}.")
    if from_prefix_stage is not None and prefix_stage is not None:
        raise ValueError("from_prefix_stage computes pooled features: prefix_stage must be None.")
    ranks = ranks or Ranks()
    cache_dir = Path(cache_dir) if cache_dir else features_cache_dir()
    # The cache also stores the collated `extra_features`, so which columns feed them is part of the key.
    extra_columns = ",".join(getattr(collate_fn, "extra_feature_columns", ()) or ())
    key = feature_cache_key(
        model,
        processor,
        f"{dataset_fingerprint}|extra={extra_columns}",
        prefix_stage=prefix_stage,
        dtype=dtype,
        weights_digest=weights_digest,
    )
    entry = _Entry(cache_dir / key)
    entry.path.mkdir(parents=True, exist_ok=True)
    num_labels = getattr(model.config, "num_labels", None)
    started = time.perf_counter()
    streamed = not hasattr(dataset, "__len__")
    rows = None if streamed else len(dataset)
    opened = _open_entry(entry, rows, num_labels)
    # Every rank must take the same branch (the compute branch has barriers): compute unless all ranks found it.
    found = all(ranks.all_gather(opened is not None))
    rows_computed = 0
    if not found:
        # channels_last inputs: cuDNN's and oneDNN's fast convolution layout (the pass ran 1.35-1.5x faster on a
        # 2-core CPU, VGG16 at 32 and 64 px); the outputs are stored in NCHW order either way.
        channels_last = True if channels_last is None else channels_last
        write = _write_streamed_shards if streamed else _write_shard
        written, rows_computed = write(
            entry,
            model,
            dataset,
            collate_fn,
            ranks.rank,
            ranks.world_size,
            key=key,
            prefix_stage=prefix_stage,
            dtype=dtype,
            batch_size=batch_size,
            num_workers=num_workers,
            device=device,
            channels_last=channels_last,
            description=description,
            show_progress=ranks.is_main_process,
            from_stage=from_prefix_stage,
        )
        sidecars = [
            s for rank_sidecars in ranks.all_gather(written) for s in (rank_sidecars if streamed else [rank_sidecars])
        ]
        if ranks.is_main_process:
            total = sum(s["rows"] for s in sidecars)
            publish_index(entry.path, key, prefix_stage, dtype, total, sidecars)
        ranks.barrier()
        opened = _open_entry(entry, rows, num_labels)
        if opened is None:
            raise RuntimeError(f"the feature cache {entry.path} was written but cannot be read back")
    per_rank = ranks.all_gather(rows_computed)
    opened.info.update(rows_computed_per_rank=per_rank, seconds=round(time.perf_counter() - started, 3))
    return opened, entry.path, any(per_rank)


__all__ = [
    "CachedFeatureDataset",
    "open_cache_entry",
    "publish_index",
    "write_shard",
    "collate_cached_features",
    "feature_cache_key",
    "frozen_weights_digest",
    "image_content_fingerprint",
    "load_or_compute_features",
]
