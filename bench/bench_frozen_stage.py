"""Benchmark 1 -- frozen stage, N epochs: hftransfer (cached features) vs a plain `Trainer` on
`TimmWrapperForImageClassification` with the backbone frozen (the backbone is recomputed every epoch).

Both sides get the same data (the same train/validation rows of the same dataset, the same transform and collator),
the same ImageNet VGG16 conv weights (`keras-imagenet`), the same head (avg pool -> Dense(256, relu) -> Dense(10)) with
the same initial weights, the same optimizer, learning rate, batch size, seed, data order, fp32 precision and the same
per-epoch validation; only the way the frozen backbone is handled differs.

- hftransfer: the product path, `hftransfer.training.train(recipe)` with one head-only stage. Its stage time is the
  one-time feature computation (train + validation, written to a fresh cache directory every repeat) plus
  `trainer.train()` on the cached features.
- peer: `transformers.Trainer` on `TimmWrapperForImageClassification(architecture="vgg16")` whose 4096-wide
  `pre_logits` ConvMlp and head are replaced by the same head, backbone frozen (`requires_grad=False`); its stage
  time is `trainer.train()`.

Final accuracy: both trained heads are scored on the same test images (the backbone is frozen and identical on both
sides, so the test images' pooled features are computed once and fed to each head).

Run from the repo root: `.venv/bin/python bench/bench_frozen_stage.py` (see `--help`; ~4 minutes on 2 idle CPU cores, far longer on a busy machine).
"""

from __future__ import annotations

import time

import _common

_common.configure_environment()

import copy  # noqa: E402
import shutil  # noqa: E402
import tempfile  # noqa: E402
from pathlib import Path  # noqa: E402

NAME = "frozen_stage"
TITLE = "Frozen stage: hftransfer cached features vs plain Trainer on TimmWrapperForImageClassification"


def parse_args():
    parser = _common.base_parser(__doc__.split("\n\n")[0], repeats=3)
    parser.add_argument("--dataset", default="fashion-mnist-subset")
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--train-samples", type=int, default=1024, help="Training images (max_train_samples).")
    parser.add_argument("--eval-samples", type=int, default=112, help="Validation images (max_eval_samples).")
    parser.add_argument("--test-samples", type=int, default=1000, help="Test images scored for the final accuracy.")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--eval-batch-size", type=int, default=64)
    parser.add_argument("--learning-rate", type=float, default=1e-3)
    parser.add_argument("--hidden-size", type=int, default=256)
    parser.add_argument(
        "--eval-strategy",
        default="epoch",
        choices=["epoch", "no"],
        help="Per-epoch validation on both sides ('epoch', the recipe default) or none.",
    )
    parser.add_argument("--num-workers", type=int, default=2, help="DataLoader workers (recipe default: 2).")
    parser.add_argument("--warmup-epochs", type=int, default=1, help="Epochs of the untimed warm-up run per side.")
    parser.add_argument("--goal", type=float, default=9.0)
    parser.add_argument("--accuracy-tolerance", type=float, default=0.5, help="Points of accuracy allowed apart.")
    return parser.parse_args()


def make_recipe(args, output_dir: Path, cache_dir: Path, epochs: int):
    from hftransfer.recipes import recipe_from_dict

    return recipe_from_dict(
        {
            "name": "bench-frozen-stage",
            "model": {
                "backbone": "vgg16",
                "backbone_weights": "keras-imagenet",
                "image_size": args.image_size,
                "pooling": "avg",
                "hidden_sizes": [args.hidden_size],
            },
            "data": {
                "dataset": args.dataset,
                "max_train_samples": args.train_samples,
                "max_eval_samples": args.eval_samples,
                "test_split": None,  # the test accuracy is measured by this script, identically for both sides
            },
            "stages": [
                {
                    "name": "frozen",
                    "epochs": epochs,
                    "learning_rate": args.learning_rate,
                    "trainable": "head",
                    "cache_features": True,
                }
            ],
            "training": {
                "output_dir": str(output_dir),
                "per_device_train_batch_size": args.batch_size,
                "per_device_eval_batch_size": args.eval_batch_size,
                "precision": "no",
                "seed": args.seed,
                "logging_steps": 1000,
                "eval_strategy": args.eval_strategy,
                "save_strategy": "no",
                "report_to": ["none"],
                "dataloader_num_workers": args.num_workers,
                "feature_cache_dir": str(cache_dir),
                # The peer's plain Trainer keeps the last epoch's head: compare the same training, not selection.
                "model_selection": "last",
            },
        }
    )


class PeerHead:
    """Builds the peer's head: the same layers as hftransfer's avg pooler + head, as one timm-style module."""

    @staticmethod
    def build(hf_model):
        from timm.layers import SelectAdaptivePool2d
        from torch import nn

        class Head(nn.Module):
            def __init__(self):
                super().__init__()
                self.pool = SelectAdaptivePool2d(pool_type="avg", flatten=True)
                self.mlp = copy.deepcopy(hf_model.head)  # hidden Linear+ReLU, classifier: same initial weights

            def forward(self, x, pre_logits: bool = False):
                return self.mlp(self.pool(x), pre_logits=pre_logits)

        return Head()


