"""Fashion-MNIST: the embedded balanced subset shipped in the package, and the full set from the Debian package.

Fashion-MNIST is Copyright (c) 2017 Zalando SE, MIT licence (https://github.com/zalandoresearch/fashion-mnist); the
licence text ships next to the embedded file (`fashion_mnist_subset/LICENSE`).

The subset is rebuilt byte-for-byte by `scripts/build_fashion_mnist_subset.py` from the IDX files of the Debian
package `dataset-fashion-mnist`. Everything that decides its bytes lives here and avoids library choices that vary
between versions: examples are chosen by SHA-256 ranks (not a NumPy RNG stream), PNGs are encoded here with
`zlib` (not by Pillow, whose bundled zlib differs between wheels), the parquet schema metadata is a literal, and
the parquet writer settings are fixed. Only the parquet footer's `created_by` string depends on the pyarrow
version, which `fashion_mnist_subset.json` records next to a version-independent content digest.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import struct
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from .._io import atomic_open

# $HFTRANSFER_FASHION_MNIST_DIR lets users who downloaded the IDX files elsewhere (and tests) point the loader at them.
from ..constants import FASHION_MNIST_DIR_ENV
from .images import DataError

FASHION_MNIST_CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
DEBIAN_FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
IDX_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}

SUBSET_DIR = Path(__file__).parent / "fashion_mnist_subset"
SUBSET_FILE = "fashion_mnist_subset.parquet"
SUBSET_RECORD = "fashion_mnist_subset.json"
SUBSET_SEED = 42
SUBSET_PER_CLASS = {"train": 500, "test": 100}
# zlib level of the embedded PNGs; the full set uses a fast encoding instead (see `_encode_pgm`).
_PNG_ZLIB_LEVEL = 9
# The `datasets` features of the parquet file, written as a literal so that the bytes do not depend on the
# `datasets` version; `datasets.load_dataset("parquet", ...)` reads the columns back as Image and ClassLabel.
_HF_FEATURES = {
    "image": {"_type": "Image"},
    "label": {"names": list(FASHION_MNIST_CLASSES), "_type": "ClassLabel"},
    "split": {"dtype": "string", "_type": "Value"},
    "source_index": {"dtype": "int32", "_type": "Value"},
}
_SUBSET_SCHEMA = pa.schema(
    [
        pa.field("image", pa.struct([pa.field("bytes", pa.binary()), pa.field("path", pa.string())])),
        pa.field("label", pa.int64()),
        pa.field("split", pa.string()),
        pa.field("source_index", pa.int32()),
    ],
    metadata={b"huggingface": json.dumps({"info": {"features": _HF_FEATURES}}, sort_keys=True).encode()},
)


def fashion_mnist_dir() -> Path:
    """Folder of the full Fashion-MNIST IDX files: `$HFTRANSFER_FASHION_MNIST_DIR`, else the Debian package's."""
    return Path(os.environ.get(FASHION_MNIST_DIR_ENV) or DEBIAN_FASHION_MNIST_DIR)


def _find_idx_file(directory: Path, stem: str) -> Path:
    for candidate in (directory / f"{stem}.gz", directory / stem):
        if candidate.is_file():
            return candidate
    if not directory.exists():
        if os.environ.get(FASHION_MNIST_DIR_ENV):
            raise DataError(f"${FASHION_MNIST_DIR_ENV}={directory} does not exist.")
        raise DataError(
            f"The full Fashion-MNIST is read from {directory}, which does not exist: install it with "
            "`apt-get install dataset-fashion-mnist` (Debian/Ubuntu), point $HFTRANSFER_FASHION_MNIST_DIR at a "
            "folder of the IDX files, or use the embedded 'fashion-mnist-subset'."
        )
    raise DataError(f"Fashion-MNIST IDX file {stem}(.gz) not found in {directory}.")


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read an IDX file (the MNIST format: big-endian header, then uint8 data), gzipped or not.

    Args:
        path (`str` or `os.PathLike`): The `.gz` or raw IDX file.

    Returns:
        `np.ndarray` of uint8 with the shape given by the header, e.g. `(60000, 28, 28)` for images.
    """
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as stream:
        data = stream.read()
    if len(data) < 4 or data[:2] != b"\x00\x00" or data[2] != 0x08:
        raise DataError(f"{path} is not an IDX file of uint8 data (bad magic number {data[:4].hex()}).")
    ndim = data[3]
    shape = struct.unpack(f">{ndim}I", data[4 : 4 + 4 * ndim])
    offset = 4 + 4 * ndim
    if len(data) - offset != int(np.prod(shape)):
        raise DataError(f"{path} is truncated or corrupt: header says {shape}, found {len(data) - offset} bytes.")
    return np.frombuffer(data, dtype=np.uint8, offset=offset).reshape(shape)


def read_fashion_mnist_split(split: str, directory: str | os.PathLike | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Images `(N, 28, 28)` uint8 and labels `(N,)` of one split (`"train"` or `"test"`) of the full set."""
    directory = Path(directory) if directory is not None else fashion_mnist_dir()
    images_stem, labels_stem = IDX_FILES[split]
    images = read_idx(_find_idx_file(directory, images_stem))
    labels = read_idx(_find_idx_file(directory, labels_stem))
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise DataError(
            f"Fashion-MNIST {split} files in {directory} disagree: images {images.shape}, labels {labels.shape}."
        )
    if labels.size and labels.max() >= len(FASHION_MNIST_CLASSES):
        raise DataError(f"Fashion-MNIST {split} labels in {directory} go up to {labels.max()}; expected 0..9.")
    return images, labels


