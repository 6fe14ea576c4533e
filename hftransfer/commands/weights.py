"""`hftransfer weights ...`: convert and cache backbone weights; the command owns its parser
([`hftransfer.weights.main_weights`]), and [`hftransfer.cli.main`] hands it the arguments as they are."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    weights = subparsers.add_parser(
        "weights",
        help="convert and cache backbone weights (e.g. Keras' ImageNet VGG16) in timm format",
        add_help=False,
    )
    weights.set_defaults(func=run)
    return weights


def run(args: argparse.Namespace) -> int:
    from ..weights import main_weights

    return main_weights(args.passthrough)
