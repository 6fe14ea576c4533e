"""The `hftransfer` command line: `train | evaluate | predict | push | card | export | weights`.

Every heavy import (training, datasets, evaluate, the Hub client) happens inside the subcommand that needs it, so
`--help` and argument errors stay fast. Errors a user can cause (a mistyped recipe key, a missing model folder, a
corrupt image) print one line on stderr and exit non-zero; set `HFTRANSFER_DEBUG=1` (or pass `--debug`) to get the
traceback instead.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import sys
import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .recipes import SECTIONS, Recipe, RecipeError, StageArguments, builtin_recipes_dir

PROG = "hftransfer"
EXIT_USAGE = 2  # argparse's exit code for bad arguments; also used for bad recipes
_HELP_WIDTH = 100
_TRUTHY = ("1", "true", "yes", "on")
# `hftransfer train` options; every other `--...` after `train` is a recipe override.
_TRAIN_FLAGS = (
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


def _type_name(annotation: Any) -> str:
    # Annotations are strings under `from __future__ import annotations`: "int", "str | None", "list[int]", ...
    text = annotation if isinstance(annotation, str) else getattr(annotation, "__name__", str(annotation))
    return text.replace(" | None", "").upper()


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
    head = f"{flag} {_type_name(field.type)} (default {_format_default(_default_of(field))}): "
    text = head + field.metadata.get("help", "")
    return textwrap.wrap(text, width=_HELP_WIDTH, initial_indent="  ", subsequent_indent="      ")


def recipe_keys_help() -> str:
    """Every recipe key, grouped by section, with its type, default and help (from the dataclasses' metadata)."""
    lines = textwrap.wrap(
        "recipe keys (override any of them after RECIPE as --section.key VALUE or --section.key=VALUE; values are "
        "YAML, e.g. --model.hidden_sizes [512,256]):",
        width=_HELP_WIDTH,
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
        width=_HELP_WIDTH,
    )
    for field in dataclasses.fields(StageArguments):
        if not field.metadata.get("passthrough"):
            lines += _key_lines(f"--stages.<index|name>.{field.name}", field)
    from .recipes import passthrough_keys_help

    lines += ["", *passthrough_keys_help(_HELP_WIDTH)]
    return "\n".join(lines)


def shipped_recipes() -> list[str]:
    return sorted(path.stem for path in builtin_recipes_dir().glob("*.yaml"))


# --- parser ---------------------------------------------------------------------------------------------------------


class _HelpFormatter(argparse.RawDescriptionHelpFormatter):
    def __init__(self, prog: str):
        super().__init__(prog, max_help_position=32, width=_HELP_WIDTH)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of `hftransfer` (train overrides and `weights` arguments are split off by [`main`])."""
    from . import __version__

    parser = argparse.ArgumentParser(
        prog=PROG,
        description=_wrap(
            "Transfer learning with ImageNet VGG backbones, the Hugging Face way: train from a YAML recipe, "
            "evaluate, predict, write the model card and push to the Hub."
        ),
        epilog="Run `hftransfer COMMAND --help` for the options of a command. Quickstart: `hftransfer train "
        "quickstart` (offline, under 10 minutes on 2 CPU cores).",
        formatter_class=_HelpFormatter,
        allow_abbrev=False,
    )
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks instead of one-line errors")
    # Also accepted after the command; SUPPRESS keeps a subcommand's default from overwriting the global flag.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--debug", action="store_true", default=argparse.SUPPRESS, help="show tracebacks instead of one-line errors"
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    recipes = ", ".join(shipped_recipes()) or "none found"
    train = commands.add_parser(
        "train",
        help="run a training recipe (staged fine-tuning)",
        description=_wrap(
            "Train from a YAML recipe: a file, or a shipped recipe name "
            f"({recipes}). Any recipe key can be overridden after RECIPE, e.g.\n"
            "  hftransfer train quickstart --training.output_dir runs/q1 --stages.frozen.epochs 2\n"
            "Multi-GPU: accelerate launch -m hftransfer train RECIPE ..."
        ),
        epilog=recipe_keys_help(),
        formatter_class=_HelpFormatter,
        allow_abbrev=False,
        parents=[common],
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
    train.set_defaults(func=_cmd_train)

    evaluate = commands.add_parser(
        "evaluate",
        help="evaluate a trained model on a dataset split",
        description=_wrap(
            "Evaluate a saved model on a dataset split: loss, accuracy, macro F1/precision/recall, "
            "per-class accuracy; writes metrics.json and confusion_matrix.png."
        ),
        formatter_class=_HelpFormatter,
        allow_abbrev=False,
        parents=[common],
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
        "--batch-size", type=_positive_int, default=64, metavar="N", help="images per forward (default: 64)"
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
        "--max-samples", type=_positive_int, default=None, metavar="N", help="evaluate the first N examples"
    )
    _add_tta(evaluate)
    _add_device_and_dtype(evaluate)
    evaluate.set_defaults(func=_cmd_evaluate)

    predict = commands.add_parser(
        "predict",
        help="classify image files and folders",
        description=_wrap(
            "Classify images (files, or folders searched recursively for image files) in batches. Prints "
            "PATH<TAB>LABEL<TAB>PROBABILITY, one line per file and rank, or a JSON list with --json."
        ),
        formatter_class=_HelpFormatter,
        allow_abbrev=False,
        parents=[common],
    )
    predict.add_argument("model", metavar="MODEL", help="saved model folder or Hub repo id")
    predict.add_argument("inputs", metavar="IMAGE_OR_DIR", nargs="+", help="image files and/or folders")
    predict.add_argument(
        "--top-k", type=_positive_int, default=1, metavar="K", help="labels per image, best first (default: 1)"
    )
    predict.add_argument(
        "--batch-size", type=_positive_int, default=32, metavar="N", help="images per forward (default: 32)"
    )
    predict.add_argument("--json", action="store_true", help='print [{"path", "predictions": [{"label", "score"}]}]')
    predict.add_argument(
        "--skip-bad",
        action="store_true",
        help="skip unreadable/corrupt images (reported on stderr) instead of failing",
    )
    _add_tta(predict)
    _add_device_and_dtype(predict)
    predict.set_defaults(func=_cmd_predict)

    push = commands.add_parser(
        "push",
        help="push a training output folder to the Hub",
        description=_wrap(
            "Upload a training output folder (model, processor, code files, card, metrics, plots) to a Hub "
            "model repo, creating it if needed."
        ),
        formatter_class=_HelpFormatter,
        allow_abbrev=False,
        parents=[common],
    )
    push.add_argument("output_dir", metavar="OUTPUT_DIR", help="training output folder")
    push.add_argument("--repo-id", required=True, metavar="USER/NAME", help="target model repo")
    push.add_argument("--private", action="store_true", help="create the repo as private")
    push.add_argument("--revision", default=None, metavar="BRANCH", help="branch to push to (default: main)")
    push.add_argument(
        "--token", default=None, metavar="TOKEN", help="Hub token (default: HF_TOKEN or the cached login)"
    )
    push.add_argument("--commit-message", default=None, metavar="TEXT", help="commit message of the upload")
    push.set_defaults(func=_cmd_push)

    card = commands.add_parser(
        "card",
        help="(re)write the model card of a training output folder",
        description=_wrap(
            "Render README.md (the model card) from a training output folder's config, metrics and plots."
        ),
        formatter_class=_HelpFormatter,
        allow_abbrev=False,
        parents=[common],
    )
    card.add_argument("output_dir", metavar="OUTPUT_DIR", help="training output folder")
    card.add_argument("--repo-id", default=None, help="Hub repo id used in the card's usage snippet")
    card.set_defaults(func=_cmd_card)

    from .export import add_export_subcommand

    add_export_subcommand(commands, formatter_class=_HelpFormatter, allow_abbrev=False, parents=[common])

    # The weights command owns its parser (hftransfer.weights.main_weights); main() hands it the arguments as is.
    weights = commands.add_parser(
        "weights",
        help="convert and cache backbone weights (e.g. Keras' ImageNet VGG16) in timm format",
        add_help=False,
    )
    weights.set_defaults(func=_cmd_weights)
    return parser


def _wrap(text: str) -> str:
    # RawDescriptionHelpFormatter keeps our line breaks (examples, epilog) but does not wrap: wrap paragraphs here.
    return "\n".join(
        textwrap.fill(line, _HELP_WIDTH) if len(line) > _HELP_WIDTH else line for line in text.split("\n")
    )


def _add_device_and_dtype(parser: argparse.ArgumentParser) -> None:
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


def _add_tta(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--tta",
        nargs="?",
        const="flip",
        default=None,
        choices=("flip", "flip-crops"),
        help="test-time augmentation: average the probabilities of the image and its mirror (flip, the default of "
        "a bare --tta) or also of 4 corner crops and the centre crop (flip-crops)",
    )


def _evaluation_split(model: str) -> str:
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


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _split_train_overrides(args: Sequence[str]) -> tuple[list[str], list[str]]:
    """Separate `train`'s own arguments from `--section.key value` recipe overrides, in any order."""
    own, overrides = [], []
    index = 0
    while index < len(args):
        token = args[index]
        if token.startswith("--") and len(token) > 2 and token.split("=", 1)[0] not in _TRAIN_FLAGS:
            overrides.append(token)
            if "=" not in token and index + 1 < len(args):
                overrides.append(args[index + 1])
                index += 1
        else:
            own.append(token)
        index += 1
    return own, overrides


def _check_override_flags(overrides: Sequence[str]) -> None:
    # `--resum` or `--print` are typos of train's flags, not recipe keys: say so rather than "not --section.key".
    import difflib

    for token in overrides:
        if not token.startswith("--"):
            continue
        flag = token.split("=", 1)[0]
        if "." not in flag and flag not in ("--name", "--description"):
            match = difflib.get_close_matches(flag, [f for f in _TRAIN_FLAGS if f.startswith("--")], n=1, cutoff=0.6)
            hint = f" Did you mean '{match[0]}'?" if match else " Recipe overrides look like --section.key VALUE."
            raise RecipeError(f"Unknown option '{flag}' for 'hftransfer train'.{hint}")


# --- commands -------------------------------------------------------------------------------------------------------


def _is_main_process() -> bool:
    # Under `accelerate launch` / torchrun only rank 0 prints summaries.
    return int(os.environ.get("RANK", "0")) == 0


def _cmd_train(args: argparse.Namespace) -> int:
    from .recipes import load_recipe

    _check_override_flags(args.overrides)
    overrides = list(args.overrides)
    if args.output_dir is not None:
        overrides = ["--training.output_dir", args.output_dir, *overrides]
    if args.recipe is None:
        if args.data is None:
            raise RecipeError("Give a RECIPE (a file or a shipped name) or --data PATH to train on your own data.")
        from .auto_recipe import auto_recipe
        from .recipes import apply_overrides, recipe_from_dict

        recipe = recipe_from_dict(apply_overrides(auto_recipe(args.data, budget=args.budget), overrides))
    else:
        if args.data is not None:
            overrides = ["--data.dataset", args.data, *overrides]
        recipe = load_recipe(args.recipe, overrides)
    if args.print_recipe:
        sys.stdout.write(recipe.to_yaml())
        return 0
    from .training import train

    allowed = [key.strip() for key in args.allow_recipe_changes.split(",") if key.strip()]
    result = train(recipe, resume=args.resume, allow_recipe_changes=allowed)
    if _is_main_process():
        final = (result.metrics or {}).get("final") or {}
        scores = final.get("test") or final.get("validation") or final
        summary = ", ".join(
            f"{key} {scores[key]:.4f}" for key in ("accuracy", "f1", "loss") if isinstance(scores.get(key), float)
        )
        print(f"Trained {recipe.name}: {result.output_dir}" + (f" ({summary})" if summary else ""))
    return 0


def _default_eval_dir(model: str, split: str) -> Path:
    path = Path(model).expanduser()
    if path.is_dir():
        return path / f"eval-{split}"
    return Path(f"{model.rstrip('/').split('/')[-1]}-eval-{split}")


def _quiet_transformers() -> None:
    # "Loading weights: 100%" bars are noise in a command whose output is meant to be read or parsed.
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from .inference import CONFUSION_MATRIX_FILE, METRICS_FILE, evaluate_model

    _quiet_transformers()
    if args.split is None:
        args.split = _evaluation_split(args.model)
        if args.split != "test":
            print(
                f"note: evaluating the {args.split!r} split, the one training reported on (no test split)",
                file=sys.stderr,
            )
    output_dir = None if args.no_save else Path(args.output_dir or _default_eval_dir(args.model, args.split))
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


def _cmd_predict(args: argparse.Namespace) -> int:
    from .data import BadImageError
    from .inference import predict

    _quiet_transformers()
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


def _cmd_push(args: argparse.Namespace) -> int:
    from .hub import push_to_hub

    if not Path(args.output_dir).is_dir():
        raise FileNotFoundError(f"Output folder {args.output_dir} does not exist.")
    kwargs = {"private": args.private, "revision": args.revision, "token": args.token}
    if args.commit_message is not None:
        kwargs["commit_message"] = args.commit_message
    print(push_to_hub(args.output_dir, args.repo_id, **kwargs))
    return 0


def _cmd_card(args: argparse.Namespace) -> int:
    from .cards import render_model_card

    render_model_card(args.output_dir, repo_id=args.repo_id, write=True)
    print(Path(args.output_dir) / "README.md")
    return 0


def _cmd_weights(args: argparse.Namespace) -> int:
    from .weights import main_weights

    return main_weights(args.passthrough)


# --- entry point ----------------------------------------------------------------------------------------------------


# Standard errors whose message says it all (missing files, existing output folders, unreachable servers).
_PLAIN_ERRORS = (FileNotFoundError, FileExistsError, NotADirectoryError, PermissionError, ConnectionError)


def _user_error_types() -> tuple[type[BaseException], ...]:
    # Errors whose message is meant for the user; anything else is a bug and keeps its traceback.
    return (ValueError, OSError, RuntimeError)


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


def main(argv: Sequence[str] | None = None) -> int:
    """Run the `hftransfer` command line.

    Args:
        argv (`Sequence[str]`, *optional*): Arguments without the program name (defaults to `sys.argv[1:]`).

    Returns:
        `int`: the exit code: 0 on success, 1 for runtime errors (missing model, bad image, ...), 2 for bad arguments
        and bad recipes.
    """
    from_command_line = argv is None
    argv = list(sys.argv[1:] if argv is None else argv)
    # Find the command: train's recipe overrides and weights' arguments are not argparse's business.
    overrides: list[str] = []
    passthrough: list[str] = []
    command_index = next((i for i, token in enumerate(argv) if not token.startswith("-")), None)
    if command_index is not None:
        head, tail = argv[: command_index + 1], argv[command_index + 1 :]
        if argv[command_index] == "train":
            tail, overrides = _split_train_overrides(tail)
        elif argv[command_index] == "weights":
            tail, passthrough = [], tail
        argv = head + tail
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
        return 130
    except _user_error_types() as err:
        if debug:
            raise
        message = str(err).strip() or type(err).__name__
        if not type(err).__module__.startswith("hftransfer") and not isinstance(err, _PLAIN_ERRORS):
            # Not one of ours: it may be a bug, so say how to see where it came from.
            message = f"{message} ({type(err).__name__}; --debug shows the traceback)"
        print(f"error: {message}", file=sys.stderr)
        return 1


__all__ = ["build_parser", "main", "recipe_keys_help", "shipped_recipes"]