def _png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def encode_png_gray(pixels: np.ndarray, level: int = _PNG_ZLIB_LEVEL) -> bytes:
    """Encode an 8-bit grayscale image as a minimal PNG (IHDR, one IDAT, IEND), deterministically.

    Written here rather than with Pillow because the bytes must not depend on Pillow's bundled zlib (the embedded
    subset is checked byte-for-byte). Filter type 0 for every row.

    Args:
        pixels (`np.ndarray`): `(H, W)` uint8 array.
        level (`int`, *optional*, defaults to 9): zlib compression level.
    """
    pixels = np.ascontiguousarray(pixels, dtype=np.uint8)
    height, width = pixels.shape
    rows = np.zeros((height, width + 1), dtype=np.uint8)  # a leading 0 per row: PNG filter "None"
    rows[:, 1:] = pixels
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit, grayscale, deflate, no interlace
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", header)
        + _png_chunk(b"IDAT", zlib.compress(rows.tobytes(), level))
        + _png_chunk(b"IEND", b"")
    )


def _encode_pgm(pixels: np.ndarray) -> bytes:
    # Binary PGM: a header and the raw bytes. Used for the full set, which is built in memory on every load: ~100x
    # faster to encode than PNG, and PIL decodes it without inflating anything.
    height, width = pixels.shape
    return b"P5\n%d %d\n255\n" % (width, height) + pixels.tobytes()


def select_subset_indices(labels: np.ndarray, per_class: int, seed: int, split: str) -> np.ndarray:
    """The balanced subset of one split: for each class, the `per_class` examples with the smallest
    `sha256(f"{seed}:{split}:{index}")`, returned in their original order.

    SHA-256 ranks rather than a NumPy generator keep the choice identical across NumPy versions.
    """
    chosen = []
    for label in range(len(FASHION_MNIST_CLASSES)):
        indices = np.flatnonzero(labels == label)
        if len(indices) < per_class:
            raise DataError(f"Fashion-MNIST {split} has {len(indices)} examples of class {label}; need {per_class}.")
        keys = [hashlib.sha256(f"{seed}:{split}:{index}".encode()).digest() for index in indices]
        order = sorted(range(len(indices)), key=keys.__getitem__)
        chosen.extend(int(indices[i]) for i in order[:per_class])
    return np.array(sorted(chosen), dtype=np.int64)


def build_subset_table(
    directory: str | os.PathLike | None = None,
    per_class: dict[str, int] | None = None,
    seed: int = SUBSET_SEED,
) -> pa.Table:
    """The embedded subset as an Arrow table: columns `image` (`{"bytes": PNG, "path": "train/00012.png"}`),
    `label` (0..9), `split` (`"train"`/`"test"`) and `source_index` (row in the original IDX split).

    Args:
        directory (`str` or `os.PathLike`, *optional*): Folder of the IDX files; defaults to [`fashion_mnist_dir`].
        per_class (`dict[str, int]`, *optional*): Examples per class and split; defaults to 500 train / 100 test.
        seed (`int`, *optional*, defaults to 42): Seed of the selection.
    """
    per_class = per_class or SUBSET_PER_CLASS
    columns: dict[str, list] = {"image": [], "label": [], "split": [], "source_index": []}
    for split, count in per_class.items():
        images, labels = read_fashion_mnist_split(split, directory)
        for index in select_subset_indices(labels, count, seed, split):
            columns["image"].append({"bytes": encode_png_gray(images[index]), "path": f"{split}/{index:05d}.png"})
            columns["label"].append(int(labels[index]))
            columns["split"].append(split)
            columns["source_index"].append(int(index))
    return pa.Table.from_pydict(columns, schema=_SUBSET_SCHEMA)


def write_subset_parquet(table: pa.Table, path: str | os.PathLike) -> None:
    """Write the subset with fixed writer settings (PNG bytes do not compress further, so no codec), atomically."""
    with atomic_open(path, "wb") as handle:
        _write_subset_parquet(table, handle)


def _write_subset_parquet(table: pa.Table, sink: Any) -> None:
    pq.write_table(
        table,
        sink,
        version="2.6",
        compression="none",
        use_dictionary=False,
        write_statistics=False,
        row_group_size=len(table),
        data_page_version="1.0",
        store_schema=True,
        write_page_index=False,
        write_page_checksum=False,
    )


