"""`hftransfer evaluate MODEL --data SOURCE`: evaluate a saved model on a dataset split."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ._utils import add_device_and_dtype, add_tta, parser_kwargs, positive_int, quiet_transformers, wrap


def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    evaluate = subparsers.add_parser(
        "evaluate",
        help="evaluate a trained model on a dataset split",
        description=wrap(
            "Evaluate a saved model on a dataset split: loss, accuracy, macro F1/precision/recall, "
            "per-class accuracy; writes metrics.json and confusion_matrix.png."
        ),
        **parser_kwargs(),
    )
    evaluate.add_argument(
        "model", metavar="MODEL", help="saved model folder (e.g. a training output_dir) or Hub repo id"
    )
    evaluate.add_argument(
        "--data",
        required=True,
        metavar="SOURCE",
        help="fashion-mnist-subset, fashion-mnist, an image folder, a CSV/JSONL/parquet file or a Hub dataset",
    )
    evaluate.add_argument(
        "--split",
        default=None,
        metavar="SPLIT",
        help="split to evaluate (default: the split training reported on, from MODEL/metrics.json; else test)",
    )
    evaluate.add_argument(
        "--batch-size", type=positive_int, default=64, metavar="N", help="images per forward (default: 64)"
    )
    evaluate.add_argument(
        "--output-dir",
        default=None,
        metavar="DIR",
        help="where metrics.json and confusion_matrix.png go (default: MODEL/eval-SPLIT for a local model, "
        "./NAME-eval-SPLIT for a Hub repo)",
    )
    evaluate.add_argument("--no-save", action="store_true", help="print the metrics only, write no files")
    evaluate.add_argument("--json", action="store_true", help="print the metrics as JSON on stdout")
    evaluate.add_argument(
        "--image-column", default=None, metavar="NAME", help="image column of a table source (detected if unset)"
    )
    evaluate.add_argument(
        "--label-column", default=None, metavar="NAME", help="label column of a table source (detected if unset)"
    )
    evaluate.add_argument(
        "--max-samples", type=positive_int, default=None, metavar="N", help="evaluate the first N examples"
    )
    add_tta(evaluate)
    add_device_and_dtype(evaluate)
    evaluate.set_defaults(func=run)
    return evaluate


def evaluation_split(model: str) -> str:
    """The split a training run reported its final numbers on (its metrics.json), else `test`."""
    metrics_file = Path(model).expanduser() / "metrics.json"
    try:
        metrics = json.loads(metrics_file.read_text())
    except (OSError, ValueError):
        return "test"
    split = metrics.get("evaluation_split") if isinstance(metrics, dict) else None
    if not isinstance(split, str):
        final = metrics.get("final") if isinstance(metrics, dict) else None
        split = "test" if not isinstance(final, dict) or "test" in final else "validation"
    return split


def default_eval_dir(model: str, split: str) -> Path:
    path = Path(model).expanduser()
    if path.is_dir():
        return path / f"eval-{split}"
    return Path(f"{model.rstrip('/').split('/')[-1]}-eval-{split}")


def run(args: argparse.Namespace) -> int:
    from ..inference import CONFUSION_MATRIX_FILE, METRICS_FILE, evaluate_model

    quiet_transformers()
    if args.split is None:
        args.split = evaluation_split(args.model)
        if args.split != "test":
            print(
                f"note: evaluating the {args.split!r} split, the one training reported on (no test split)",
                file=sys.stderr,
            )
    output_dir = None if args.no_save else Path(args.output_dir or default_eval_dir(args.model, args.split))
    metrics = evaluate_model(
        args.model,
        args.data,
        split=args.split,
        batch_size=args.batch_size,
        output_dir=output_dir,
        image_column=args.image_column,
        label_column=args.label_column,
        max_samples=args.max_samples,
        device=args.device,
        dtype=args.dtype,
        tta=args.tta,
    )
    files = [] if output_dir is None else [output_dir / METRICS_FILE, output_dir / CONFUSION_MATRIX_FILE]
    if args.json:
        print(json.dumps(metrics, indent=2))
        for file in files:
            print(f"wrote {file}", file=sys.stderr)
        return 0
    print(f"model      {args.model}")
    print(f"data       {metrics['dataset']} [{metrics['split']}], {metrics['num_samples']} images")
    if metrics.get("tta"):
        print(f"tta        {metrics['tta']} (averaged probabilities)")
    print(f"loss       {metrics['loss']:.4f}")
    print(f"accuracy   {metrics['accuracy']:.4f}")
    for key in ("f1", "precision", "recall"):
        print(f"{key:<10} {metrics[key]:.4f} (macro)")
    print("per-class accuracy:")
    width = max(len(name) for name in metrics["per_class_accuracy"])
    for (name, value), row in zip(metrics["per_class_accuracy"].items(), metrics["confusion_matrix"]):
        shown = "   n/a" if value is None else f"{value:.4f}"
        print(f"  {name:<{width}}  {shown}  ({sum(row)} images)")
    for file in files:
        print(f"wrote {file}")
    return 0
