"""`hftransfer card OUTPUT_DIR`: (re)write the model card of a training output folder."""

from __future__ import annotations

import argparse
from pathlib import Path

from ._utils import parser_kwargs, wrap


def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    card = subparsers.add_parser(
        "card",
        help="(re)write the model card of a training output folder",
        description=wrap(
            "Render README.md (the model card) from a training output folder's config, metrics and plots."
        ),
        **parser_kwargs(),
    )
    card.add_argument("output_dir", metavar="OUTPUT_DIR", help="training output folder")
    card.add_argument("--repo-id", default=None, help="Hub repo id used in the card's usage snippet")
    card.set_defaults(func=run)
    return card


def run(args: argparse.Namespace) -> int:
    from ..cards import render_model_card

    render_model_card(args.output_dir, repo_id=args.repo_id, write=True)
    print(Path(args.output_dir) / "README.md")
    return 0
