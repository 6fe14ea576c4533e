"""Frozen-prefix cache: a multi-epoch `last_k` stage (the last 2 VGG16 blocks + head train) with the frozen blocks'
output cached once (`cache_frozen_prefix: always`) vs recomputed every epoch (`never`), in the same run, alternating.

Both sides are the product path, `hftransfer.training.train(recipe)` with one `last_k` stage and deterministic
transforms, and differ only in that key: same data, weights, seed, batches, learning rates. The cached side's wall
time includes computing its cache (a fresh cache directory every repeat). The two trained models must agree (same
validation accuracy; weights within float tolerance, which tests/training/test_prefix_cache.py asserts).

Run from the repo root: `.venv/bin/python bench/bench_prefix_cache.py` (~5 minutes on 2 idle CPU cores).
"""

from __future__ import annotations

import tempfile

import _common

_common.configure_environment()

from pathlib import Path  # noqa: E402

NAME = "prefix_cache"
TITLE = "last_k stage: frozen-prefix cache vs recomputing the frozen blocks every epoch"


def parse_args():
    parser = _common.base_parser(__doc__.split("\n\n")[0], repeats=3)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--last-k-blocks", type=int, default=2)
    parser.add_argument("--train-samples", type=int, default=256)
    parser.add_argument("--eval-samples", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--goal", type=float, default=1.8)
    return parser.parse_args()


def make_recipe(args, output_dir: Path, cache_dir: Path, mode: str, epochs: int):
    from hftransfer.recipes import recipe_from_dict

    return recipe_from_dict(
        {
            "name": "bench-prefix-cache",
            "model": {"backbone_weights": "keras-imagenet", "image_size": args.image_size, "pooling": "avg"},
            "data": {
                "dataset": "fashion-mnist-subset",
                "max_train_samples": args.train_samples,
                "max_eval_samples": args.eval_samples,
                "test_split": None,
            },
            "stages": [
                {
                    "name": "finetune",
                    "epochs": epochs,
                    "learning_rate": 1e-3,
                    "trainable": "last_k",
                    "last_k_blocks": args.last_k_blocks,
                    "backbone_lr_scale": 0.1,
                    "cache_frozen_prefix": mode,
                }
            ],
            "training": {
                "output_dir": str(output_dir),
                "per_device_train_batch_size": args.batch_size,
                "per_device_eval_batch_size": 64,
                "seed": args.seed,
                "save_strategy": "no",
                "logging_steps": 1000,
                "feature_cache_dir": str(cache_dir),
                "model_selection": "last",
            },
        }
    )


def main() -> int:
    args = parse_args()
    run = _common.start_run(NAME, TITLE, args, work_prefix="hftransfer-bench-prefix-")
    from hftransfer.training import train

    accuracy: dict[str, list[float]] = {"always": [], "never": []}
    cache_seconds: list[float] = []

    def side(mode: str, epochs: int, record: bool) -> float:
        work = Path(tempfile.mkdtemp(dir=run.work, prefix=f"{mode}-"))
        result = train(make_recipe(args, work / "out", work / "cache", mode, epochs))
        stage = result.metrics["stages"][0]
        if stage["used_prefix_cache"] != (mode == "always"):
            raise AssertionError(f"cache_frozen_prefix={mode} but used_prefix_cache={stage['used_prefix_cache']}")
        if record:
            accuracy[mode].append(stage["validation"]["accuracy"])
            if mode == "always":
                cache_seconds.append(stage["feature_cache"]["seconds"])
        return stage["wall_time_s"]

    print(f"[{NAME}] {args.epochs} epochs, last {args.last_k_blocks} blocks, {args.image_size} px, alternating")
    samples = _common.run_alternating(
        {
            "hftransfer": lambda rep: side("always", args.epochs, True),
            "peer": lambda rep: side("never", args.epochs, True),
        },
        repeats=args.repeats,
        warmup={"hftransfer": lambda: side("always", 1, False), "peer": lambda: side("never", 1, False)},
    )
    figure = _common.Figure(
        name=f"last-{args.last_k_blocks}-blocks stage wall time ({args.epochs} epochs, {args.train_samples} train imgs, "
        f"{args.image_size}px)",
        unit="s",
        hftransfer=samples["hftransfer"],
        peer=samples["peer"],
        peer_name="recomputing the frozen blocks (cache_frozen_prefix: never)",
        higher_is_better=False,
        goal=args.goal,
        note="Both: train(recipe), the stage's wall time; the cached side includes computing its cache.",
        extra={
            "cache_s": _common.summarize(cache_seconds),
            "validation_accuracy": {mode: _common.summarize(values) for mode, values in accuracy.items()},
        },
    )
    # The cache pass runs channels_last (float differences ~1e-6): agreeing within one validation image is the same.
    gap = abs(_common.median(accuracy["always"]) - _common.median(accuracy["never"]))
    same = gap <= 1 / args.eval_samples + 1e-9
    print(f"[{NAME}] validation accuracy cached {accuracy['always']} vs recomputed {accuracy['never']}: same={same}")
    # Multiply-adds per training step, the bound on the ratio: forward of all blocks + backward (2x) of the trainable
    # ones, vs forward + backward of the trainable ones only (VGG16; the same at every resolution).
    stage_macs = [1.94, 2.77, 4.62, 4.62, 1.39]  # GMACs per block at 224 px
    frozen = sum(stage_macs[: 5 - args.last_k_blocks]) / sum(stage_macs)
    bound = (1 + 2 * (1 - frozen)) / (3 * (1 - frozen))
    print(f"[{NAME}] frozen blocks: {frozen:.0%} of the forward MACs; per-step MAC bound on the ratio {bound:.2f}x")
    return run.finish(
        [figure],
        extra={
            "goal_met": bool(figure.goal_met and same),
            "same_accuracy": same,
            "accuracy_gap": round(gap, 4),
            "frozen_mac_share": round(frozen, 3),
            "per_step_mac_bound": round(bound, 3),
        },
    )


if __name__ == "__main__":
    raise SystemExit(main())
