"""Argument-parser pieces the subcommands share: help layout, common flags, value types."""

from __future__ import annotations

import argparse
import os
import textwrap
from typing import Any

PROG = "hftransfer"
HELP_WIDTH = 100


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    def __init__(self, prog: str):
        super().__init__(prog, max_help_position=32, width=HELP_WIDTH)


def wrap(text: str) -> str:
    # RawDescriptionHelpFormatter keeps our line breaks (examples, epilog) but does not wrap: wrap paragraphs here.
    return "\n".join(textwrap.fill(line, HELP_WIDTH) if len(line) > HELP_WIDTH else line for line in text.split("\n"))


def debug_parent() -> argparse.ArgumentParser:
    """`--debug`, also accepted after the command; SUPPRESS keeps a subcommand's default from overwriting the
    global flag."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--debug", action="store_true", default=argparse.SUPPRESS, help="show tracebacks instead of one-line errors"
    )
    return common


def parser_kwargs() -> dict[str, Any]:
    """`add_parser` keyword arguments every subcommand uses (help layout, no abbreviations, `--debug`)."""
    return {"formatter_class": HelpFormatter, "allow_abbrev": False, "parents": [debug_parent()]}


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def add_device_and_dtype(parser: argparse.ArgumentParser) -> None:
    # The values `pipeline(device=..., dtype=...)` takes.
    parser.add_argument(
        "--device",
        default=None,
        metavar="DEVICE",
        help="cpu, cuda, cuda:1, mps, or an index as for pipeline (0 = first GPU, -1 = CPU) (default: cuda if "
        "available)",
    )
    parser.add_argument(
        "--dtype",
        default=None,
        choices=("auto", "float32", "float16", "bfloat16"),
        help="weights and inputs dtype, as for pipeline (default: auto, the checkpoint's dtype)",
    )


def add_tta(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--tta",
        nargs="?",
        const="flip",
        default=None,
        choices=("flip", "flip-crops"),
        help="test-time augmentation: average the probabilities of the image and its mirror (flip, the default of "
        "a bare --tta) or also of 4 corner crops and the centre crop (flip-crops)",
    )


def quiet_transformers() -> None:
    # "Loading weights: 100%" bars are noise in a command whose output is meant to be read or parsed.
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()


def is_main_process() -> bool:
    # Under `accelerate launch` / torchrun only rank 0 prints summaries.
    return int(os.environ.get("RANK", "0")) == 0
