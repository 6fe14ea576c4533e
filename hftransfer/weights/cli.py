"""`hftransfer weights`: convert a weight source to timm-format safetensors, cache it, print file and checksums.

[`main_weights`] owns the command's parser; `hftransfer.cli.main` (via `hftransfer.commands.weights`) hands it the
arguments after `weights` as they are. `python -m hftransfer.weights` runs it too.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from ..constants import CACHE_ENV
from ..errors import BackboneWeightsError
from .cache import save_backbone_weights
from .loading import cached_backbone_weights
from .sources import KERAS_IMAGENET

_CLI_DESCRIPTION = (
    "Convert a backbone weight source (default: keras-imagenet) to timm-format safetensors, cache it, and print the "
    "file, its sha256 and the image_mean/image_std to use."
)


def _configure_weights_parser(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument(
        "--source",
        default=KERAS_IMAGENET,
        help=f"weights source: {KERAS_IMAGENET} (default), a timm/Hub id such as timm/vgg16.tv_in1k, or a "
        ".safetensors/.pth/.pt/.h5/.onnx file",
    )
    parser.add_argument(
        "--backbone",
        default="vgg16",
        help="timm architecture: vgg11/13/16/19[_bn] or any timm model with forward_intermediates (default: vgg16)",
    )
    parser.add_argument("--cache-dir", default=None, help=f"cache root (default: ${CACHE_ENV} or ~/.cache/hftransfer)")
    parser.add_argument(
        "--output", default=None, help="also write the timm-format weights to this .safetensors file (atomically)"
    )
    parser.add_argument("--force", action="store_true", help="convert again even if a valid cache entry exists")
    parser.add_argument("--json", action="store_true", help="print a JSON object instead of text")
    return parser


def _run_weights_command(args: argparse.Namespace) -> int:
    """Execute parsed `hftransfer weights` arguments; returns the process exit code."""
    try:
        weights = cached_backbone_weights(args.source, args.backbone, args.cache_dir, force=args.force)
        file, file_sha256 = (
            weights.cache_file,
            json.loads(weights.cache_file.with_suffix(".json").read_text())["sha256"],
        )
        if args.output:
            file = Path(args.output).expanduser().resolve()
            file_sha256 = save_backbone_weights(weights, file)
    except (BackboneWeightsError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    report = {
        "file": str(file),
        "sha256": file_sha256,
        "cache_file": str(weights.cache_file),
        "backbone": weights.backbone,
        "source": weights.source,
        "source_file": str(weights.source_file) if weights.source_file else None,
        "source_sha256": weights.source_sha256,
        "image_mean": list(weights.image_mean),
        "image_std": list(weights.image_std),
        "num_tensors": len(weights.state_dict),
        "num_parameters": weights.num_parameters,
    }
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        width = max(len(key) for key in report)
        for key, value in report.items():
            print(f"{key + ':':<{width + 1}} {value}")
    return 0


def main_weights(argv: Sequence[str] | None = None) -> int:
    r"""
    `hftransfer weights`: convert a backbone weight source to timm-format safetensors and cache it.

    Prints the cached file, its sha256, the source (and its sha256), and the `image_mean`/`image_std` to configure.

    Usage:

    ```bash
    hftransfer weights                                   # keras-imagenet -> ~/.cache/hftransfer/weights/...
    hftransfer weights --source vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5 --output vgg16_keras.safetensors
    hftransfer weights --source timm/vgg16.tv_in1k --cache-dir /data/cache --json
    ```

    Args:
        argv (`Sequence[str]`, *optional*):
            Arguments after `weights` (defaults to `sys.argv[1:]`): `--source`, `--backbone`, `--cache-dir`,
            `--output PATH`, `--force`, `--json`.

    Returns:
        `int`: 0 on success, 1 on error (the message goes to stderr).
    """
    parser = _configure_weights_parser(
        argparse.ArgumentParser(prog="hftransfer weights", description=_CLI_DESCRIPTION)
    )
    return _run_weights_command(parser.parse_args(argv))
