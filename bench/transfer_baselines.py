"""Does transfer really happen? The quickstart's fine-tuned model vs two baselines on the same data split.

1. a logistic-regression linear probe on the same frozen ImageNet features (same train/test images),
2. the same recipe started from random backbone weights.

    python bench/transfer_baselines.py --finetuned outputs/quickstart [--random-run outputs/quickstart-random]

`--random-run` is trained first when it does not exist yet (`hftransfer train quickstart --model.backbone_weights
random`). Results go to bench/results/transfer_baselines.json.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import library_versions, machine_info, write_results  # noqa: E402


def linear_probe(recipe) -> dict:
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    from hftransfer.data import ImageClassificationCollator, build_transforms
    from hftransfer.image_processing_hftransfer import TransferImageProcessor
    from hftransfer.training import load_or_compute_features
    from hftransfer.training.staged import StagedFineTuner
    from hftransfer.weights import create_model

    tuner = StagedFineTuner(recipe)
    data, test_split = tuner._load_data()  # exactly the quickstart's train/test selection
    model = create_model(
        backbone_weights=recipe.model.backbone_weights,
        image_size=recipe.model.image_size,
        pooling=recipe.model.pooling,
        hidden_sizes=recipe.model.hidden_sizes,
        num_labels=len(data.id2label),
    )
    processor = TransferImageProcessor.from_transfer_config(model.config, resize_mode=recipe.model.resize_mode)
    features = {}
    for split in ("train", test_split):
        dataset, _, _ = load_or_compute_features(
            model,
            processor,
            data.splits[split].with_transform(build_transforms(processor)),
            data.splits[split]._fingerprint,
            ImageClassificationCollator(),
            batch_size=64,
            num_workers=0,
            device=torch.device("cpu"),
            cache_dir=recipe.training.feature_cache_dir,
        )
        features[split] = (dataset.tensors["pooled_features"].numpy(), dataset.tensors["labels"].numpy())
    scaler = StandardScaler().fit(features["train"][0])
    probe = LogisticRegression(max_iter=2000, C=1.0)
    probe.fit(scaler.transform(features["train"][0]), features["train"][1])
    predictions = probe.predict(scaler.transform(features[test_split][0]))
    return {
        "accuracy": float(np.mean(predictions == features[test_split][1])),
        "num_train": int(len(features["train"][1])),
        "num_test": int(len(features[test_split][1])),
        "features": f"{recipe.model.pooling}-pooled VGG16 block5 ({features['train'][0].shape[1]} dims), "
        f"{recipe.model.image_size} px, {recipe.model.backbone_weights}",
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipe", default="quickstart")
    parser.add_argument("--finetuned", type=Path, default=Path("outputs/quickstart"))
    parser.add_argument("--random-run", type=Path, default=Path("outputs/quickstart-random"))
    args = parser.parse_args()

    from hftransfer.recipes import load_recipe

    recipe = load_recipe(args.recipe)
    finetuned = json.loads((args.finetuned / "metrics.json").read_text())
    if not (args.random_run / "metrics.json").is_file():
        started = time.perf_counter()
        subprocess.run(
            [
                sys.executable,
                "-m",
                "hftransfer",
                "train",
                args.recipe,
                "--model.backbone_weights",
                "random",
                "--training.output_dir",
                str(args.random_run),
            ]
            + (["--resume"] if (args.random_run / "stages").is_dir() else []),
            check=True,
        )
        print(f"random-init run: {time.perf_counter() - started:.0f} s")
    random_run = json.loads((args.random_run / "metrics.json").read_text())
    probe = linear_probe(recipe)

    figures = {
        "finetuned_imagenet": finetuned["final"]["test"]["accuracy"],
        "linear_probe_imagenet": probe["accuracy"],
        "finetuned_random_init": random_run["final"]["test"]["accuracy"],
    }
    for name, value in figures.items():
        print(f"{name:>24}: test accuracy {value:.4f}")
    print(
        f"fine-tuned beats linear probe: {figures['finetuned_imagenet'] > figures['linear_probe_imagenet']}; "
        f"beats random init: {figures['finetuned_imagenet'] > figures['finetuned_random_init']}"
    )
    path = write_results(
        "transfer_baselines",
        title="Quickstart fine-tuned (ImageNet) vs linear probe vs random-init fine-tuning, test accuracy",
        figures=[],
        settings={"recipe": args.recipe, "finetuned": args.finetuned, "random_run": args.random_run},
        machine=machine_info(),
        versions=library_versions(),
        extra={
            "test_accuracy": figures,
            "linear_probe": probe,
            "finetuned_wall_time_s": finetuned["wall_time_s"],
            "random_init_wall_time_s": random_run["wall_time_s"],
        },
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
