"""`hftransfer predict MODEL IMAGE_OR_DIR ...`: classify image files and folders."""

from __future__ import annotations

import argparse
import json
import sys

from ._utils import add_device_and_dtype, add_tta, parser_kwargs, positive_int, quiet_transformers, wrap


def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    predict = subparsers.add_parser(
        "predict",
        help="classify image files and folders",
        description=wrap(
            "Classify images (files, or folders searched recursively for image files) in batches. Prints "
            "PATH<TAB>LABEL<TAB>PROBABILITY, one line per file and rank, or a JSON list with --json."
        ),
        **parser_kwargs(),
    )
    predict.add_argument("model", metavar="MODEL", help="saved model folder or Hub repo id")
    predict.add_argument("inputs", metavar="IMAGE_OR_DIR", nargs="+", help="image files and/or folders")
    predict.add_argument(
        "--top-k", type=positive_int, default=1, metavar="K", help="labels per image, best first (default: 1)"
    )
    predict.add_argument(
        "--batch-size", type=positive_int, default=32, metavar="N", help="images per forward (default: 32)"
    )
    predict.add_argument("--json", action="store_true", help='print [{"path", "predictions": [{"label", "score"}]}]')
    predict.add_argument(
        "--skip-bad",
        action="store_true",
        help="skip unreadable/corrupt images (reported on stderr) instead of failing",
    )
    add_tta(predict)
    add_device_and_dtype(predict)
    predict.set_defaults(func=run)
    return predict


def run(args: argparse.Namespace) -> int:
    from ..data import BadImageError
    from ..inference import predict

    quiet_transformers()
    try:
        results = predict(
            args.model,
            args.inputs,
            top_k=args.top_k,
            batch_size=args.batch_size,
            on_bad_image="skip" if args.skip_bad else "error",
            device=args.device,
            dtype=args.dtype,
            tta=args.tta,
        )
    except BadImageError as err:
        bad = "; ".join(str(image) for image in err.bad_images)
        raise ValueError(f"cannot read image {bad}. Pass --skip-bad to predict the other images.") from err
    skipped = [r for r in results if "error" in r]
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        lines = [
            f"{result['path']}\t{p['label']}\t{p['score']:.6f}" for result in results for p in result["predictions"]
        ]
        if lines:
            print("\n".join(lines))
    if skipped:  # each skipped file is named in the warning logged by `predict`
        print(f"{len(results) - len(skipped)} images predicted, {len(skipped)} skipped", file=sys.stderr)
    return 0
