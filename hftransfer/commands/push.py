"""`hftransfer push OUTPUT_DIR --repo-id USER/NAME`: push a training output folder to the Hub."""

from __future__ import annotations

import argparse
from pathlib import Path

from ._utils import parser_kwargs, wrap


def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    push = subparsers.add_parser(
        "push",
        help="push a training output folder to the Hub",
        description=wrap(
            "Upload a training output folder (model, processor, code files, card, metrics, plots) to a Hub "
            "model repo, creating it if needed."
        ),
        **parser_kwargs(),
    )
    push.add_argument("output_dir", metavar="OUTPUT_DIR", help="training output folder")
    push.add_argument("--repo-id", required=True, metavar="USER/NAME", help="target model repo")
    push.add_argument("--private", action="store_true", help="create the repo as private")
    push.add_argument("--revision", default=None, metavar="BRANCH", help="branch to push to (default: main)")
    push.add_argument(
        "--token", default=None, metavar="TOKEN", help="Hub token (default: HF_TOKEN or the cached login)"
    )
    push.add_argument("--commit-message", default=None, metavar="TEXT", help="commit message of the upload")
    push.set_defaults(func=run)
    return push


def run(args: argparse.Namespace) -> int:
    from ..hub import push_to_hub

    if not Path(args.output_dir).is_dir():
        raise FileNotFoundError(f"Output folder {args.output_dir} does not exist.")
    kwargs = {"private": args.private, "revision": args.revision, "token": args.token}
    if args.commit_message is not None:
        kwargs["commit_message"] = args.commit_message
    print(push_to_hub(args.output_dir, args.repo_id, **kwargs))
    return 0
