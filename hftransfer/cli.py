"""The `hftransfer` command line: `train | evaluate | predict | push | card | export | weights`.

Each command lives in its own module under `hftransfer/commands/` (`register(subparsers)` adds its parser,
`run(args)` executes it). Every heavy import (training, datasets, evaluate, the Hub client) happens inside the
command that needs it, so `--help` and argument errors stay fast. Errors a user can cause (a mistyped recipe key, a
missing model folder, a corrupt image) print one line on stderr and exit non-zero; set `HFTRANSFER_DEBUG=1` (or pass
`--debug`) to get the traceback instead.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from collections.abc import Sequence

from .commands import COMMANDS
from .commands._utils import PROG, HelpFormatter, wrap
from .commands.train import recipe_keys_help, shipped_recipes, split_overrides
from .errors import HfTransferError
from .recipes import RecipeError

EXIT_USAGE = 2  # argparse's exit code for bad arguments; also used for bad recipes
EXIT_ERROR = 1
EXIT_INTERRUPTED = 130
_TRUTHY = ("1", "true", "yes", "on")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of `hftransfer` (train overrides and `weights` arguments are split off by [`main`])."""
    from . import __version__

    parser = argparse.ArgumentParser(
        prog=PROG,
        description=wrap(
            "Transfer learning with ImageNet VGG backbones, the Hugging Face way: train from a YAML recipe, "
            "evaluate, predict, write the model card and push to the Hub."
        ),
        epilog="Run `hftransfer COMMAND --help` for the options of a command. Quickstart: `hftransfer train "
        "quickstart` (offline, about 4 minutes of training on 2 CPU cores).",
        formatter_class=HelpFormatter,
        allow_abbrev=False,
    )
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks instead of one-line errors")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for command in COMMANDS:
        importlib.import_module(f".commands.{command}", __package__).register(subparsers)
    return parser


# --- errors ---------------------------------------------------------------------------------------------------------

# Every `HfTransferError` explains itself. Besides them, standard errors whose message says it all (missing files,
# existing output folders, unreachable servers) print as they are.
_PLAIN_ERRORS = (
    HfTransferError,
    FileNotFoundError,
    FileExistsError,
    NotADirectoryError,
    PermissionError,
    ConnectionError,
)
# Errors whose message is meant for the user; anything else is a bug and keeps its traceback.
_USER_ERRORS = (HfTransferError, ValueError, OSError, RuntimeError)


def _error_message(err: BaseException) -> str:
    """The one line `main` prints for an error it maps to an exit code."""
    message = str(err).strip() or type(err).__name__
    if not isinstance(err, _PLAIN_ERRORS):
        # Not one of ours: it may be a bug, so say how to see where it came from.
        message = f"{message} ({type(err).__name__}; --debug shows the traceback)"
    return message


# --- logging --------------------------------------------------------------------------------------------------------


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever `sys.stderr` is at the time of the record (pytest's capture, a redirected stream)."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value):
        pass


def _configure_logging(level: int) -> None:
    # hftransfer's own messages (skipped images, cache hits, stages) to stderr; other libraries keep their own
    # logging setup (transformers and huggingface_hub have handlers: configuring the root logger would print twice).
    package_logger = logging.getLogger("hftransfer")
    if not any(isinstance(handler, _StderrHandler) for handler in package_logger.handlers):
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
        package_logger.addHandler(handler)
        package_logger.setLevel(level)


# --- entry point ----------------------------------------------------------------------------------------------------


def _split_argv(argv: list[str]) -> tuple[list[str], list[str], list[str]]:
    """`(argv for argparse, train's raw recipe overrides, weights' arguments)`: neither of the last two is
    argparse's business."""
    overrides: list[str] = []
    passthrough: list[str] = []
    command_index = next((i for i, token in enumerate(argv) if not token.startswith("-")), None)
    if command_index is not None:
        head, tail = argv[: command_index + 1], argv[command_index + 1 :]
        if argv[command_index] == "train":
            tail, overrides = split_overrides(tail)
        elif argv[command_index] == "weights":
            tail, passthrough = [], tail
        argv = head + tail
    return argv, overrides, passthrough


def main(argv: Sequence[str] | None = None) -> int:
    """Run the `hftransfer` command line.

    Args:
        argv (`Sequence[str]`, *optional*): Arguments without the program name (defaults to `sys.argv[1:]`).

    Returns:
        `int`: the exit code: 0 on success, 1 for runtime errors (missing model, bad image, ...), 2 for bad arguments
        and bad recipes.
    """
    from_command_line = argv is None
    argv, overrides, passthrough = _split_argv(list(sys.argv[1:] if argv is None else argv))
    args = build_parser().parse_args(argv)
    args.overrides, args.passthrough = overrides, passthrough
    if from_command_line:
        # Not a call from Python code or tests: show hftransfer's progress messages while training, warnings only
        # for commands whose output is meant to be read or parsed.
        _configure_logging(logging.INFO if args.command == "train" else logging.WARNING)
    debug = getattr(args, "debug", False) or os.environ.get("HFTRANSFER_DEBUG", "").lower() in _TRUTHY
    try:
        return args.func(args)
    except RecipeError as err:
        if debug:
            raise
        print(f"error: {err}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except _USER_ERRORS as err:
        if debug:
            raise
        print(f"error: {_error_message(err)}", file=sys.stderr)
        return EXIT_ERROR


__all__ = ["build_parser", "main", "recipe_keys_help", "shipped_recipes"]