def build_peer(hf_model, id2label):
    """`TimmWrapperForImageClassification(vgg16)` with hftransfer's conv weights and head, backbone frozen."""
    from torch import nn
    from transformers import TimmWrapperConfig, TimmWrapperForImageClassification

    config = TimmWrapperConfig(
        architecture="vgg16",
        num_labels=len(id2label),
        id2label=dict(id2label),
        label2id={v: k for k, v in id2label.items()},
    )
    peer = TimmWrapperForImageClassification(config)
    timm_model = peer.timm_model
    timm_model.features.load_state_dict(hf_model.backbone.features.state_dict(), strict=True)
    timm_model.pre_logits = nn.Identity()  # drop timm's 4096-wide fc6/fc7 ConvMlp: both sides get the same head
    timm_model.head = PeerHead.build(hf_model)
    for param in timm_model.features.parameters():
        param.requires_grad_(False)
    return peer


def training_arguments(args, output_dir: Path, epochs: int):
    """The peer's TrainingArguments: the same values hftransfer's recipe turns into its own."""
    import torch
    from transformers import TrainingArguments

    return TrainingArguments(
        output_dir=str(output_dir),
        num_train_epochs=epochs,
        learning_rate=args.learning_rate,
        lr_scheduler_type="constant",
        warmup_steps=0,
        weight_decay=0.0,
        optim="adamw_torch",
        per_device_train_batch_size=args.batch_size,
        per_device_eval_batch_size=args.eval_batch_size,
        seed=args.seed,
        data_seed=args.seed,
        logging_steps=1000,
        eval_strategy=args.eval_strategy,
        save_strategy="no",
        report_to=["none"],
        dataloader_num_workers=args.num_workers,
        remove_unused_columns=False,
        label_names=["labels"],
        dataloader_pin_memory=torch.cuda.is_available(),
    )


