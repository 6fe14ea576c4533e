"""Issue 14: cached features are read memory-mapped (the dataset holds file mappings, not tensors, so resident
memory does not grow with the cache), batches are gathered in one call, and half-precision storage round-trips."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from hftransfer.training.feature_cache import (
    CachedFeatureDataset,
    collate_cached_features,
    open_cache_entry,
    publish_index,
    write_shard,
)


def _rss_anon_bytes() -> int:
    with open("/proc/self/status") as handle:
        status = handle.read()
    return int(re.search(r"RssAnon:\s+(\d+) kB", status).group(1)) * 1024


def _synthetic_entry(path, rows, dim, dtype="float32", shards=1, batch=4096):
    path.mkdir(parents=True)
    generator = torch.Generator().manual_seed(0)
    sidecars = []
    for shard in range(shards):
        start, stop = rows * shard // shards, rows * (shard + 1) // shards

        def batches(start=start, stop=stop):
            for first in range(start, stop, batch):
                count = min(batch, stop - first)
                features = torch.randn(count, dim, generator=generator)
                yield features, torch.arange(first, first + count) % 10, None

        name = f"shard-{shard:05d}-of-{shards:05d}.safetensors"
        sidecars.append(write_shard(path / name, stop - start, batches(), dtype=dtype, start=start))
    publish_index(path, "synthetic", None, dtype, rows, sidecars)
    return path


@pytest.mark.skipif(not __import__("os").path.exists("/proc/self/status"), reason="needs Linux /proc")
def test_a_cache_larger_than_the_memory_it_costs_is_read_memory_mapped(tmp_path):
    rows, dim = 40_000, 1024  # 164 MB of float32 features
    entry = _synthetic_entry(tmp_path / "entry", rows, dim)
    before = _rss_anon_bytes()
    dataset = open_cache_entry(entry, rows, num_labels=10)
    assert isinstance(dataset, CachedFeatureDataset) and len(dataset) == rows
    (shard,) = dataset.shards
    assert isinstance(shard["pooled_features"], np.memmap)
    assert str(entry) in str(shard["pooled_features"].filename)
    # A whole shuffled epoch, batch by batch, as the Trainer's DataLoader reads it.
    order = np.random.default_rng(0).permutation(rows)
    total = 0.0
    for first in range(0, rows, 512):
        batch = collate_cached_features(dataset.__getitems__(order[first : first + 512].tolist()))
        assert batch["pooled_features"].shape[1:] == (dim,) and batch["pooled_features"].dtype == torch.float32
        total += float(batch["labels"].sum())
    grown = _rss_anon_bytes() - before
    assert total == sum(i % 10 for i in range(rows))
    assert grown < 40e6, f"anonymous memory grew by {grown / 1e6:.0f} MB reading a 164 MB cache"
    # The measure itself can fail: the same features held as tensors in memory cost their size.
    loaded = {k: v.clone() for k, v in load_file(str(entry / "shard-00000-of-00001.safetensors")).items()}
    assert _rss_anon_bytes() - before > 120e6
    del loaded


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_half_precision_storage_halves_the_bytes_and_round_trips(tmp_path, dtype):
    rows, dim = 300, 64
    full = open_cache_entry(_synthetic_entry(tmp_path / "f32", rows, dim, shards=2), rows)
    half = open_cache_entry(_synthetic_entry(tmp_path / dtype, rows, dim, dtype=dtype, shards=2), rows)
    assert half.info["bytes"] < 0.6 * full.info["bytes"]
    reference = full.tensors["pooled_features"]
    got = half.tensors["pooled_features"]
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, reference.to(getattr(torch, dtype)).float())
    assert torch.equal(half.tensors["labels"], full.tensors["labels"])
    # Rows from both shards in one batch come back in the order asked for.
    rows_asked = [299, 0, 151, 149, 150]
    batch = half.__getitems__(rows_asked)
    torch.testing.assert_close(batch["pooled_features"], got[rows_asked])
    assert batch["labels"].tolist() == [r % 10 for r in rows_asked]
