"""Cached frozen-backbone features: a head-only stage runs the backbone once instead of once per epoch.

VGG's conv base has no dropout and, frozen, no BatchNorm updates, so with deterministic transforms the pooled
features of an image never change during the stage: training the head on cached features gives the same result as
recomputing them (tests/training prove it). The cache lives on disk, keyed by backbone weights + pooling + image
processor settings + dataset fingerprint + a hash of the image content (an image folder's rows hold paths: a file
replaced in place, even with its size and mtime kept, changes the key), written atomically and rebuilt when any of
those change. The file carries a SHA-256 of its tensors, verified on load; a file that fails it, or whose labels do
not fit the model, is recomputed with a warning.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from pathlib import Path

import torch
from filelock import FileLock
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from .._io import replace_with_umask_mode
from ..image_processing_hftransfer import TransferImageProcessor
from ..modeling_hftransfer import TransferForImageClassification

logger = logging.getLogger(__name__)

CACHE_FORMAT_VERSION = 2


def default_cache_dir() -> Path:
    root = os.environ.get("HFTRANSFER_CACHE") or os.path.join(Path.home(), ".cache", "hftransfer")
    return Path(root) / "features"


def feature_cache_key(
    model: TransferForImageClassification, processor: TransferImageProcessor, dataset_fingerprint: str
) -> str:
    """Hash of everything the cached features depend on: backbone tensors, pooler, processor, data."""
    digest = hashlib.sha256()
    settings = {
        "version": CACHE_FORMAT_VERSION,
        "backbone": model.config.backbone,
        "pooling": model.config.pooling,
        "pooler_stages": list(model.pooler.stages),
        "image_size": model.config.image_size,
        "processor": {k: v for k, v in processor.to_dict().items() if k not in ("auto_map", "_processor_class")},
        "dataset": dataset_fingerprint,
    }
    digest.update(json.dumps(settings, sort_keys=True, default=str).encode())
    for name, tensor in sorted(model.backbone.state_dict().items()):
        digest.update(name.encode())
        # reshape(-1): 0-d buffers (BatchNorm num_batches_tracked) cannot be viewed as bytes directly.
        digest.update(tensor.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:32]


class CachedFeatureDataset(Dataset):
    """Rows of `{"pooled_features", "labels"[, "extra_features"]}` for `TransferForImageClassification.forward`."""

    def __init__(self, tensors: dict[str, torch.Tensor]):
        self.tensors = tensors
        self.length = len(tensors["pooled_features"])

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {name: values[index] for name, values in self.tensors.items()}


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
                try:
                    file_hash = hashlib.sha256()
                    with open(value["path"], "rb") as handle:
                        for chunk in iter(lambda: handle.read(1 << 20), b""):
                            file_hash.update(chunk)
                    file_digest = file_hash.digest()
                except OSError as err:
                    file_digest = f"unreadable:{value['path']}:{err.errno}".encode()
                digest.update(b"f" + file_digest)
            else:
                digest.update(b"b" + hashlib.sha256(data or repr(value).encode()).digest())
    return digest.hexdigest()


def tensors_checksum(tensors: dict[str, torch.Tensor]) -> str:
    """SHA-256 over the names, dtypes, shapes and bytes of `tensors` (stored in the cache file's metadata)."""
    digest = hashlib.sha256()
    for name in sorted(tensors):
        tensor = tensors[name].contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()


def _read_cache(path: Path, expected_rows: int, num_labels: int | None = None) -> dict[str, torch.Tensor] | None:
    if not path.is_file():
        return None
    try:
        tensors = load_file(str(path))
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
    except (SafetensorError, OSError, RuntimeError) as err:  # truncated or corrupt: rebuild, never trust it
        logger.warning("Ignoring unreadable feature cache %s (%s); recomputing.", path, err)
        return None
    if "pooled_features" not in tensors or len(tensors["pooled_features"]) != expected_rows:
        logger.warning(
            "Feature cache %s does not match the dataset (%d rows expected); recomputing.", path, expected_rows
        )
        return None
    if metadata.get("sha256") != tensors_checksum(tensors):
        logger.warning("Feature cache %s fails its checksum (damaged or edited); recomputing.", path)
        return None
    labels = tensors.get("labels")
    if (
        labels is None
        or labels.dtype not in (torch.int64, torch.int32)
        or labels.shape != (expected_rows,)
        or any(len(values) != expected_rows for values in tensors.values())
        or (expected_rows and (int(labels.min()) < 0 or (num_labels is not None and int(labels.max()) >= num_labels)))
    ):
        logger.warning(
            "Feature cache %s holds labels or rows that do not fit the model (%s classes); recomputing.",
            path,
            num_labels,
        )
        return None
    return tensors


@torch.inference_mode()
def compute_features(
    model: TransferForImageClassification,
    dataset,
    collate_fn,
    batch_size: int,
    num_workers: int,
    device: torch.device,
    description: str,
) -> dict[str, torch.Tensor]:
    """Run backbone + pooler once over `dataset` (eval mode, no grad, batched, with a progress bar)."""
    was_training = model.training
    model.eval()
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=collate_fn, num_workers=num_workers)
    outputs: dict[str, list[torch.Tensor]] = {"pooled_features": [], "labels": []}
    try:
        for batch in tqdm(loader, desc=description, unit="batch"):
            pixel_values = batch["pixel_values"].to(device, non_blocking=True)
            outputs["pooled_features"].append(model.forward_features(pixel_values).float().cpu())
            outputs["labels"].append(batch["labels"].cpu())
            if "extra_features" in batch:
                outputs.setdefault("extra_features", []).append(batch["extra_features"].float().cpu())
    finally:
        model.train(was_training)
    return {name: torch.cat(chunks).contiguous() for name, chunks in outputs.items()}


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
) -> tuple[CachedFeatureDataset, Path, bool]:
    """Return the cached features of `dataset`, computing and writing them first when absent or stale.

    Safe under concurrency: a file lock serialises writers of the same key (two jobs, or ranks sharing a disk),
    and the file appears only complete (temp file + `os.replace`). Call it on the main process first (e.g. inside
    accelerate's `main_process_first()`) so the other ranks find the cache instead of recomputing it.

    Returns:
        `(dataset, path, was_computed)`.
    """
    cache_dir = Path(cache_dir) if cache_dir else default_cache_dir()
    cache_dir.mkdir(parents=True, exist_ok=True)
    # The cache also stores the collated `extra_features`, so which columns feed them is part of the key.
    extra_columns = ",".join(getattr(collate_fn, "extra_feature_columns", ()) or ())
    key = feature_cache_key(model, processor, f"{dataset_fingerprint}|extra={extra_columns}")
    path = cache_dir / f"{key}.safetensors"
    with FileLock(str(path) + ".lock"):
        tensors = _read_cache(path, len(dataset), getattr(model.config, "num_labels", None))
        computed = tensors is None
        if computed:
            tensors = compute_features(model, dataset, collate_fn, batch_size, num_workers, device, description)
            fd, tmp_name = tempfile.mkstemp(dir=cache_dir, prefix=f".{key}.", suffix=".tmp")
            os.close(fd)
            try:
                metadata = {"key": key, "rows": str(len(dataset)), "sha256": tensors_checksum(tensors)}
                save_file(tensors, tmp_name, metadata=metadata)
                replace_with_umask_mode(tmp_name, path)
            finally:
                if os.path.exists(tmp_name):
                    os.unlink(tmp_name)
    return CachedFeatureDataset(tensors), path, computed
