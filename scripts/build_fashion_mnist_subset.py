"""Rebuild the embedded Fashion-MNIST subset byte-for-byte from the Debian package `dataset-fashion-mnist`.

    apt-get install dataset-fashion-mnist
    python scripts/build_fashion_mnist_subset.py                       # rewrite the shipped file and its record
    python scripts/build_fashion_mnist_subset.py --output-dir /tmp/x  # rebuild elsewhere, e.g. to compare
    python scripts/build_fashion_mnist_subset.py --check              # rebuild in memory, compare with the shipped

The subset is 500 training and 100 test images per class (5,000 / 1,000), chosen with a fixed seed, stored as PNG
bytes in one parquet file with `image`, `label`, `split` and `source_index` columns. The selection, PNG encoding and
writer settings live in `hftransfer.data.fashion_mnist`; this script only runs them and writes the file and its
record (size, SHA-256, a writer-independent content digest, class balance, library versions).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import tempfile
from pathlib import Path

from hftransfer.data import fashion_mnist as fm


def build(source_dir: Path | None, output_dir: Path) -> dict:
    """Build the subset into `output_dir` (atomically: temp names, then rename) and return its record."""
    output_dir.mkdir(parents=True, exist_ok=True)
    table = fm.build_subset_table(source_dir)
    parquet_path = output_dir / fm.SUBSET_FILE
    with tempfile.NamedTemporaryFile(dir=output_dir, suffix=".parquet.tmp", delete=False) as tmp:
        tmp_path = Path(tmp.name)
    try:
        fm.write_subset_parquet(table, tmp_path)
        tmp_path.chmod(0o644)  # NamedTemporaryFile creates 0600; the shipped file must be readable by all users
        record = fm.subset_record(table, tmp_path)
        os.replace(tmp_path, parquet_path)
    finally:
        tmp_path.unlink(missing_ok=True)
    record_path = output_dir / fm.SUBSET_RECORD
    tmp_record = record_path.with_suffix(".json.tmp")
    tmp_record.write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
    os.replace(tmp_record, record_path)
    return record


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--source-dir",
        type=Path,
        default=None,
        help=f"folder of the Fashion-MNIST IDX files (default: ${fm.FASHION_MNIST_DIR_ENV} or {fm.DEBIAN_FASHION_MNIST_DIR})",
    )
    parser.add_argument("--output-dir", type=Path, default=fm.SUBSET_DIR, help="where to write (default: the package)")
    parser.add_argument(
        "--check", action="store_true", help="build in a temporary folder and compare with the shipped file"
    )
    args = parser.parse_args(argv)

    if args.check:
        with tempfile.TemporaryDirectory() as tmp:
            record = build(args.source_dir, Path(tmp))
            rebuilt = hashlib.sha256((Path(tmp) / fm.SUBSET_FILE).read_bytes()).hexdigest()
        shipped = fm.load_subset_record()
        same_content = record["content_sha256"] == shipped["content_sha256"]
        same_bytes = rebuilt == shipped["sha256"]
        print(
            f"content: {'identical' if same_content else 'DIFFERENT'}; bytes: {'identical' if same_bytes else 'DIFFERENT'}"
        )
        if not same_bytes and record["built_with"] != shipped["built_with"]:
            print(f"(built with {record['built_with']}, shipped file with {shipped['built_with']})")
        return 0 if same_content and same_bytes else 1

    record = build(args.source_dir, args.output_dir)
    print(
        json.dumps({key: record[key] for key in ("file", "size_bytes", "sha256", "content_sha256", "rows")}, indent=2)
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