def main() -> int:
    args = parse_args()
    run = _common.start_run(NAME, TITLE, args, work_prefix="hftransfer-bench-frozen-")
    work = run.work
    import torch
    from transformers import Trainer, set_seed

    from hftransfer.building import build_model_and_processor, load_recipe_data
    from hftransfer.data import ImageClassificationCollator, build_transforms
    from hftransfer.metrics import make_compute_metrics
    from hftransfer.training import train

    # The exact data and initial model train(recipe) builds: same rows, same seeds.
    probe_recipe = make_recipe(args, work / "probe", work / "probe-cache", args.epochs)
    data, _ = load_recipe_data(probe_recipe)
    id2label = {int(k): v for k, v in data.id2label.items()}
    set_seed(args.seed)
    hf_init, processor = build_model_and_processor(probe_recipe, id2label)
    transform = build_transforms(processor)
    collator = ImageClassificationCollator()
    train_split, val_split = data.splits["train"], data.splits["validation"]
    test_split = data.splits["test"].select(range(min(args.test_samples, len(data.splits["test"]))))
    print(f"[{NAME}] train {len(train_split)} / validation {len(val_split)} / test {len(test_split)} images")
    backbone_state = {k: v.clone() for k, v in hf_init.backbone.features.state_dict().items()}

    # Sanity: the peer computes exactly the function hftransfer does.
    peer_check = build_peer(hf_init, id2label).eval()
    sample = collator([row for row in test_split.with_transform(transform).select(range(4))])
    with torch.inference_mode():
        diff = (hf_init(pixel_values=sample["pixel_values"]).logits - peer_check(sample["pixel_values"]).logits).abs()
    print(f"[{NAME}] peer vs hftransfer initial logits max |diff| = {diff.max().item():.2e}")
    assert diff.max().item() < 1e-4, "peer and hftransfer models differ"
    del peer_check

    # Test features, once: the frozen backbone is identical on both sides (checked after each run).
    with torch.inference_mode():
        test_rows = test_split.with_transform(transform)
        feats, labels = [], []
        for start in range(0, len(test_rows), args.eval_batch_size):
            batch = collator([test_rows[i] for i in range(start, min(start + args.eval_batch_size, len(test_rows)))])
            feats.append(hf_init.forward_features(batch["pixel_values"]))
            labels.append(batch["labels"])
        test_features, test_labels = torch.cat(feats), torch.cat(labels)

    def accuracy(head) -> float:
        with torch.inference_mode():
            return float((head(test_features).argmax(-1) == test_labels).float().mean()) * 100

    def check_backbone(features_module) -> None:
        for key, value in features_module.state_dict().items():
            if not torch.equal(value, backbone_state[key]):
                raise AssertionError(f"backbone tensor {key} changed during a frozen stage")

    results = {
        "hftransfer_accuracy": [],
        "peer_accuracy": [],
        "hftransfer_total_s": [],
        "hftransfer_cache_s": [],
        "hftransfer_head_s": [],
    }

    def run_hftransfer(epochs: int, record: bool) -> float:
        run_dir = Path(tempfile.mkdtemp(dir=work, prefix="hf-"))
        recipe = make_recipe(args, run_dir / "out", run_dir / "cache", epochs)  # fresh cache: features computed
        t0 = time.perf_counter()
        result = train(recipe)
        total = time.perf_counter() - t0
        stage = result.metrics["stages"][0]
        if not stage["used_feature_cache"]:
            raise AssertionError("the hftransfer frozen stage did not use cached features")
        seconds = stage["wall_time_s"]  # the stage's wall time includes computing its feature cache
        check_backbone(result.model.backbone.features)
        if record:
            results["hftransfer_accuracy"].append(accuracy(result.model.head))
            results["hftransfer_total_s"].append(total)
            results["hftransfer_cache_s"].append(stage["feature_cache"]["seconds"])
            results["hftransfer_head_s"].append(seconds - stage["feature_cache"]["seconds"])
        shutil.rmtree(run_dir, ignore_errors=True)
        return seconds

    def run_peer(epochs: int, record: bool) -> float:
        run_dir = Path(tempfile.mkdtemp(dir=work, prefix="peer-"))
        set_seed(args.seed)  # train(recipe) reseeds with seed + stage index (0) before its stage
        peer = build_peer(hf_init, id2label)
        trainer = Trainer(
            model=peer,
            args=training_arguments(args, run_dir, epochs),
            train_dataset=train_split.with_transform(transform),
            eval_dataset=val_split.with_transform(transform),
            data_collator=collator,
            compute_metrics=make_compute_metrics(id2label),
        )
        t0 = time.perf_counter()
        trainer.train()
        seconds = time.perf_counter() - t0
        check_backbone(peer.timm_model.features)
        if record:
            results["peer_accuracy"].append(accuracy(peer.timm_model.head.mlp))
        shutil.rmtree(run_dir, ignore_errors=True)
        return seconds

    print(f"[{NAME}] {args.epochs} epochs, {args.repeats} repeats, alternating after a warm-up")
    samples = _common.run_alternating(
        {
            "hftransfer": lambda rep: run_hftransfer(args.epochs, record=True),
            "peer": lambda rep: run_peer(args.epochs, record=True),
        },
        repeats=args.repeats,
        warmup={
            "hftransfer": lambda: run_hftransfer(args.warmup_epochs, record=False),
            "peer": lambda: run_peer(args.warmup_epochs, record=False),
        },
    )
    hf_acc = _common.median(results["hftransfer_accuracy"])
    peer_acc = _common.median(results["peer_accuracy"])
    accuracy_gap = abs(hf_acc - peer_acc)
    accuracy_ok = accuracy_gap <= args.accuracy_tolerance
    wall = _common.Figure(
        name=f"frozen stage wall time ({args.epochs} epochs, {len(train_split)} train imgs, {args.image_size}px)",
        unit="s",
        hftransfer=samples["hftransfer"],
        peer=samples["peer"],
        peer_name="Trainer+TimmWrapper (frozen)",
        higher_is_better=False,
        goal=args.goal,
        note="hftransfer: the stage's wall time (feature caching + trainer.train()); peer: trainer.train(). Same "
        "head, weights, data, seed.",
        extra={
            "hftransfer_cache_s": _common.summarize(results["hftransfer_cache_s"]),
            "hftransfer_head_epochs_s": _common.summarize(results["hftransfer_head_s"]),
            "hftransfer_train_recipe_total_s": _common.summarize(results["hftransfer_total_s"]),
            # The one backbone pass is the floor: the ratio if the head epochs took no time at all.
            "bound_ratio_one_pass": round(
                _common.median(samples["peer"]) / max(_common.median(results["hftransfer_cache_s"]), 1e-9), 2
            ),
        },
    )
    goal_met = bool(wall.goal_met and accuracy_ok)
    print(
        f"final test accuracy ({len(test_split)} test imgs): hftransfer {hf_acc:.2f}% | peer {peer_acc:.2f}% | "
        f"gap {accuracy_gap:.2f} points (tolerance {args.accuracy_tolerance}): {'MET' if accuracy_ok else 'NOT MET'}"
    )
    print(f"goal (>= {args.goal:g}x faster at equal accuracy): {'MET' if goal_met else 'NOT MET'}")
    return run.finish(
        [wall],
        settings={**vars(args), "train_images": len(train_split), "validation_images": len(val_split)},
        extra={
            "accuracy": {
                "test_images": len(test_split),
                "hftransfer_percent": _common.summarize(results["hftransfer_accuracy"]),
                "peer_percent": _common.summarize(results["peer_accuracy"]),
                "gap_points": round(accuracy_gap, 3),
                "tolerance_points": args.accuracy_tolerance,
                "equal": accuracy_ok,
            },
            "goal": f">= {args.goal:g}x faster at equal accuracy (within {args.accuracy_tolerance} points)",
            "goal_met": goal_met,
            "goals_met": goal_met,
        },
    )


if __name__ == "__main__":
    raise SystemExit(main())
