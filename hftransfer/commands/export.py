"""`hftransfer export OUTPUT_DIR`: export a trained model to ONNX; the parser and the work live in
[`hftransfer.export`]."""

from __future__ import annotations

import argparse

from ._utils import parser_kwargs


def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    from ..export import add_export_subcommand

    parser = add_export_subcommand(subparsers, **parser_kwargs())
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    from ..export import run_export_command

    return run_export_command(args)
