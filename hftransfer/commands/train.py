"""`hftransfer train RECIPE [--section.key VALUE ...]`: run a training recipe (staged fine-tuning)."""

from __future__ import annotations

import argparse
import dataclasses
import sys
import textwrap
from collections.abc import Sequence
from typing import Any

from ..recipes import (
    SECTIONS,
    Recipe,
    RecipeError,
    StageArguments,
    builtin_recipes_dir,
    check_override_flags,
    field_type_name,
)
from ._utils import HELP_WIDTH, is_main_process, parser_kwargs, wrap

# `hftransfer train` options; every other `--...` after `train` is a recipe override.
TRAIN_FLAGS = (
    "--resume",
    "--allow-recipe-changes",
    "--print-recipe",
    "--data",
    "--output-dir",
    "--budget",
    "--debug",
    "-h",
    "--help",
)


# --- recipe key documentation ---------------------------------------------------------------------------------------


def _default_of(field: dataclasses.Field) -> Any:
    if field.default is not dataclasses.MISSING:
        return field.default
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    return None


def _format_default(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, list):
        return "[" + ", ".join(_format_default(v) for v in value) + "]"
    return str(value)


def _key_lines(flag: str, field: dataclasses.Field) -> list[str]:
    head = f"{flag} {field_type_name(field.type).upper()} (default {_format_default(_default_of(field))}): "
    text = head + field.metadata.get("help", "")
    return textwrap.wrap(text, width=HELP_WIDTH, initial_indent="  ", subsequent_indent="      ")


def recipe_keys_help() -> str:
    """Every recipe key, grouped by section, with its type, default and help (from the dataclasses' metadata)."""
    lines = textwrap.wrap(
        "recipe keys (override any of them after RECIPE as --section.key VALUE or --section.key=VALUE; values are "
        "YAML, e.g. --model.hidden_sizes [512,256]):",
        width=HELP_WIDTH,
    )
    lines += [
        "",
        "top level:",
        "  --name STR: Recipe name (output files, model card).",
        "  --description STR: One-line description (model card).",
    ]
    for section, cls in SECTIONS.items():
        lines += ["", f"{section}: {cls.__doc__.strip()}"]
        for field in dataclasses.fields(cls):
            if not field.metadata.get("passthrough"):
                lines += _key_lines(f"--{section}.{field.name}", field)
    default_stages = ", ".join(f"{i}={s.name}" for i, s in enumerate(Recipe().stages))
    lines += [""] + textwrap.wrap(
        f"stages: {StageArguments.__doc__.strip()} Address a stage by index or name, e.g. --stages.0.epochs 2 or "
        f"--stages.finetune.learning_rate 1e-5 (default stages: {default_stages}).",
        width=HELP_WIDTH,
    )
    for field in dataclasses.fields(StageArguments):
        if not field.metadata.get("passthrough"):
            lines += _key_lines(f"--stages.<index|name>.{field.name}", field)
    from ..recipes import passthrough_keys_help

    lines += ["", *passthrough_keys_help(HELP_WIDTH)]
    return "\n".join(lines)


def shipped_recipes() -> list[str]:
    return sorted(path.stem for path in builtin_recipes_dir().glob("*.yaml"))


# --- arguments ------------------------------------------------------------------------------------------------------


def split_overrides(args: Sequence[str]) -> tuple[list[str], list[str]]:
    """Separate `train`'s own arguments from the raw `--section.key value` recipe overrides, in any order.

    The overrides are collected as they were typed; [`hftransfer.recipes`] parses them.
    """
    own, overrides = [], []
    index = 0
    while index < len(args):
        token = args[index]
        if token.startswith("--") and len(token) > 2 and token.split("=", 1)[0] not in TRAIN_FLAGS:
            overrides.append(token)
            if "=" not in token and index + 1 < len(args):
                overrides.append(args[index + 1])
                index += 1
        else:
            own.append(token)
        index += 1
    return own, overrides


def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    recipes = ", ".join(shipped_recipes()) or "none found"
    train = subparsers.add_parser(
        "train",
        help="run a training recipe (staged fine-tuning)",
        description=wrap(
            "Train from a YAML recipe: a file, or a shipped recipe name "
            f"({recipes}). Any recipe key can be overridden after RECIPE, e.g.\n"
            "  hftransfer train quickstart --training.output_dir runs/q1 --stages.frozen.epochs 2\n"
            "Multi-GPU: accelerate launch -m hftransfer train RECIPE ..."
        ),
        epilog=recipe_keys_help(),
        **parser_kwargs(),
    )
    train.add_argument(
        "recipe",
        metavar="RECIPE",
        nargs="?",
        default=None,
        help=f"recipe file or shipped name ({recipes}); without one, --data chooses a recipe from the data",
    )
    train.add_argument(
        "--data",
        default=None,
        metavar="SOURCE",
        help="train on this image folder / CSV / parquet / dataset: with RECIPE it replaces data.dataset, without "
        "one a recipe is chosen from the data (image size, epochs; see `hftransfer.auto_recipe`)",
    )
    train.add_argument("--output-dir", default=None, metavar="DIR", help="same as --training.output_dir DIR")
    train.add_argument(
        "--budget",
        default=None,
        choices=("cpu", "gpu"),
        help="compute budget of a recipe chosen from the data (default: gpu when CUDA is available)",
    )
    train.add_argument(
        "--resume", action="store_true", help="continue an interrupted run in the same training.output_dir"
    )
    train.add_argument(
        "--allow-recipe-changes",
        default="",
        metavar="KEY,...",
        help="with --resume: recipe keys that may differ from the recipe that ran although they change results, "
        "e.g. stages.finetune.epochs,training.seed (fnmatch patterns; '*' allows all). Logging, report_to, loader "
        "workers, hub and description may always change.",
    )
    train.add_argument(
        "--print-recipe", action="store_true", help="print the resolved recipe (with overrides) as YAML and exit"
    )
    train.set_defaults(func=run)
    return train


# --- running --------------------------------------------------------------------------------------------------------


def run(args: argparse.Namespace) -> int:
    from ..recipes import load_recipe

    check_override_flags(args.overrides, TRAIN_FLAGS, command="hftransfer train")
    overrides = list(args.overrides)
    if args.output_dir is not None:
        overrides = ["--training.output_dir", args.output_dir, *overrides]
    if args.recipe is None:
        if args.data is None:
            raise RecipeError("Give a RECIPE (a file or a shipped name) or --data PATH to train on your own data.")
        from ..auto_recipe import auto_recipe
        from ..recipes import apply_overrides, recipe_from_dict

        recipe = recipe_from_dict(apply_overrides(auto_recipe(args.data, budget=args.budget), overrides))
    else:
        if args.data is not None:
            overrides = ["--data.dataset", args.data, *overrides]
        recipe = load_recipe(args.recipe, overrides)
    if args.print_recipe:
        sys.stdout.write(recipe.to_yaml())
        return 0
    from ..training import train

    allowed = [key.strip() for key in args.allow_recipe_changes.split(",") if key.strip()]
    result = train(recipe, resume=args.resume, allow_recipe_changes=allowed)
    if is_main_process():
        final = (result.metrics or {}).get("final") or {}
        scores = final.get("test") or final.get("validation") or final
        summary = ", ".join(
            f"{key} {scores[key]:.4f}" for key in ("accuracy", "f1", "loss") if isinstance(scores.get(key), float)
        )
        print(f"Trained {recipe.name}: {result.output_dir}" + (f" ({summary})" if summary else ""))
    return 0
