"""Write a few test images of the embedded Fashion-MNIST subset as PNG files (for `hftransfer predict` demos).

python scripts/export_sample_images.py --count 8 --output outputs/quickstart/samples
"""

import argparse
from pathlib import Path

from hftransfer.data import load_image_classification_dataset


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=8, help="number of images (one per class first)")
    parser.add_argument("--output", type=Path, required=True, help="folder to write the PNG files to")
    parser.add_argument("--split", default="test")
    args = parser.parse_args()

    data = load_image_classification_dataset("fashion-mnist-subset")
    split = data.splits[args.split]
    args.output.mkdir(parents=True, exist_ok=True)
    chosen, seen = [], set()
    for index, label in enumerate(split["label"]):  # one image per class, in label order of appearance
        if label not in seen:
            seen.add(label)
            chosen.append(index)
        if len(chosen) == args.count:
            break
    for rank, index in enumerate(chosen):
        row = split[index]
        name = data.id2label[row["label"]].replace("/", "-").replace(" ", "_").lower()
        row["image"].save(args.output / f"{rank:02d}-{name}.png")
    print(f"wrote {len(chosen)} images to {args.output} (file names give the true class)")


if __name__ == "__main__":
    main()