def subset_content_sha256(table: pa.Table) -> str:
    """A digest of the subset's content (every row's split, source index, label and PNG bytes) that does not
    depend on the parquet writer, unlike the file's own SHA-256."""
    digest = hashlib.sha256()
    for image, label, split, index in zip(
        table.column("image").to_pylist(),
        table.column("label").to_pylist(),
        table.column("split").to_pylist(),
        table.column("source_index").to_pylist(),
    ):
        digest.update(f"{split}:{index}:{label}:{len(image['bytes'])}:".encode())
        digest.update(image["bytes"])
    return digest.hexdigest()


def subset_record(table: pa.Table, parquet_path: str | os.PathLike, name: str = SUBSET_FILE) -> dict:
    """What `fashion_mnist_subset.json` records about a built subset: size, checksums, class balance, recipe."""
    data = Path(parquet_path).read_bytes()
    labels = table.column("label").to_pylist()
    splits = table.column("split").to_pylist()
    balance = {
        split: {
            name: sum(1 for lab, spl in zip(labels, splits) if spl == split and lab == label_id)
            for label_id, name in enumerate(FASHION_MNIST_CLASSES)
        }
        for split in dict.fromkeys(splits)
    }
    return {
        "file": name,
        "size_bytes": len(data),
        "sha256": hashlib.sha256(data).hexdigest(),
        "content_sha256": subset_content_sha256(table),
        "rows": {split: sum(counts.values()) for split, counts in balance.items()},
        "class_balance": balance,
        "seed": SUBSET_SEED,
        "source": "Fashion-MNIST (Zalando SE, MIT licence), IDX files of the Debian package dataset-fashion-mnist",
        "built_with": {"pyarrow": pa.__version__, "zlib": zlib.ZLIB_RUNTIME_VERSION},
    }


def load_subset_record() -> dict:
    """The shipped `fashion_mnist_subset.json`."""
    return json.loads((SUBSET_DIR / SUBSET_RECORD).read_text())


def read_subset_table() -> tuple[pa.Table, str]:
    """The shipped subset's table and SHA-256, checked against the shipped record (a damaged install fails here)."""
    path = SUBSET_DIR / SUBSET_FILE
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise DataError(f"The embedded Fashion-MNIST subset is missing ({path}); reinstall hftransfer.") from None
    sha256 = hashlib.sha256(data).hexdigest()
    expected = load_subset_record()["sha256"]
    if sha256 != expected:
        raise DataError(
            f"The embedded Fashion-MNIST subset {path} is damaged (sha256 {sha256}, expected {expected}); reinstall "
            "hftransfer or rebuild it with scripts/build_fashion_mnist_subset.py."
        )
    return pq.read_table(pa.BufferReader(data)), sha256


def mean_intensity_column(png_or_pgm_images: pa.Array) -> pa.Array:
    """`mean_intensity` (mean pixel value / 255, float32) of each encoded image: a per-example numeric feature for
    fusion heads (`data.extra_feature_columns`). Fashion-MNIST has no metadata, so the demo derives one; roughly
    how much of the 28x28 frame the garment covers, which separates e.g. sandals from coats."""
    import io

    import PIL.Image

    values = []
    for item in png_or_pgm_images.to_pylist():
        with PIL.Image.open(io.BytesIO(item["bytes"])) as image:
            values.append(float(np.asarray(image, dtype=np.float32).mean() / 255.0))
    return pa.array(values, type=pa.float32())


def build_full_table(split: str, directory: str | os.PathLike | None = None) -> pa.Table:
    """One split of the full Fashion-MNIST as an Arrow table with `image` (PGM bytes, path `"train/00012.pgm"`)
    and `label` columns, built in memory (about 1 s and 55 MB for the 60,000 training images)."""
    images, labels = read_fashion_mnist_split(split, directory)
    image_array = pa.StructArray.from_arrays(
        [
            pa.array([_encode_pgm(pixels) for pixels in images], type=pa.binary()),
            pa.array([f"{split}/{index:05d}.pgm" for index in range(len(images))], type=pa.string()),
        ],
        names=["bytes", "path"],
    )
    mean_intensity = pa.array(images.reshape(len(images), -1).mean(axis=1, dtype=np.float32) / 255.0)
    return pa.table(
        {"image": image_array, "label": pa.array(labels.astype(np.int64)), "mean_intensity": mean_intensity}
    )


def full_set_signature(directory: str | os.PathLike | None = None) -> list:
    """Names, sizes and modification times of the IDX files: a cheap cache key for the full set."""
    directory = Path(directory) if directory is not None else fashion_mnist_dir()
    signature = []
    for stems in IDX_FILES.values():
        for stem in stems:
            path = _find_idx_file(directory, stem)
            stat = path.stat()
            signature.append((path.name, stat.st_size, stat.st_mtime_ns))
    return signature
