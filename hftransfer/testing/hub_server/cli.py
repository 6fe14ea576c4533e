"""The command line: `python -m hftransfer.testing.hub_server --data-dir DIR --token TOKEN=USER ...`."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from collections.abc import Sequence
from pathlib import Path

from .common import (
    DEFAULT_LFS_THRESHOLD,
    DEFAULT_MAX_CONNECTIONS,
    DEFAULT_UPLOAD_LINK_TTL,
    MODULE_NAME,
    STARTUP_LINE,
    logger,
    parse_token_spec,
)
from .server import LocalHubServer
from .storage import _atomic_write


def build_arg_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=f"python -m {MODULE_NAME}",
        description=(
            "A local Hugging Face Hub-compatible server: push and pull models and datasets with the unmodified "
            "huggingface_hub client, without huggingface.co. Prints 'hftransfer hub server listening on URL' as its "
            "first line on stdout; logs go to stderr."
        ),
        epilog=(
            "Client side:  HF_ENDPOINT=URL HF_HUB_DISABLE_XET=1 HF_TOKEN=TOKEN python your_script.py\n"
            "Tokens also come from --tokens-file and from $HFTRANSFER_HUB_TOKENS (TOKEN=USER entries separated by\n"
            "whitespace), which keeps them off the process list."
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1; no TLS)")
    parser.add_argument("--port", type=int, default=0, help="port to listen on; 0 picks a free one (default: 0)")
    parser.add_argument("--data-dir", required=True, type=Path, help="where repositories are stored (created)")
    parser.add_argument(
        "--token",
        action="append",
        default=[],
        metavar="TOKEN=USER[:read]",
        help="an access token and its user; ':read' makes it read-only (repeatable)",
    )
    parser.add_argument("--tokens-file", type=Path, help="file with one TOKEN=USER[:read] per line (# comments)")
    parser.add_argument(
        "--org", action="append", default=[], metavar="ORG=USER[,USER...]", help="an organization and its members"
    )
    parser.add_argument("--port-file", type=Path, help="also write the chosen port to this file (atomically)")
    parser.add_argument(
        "--lfs-threshold",
        type=int,
        default=DEFAULT_LFS_THRESHOLD,
        metavar="BYTES",
        help=f"files above this size use LFS (default: {DEFAULT_LFS_THRESHOLD}, as on the Hub)",
    )
    parser.add_argument(
        "--upload-link-ttl", type=float, default=DEFAULT_UPLOAD_LINK_TTL, metavar="SECONDS", help="LFS link validity"
    )
    parser.add_argument("--no-fsync", action="store_true", help="do not fsync writes (faster, for throw-away data)")
    parser.add_argument(
        "--max-connections",
        type=int,
        default=DEFAULT_MAX_CONNECTIONS,
        metavar="N",
        help=f"connections served at once; more get 503 when all are busy (default: {DEFAULT_MAX_CONNECTIONS})",
    )
    parser.add_argument(
        "--log-level", default="info", choices=["debug", "info", "warning", "error"], help="stderr log level"
    )
    return parser


def _collect_tokens(args: argparse.Namespace) -> dict[str, str]:
    specs = list(os.environ.get("HFTRANSFER_HUB_TOKENS", "").split())
    if args.tokens_file is not None:
        for line in args.tokens_file.read_text().splitlines():
            line = line.strip()
            if line and not line.startswith("#"):
                specs.append(line)
    specs += args.token
    tokens = {}
    for spec in specs:
        token, user, role = parse_token_spec(spec)
        tokens[token] = user if role == "write" else f"{user}:{role}"
    return tokens


def _parse_orgs(specs: Sequence[str]) -> dict[str, list[str]]:
    orgs = {}
    for spec in specs:
        org, sep, members = spec.partition("=")
        if not sep or not org or not members:
            raise ValueError(f"Invalid --org {spec!r}: expected ORG=USER[,USER...].")
        orgs[org] = [member.strip() for member in members.split(",") if member.strip()]
    return orgs


def main(argv: Sequence[str] | None = None) -> int:
    """Run the server until SIGINT or SIGTERM. Returns the process exit code."""
    parser = build_arg_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        tokens = _collect_tokens(args)
        server = LocalHubServer(
            args.data_dir,
            tokens,
            orgs=_parse_orgs(args.org),
            host=args.host,
            port=args.port,
            lfs_threshold=args.lfs_threshold,
            upload_link_ttl=args.upload_link_ttl,
            fsync=not args.no_fsync,
            max_connections=args.max_connections,
        )
        server.start()
    except (ValueError, RuntimeError, OSError) as exc:
        parser.exit(2, f"error: {exc}\n")
    if not tokens:
        logger.warning("no tokens configured: nobody can create or write repositories (see --token)")
    if args.port_file is not None:  # written before the line, so whoever waits for either finds both
        args.port_file.parent.mkdir(parents=True, exist_ok=True)
        _atomic_write(args.port_file, f"{server.port}\n".encode(), args.port_file.parent, fsync=False)
    print(f"{STARTUP_LINE} {server.url}", flush=True)

    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    while not stop.wait(0.5):
        pass
    server.stop()
    return 0
