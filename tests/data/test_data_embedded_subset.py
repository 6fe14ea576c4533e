"""The embedded Fashion-MNIST subset: what ships matches its record, and the script rebuilds it byte-for-byte."""

from __future__ import annotations

import hashlib
import json
import runpy
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from hftransfer.data import FASHION_MNIST_CLASSES
from hftransfer.data import fashion_mnist as fm

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "build_fashion_mnist_subset.py"


def test_the_shipped_file_matches_its_record():
    record = fm.load_subset_record()
    data = (fm.SUBSET_DIR / fm.SUBSET_FILE).read_bytes()
    assert record["size_bytes"] == len(data) <= 5 * 1024 * 1024
    assert record["sha256"] == hashlib.sha256(data).hexdigest()
    table = pq.read_table(fm.SUBSET_DIR / fm.SUBSET_FILE)
    assert record["content_sha256"] == fm.subset_content_sha256(table)
    assert record["rows"] == {"train": 5000, "test": 1000}
    assert record["class_balance"] == {
        "train": dict.fromkeys(FASHION_MNIST_CLASSES, 500),
        "test": dict.fromkeys(FASHION_MNIST_CLASSES, 100),
    }
    # `datasets` reads the schema metadata: image and label come back as Image and ClassLabel.
    metadata = json.loads(table.schema.metadata[b"huggingface"])
    assert metadata["info"]["features"]["label"]["names"] == list(FASHION_MNIST_CLASSES)
    # Attribution and licence ship next to the data.
    licence = (fm.SUBSET_DIR / "LICENSE").read_text()
    assert "Zalando SE" in licence and "MIT License" in licence


def test_a_damaged_embedded_file_is_detected(tmp_path, monkeypatch):
    damaged = tmp_path / "fashion_mnist_subset"
    damaged.mkdir()
    data = bytearray((fm.SUBSET_DIR / fm.SUBSET_FILE).read_bytes())
    data[1000] ^= 0xFF
    (damaged / fm.SUBSET_FILE).write_bytes(bytes(data))
    (damaged / fm.SUBSET_RECORD).write_text((fm.SUBSET_DIR / fm.SUBSET_RECORD).read_text())
    monkeypatch.setattr(fm, "SUBSET_DIR", damaged)
    from hftransfer.data import DataError, load_image_classification_dataset

    with pytest.raises(DataError, match="embedded Fashion-MNIST subset .* is damaged"):
        load_image_classification_dataset("fashion-mnist-subset")


def test_png_encoding_is_lossless():
    import io

    import numpy as np
    import PIL.Image

    pixels = np.arange(28 * 28, dtype=np.uint32).reshape(28, 28).astype(np.uint8)
    decoded = PIL.Image.open(io.BytesIO(fm.encode_png_gray(pixels)))
    assert decoded.mode == "L"
    np.testing.assert_array_equal(np.asarray(decoded), pixels)


@pytest.mark.skipif(
    not (fm.DEBIAN_FASHION_MNIST_DIR / "train-images-idx3-ubyte.gz").exists(),
    reason="Debian package dataset-fashion-mnist not installed (CI installs it)",
)
def test_the_script_rebuilds_the_shipped_file_byte_for_byte(tmp_path, monkeypatch):
    monkeypatch.delenv(fm.FASHION_MNIST_DIR_ENV, raising=False)
    script = runpy.run_path(str(SCRIPT), run_name="build_fashion_mnist_subset")  # in-process: no second import
    assert script["main"](["--source-dir", str(fm.DEBIAN_FASHION_MNIST_DIR), "--output-dir", str(tmp_path)]) == 0
    shipped = fm.load_subset_record()
    rebuilt = json.loads((tmp_path / fm.SUBSET_RECORD).read_text())
    # The content (selection, labels, PNG bytes) never depends on library versions.
    assert rebuilt["content_sha256"] == shipped["content_sha256"]
    assert rebuilt["class_balance"] == shipped["class_balance"]
    if rebuilt["built_with"]["pyarrow"] != shipped["built_with"]["pyarrow"]:
        pytest.skip(
            f"content identical; bytes not compared: pyarrow {pa.__version__} writes another parquet footer "
            f"(created_by) than {shipped['built_with']['pyarrow']}, which built the shipped file"
        )
    assert (tmp_path / fm.SUBSET_FILE).read_bytes() == (fm.SUBSET_DIR / fm.SUBSET_FILE).read_bytes()
    assert rebuilt == shipped
