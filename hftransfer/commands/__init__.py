"""The subcommands of the `hftransfer` command line, one module each (TRL's layout).

Every module has `register(subparsers)`, which adds its parser (with `func=run`), and `run(args) -> int`, which
executes the parsed arguments and returns the exit code. Heavy imports (training, datasets, evaluate, the Hub client)
happen inside `run`, so `--help` and argument errors stay fast. [`hftransfer.cli.main`] parses, dispatches and turns
errors into one-line messages and exit codes.
"""

from __future__ import annotations

# In the order `hftransfer --help` lists them.
COMMANDS = ("train", "evaluate", "predict", "push", "card", "export", "weights")

__all__ = ["COMMANDS"]
