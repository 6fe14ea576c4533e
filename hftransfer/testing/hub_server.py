"""A local HTTP server that speaks enough of the Hugging Face Hub API for the unmodified `huggingface_hub` client.

It lets tests, CI and air-gapped teams push, pull and browse models and datasets without huggingface.co: point the
client at it with `HF_ENDPOINT=http://127.0.0.1:PORT` (and `HF_HUB_DISABLE_XET=1`: this server speaks the classic
LFS protocol, not Xet) and use `HfApi`, `hf_hub_download`, `snapshot_download`, `push_to_hub` or
`from_pretrained` as usual.

Start it from a shell:

```bash
python -m hftransfer.testing.hub_server --data-dir ./hub-data --token hf_alice_secret=alice --port 8080
# first line on stdout: "hftransfer hub server listening on http://127.0.0.1:8080"
```

or in-process:

```python
>>> from hftransfer.testing import LocalHubServer
>>> with LocalHubServer("./hub-data", tokens={"hf_alice_secret": "alice"}) as server:
...     api = HfApi(endpoint=server.url, token=server.token_for("alice"))
```

What it implements: whoami, repo create/delete/settings, model/dataset info and listing, tree and paths-info
listings, refs, commit history, branches, tags, README metadata validation, preupload (regular vs LFS), the git-LFS
batch API with signed single-part upload links, NDJSON commits (with `parentCommit` checks and pull-request refs) and
`/resolve` downloads with `Range`. Errors carry the `X-Error-Code` headers (`RepoNotFound`, `RevisionNotFound`,
`EntryNotFound`) that the client turns into its typed exceptions.

Storage is content-addressed: file contents live once under `blobs/` by sha256, a commit is an immutable JSON file
holding the whole tree, and a branch is a line in `refs.json`. Every write goes to a temporary file first and is then
renamed into place, and a branch only moves after its commit is on disk, so a crash (even SIGKILL) at any point
leaves each repository at a commit that was fully written. Partial uploads are discarded at the next start.

This module uses only the Python standard library (PyYAML is used when installed, to validate model-card metadata),
so the file also runs on its own: `python hub_server.py --help`.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import collections
import contextlib
import datetime
import hashlib
import hmac
import html
import http.server
import ipaddress
import json
import logging
import mimetypes
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

try:  # POSIX only: used to stop two servers from sharing one data directory
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

__all__ = [
    "DEFAULT_LFS_THRESHOLD",
    "HubServerProcess",
    "HubStorage",
    "LocalHubServer",
    "main",
    "parse_token_spec",
]

logger = logging.getLogger("hftransfer.testing.hub_server")

MODULE_NAME = "hftransfer.testing.hub_server"
DEFAULT_LFS_THRESHOLD = 10 * 1024 * 1024  # the Hub refuses regular (non-LFS) files above 10 MiB
DEFAULT_UPLOAD_LINK_TTL = 3600.0
DISCUSSIONS_PAGE_SIZE = 50
MAX_COMMENT = 64 * 1024  # characters of a comment or a discussion's description
TREE_PAGE_SIZE = 1000  # the Hub's page size for tree listings
MAX_JSON_BODY = 16 * 1024 * 1024
MAX_DRAIN = (
    4 * 1024 * 1024
)  # unread body bytes read and dropped after an early answer; beyond, the connection is closed
MAX_PREUPLOAD_FILES = 1000  # huggingface_hub sends 256 per request
IO_CHUNK = 1024 * 1024
STARTUP_LINE = "hftransfer hub server listening on"
XET_HINT = (
    "This server does not speak the Xet protocol: set HF_HUB_DISABLE_XET=1 in the client's environment so that "
    "huggingface_hub uploads with classic LFS (hftransfer push does this by itself)."
)
XET_HINT_PATH = "/_hftransfer/xet-is-not-supported-here-set-HF_HUB_DISABLE_XET=1-to-upload-with-LFS"
DEFAULT_MAX_CONNECTIONS = 64  # connections served at once (one thread each); more get 503 or replace idle ones
DEFAULT_IDLE_TIMEOUT = 60.0  # seconds a keep-alive connection may wait for its next request line and headers

# repo type -> (plural used in /api/{plural}/..., prefix used in web and git URLs)
REPO_TYPES: dict[str, tuple[str, str]] = {
    "model": ("models", ""),
    "dataset": ("datasets", "datasets/"),
    "space": ("spaces", "spaces/"),
}
_PLURAL_TO_TYPE = {plural: repo_type for repo_type, (plural, _) in REPO_TYPES.items()}
# First URL segments with a meaning of their own: no user or organization may be called like this.
RESERVED_NAMESPACES = frozenset({"api", "datasets", "spaces", "models", "_hftransfer", "health", "resolve"})

_NAME_RE = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9._-]{0,94}[A-Za-z0-9_])?$")
_REF_RE = re.compile(r"^[A-Za-z0-9._-]+(?:/[A-Za-z0-9._-]+)*$")
_PR_REF_RE = re.compile(r"^refs/pr/([1-9][0-9]{0,8})$")
_HEX40_RE = re.compile(r"^[0-9a-f]{40}$")
_HEX64_RE = re.compile(r"^[0-9a-f]{64}$")
_OID_PREFIX_RE = re.compile(r"^[0-9a-fA-F]{5,40}$")
_DRIVE_RE = re.compile(r"^[A-Za-z]:")
_HOST_RE = re.compile(r"^(?:[A-Za-z0-9.-]+|\[[0-9A-Fa-f:.]+\])(?::[0-9]{1,5})?$")

# The `.gitattributes` the Hub writes into every new repository: these patterns are stored with LFS.
_LFS_PATTERNS = (  # noqa: SIM905 - one line of patterns reads better than fifty
    "*.7z *.arrow *.bin *.bz2 *.ckpt *.ftz *.gz *.h5 *.joblib *.lfs.* *.mlmodel *.model *.msgpack *.npy *.npz "
    "*.onnx *.ot *.parquet *.pb *.pickle *.pkl *.pt *.pth *.rar *.safetensors saved_model/**/* *.tar.* *.tar "
    "*.tflite *.tgz *.wasm *.xz *.zip *.zst *tfevents*"
).split()
_DATASET_EXTRA_LFS_PATTERNS = (  # noqa: SIM905
    "*.lz4 *.mds *.mp3 *.ogg *.wav *.flac *.jpg *.jpeg *.png *.webp *.gif *.bmp *.tif *.tiff *.mp4 *.webm"
).split()


def default_gitattributes(repo_type: str = "model") -> str:
    """The `.gitattributes` committed into a new repository, as the Hub does (LFS for usual binary formats).

    Args:
        repo_type (`str`, *optional*, defaults to `"model"`):
            `"model"`, `"dataset"` or `"space"`; datasets also store images and audio with LFS.

    Returns:
        `str`: the file's content.
    """
    patterns = list(_LFS_PATTERNS) + (_DATASET_EXTRA_LFS_PATTERNS if repo_type == "dataset" else [])
    return "".join(f"{pattern} filter=lfs diff=lfs merge=lfs -text\n" for pattern in patterns)


# --------------------------------------------------------------------------------------------------------------------
# Small helpers
# --------------------------------------------------------------------------------------------------------------------


class HubHTTPError(Exception):
    """An error answered to the client as an HTTP status with a JSON body and Hub-style error headers.

    Args:
        status (`int`):
            HTTP status code.
        message (`str`):
            Human-readable explanation, sent as `X-Error-Message` and as `{"error": message}`.
        code (`str`, *optional*):
            Value of `X-Error-Code` (`RepoNotFound`, `RevisionNotFound`, `EntryNotFound`, ...), which the client maps
            to its typed exceptions.
        headers (`dict[str, str]`, *optional*):
            Extra response headers (e.g. `X-Repo-Commit` on `EntryNotFound`).
    """

    def __init__(
        self,
        status: int,
        message: str,
        code: str | None = None,
        headers: dict[str, str] | None = None,
        body: dict | None = None,
    ):
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.headers = dict(headers or {})
        self.body = body if body is not None else {"error": message}


class _ClientGone(Exception):
    """The client closed the connection or stopped sending mid-body: nothing can be answered."""


class _BadFraming(Exception):
    """The request body framing (Content-Length / chunked encoding) is invalid: answer 400 and close."""


def _now_iso() -> str:
    now = datetime.datetime.now(datetime.timezone.utc)
    return now.strftime("%Y-%m-%dT%H:%M:%S.") + f"{now.microsecond // 1000:03d}Z"


def _object_id(seed: str) -> str:
    """A stable 24-hex id (the Hub exposes Mongo-style `_id`s)."""
    return hashlib.sha1(seed.encode()).hexdigest()[:24]


def _git_blob_oid(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def _lfs_pointer(sha256: str, size: int) -> bytes:
    return f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {size}\n".encode()


def _header_safe(text: str, limit: int = 1000) -> str:
    """Header values must be single-line latin-1: keep messages readable but safe."""
    text = " ".join(text.split())
    return text.encode("ascii", "replace").decode("ascii")[:limit]


def _is_binary_sample(sample: bytes) -> bool:
    """Whether the first bytes of a file look binary (NUL byte or not UTF-8), like the Hub's own check."""
    if b"\0" in sample:
        return True
    for cut in range(4):  # the sample may end inside a multi-byte character
        try:
            sample[: len(sample) - cut].decode("utf-8")
            return False
        except UnicodeDecodeError:
            continue
    return True


MAX_GLOB_PATTERNS = 1000  # lines of a .gitattributes / .gitignore (or a preupload's gitIgnore) that are honoured
MAX_GLOB_LENGTH = 1024  # characters of one pattern
MAX_GLOB_TEXT = 256 * 1024  # bytes of a preupload's gitIgnore
# Automaton steps one request may spend on patterns that need the general matcher (each step is a cached
# dictionary lookup per character: ~0.1 us). Beyond it the request is refused instead of occupying a thread.
MATCH_BUDGET = 10_000_000


class GlobTooExpensive(Exception):
    """Matching these patterns against these paths would exceed the request's budget."""


class _Budget:
    __slots__ = ("left",)

    def __init__(self, steps: int = MATCH_BUDGET) -> None:
        self.left = steps

    def spend(self, steps: int) -> None:
        self.left -= steps
        if self.left < 0:
            raise GlobTooExpensive(f"matching needs more than {MATCH_BUDGET} steps")


_LIT, _ANY, _CLASS, _STAR, _DSTAR, _OPT = range(6)


def _parse_class(pattern: str, start: int) -> tuple[tuple[bool, frozenset[str], tuple[tuple[str, str], ...]], int]:
    """Parse `[...]` starting after the `[`; returns ((negate, chars, ranges), index after `]`) or raises ValueError."""
    i, negate = start, False
    if i < len(pattern) and pattern[i] in "!^":
        negate, i = True, i + 1
    chars: set[str] = set()
    ranges: list[tuple[str, str]] = []
    first = True
    while i < len(pattern):
        char = pattern[i]
        if char == "]" and not first:
            return (negate, frozenset(chars), tuple(ranges)), i + 1
        if char == "\\" and i + 1 < len(pattern):
            i += 1
            char = pattern[i]
        if i + 2 < len(pattern) and pattern[i + 1] == "-" and pattern[i + 2] != "]":
            ranges.append((char, pattern[i + 2]))
            i += 3
        else:
            chars.add(char)
            i += 1
        first = False
    raise ValueError("unclosed '['")


class Glob:
    """One git-style glob, matched by a lazily built DFA (linear in the subject's length, no backtracking).

    `*` and `?` and `[...]` never match `/`; `**/` matches zero or more folders, `/**` at the end everything below,
    any other `**` any string. A backslash escapes the next character.
    """

    __slots__ = ("pattern", "_tokens", "_kind", "_parts", "_literal", "_dfa", "_start")

    def __init__(self, pattern: str) -> None:
        self.pattern = pattern
        tokens: list[tuple] = []
        i = 0
        while i < len(pattern):
            char = pattern[i]
            if pattern.startswith("**/", i):
                tokens += [(_OPT, len(tokens) + 3), (_DSTAR,), (_LIT, "/")]
                i += 3
            elif pattern.startswith("**", i):
                tokens.append((_DSTAR,))
                i += 2
            elif char == "*":
                tokens.append((_STAR,))
                i += 1
            elif char == "?":
                tokens.append((_ANY,))
                i += 1
            elif char == "[":
                try:
                    klass, i = _parse_class(pattern, i + 1)
                    tokens.append((_CLASS, klass))
                except ValueError:  # an unclosed bracket is a literal, as in git
                    tokens.append((_LIT, "["))
                    i += 1
            elif char == "\\" and i + 1 < len(pattern):
                tokens.append((_LIT, pattern[i + 1]))
                i += 2
            else:
                tokens.append((_LIT, char))
                i += 1
        self._tokens = tokens
        # Fast paths, matched with str methods in C: a literal, or literals separated by `*` (no `/` in the subject
        # then, since `*` cannot cross it: callers only use them for basenames).
        kinds = {token[0] for token in tokens}
        self._parts: list[str] = []
        self._literal = "".join(token[1] for token in tokens) if kinds <= {_LIT} else ""
        if kinds <= {_LIT}:
            self._kind = "literal"
        elif kinds <= {_LIT, _STAR, _DSTAR} and "/" not in pattern:
            self._kind = "stars"
            parts, current = [], []
            for token in tokens:
                if token[0] == _LIT:
                    current.append(token[1])
                else:
                    parts.append("".join(current))
                    current = []
            parts.append("".join(current))
            self._parts = parts
        else:
            self._kind = "dfa"
        self._dfa: dict[tuple[frozenset[int], str], frozenset[int]] = {}
        self._start = self._closure({0})

    def _closure(self, states: set[int]) -> frozenset[int]:
        stack, seen = list(states), set(states)
        while stack:
            index = stack.pop()
            if index >= len(self._tokens):
                continue
            token = self._tokens[index]
            targets = (
                (index + 1,) if token[0] in (_STAR, _DSTAR) else (index + 1, token[1]) if token[0] == _OPT else ()
            )
            for target in targets:
                if target not in seen:
                    seen.add(target)
                    stack.append(target)
        return frozenset(seen)

    def _step(self, states: frozenset[int], char: str) -> frozenset[int]:
        key = (states, char)
        found = self._dfa.get(key)
        if found is not None:
            return found
        following: set[int] = set()
        for index in states:
            if index >= len(self._tokens):
                continue
            token = self._tokens[index]
            kind = token[0]
            if kind == _LIT:
                if char == token[1]:
                    following.add(index + 1)
            elif kind == _ANY:
                if char != "/":
                    following.add(index + 1)
            elif kind == _CLASS:
                negate, chars, ranges = token[1]
                hit = char in chars or any(low <= char <= high for low, high in ranges)
                if hit != negate and char != "/":
                    following.add(index + 1)
            elif kind == _STAR:
                if char != "/":
                    following.add(index)
            elif kind == _DSTAR:
                following.add(index)
        result = self._closure(following)
        if len(self._dfa) < 4096:  # bounded cache; beyond it each step is computed (still no backtracking)
            self._dfa[key] = result
        return result

    def match(self, subject: str, budget: _Budget | None = None) -> bool:
        """Whether the whole `subject` matches."""
        if self._kind == "literal":
            return subject == self._literal
        if self._kind == "stars" and "/" not in subject:
            if budget is not None:
                budget.spend(4 + len(subject) // 64)
            return _match_stars(self._parts, subject)
        return len(self._tokens) in self._run(subject, budget)[-1]

    def match_prefixes(self, subject: str, budget: _Budget | None = None) -> list[bool]:
        """For each '/'-separated prefix of `subject` (`a`, `a/b`, `a/b/c`), whether it matches: one pass."""
        ends = [end for end, char in enumerate(subject + "/") if char == "/"]
        if self._kind == "literal":
            return [end == len(self._literal) and subject.startswith(self._literal) for end in ends]
        states = self._run(subject, budget)
        accept = len(self._tokens)
        return [accept in states[end] for end in ends]

    def _run(self, subject: str, budget: _Budget | None) -> list[frozenset[int]]:
        """The DFA state before each character and at the end (`states[k]` = after `subject[:k]`)."""
        if budget is not None:
            budget.spend(2 * (len(subject) + 1))
        states, current = [self._start], self._start
        for char in subject:
            current = self._step(current, char) if current else current
            states.append(current)
        return states


def _match_stars(parts: list[str], subject: str) -> bool:
    """Match literals separated by stars (`parts` from splitting on `*`), greedily: O(len(subject)) with str.find."""
    if len(parts) == 1:
        return subject == parts[0]
    first, last = parts[0], parts[-1]
    if len(subject) < len(first) + len(last) or not subject.startswith(first) or not subject.endswith(last):
        return False
    position, end = len(first), len(subject) - len(last)
    for middle in parts[1:-1]:
        found = subject.find(middle, position, end)
        if found < 0:
            return False
        position = found + len(middle)
    return True


class _PatternSet:
    """Ordered git-style patterns where the last match wins (gitattributes `filter=lfs`, gitignore with `!`).

    At most `MAX_GLOB_PATTERNS` patterns of at most `MAX_GLOB_LENGTH` characters are kept; `skipped` counts the
    others (a preupload's own `gitIgnore` is refused then; a committed file is honoured up to the limit).
    """

    def __init__(self) -> None:
        self._rules: list[tuple[Glob, bool, bool, bool]] = []  # glob, value, basename_only, dir_only
        self.skipped = 0

    def add(self, pattern: str, value: bool) -> None:
        if len(self._rules) >= MAX_GLOB_PATTERNS or len(pattern) > MAX_GLOB_LENGTH:
            self.skipped += 1
            return
        dir_only = pattern.endswith("/")
        pattern = pattern.rstrip("/")
        anchored = "/" in pattern
        pattern = pattern.lstrip("/")
        if pattern:
            self._rules.append((Glob(pattern), value, not anchored, dir_only))

    def match(self, path: str, budget: _Budget | None = None) -> bool | None:
        parts = path.split("/")
        for glob, value, basename_only, dir_only in reversed(self._rules):  # the last matching rule wins
            # A pattern matching a parent directory applies to everything below it (gitignore semantics).
            if basename_only:
                hit = any(glob.match(part, budget) for part in (parts[:-1] if dir_only else parts))
            else:
                hits = glob.match_prefixes(path, budget)
                hit = any(hits[:-1] if dir_only else hits)
            if hit:
                return value
        return None

    @classmethod
    def from_gitattributes(cls, text: str) -> _PatternSet:
        patterns = cls()
        for line in text.splitlines():
            tokens = line.split()
            if not tokens or tokens[0].startswith("#"):
                continue
            for attribute in tokens[1:]:
                if attribute.startswith("filter="):
                    patterns.add(tokens[0], attribute == "filter=lfs")
                elif attribute in ("-filter", "!filter"):
                    patterns.add(tokens[0], False)
        return patterns

    @classmethod
    def from_gitignore(cls, text: str) -> _PatternSet:
        patterns = cls()
        for line in text.splitlines():
            line = line.rstrip()
            if not line or line.startswith("#"):
                continue
            if line.startswith("!"):
                patterns.add(line[1:], False)
            else:
                patterns.add(line.removeprefix("\\"), True)
        return patterns


def _split_front_matter(content: str) -> str | None:
    """The YAML block between the leading `---` lines of a model card, or None when there is none."""
    lines = content.lstrip("\ufeff").splitlines()
    if not lines or lines[0].strip() != "---":
        return None
    for index in range(1, len(lines)):
        if lines[index].strip() == "---":
            return "\n".join(lines[1:index])
    return None


MAX_CARD_METADATA = 64 * 1024  # bytes of a model card's YAML block that are parsed
MAX_CARD_JSON = 256 * 1024  # bytes of `cardData` (as JSON) served in repo info; larger metadata is left out
MAX_CARD_DEPTH = 50  # nesting levels of the card's YAML


def _yaml_loader() -> Any:
    """A `yaml.SafeLoader` subclass that refuses aliases (`*name`) and deep nesting, or None without PyYAML.

    Aliases are what makes a few hundred bytes of YAML expand into gigabytes ("billion laughs"); model cards have
    no use for them, so they are an error, like invalid YAML.
    """
    try:
        import yaml
    except ImportError:  # PyYAML missing: accept the card rather than refuse what we cannot check
        return None

    class NoAliasLoader(yaml.SafeLoader):
        _depth = 0

        def compose_node(self, parent: Any, index: Any) -> Any:
            if self.check_event(yaml.AliasEvent):
                event = self.peek_event()
                raise yaml.composer.ComposerError(
                    None,
                    None,
                    f"YAML aliases (*{event.anchor}) are not allowed in model card metadata",
                    event.start_mark,
                )
            self._depth += 1
            try:
                if self._depth > MAX_CARD_DEPTH:
                    raise yaml.composer.ComposerError(
                        None,
                        None,
                        f"metadata is nested deeper than {MAX_CARD_DEPTH} levels",
                        self.peek_event().start_mark,
                    )
                return super().compose_node(parent, index)
            finally:
                self._depth -= 1

    return NoAliasLoader


def _parse_card_metadata(content: str) -> tuple[dict | None, str | None]:
    """Parse a model card's YAML metadata. Returns `(metadata, error)`; both None when the card has none."""
    block = _split_front_matter(content)
    if block is None:
        return None, None
    loader = _yaml_loader()
    if loader is None:
        return None, None
    import yaml

    if len(block.encode()) > MAX_CARD_METADATA:
        return None, f"Model card metadata is larger than {MAX_CARD_METADATA} bytes."
    try:
        data = yaml.load(block, Loader=loader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as exc:
        return None, f"Invalid YAML in the model card metadata: {exc}"
    except (RecursionError, ValueError, OverflowError) as exc:
        return None, f"Invalid YAML in the model card metadata: {type(exc).__name__}: {exc}"
    if data is None:
        return None, None
    if not isinstance(data, dict):
        return None, f"Model card metadata must be a YAML mapping, got {type(data).__name__}."
    return data, None


def _card_tags(card: dict) -> dict:
    """`tags` (and `library_name`, `pipeline_tag`) of repo info, from the card's metadata, as the Hub lists them."""
    tags = card.get("tags")
    result: dict[str, Any] = {"tags": [str(tag) for tag in tags][:100] if isinstance(tags, list) else []}
    for key in ("library_name", "pipeline_tag"):
        if isinstance(card.get(key), str):
            result[key] = card[key]
            result["tags"].append(card[key])
    return result


def check_name(value: str, what: str) -> str:
    """Validate a user, organization or repository name (ASCII letters, digits, `-`, `_`, `.`; no `--` or `..`).

    Args:
        value (`str`):
            The name to check.
        what (`str`):
            What the name is, for the error message (e.g. `"namespace"`).

    Returns:
        `str`: the name, unchanged.

    Raises:
        `HubHTTPError`: 400 naming the bad value and the expected format.
    """
    if (
        not isinstance(value, str)
        or not _NAME_RE.match(value)
        or "--" in value
        or ".." in value
        or value.lower().endswith(".git")
    ):
        raise HubHTTPError(
            400,
            f"Invalid {what} {value!r}: expected 1-96 ASCII letters, digits, '-', '_' or '.', starting with a letter "
            "or digit, without '--' or '..' and not ending with '.git'.",
        )
    return value


def check_repo_path(path: Any, *, allow_empty: bool = False) -> str:
    """Validate a file path inside a repository and return it normalised ('/'-separated, no trailing slash).

    Args:
        path (`str`):
            Relative path such as `"weights/model.safetensors"`.
        allow_empty (`bool`, *optional*, defaults to `False`):
            Accept `""` (the repository root), e.g. for tree listings.

    Returns:
        `str`: the normalised path.

    Raises:
        `HubHTTPError`: 400 for absolute paths, `.`/`..` components, backslashes, control characters or `.git/`.
    """
    if not isinstance(path, str):
        raise HubHTTPError(400, f"Invalid path {path!r}: expected a string.")
    stripped = path.strip("/") if allow_empty else path.rstrip("/")
    if stripped == "" and allow_empty:
        return ""
    problem = None
    if stripped == "":
        problem = "it is empty"
    elif path.startswith("/") and not allow_empty:
        problem = "absolute paths are not allowed"
    elif "\\" in path:
        problem = "backslashes are not allowed"
    elif any(ord(char) < 32 or ord(char) == 127 for char in path):
        problem = "control characters are not allowed"
    elif len(path.encode()) > 4096:
        problem = "it is longer than 4096 bytes"
    else:
        parts = stripped.split("/")
        if any(part in ("", ".", "..") for part in parts):
            problem = "'.', '..' and empty components are not allowed (path traversal)"
        elif any(part.lower() == ".git" for part in parts):
            problem = "'.git' folders are reserved (in any letter case)"
        elif _DRIVE_RE.match(parts[0]):
            problem = "drive letters are not allowed (paths are relative, '/'-separated)"
    if problem:
        raise HubHTTPError(400, f"Invalid path in repository {path!r}: {problem}.")
    return stripped


def check_ref_name(name: str, what: str = "branch") -> str:
    """Validate a branch or tag name (git-like rules; `refs/...` names are reserved).

    Raises:
        `HubHTTPError`: 400 naming the bad value.
    """
    if (
        not isinstance(name, str)
        or not _REF_RE.match(name)
        or len(name) > 200
        or ".." in name
        or name.endswith((".lock", "."))
        or name.startswith(("refs/", "-"))
        or _HEX40_RE.match(name)
    ):
        raise HubHTTPError(
            400,
            f"Invalid {what} name {name!r}: expected letters, digits, '.', '_', '-' and '/' separators, not starting "
            "with 'refs/', not a 40-hex commit id and without '..'.",
        )
    return name


def _fsync_dir(directory: Path) -> None:
    """Make a rename inside `directory` durable (POSIX); a no-op where directories cannot be opened."""
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _atomic_write(path: Path, data: bytes, tmp_dir: Path, *, fsync: bool) -> None:
    """Write `data` to `path` so that readers see either the old or the new content, never a partial file.

    `tmp_dir` must be on the same filesystem as `path` (os.replace is atomic only there).
    """
    fd, tmp_name = tempfile.mkstemp(dir=tmp_dir, prefix="write-")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            if fsync:
                handle.flush()
                os.fsync(handle.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp_name)
        raise
    if fsync:
        _fsync_dir(path.parent)


def _token_key(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "surrogateescape")).hexdigest()


def _json_bytes(obj: Any) -> bytes:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode()


def parse_token_spec(spec: str) -> tuple[str, str, str]:
    """Parse a `TOKEN=USER[:ROLE]` string (ROLE is `write`, the default, or `read`).

    Args:
        spec (`str`):
            e.g. `"hf_abc=alice"` or `"hf_ro=alice:read"`.

    Returns:
        `tuple[str, str, str]`: `(token, user, role)`.

    Raises:
        `ValueError`: naming the bad spec and the expected format.
    """
    token, sep, rest = spec.partition("=")
    user, _, role = rest.partition(":")
    role = role or "write"
    if not sep or not token.strip() or not user or any(char.isspace() for char in token):
        raise ValueError(f"Invalid token spec {spec!r}: expected TOKEN=USER or TOKEN=USER:read (no spaces).")
    if role not in ("read", "write"):
        raise ValueError(f"Invalid token role {role!r} in {spec!r}: expected 'read' or 'write'.")
    try:
        check_name(user, "user name")
    except HubHTTPError as exc:
        raise ValueError(exc.message) from None
    if user in RESERVED_NAMESPACES:
        raise ValueError(f"User name {user!r} is reserved (it is a URL prefix of the Hub API).")
    return token, user, role


# --------------------------------------------------------------------------------------------------------------------
# Storage
# --------------------------------------------------------------------------------------------------------------------


class _BlobWriter:
    """Streams an upload into a temporary file, hashing it, and moves it into the blob store only if it matches."""

    def __init__(self, storage: HubStorage) -> None:
        self._storage = storage
        fd, self._tmp_name = tempfile.mkstemp(dir=storage.tmp_dir, prefix="upload-")
        self._handle = os.fdopen(fd, "wb")
        self._sha = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes) -> None:
        self._handle.write(data)
        self._sha.update(data)
        self.size += len(data)

    def finalize(self, expected_sha256: str, expected_size: int) -> None:
        """Move the temporary file to `blobs/` if its sha256 and size are the announced ones (else ValueError)."""
        if self._storage.fsync:
            self._handle.flush()
            os.fsync(self._handle.fileno())
        self._handle.close()
        actual = self._sha.hexdigest()
        if actual != expected_sha256 or self.size != expected_size:
            raise ValueError(
                f"uploaded content has sha256 {actual} and {self.size} bytes, but the upload link was issued for "
                f"sha256 {expected_sha256} and {expected_size} bytes"
            )
        target = self._storage.blob_path(expected_sha256)
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(self._tmp_name, target)
        self._tmp_name = ""
        if self._storage.fsync:
            _fsync_dir(target.parent)

    def discard(self) -> None:
        with contextlib.suppress(OSError):
            self._handle.close()
        if self._tmp_name:
            with contextlib.suppress(OSError):
                os.unlink(self._tmp_name)
            self._tmp_name = ""


class HubStorage:
    """Content-addressed, crash-safe storage of repositories under one data directory.

    Layout:

    ```
    DATA_DIR/
      blobs/sha256/ab/abcdef...           file contents, named by their sha256 (shared by all repositories)
      repos/{models,datasets,spaces}/NAMESPACE/NAME/
        repo.json                         id, type, private flag, creation date
        refs.json                         {"branches": {"main": sha}, "tags": {...}, "prs": {...}}
        commits/SHA.json                  immutable commit: parents, message, author, date and the full file tree
        lfs/SHA256                        empty markers: LFS objects uploaded to this repository
      tmp/                                in-flight writes; emptied at start
      secret                              key that signs LFS upload links (so links survive a restart)
      server.lock                         held (flock) by the server using this directory; holds its pid
    ```

    Args:
        data_dir (`str` or `os.PathLike`):
            Directory holding the data; created if missing.
        fsync (`bool`, *optional*, defaults to `True`):
            Flush every write to disk before renaming it into place (durability across power loss).
    """

    def __init__(self, data_dir: str | os.PathLike, *, fsync: bool = True) -> None:
        self.root = Path(data_dir).resolve()
        self.fsync = fsync
        self.blobs_dir = self.root / "blobs" / "sha256"
        self.repos_dir = self.root / "repos"
        self.tmp_dir = self.root / "tmp"
        for directory in (self.blobs_dir, self.repos_dir, self.tmp_dir):
            directory.mkdir(parents=True, exist_ok=True)
        self._locks: dict[tuple[str, str], threading.RLock] = {}
        self._locks_guard = threading.Lock()
        self._create_lock = threading.Lock()
        self._commit_cache: collections.OrderedDict[tuple[str, str, str], dict] = collections.OrderedDict()
        self._cache_guard = threading.Lock()

    # -- generic -------------------------------------------------------------------------------------------------

    def cleanup_tmp(self) -> int:
        """Remove leftovers of writes interrupted by a crash. Only call while no server uses this directory."""
        removed = 0
        for entry in self.tmp_dir.iterdir():
            with contextlib.suppress(OSError):
                if entry.is_dir() and not entry.is_symlink():
                    shutil.rmtree(entry)
                else:
                    entry.unlink()
                removed += 1
        return removed

    def write_bytes(self, path: Path, data: bytes) -> None:
        _atomic_write(path, data, self.tmp_dir, fsync=self.fsync)

    def read_secret(self) -> bytes:
        """The key signing LFS upload links, created on first use and kept across restarts.

        Called under the data-directory lock (one server per directory), so no other writer races this one.
        """
        path = self.root / "secret"
        if not path.exists():
            self.write_bytes(path, secrets.token_hex(32).encode())  # mkstemp files are owner-only (0600)
        return path.read_bytes().strip()

    # -- blobs ---------------------------------------------------------------------------------------------------

    def blob_path(self, sha256: str) -> Path:
        if not _HEX64_RE.match(sha256):
            raise ValueError(f"not a sha256: {sha256!r}")
        return self.blobs_dir / sha256[:2] / sha256

    def has_blob(self, sha256: str, size: int | None = None) -> bool:
        try:
            actual = self.blob_path(sha256).stat().st_size
        except (OSError, ValueError):
            return False
        return size is None or actual == size

    def put_blob(self, data: bytes) -> str:
        """Store `data` (if not already stored) and return its sha256."""
        sha256 = hashlib.sha256(data).hexdigest()
        if not self.has_blob(sha256, len(data)):
            path = self.blob_path(sha256)
            path.parent.mkdir(parents=True, exist_ok=True)
            self.write_bytes(path, data)
        return sha256

    def blob_writer(self) -> _BlobWriter:
        return _BlobWriter(self)

    def read_blob(self, sha256: str, limit: int | None = None) -> bytes:
        with open(self.blob_path(sha256), "rb") as handle:
            return handle.read(-1 if limit is None else limit)

    # -- repositories --------------------------------------------------------------------------------------------

    def repo_dir(self, repo_type: str, repo_id: str) -> Path:
        namespace, name = repo_id.split("/")
        return self.repos_dir / REPO_TYPES[repo_type][0] / namespace / name

    def lock(self, repo_type: str, repo_id: str) -> threading.RLock:
        """The lock serialising writes (commits, refs, settings) to one repository."""
        with self._locks_guard:
            return self._locks.setdefault((repo_type, repo_id), threading.RLock())

    def get_repo(self, repo_type: str, repo_id: str) -> dict | None:
        try:
            return json.loads((self.repo_dir(repo_type, repo_id) / "repo.json").read_bytes())
        except (FileNotFoundError, NotADirectoryError):
            return None

    def list_repos(self, repo_type: str) -> list[dict]:
        base = self.repos_dir / REPO_TYPES[repo_type][0]
        repos = []
        for meta_path in sorted(base.glob("*/*/repo.json")):
            with contextlib.suppress(OSError, ValueError):
                repos.append(json.loads(meta_path.read_bytes()))
        return repos

    def create_repo(self, repo_type: str, repo_id: str, *, private: bool, author: str) -> dict | None:
        """Create a repository with an initial commit holding `.gitattributes`. Returns None if it already exists.

        The repository is assembled in `tmp/` and renamed into place, so it appears complete or not at all.
        """
        final = self.repo_dir(repo_type, repo_id)
        with self._create_lock:
            if final.exists():
                return None
            staging = Path(tempfile.mkdtemp(dir=self.tmp_dir, prefix="repo-"))
            try:
                created = _now_iso()
                meta = {
                    "id": repo_id,
                    "type": repo_type,
                    "private": private,
                    "createdAt": created,
                    "author": author,
                    "_id": _object_id(f"{repo_type}/{repo_id}/{created}"),
                }
                gitattributes = default_gitattributes(repo_type).encode()
                tree = {".gitattributes": self.regular_entry(gitattributes)}
                commit = self._build_commit(
                    parents=[], tree=tree, title="initial commit", message="", author=author, date=created
                )
                (staging / "commits").mkdir()
                self.write_bytes(staging / "commits" / f"{commit['id']}.json", _json_bytes(commit))
                self.write_bytes(staging / "refs.json", _json_bytes({"branches": {"main": commit["id"]}, "tags": {}}))
                self.write_bytes(staging / "repo.json", _json_bytes(meta))
                final.parent.mkdir(parents=True, exist_ok=True)
                os.rename(staging, final)
                if self.fsync:
                    _fsync_dir(final.parent)
            except BaseException:
                shutil.rmtree(staging, ignore_errors=True)
                raise
        return meta

    def update_repo(self, repo_type: str, repo_id: str, **changes: Any) -> dict:
        with self.lock(repo_type, repo_id):
            meta = self.get_repo(repo_type, repo_id)
            if meta is None:
                raise FileNotFoundError(repo_id)
            meta.update(changes)
            self.write_bytes(self.repo_dir(repo_type, repo_id) / "repo.json", _json_bytes(meta))
            return meta

    def delete_repo(self, repo_type: str, repo_id: str) -> bool:
        """Delete a repository (renamed away first, so it disappears at once). Blobs stay: they may be shared."""
        with self.lock(repo_type, repo_id), self._create_lock:
            source = self.repo_dir(repo_type, repo_id)
            if not source.exists():
                return False
            trash = Path(tempfile.mkdtemp(dir=self.tmp_dir, prefix="deleted-"))
            os.rename(source, trash / "repo")
            shutil.rmtree(trash, ignore_errors=True)
        with self._cache_guard:
            for key in [key for key in self._commit_cache if key[:2] == (repo_type, repo_id)]:
                del self._commit_cache[key]
        return True

    # -- LFS objects per repository -------------------------------------------------------------------------------

    def link_lfs(self, repo_type: str, repo_id: str, sha256: str) -> None:
        """Record that `sha256` was uploaded to this repository (its content was proven, see `has_lfs_link`)."""
        links = self.repo_dir(repo_type, repo_id) / "lfs"
        links.mkdir(exist_ok=True)
        (links / sha256).touch()

    def has_lfs_link(self, repo_type: str, repo_id: str, sha256: str) -> bool:
        """Whether a commit of this repository may point to LFS object `sha256`.

        Blobs are shared by all repositories, but a repository may only reference objects uploaded to it: knowing a
        sha256 must not be enough to copy a file out of someone else's private repository.
        """
        return _HEX64_RE.match(sha256) is not None and (self.repo_dir(repo_type, repo_id) / "lfs" / sha256).exists()

    # -- refs and commits ----------------------------------------------------------------------------------------

    def read_refs(self, repo_type: str, repo_id: str) -> dict:
        refs = json.loads((self.repo_dir(repo_type, repo_id) / "refs.json").read_bytes())
        refs.setdefault("branches", {})
        refs.setdefault("tags", {})
        refs.setdefault("prs", {})
        return refs

    def write_refs(self, repo_type: str, repo_id: str, refs: dict) -> None:
        self.write_bytes(self.repo_dir(repo_type, repo_id) / "refs.json", _json_bytes(refs))

    def read_discussions(self, repo_type: str, repo_id: str) -> dict:
        """Discussions and pull requests by number (as a string): title, status, author, events, PR base."""
        try:
            return json.loads((self.repo_dir(repo_type, repo_id) / "discussions.json").read_bytes())
        except FileNotFoundError:
            return {}

    def write_discussions(self, repo_type: str, repo_id: str, discussions: dict) -> None:
        self.write_bytes(self.repo_dir(repo_type, repo_id) / "discussions.json", _json_bytes(discussions))

    def read_commit(self, repo_type: str, repo_id: str, sha: str) -> dict | None:
        if not _HEX40_RE.match(sha):
            return None
        key = (repo_type, repo_id, sha)
        with self._cache_guard:
            if key in self._commit_cache:
                self._commit_cache.move_to_end(key)
                return self._commit_cache[key]
        try:
            commit = json.loads((self.repo_dir(repo_type, repo_id) / "commits" / f"{sha}.json").read_bytes())
        except (FileNotFoundError, NotADirectoryError):
            return None
        with self._cache_guard:
            self._commit_cache[key] = commit
            while len(self._commit_cache) > 512:
                self._commit_cache.popitem(last=False)
        return commit

    def write_commit(
        self, repo_type: str, repo_id: str, *, parents: list[str], tree: dict, title: str, message: str, author: str
    ) -> dict:
        """Write an immutable commit file (not yet referenced by any branch) and return it."""
        commit = self._build_commit(
            parents=parents, tree=tree, title=title, message=message, author=author, date=_now_iso()
        )
        path = self.repo_dir(repo_type, repo_id) / "commits" / f"{commit['id']}.json"
        self.write_bytes(path, _json_bytes(commit))
        return commit

    @staticmethod
    def _build_commit(*, parents: list[str], tree: dict, title: str, message: str, author: str, date: str) -> dict:
        body = {"parents": parents, "tree": tree, "title": title, "message": message, "author": author, "date": date}
        sha = hashlib.sha1(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()
        return {"id": sha, **body}

    @staticmethod
    def _regular_entry(data: bytes) -> dict:
        return {
            "sha256": hashlib.sha256(data).hexdigest(),
            "size": len(data),
            "lfs": False,
            "oid": _git_blob_oid(data),
        }

    def regular_entry(self, data: bytes) -> dict:
        """Store `data` as a regular (git) file and return its tree entry."""
        self.put_blob(data)
        return self._regular_entry(data)

    @staticmethod
    def lfs_entry(sha256: str, size: int) -> dict:
        return {"sha256": sha256, "size": size, "lfs": True, "oid": _git_blob_oid(_lfs_pointer(sha256, size))}

    def resolve(self, repo_type: str, repo_id: str, revision: str) -> tuple[str, str, str] | None:
        """Resolve a branch, tag, `refs/...` name, PR ref or commit id to `(commit_sha, kind, ref_name)`.

        `kind` is `"branch"`, `"tag"`, `"pr"` or `"commit"`. Returns None when nothing matches.
        """
        refs = self.read_refs(repo_type, repo_id)
        name = revision
        if name in refs["branches"]:
            return refs["branches"][name], "branch", name
        if name.startswith("refs/heads/") and name[11:] in refs["branches"]:
            return refs["branches"][name[11:]], "branch", name[11:]
        if name in refs["tags"]:
            return refs["tags"][name], "tag", name
        if name.startswith("refs/tags/") and name[10:] in refs["tags"]:
            return refs["tags"][name[10:]], "tag", name[10:]
        match = _PR_REF_RE.match(name)
        if match and match.group(1) in refs["prs"]:
            return refs["prs"][match.group(1)]["head"], "pr", name
        if _HEX40_RE.match(name) and self.read_commit(repo_type, repo_id, name) is not None:
            return name, "commit", name
        return None


# --------------------------------------------------------------------------------------------------------------------
# HTTP plumbing
# --------------------------------------------------------------------------------------------------------------------


class _RequestBody:
    """Reads a request body framed by Content-Length or chunked transfer encoding, and drains what is left."""

    def __init__(self, rfile: IO[bytes], headers: Mapping[str, str]) -> None:
        self._rfile = rfile
        self._chunked = "chunked" in headers.get("Transfer-Encoding", "").lower()
        self._chunk_left = 0
        self._remaining = 0
        self.declared_length: int | None = None
        if not self._chunked:
            raw = headers.get("Content-Length")
            if raw is not None:
                value = raw.strip()
                # ASCII digits only ("²".isdigit() is true) and few enough for int() and for any real body.
                if not (value.isascii() and value.isdigit()) or len(value) > 18:
                    raise _BadFraming(f"invalid Content-Length {raw[:40]!r}: expected a number of bytes")
                self._remaining = self.declared_length = int(value)
        self.eof = not self._chunked and self._remaining == 0
        self.bytes_read = 0

    def _raw_read(self, size: int) -> bytes:
        try:
            data = self._rfile.read(size)
        except (OSError, ValueError) as exc:  # timeouts, resets, closed file
            raise _ClientGone(str(exc)) from exc
        if not data:
            raise _ClientGone("connection closed in the middle of the request body")
        return data

    def _raw_readline(self) -> bytes:
        try:
            line = self._rfile.readline(4098)
        except (OSError, ValueError) as exc:
            raise _ClientGone(str(exc)) from exc
        if not line:
            raise _ClientGone("connection closed in the middle of a chunked body")
        if len(line) > 4096:
            raise _BadFraming("chunk header line too long")
        return line

    def read(self, size: int = IO_CHUNK) -> bytes:
        """Return up to `size` bytes of the body; `b""` once it is complete."""
        if self.eof:
            return b""
        if not self._chunked:
            data = self._raw_read(min(size, self._remaining))
            self._remaining -= len(data)
            self.eof = self._remaining == 0
        else:
            if self._chunk_left == 0:
                size_field = self._raw_readline().split(b";", 1)[0].strip()
                try:
                    self._chunk_left = int(size_field, 16)
                except ValueError:
                    raise _BadFraming(f"invalid chunk size {size_field[:20]!r}") from None
                if self._chunk_left < 0:
                    raise _BadFraming("negative chunk size")
                if self._chunk_left == 0:
                    while self._raw_readline() not in (b"\r\n", b"\n"):  # skip trailers
                        pass
                    self.eof = True
                    return b""
            data = self._raw_read(min(size, self._chunk_left))
            self._chunk_left -= len(data)
            if self._chunk_left == 0 and self._raw_readline() not in (b"\r\n", b"\n"):
                raise _BadFraming("missing CRLF after a chunk")
        self.bytes_read += len(data)
        return data

    def read_all(self, limit: int = MAX_JSON_BODY) -> bytes:
        if self.declared_length is not None and self.declared_length > limit:
            raise HubHTTPError(413, f"Request body of {self.declared_length} bytes is larger than {limit} bytes.")
        parts, total = [], 0
        while chunk := self.read():
            total += len(chunk)
            if total > limit:
                raise HubHTTPError(413, f"Request body is larger than {limit} bytes.")
            parts.append(chunk)
        return b"".join(parts)

    def iter_lines(self, max_line: int) -> Iterator[bytes]:
        """Yield the body's lines (NDJSON), streaming: memory stays bounded by the longest line."""
        buffer = bytearray()
        while chunk := self.read():
            buffer += chunk
            start = 0
            while (newline := buffer.find(b"\n", start)) >= 0:
                yield bytes(buffer[start:newline])
                start = newline + 1
            del buffer[:start]
            if len(buffer) > max_line:
                raise HubHTTPError(413, f"A line of the request body is longer than {max_line} bytes.")
        if buffer:
            yield bytes(buffer)

    def drain(self, limit: int = MAX_DRAIN) -> bool:
        """Read and drop the rest of the body, up to `limit` bytes; False when more is left (close, do not wait)."""
        if self.declared_length is not None and self.declared_length - self.bytes_read > limit:
            return False
        drained = 0
        while chunk := self.read():
            drained += len(chunk)
            if drained > limit:
                return False
        return True


def _parse_json(raw: bytes, what: str) -> Any:
    """Parse JSON from a client; anything malformed (bad UTF-8, syntax, nesting too deep) is a 400."""
    if not raw.strip():
        return {}
    try:
        return json.loads(raw)
    except (UnicodeDecodeError, ValueError) as exc:
        raise HubHTTPError(400, f"{what} is not valid JSON: {exc}") from None
    except RecursionError:
        raise HubHTTPError(400, f"{what} is nested too deeply.") from None


@dataclass
class Principal:
    """The authenticated caller: a user name, the token's role and the organizations the user belongs to."""

    name: str
    role: str = "write"
    orgs: tuple[str, ...] = ()


@dataclass
class Request:
    method: str
    target: str
    segments: list[str]
    query: dict[str, list[str]]
    headers: Mapping[str, str]
    body: _RequestBody
    base_url: str
    principal: Principal | None = None
    auth_invalid: bool = False
    request_id: str = ""

    def param(self, name: str, default: str | None = None) -> str | None:
        values = self.query.get(name)
        return values[-1] if values else default

    def flag(self, name: str) -> bool:
        return (self.param(name) or "").lower() in ("1", "true", "yes")

    def json(self) -> Any:
        return _parse_json(self.body.read_all(), "Request body")

    def json_object(self) -> dict:
        data = self.json()
        if not isinstance(data, dict):
            raise HubHTTPError(400, f"Request body must be a JSON object, got {type(data).__name__}.")
        return data


@dataclass
class Response:
    status: int = 200
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes = b""
    file: tuple[Path, int, int] | None = None  # (path, offset, length), streamed instead of `body`
    close: bool = False

    @property
    def content_length(self) -> int:
        return self.file[2] if self.file is not None else len(self.body)


def _json_response(
    obj: Any,
    status: int = 200,
    headers: Sequence[tuple[str, str]] = (),
    content_type: str = "application/json; charset=utf-8",
) -> Response:
    # default=str: model-card metadata may hold YAML dates, which JSON has no type for.
    return Response(status, [("Content-Type", content_type), *headers], json.dumps(obj, default=str).encode())


def _error_response(error: HubHTTPError) -> Response:
    headers = [("X-Error-Message", _header_safe(error.message))]
    if error.code:
        headers.append(("X-Error-Code", error.code))
    headers.extend(error.headers.items())
    return _json_response(error.body, error.status, headers)


# --------------------------------------------------------------------------------------------------------------------
# The Hub API
# --------------------------------------------------------------------------------------------------------------------


class HubApp:
    """The Hub API on top of a [`HubStorage`]: turns a parsed [`Request`] into a [`Response`].

    Args:
        storage (`HubStorage`):
            Where repositories and blobs live.
        tokens (`Mapping[str, str]`):
            Token -> `"user"` or `"user:read"` (read-only token).
        orgs (`Mapping[str, Sequence[str]]`, *optional*):
            Organization name -> member user names. Members can write to the organization's namespace.
        lfs_threshold (`int`, *optional*, defaults to 10 MiB):
            Files larger than this are uploaded with LFS; regular files above it are refused, as on the Hub.
        upload_link_ttl (`float`, *optional*, defaults to 3600):
            Validity in seconds of the LFS upload links handed out by the batch API.
    """

    def __init__(
        self,
        storage: HubStorage,
        tokens: Mapping[str, str],
        *,
        orgs: Mapping[str, Sequence[str]] | None = None,
        lfs_threshold: int = DEFAULT_LFS_THRESHOLD,
        upload_link_ttl: float = DEFAULT_UPLOAD_LINK_TTL,
    ) -> None:
        self.storage = storage
        self.lfs_threshold = lfs_threshold
        self.upload_link_ttl = upload_link_ttl
        self.orgs = {check_name(org, "organization name"): frozenset(members) for org, members in (orgs or {}).items()}
        self.tokens: dict[str, Principal] = {}
        for token, value in tokens.items():
            _, user, role = parse_token_spec(f"{token}={value}")
            if user in self.orgs:
                raise ValueError(f"{user!r} is both a user (it has a token) and an organization.")
            member_of = tuple(sorted(org for org, members in self.orgs.items() if user in members))
            # Keyed by hash: looking a token up then takes no time that depends on how much of it matches.
            self.tokens[_token_key(token)] = Principal(user, role, member_of)
        if reserved := sorted(RESERVED_NAMESPACES & set(self.orgs)):
            raise ValueError(f"Organization names {reserved} are reserved (URL prefixes of the Hub API).")
        self._secret = storage.read_secret()
        self._gitattributes_cache: dict[str, _PatternSet] = {}
        self._card_cache: dict[str, dict | None] = {}

    # -- entry point ---------------------------------------------------------------------------------------------

    def authenticate(self, request: Request) -> None:
        header = request.headers.get("Authorization", "")
        if not header:
            return
        scheme, _, token = header.partition(" ")
        principal = self.tokens.get(_token_key(token.strip())) if scheme.lower() == "bearer" else None
        if principal is None:
            request.auth_invalid = True
        request.principal = principal

    def handle(self, request: Request) -> Response:
        self.authenticate(request)
        segments = request.segments
        if segments[:1] == ["_hftransfer"]:
            return self._route_internal(request, segments[1:])
        if not segments or segments == ["health"]:
            return _json_response({"status": "ok", "server": "hftransfer hub server"})
        if request.auth_invalid:
            # Same answer as the Hub, which the client reports as a bad token rather than a missing repo.
            raise HubHTTPError(401, "Invalid credentials in Authorization header")
        if segments[0] == "api":
            return self._route_api(request, segments[1:])
        return self._route_web(request, segments)

    # -- routing -------------------------------------------------------------------------------------------------

    @staticmethod
    def _method(request: Request, *allowed: str) -> None:
        method = "GET" if request.method == "HEAD" else request.method
        if method not in allowed:
            raise HubHTTPError(405, f"Method {request.method} is not allowed here; use {' or '.join(allowed)}.")

    def _route_internal(self, request: Request, rest: list[str]) -> Response:
        if ["_hftransfer", *rest] == XET_HINT_PATH.strip("/").split("/"):
            raise HubHTTPError(501, XET_HINT, "XetNotSupported")
        if len(rest) == 2 and rest[0] == "lfs-upload":
            self._method(request, "PUT")
            return self.lfs_upload(request, rest[1])
        raise HubHTTPError(404, f"Unknown endpoint {request.method} {urllib.parse.urlsplit(request.target).path}")

    def _route_api(self, request: Request, rest: list[str]) -> Response:
        route = rest[:2]
        if rest == ["whoami-v2"]:
            self._method(request, "GET")
            return self.whoami(request)
        if route == ["repos", "create"] and len(rest) == 2:
            self._method(request, "POST")
            return self.create_repo(request)
        if route == ["repos", "delete"] and len(rest) == 2:
            self._method(request, "DELETE")
            return self.delete_repo(request)
        if rest == ["agent-harnesses"]:  # fetched (best-effort) by huggingface_hub for its user-agent
            self._method(request, "GET")
            return _json_response({"standardEnvVars": [], "harnesses": {}})
        if rest == ["validate-yaml"]:
            self._method(request, "POST")
            return self.validate_yaml(request)
        if rest[:1] == ["resolve-cache"] and len(rest) >= 6 and rest[1] in _PLURAL_TO_TYPE:
            self._method(request, "GET")
            return self.resolve(request, _PLURAL_TO_TYPE[rest[1]], f"{rest[2]}/{rest[3]}", rest[4], rest[5:])
        if rest and rest[0] in _PLURAL_TO_TYPE:
            repo_type = _PLURAL_TO_TYPE[rest[0]]
            if len(rest) == 1:
                self._method(request, "GET")
                return self.list_repos(request, repo_type)
            if len(rest) == 2:  # canonical ids without namespace ("gpt2") are not hosted here
                raise self._repo_not_found(repo_type, rest[1])
            repo_id, action, args = f"{rest[1]}/{rest[2]}", (rest[3] if len(rest) > 3 else None), rest[4:]
            return self._route_repo_api(request, repo_type, repo_id, action, args)
        raise HubHTTPError(404, f"Unknown endpoint {request.method} /api/{'/'.join(rest)}")

    def _route_repo_api(
        self, request: Request, repo_type: str, repo_id: str, action: str | None, args: list[str]
    ) -> Response:
        if action is None:
            self._method(request, "GET")
            return self.repo_info(request, repo_type, repo_id, "main")
        single = args[0] if len(args) == 1 else None
        if action == "revision" and single is not None:
            self._method(request, "GET")
            return self.repo_info(request, repo_type, repo_id, single)
        if action == "tree" and args:
            self._method(request, "GET")
            return self.tree(request, repo_type, repo_id, args[0], "/".join(args[1:]))
        if action == "paths-info" and single is not None:
            self._method(request, "POST")
            return self.paths_info(request, repo_type, repo_id, single)
        if action == "refs" and not args:
            self._method(request, "GET")
            return self.list_refs(request, repo_type, repo_id)
        if action == "commits" and single is not None:
            self._method(request, "GET")
            return self.list_commits(request, repo_type, repo_id, single)
        if action == "preupload" and single is not None:
            self._method(request, "POST")
            return self.preupload(request, repo_type, repo_id, single)
        if action == "commit" and single is not None:
            self._method(request, "POST")
            return self.commit(request, repo_type, repo_id, single)
        if action == "branch" and single is not None:
            self._method(request, "POST", "DELETE")
            if request.method == "DELETE":
                return self.delete_branch(request, repo_type, repo_id, single)
            return self.create_branch(request, repo_type, repo_id, single)
        if action == "tag" and single is not None:
            self._method(request, "POST", "DELETE")
            if request.method == "DELETE":
                return self.delete_tag(request, repo_type, repo_id, single)
            return self.create_tag(request, repo_type, repo_id, single)
        if action == "discussions":
            return self.discussions(request, repo_type, repo_id, args)
        if action == "settings" and not args:
            self._method(request, "PUT")
            return self.update_settings(request, repo_type, repo_id)
        if action in ("xet-write-token", "xet-read-token"):
            # hf_xet (Rust) reports only the status and the URL of a failed token request, never the body: redirect
            # to a URL that says what to set, so the hint is in the message the user sees.
            return Response(307, [("Location", f"{request.base_url}{XET_HINT_PATH}")])
        raise HubHTTPError(404, f"Unknown endpoint {request.method} {urllib.parse.urlsplit(request.target).path}")

    def _route_web(self, request: Request, segments: list[str]) -> Response:
        repo_type, rest = "model", segments
        if segments[0] in ("datasets", "spaces") and len(segments) >= 3:
            repo_type, rest = _PLURAL_TO_TYPE[segments[0]], segments[1:]
        if len(rest) >= 2 and rest[1].endswith(".git"):
            repo_id = f"{rest[0]}/{rest[1][: -len('.git')]}"
            if rest[2:] == ["info", "lfs", "objects", "batch"]:
                self._method(request, "POST")
                return self.lfs_batch(request, repo_type, repo_id)
            if rest[2:] == ["info", "lfs", "objects", "verify"]:
                self._method(request, "POST")
                return self.lfs_verify(request, repo_type, repo_id)
        if len(rest) >= 5 and rest[2] == "resolve":
            self._method(request, "GET")
            return self.resolve(request, repo_type, f"{rest[0]}/{rest[1]}", rest[3], rest[4:])
        if len(rest) >= 4 and rest[1] == "resolve":
            raise self._repo_not_found(repo_type, rest[0])
        raise HubHTTPError(404, f"Unknown endpoint {request.method} {urllib.parse.urlsplit(request.target).path}")

    # -- access control ------------------------------------------------------------------------------------------

    @staticmethod
    def _repo_not_found(repo_type: str, repo_id: str) -> HubHTTPError:
        hint = "" if "/" in repo_id else " Repository ids on this server are 'namespace/name'."
        return HubHTTPError(
            404,
            f"Repository Not Found: {repo_type} '{repo_id}' does not exist or you do not have access to it.{hint}",
            "RepoNotFound",
        )

    def _can_write_namespace(self, principal: Principal | None, namespace: str) -> bool:
        return (
            principal is not None
            and principal.role == "write"
            and (namespace == principal.name or principal.name in self.orgs.get(namespace, ()))
        )

    def _can_read(self, principal: Principal | None, meta: dict) -> bool:
        if not meta.get("private"):
            return True
        namespace = meta["id"].split("/")[0]
        return principal is not None and (
            namespace == principal.name or principal.name in self.orgs.get(namespace, ())
        )

    def _require_auth(self, request: Request, action: str) -> Principal:
        if request.principal is None:
            raise HubHTTPError(
                401, f"Authentication required to {action}: send 'Authorization: Bearer <token>' (pass token=...)."
            )
        return request.principal

    def _check_write_namespace(self, request: Request, namespace: str, action: str) -> Principal:
        principal = self._require_auth(request, action)
        if principal.role != "write":
            raise HubHTTPError(
                403, f"The token of user '{principal.name}' is read-only: a write token is needed to {action}."
            )
        if not self._can_write_namespace(principal, namespace):
            raise HubHTTPError(
                403,
                f"User '{principal.name}' cannot {action}: namespace '{namespace}' belongs to another user or to an "
                "organization this user is not a member of.",
            )
        return principal

    def _repo_for_read(self, request: Request, repo_type: str, repo_id: str) -> dict:
        namespace, _, name = repo_id.partition("/")
        try:
            check_name(namespace, "namespace")
            check_name(name, "repository name")
        except HubHTTPError:
            raise self._repo_not_found(repo_type, repo_id) from None
        meta = self.storage.get_repo(repo_type, repo_id)
        # Private repositories are invisible to others: same answer as a missing one, so their existence leaks not.
        if meta is None or not self._can_read(request.principal, meta):
            raise self._repo_not_found(repo_type, repo_id)
        return meta

    def _repo_for_write(self, request: Request, repo_type: str, repo_id: str, action: str) -> tuple[dict, Principal]:
        meta = self._repo_for_read(request, repo_type, repo_id)
        principal = self._check_write_namespace(request, repo_id.split("/")[0], f"{action} {repo_type} '{repo_id}'")
        return meta, principal

    def _resolve(self, repo_type: str, repo_id: str, revision: str) -> tuple[str, str, str]:
        resolved = self.storage.resolve(repo_type, repo_id, revision) if revision else None
        if resolved is None:
            raise HubHTTPError(
                404,
                f"Invalid rev id: revision '{revision}' does not exist in {repo_type} '{repo_id}' (not a branch, tag, "
                "pull-request ref or commit id).",
                "RevisionNotFound",
            )
        return resolved

    def _commit(self, repo_type: str, repo_id: str, sha: str) -> dict:
        commit = self.storage.read_commit(repo_type, repo_id, sha)
        if commit is None:  # a ref pointing to a missing commit: the data directory was damaged by hand
            raise HubHTTPError(500, f"Commit {sha} of {repo_type} '{repo_id}' is missing from the data directory.")
        return commit

    # -- URLs ----------------------------------------------------------------------------------------------------

    @staticmethod
    def _repo_url(request: Request, repo_type: str, repo_id: str) -> str:
        return f"{request.base_url}/{REPO_TYPES[repo_type][1]}{repo_id}"

    # -- account -------------------------------------------------------------------------------------------------

    def whoami(self, request: Request) -> Response:
        principal = request.principal
        if principal is None:
            raise HubHTTPError(401, "Invalid credentials in Authorization header")
        return _json_response(
            {
                "type": "user",
                "id": _object_id(f"user/{principal.name}"),
                "name": principal.name,
                "fullname": principal.name,
                "email": f"{principal.name}@localhost",
                "emailVerified": True,
                "canPay": False,
                "isPro": False,
                "periodEnd": None,
                "avatarUrl": "",
                "orgs": [
                    {
                        "type": "org",
                        "id": _object_id(f"org/{org}"),
                        "name": org,
                        "fullname": org,
                        "roleInOrg": "write" if principal.role == "write" else "read",
                        "isEnterprise": False,
                    }
                    for org in principal.orgs
                ],
                "auth": {
                    "type": "access_token",
                    "accessToken": {"displayName": f"{principal.name}-{principal.role}", "role": principal.role},
                },
            }
        )

    # -- repositories --------------------------------------------------------------------------------------------

    @staticmethod
    def _repo_type_from_body(body: dict) -> str:
        repo_type = body.get("type") or "model"
        if repo_type not in REPO_TYPES:
            raise HubHTTPError(400, f"Invalid repo type {repo_type!r}: expected one of {sorted(REPO_TYPES)}.")
        return repo_type

    def _repo_id_from_body(self, request: Request, body: dict) -> str:
        name = body.get("name")
        if not isinstance(name, str) or not name:
            raise HubHTTPError(400, "Missing 'name' in the request body.")
        if "/" in name:  # some clients send the full id as the name
            namespace, _, name = name.partition("/")
        else:
            namespace = body.get("organization") or (request.principal.name if request.principal else None)
        if not namespace:
            raise HubHTTPError(401, "Authentication required: a token is needed to know the repository's namespace.")
        check_name(namespace, "namespace")
        check_name(name, "repository name")
        if namespace in RESERVED_NAMESPACES:
            raise HubHTTPError(400, f"Namespace {namespace!r} is reserved.")
        return f"{namespace}/{name}"

    def create_repo(self, request: Request) -> Response:
        body = request.json_object()
        repo_type = self._repo_type_from_body(body)
        repo_id = self._repo_id_from_body(request, body)
        principal = self._check_write_namespace(request, repo_id.split("/")[0], f"create {repo_type} '{repo_id}'")
        visibility = body.get("visibility")
        if visibility is not None and visibility not in ("public", "private"):
            raise HubHTTPError(400, f"Invalid visibility {visibility!r}: expected 'public' or 'private'.")
        private = bool(body.get("private")) if visibility is None else visibility == "private"
        url = self._repo_url(request, repo_type, repo_id)
        meta = self.storage.create_repo(repo_type, repo_id, private=private, author=principal.name)
        if meta is None:
            # The client's `exist_ok=True` relies on this 409; the body carries the url like the Hub's.
            message = f"You already created this {repo_type} repo: {repo_id}"
            raise HubHTTPError(409, message, body={"error": message, "url": url})
        logger.info(
            "created %s %s (%s) for %s", repo_type, repo_id, "private" if private else "public", principal.name
        )
        return _json_response({"url": url, "name": repo_id, "id": meta["_id"]})

    def delete_repo(self, request: Request) -> Response:
        body = request.json_object()
        repo_type = self._repo_type_from_body(body)
        repo_id = self._repo_id_from_body(request, body)
        self._repo_for_write(request, repo_type, repo_id, "delete")
        if not self.storage.delete_repo(repo_type, repo_id):
            raise self._repo_not_found(repo_type, repo_id)
        logger.info("deleted %s %s", repo_type, repo_id)
        return _json_response({"success": True})

    def update_settings(self, request: Request, repo_type: str, repo_id: str) -> Response:
        self._repo_for_write(request, repo_type, repo_id, "change the settings of")
        body = request.json_object()
        changes: dict[str, Any] = {}
        if "private" in body:
            changes["private"] = bool(body["private"])
        if "visibility" in body:
            if body["visibility"] not in ("public", "private"):
                raise HubHTTPError(400, f"Invalid visibility {body['visibility']!r}: expected 'public' or 'private'.")
            changes["private"] = body["visibility"] == "private"
        if "gated" in body:
            if body["gated"] not in ("auto", "manual", False):
                raise HubHTTPError(400, f"Invalid gated value {body['gated']!r}: expected 'auto', 'manual' or false.")
            changes["gated"] = body["gated"]
        meta = self.storage.update_repo(repo_type, repo_id, **changes)
        return _json_response({"private": meta.get("private", False), "gated": meta.get("gated", False)})

    def _card_metadata(self, repo_type: str, repo_id: str, tree: dict) -> dict | None:
        entry = tree.get("README.md")
        if entry is None or entry["size"] > 1024 * 1024:
            return None
        if entry["sha256"] in self._card_cache:
            return self._card_cache[entry["sha256"]]
        metadata = self._read_card_metadata(repo_type, repo_id, entry)
        if len(self._card_cache) >= 256:
            self._card_cache.clear()
        self._card_cache[entry["sha256"]] = metadata
        return metadata

    def _read_card_metadata(self, repo_type: str, repo_id: str, entry: dict) -> dict | None:
        try:
            content = self.storage.read_blob(entry["sha256"]).decode("utf-8")
        except (OSError, UnicodeDecodeError):
            return None
        metadata, _ = _parse_card_metadata(content)
        if metadata is not None and len(json.dumps(metadata, default=str)) > MAX_CARD_JSON:
            logger.warning(
                "card metadata of %s %s is over %d bytes as JSON: not served", repo_type, repo_id, MAX_CARD_JSON
            )
            return None
        return metadata

    def _repo_summary(self, request: Request, meta: dict, commit: dict, *, blobs: bool, full: bool) -> dict:
        repo_type, repo_id = meta["type"], meta["id"]
        tree = commit["tree"]
        info: dict[str, Any] = {
            "_id": meta["_id"],
            "id": repo_id,
            "author": repo_id.split("/")[0],
            "sha": commit["id"],
            "lastModified": commit["date"],
            "createdAt": meta["createdAt"],
            "private": bool(meta.get("private")),
            "gated": meta.get("gated", False),
            "disabled": False,
            "downloads": 0,
            "likes": 0,
            "tags": [],
        }
        if repo_type == "model":
            info["modelId"] = repo_id
        card = self._card_metadata(repo_type, repo_id, tree)
        if card is not None:
            info.update(_card_tags(card))  # listings carry the tags too, as on the Hub
        if not full:
            return info
        if card is not None:
            info["cardData"] = card
        if repo_type == "model" and "config.json" in tree and tree["config.json"]["size"] <= 1024 * 1024:
            with contextlib.suppress(OSError, ValueError):
                config = json.loads(self.storage.read_blob(tree["config.json"]["sha256"]))
                if isinstance(config, dict):
                    info["config"] = {k: config[k] for k in ("architectures", "model_type") if k in config}
        siblings = []
        for path in sorted(tree):
            entry = tree[path]
            sibling: dict[str, Any] = {"rfilename": path}
            if blobs:
                sibling.update(size=entry["size"], blobId=entry["oid"])
                if entry["lfs"]:
                    sibling["lfs"] = self._lfs_info(entry, key="sha256")
            siblings.append(sibling)
        info["siblings"] = siblings
        info["spaces"] = []
        info["usedStorage"] = sum(entry["size"] for entry in tree.values())
        if request.flag("securityStatus"):
            info["securityRepoStatus"] = {"scansDone": True, "filesWithIssues": []}
        return info

    @staticmethod
    def _lfs_info(entry: dict, key: str = "oid") -> dict:
        pointer_size = len(_lfs_pointer(entry["sha256"], entry["size"]))
        return {key: entry["sha256"], "size": entry["size"], "pointerSize": pointer_size}

    def repo_info(self, request: Request, repo_type: str, repo_id: str, revision: str) -> Response:
        meta = self._repo_for_read(request, repo_type, repo_id)
        sha, _, _ = self._resolve(repo_type, repo_id, revision)
        commit = self._commit(repo_type, repo_id, sha)
        return _json_response(self._repo_summary(request, meta, commit, blobs=request.flag("blobs"), full=True))

    def list_repos(self, request: Request, repo_type: str) -> Response:
        author, search = request.param("author"), (request.param("search") or "").lower()
        try:
            limit = int(request.param("limit") or 0)
        except ValueError:
            raise HubHTTPError(400, f"Invalid limit {request.param('limit')!r}: expected an integer.") from None
        results = []
        for meta in self.storage.list_repos(repo_type):
            if not self._can_read(request.principal, meta):
                continue
            if author and meta["id"].split("/")[0] != author:
                continue
            if search and search not in meta["id"].lower():
                continue
            resolved = self.storage.resolve(repo_type, meta["id"], "main")
            commit = self.storage.read_commit(repo_type, meta["id"], resolved[0]) if resolved else None
            if commit is not None:
                results.append(self._repo_summary(request, meta, commit, blobs=False, full=False))
            if limit and len(results) >= limit:
                break
        return _json_response(results)

    def validate_yaml(self, request: Request) -> Response:
        body = request.json_object()
        content = body.get("content")
        if not isinstance(content, str):
            raise HubHTTPError(400, "Missing 'content' (the README.md text) in the request body.")
        metadata, error = _parse_card_metadata(content)
        if error:
            return _json_response({"errors": [{"message": error}], "warnings": []}, 400)
        warnings = [] if metadata else [{"message": "Empty or missing yaml metadata in repo card"}]
        return _json_response({"errors": [], "warnings": warnings})

    # -- listings ------------------------------------------------------------------------------------------------

    def _file_json(self, path: str, entry: dict) -> dict:
        item: dict[str, Any] = {"type": "file", "oid": entry["oid"], "size": entry["size"], "path": path}
        if entry["lfs"]:
            item["lfs"] = self._lfs_info(entry)
        return item

    @staticmethod
    def _folder_oid(tree: dict, folder: str) -> str:
        prefix = folder + "/"
        listing = "".join(
            f"{path}\0{entry['oid']}\n" for path, entry in sorted(tree.items()) if path.startswith(prefix)
        )
        return hashlib.sha1(b"tree " + listing.encode()).hexdigest()

    @staticmethod
    def _folders(tree: dict) -> set[str]:
        folders = set()
        for path in tree:
            parts = path.split("/")
            folders.update("/".join(parts[:depth]) for depth in range(1, len(parts)))
        return folders

    def _last_commit(self, repo_type: str, repo_id: str, commit: dict, path: str, is_folder: bool) -> dict:
        """The most recent commit (first-parent history) that changed `path`."""

        def fingerprint(tree: dict) -> Any:
            if not is_folder:
                return tree.get(path)
            prefix = path + "/"
            return sorted((p, e["oid"]) for p, e in tree.items() if p.startswith(prefix))

        current, value = commit, fingerprint(commit["tree"])
        while current["parents"]:
            parent = self.storage.read_commit(repo_type, repo_id, current["parents"][0])
            if parent is None or fingerprint(parent["tree"]) != value:
                break
            current = parent
        return {"id": current["id"], "title": current["title"], "date": current["date"]}

    def _entries(self, repo_type: str, repo_id: str, commit: dict, paths: list[str], expand: bool) -> list[dict]:
        tree, folders, items = commit["tree"], self._folders(commit["tree"]), []
        for path in paths:
            if path in tree:
                item = self._file_json(path, tree[path])
                if expand:
                    item["securityFileStatus"] = {
                        "status": "safe",
                        "avScan": {"virusFound": False, "virusNames": None},
                        "pickleImportScan": None,
                    }
            elif path in folders:
                item = {"type": "directory", "oid": self._folder_oid(tree, path), "size": 0, "path": path}
            else:
                continue
            if expand:
                item["lastCommit"] = self._last_commit(repo_type, repo_id, commit, path, item["type"] == "directory")
            items.append(item)
        return items

    def tree(self, request: Request, repo_type: str, repo_id: str, revision: str, path: str) -> Response:
        self._repo_for_read(request, repo_type, repo_id)
        sha, _, _ = self._resolve(repo_type, repo_id, revision)
        path = check_repo_path(path, allow_empty=True)
        commit = self._commit(repo_type, repo_id, sha)
        tree, folders = commit["tree"], self._folders(commit["tree"])
        if path and path not in folders:
            what = "is a file, not a directory" if path in tree else "does not exist"
            raise HubHTTPError(
                404, f"Entry Not Found: '{path}' {what} at revision {sha}.", "EntryNotFound", {"X-Repo-Commit": sha}
            )
        prefix = f"{path}/" if path else ""
        below = [p for p in sorted(tree.keys() | folders) if p.startswith(prefix)]
        if not request.flag("recursive"):
            below = [p for p in below if "/" not in p[len(prefix) :]]
        expand = request.flag("expand")
        page_size = 50 if expand else TREE_PAGE_SIZE
        with contextlib.suppress(ValueError, TypeError):
            page_size = max(1, min(page_size, int(request.param("limit") or page_size)))
        try:
            start = int(request.param("cursor") or 0)
        except ValueError:
            raise HubHTTPError(400, f"Invalid cursor {request.param('cursor')!r}.") from None
        page = below[start : start + page_size]
        headers = []
        if start + page_size < len(below):
            query = {key: values[-1] for key, values in request.query.items()}
            query["cursor"] = str(start + page_size)
            url_path = urllib.parse.urlsplit(request.target).path
            headers.append(("Link", f'<{request.base_url}{url_path}?{urllib.parse.urlencode(query)}>; rel="next"'))
        return _json_response(self._entries(repo_type, repo_id, commit, page, expand), headers=headers)

    def paths_info(self, request: Request, repo_type: str, repo_id: str, revision: str) -> Response:
        self._repo_for_read(request, repo_type, repo_id)
        sha, _, _ = self._resolve(repo_type, repo_id, revision)
        raw = request.body.read_all()
        if "json" in request.headers.get("Content-Type", ""):
            body = _parse_json(raw, "Request body")
            if not isinstance(body, dict):
                raise HubHTTPError(400, f"Request body must be a JSON object, got {type(body).__name__}.")
            paths, expand = body.get("paths", []), bool(body.get("expand"))
        else:
            form = urllib.parse.parse_qs(raw.decode("utf-8", "replace"), keep_blank_values=True)
            paths = form.get("paths", [])
            expand = (form.get("expand", ["false"])[-1]).lower() in ("1", "true")
        if not isinstance(paths, list):
            raise HubHTTPError(400, "'paths' must be a list of paths.")
        normalized = [check_repo_path(path) for path in paths]
        commit = self._commit(repo_type, repo_id, sha)
        return _json_response(self._entries(repo_type, repo_id, commit, normalized, expand))

    def list_refs(self, request: Request, repo_type: str, repo_id: str) -> Response:
        self._repo_for_read(request, repo_type, repo_id)
        refs = self.storage.read_refs(repo_type, repo_id)
        result: dict[str, Any] = {
            "branches": [
                {"name": name, "ref": f"refs/heads/{name}", "targetCommit": sha}
                for name, sha in sorted(refs["branches"].items())
            ],
            "converts": [],
            "tags": [
                {"name": name, "ref": f"refs/tags/{name}", "targetCommit": sha}
                for name, sha in sorted(refs["tags"].items())
            ],
        }
        if request.flag("include_prs"):
            result["pullRequests"] = [
                {"name": f"refs/pr/{num}", "ref": f"refs/pr/{num}", "targetCommit": pr["head"]}
                for num, pr in sorted(refs["prs"].items(), key=lambda item: int(item[0]))
            ]
        return _json_response(result)

    def list_commits(self, request: Request, repo_type: str, repo_id: str, revision: str) -> Response:
        self._repo_for_read(request, repo_type, repo_id)
        sha, _, _ = self._resolve(repo_type, repo_id, revision)
        history: list[dict] = []
        current: dict | None = self._commit(repo_type, repo_id, sha)
        while current is not None:
            history.append(
                {
                    "id": current["id"],
                    "title": current["title"],
                    "message": current["message"],
                    "authors": [{"user": current["author"]}],
                    "date": current["date"],
                }
            )
            parents = current["parents"]
            current = self.storage.read_commit(repo_type, repo_id, parents[0]) if parents else None
        return _json_response(history)

    # -- downloads -----------------------------------------------------------------------------------------------

    def resolve(
        self, request: Request, repo_type: str, repo_id: str, revision: str, path_parts: list[str]
    ) -> Response:
        self._repo_for_read(request, repo_type, repo_id)
        sha, _, _ = self._resolve(repo_type, repo_id, revision)
        path = check_repo_path("/".join(path_parts))
        entry = self._commit(repo_type, repo_id, sha)["tree"].get(path)
        if entry is None:
            raise HubHTTPError(
                404,
                f"Entry Not Found: '{path}' does not exist in {repo_type} '{repo_id}' at revision {sha}.",
                "EntryNotFound",
                {"X-Repo-Commit": sha},
            )
        blob = self.storage.blob_path(entry["sha256"])
        size = entry["size"]
        etag = f'"{entry["sha256"] if entry["lfs"] else entry["oid"]}"'
        filename = path.rsplit("/", 1)[-1]
        ascii_name = filename.encode("ascii", "replace").decode().replace('"', "_")
        headers = [
            ("ETag", etag),
            ("X-Repo-Commit", sha),
            ("Accept-Ranges", "bytes"),
            ("Content-Type", mimetypes.guess_type(filename)[0] or "application/octet-stream"),
            (
                "Content-Disposition",
                f"inline; filename*=UTF-8''{urllib.parse.quote(filename)}; filename=\"{ascii_name}\";",
            ),
        ]
        if entry["lfs"]:
            headers += [("X-Linked-Etag", etag), ("X-Linked-Size", str(size))]
        start, length, status = 0, size, 200
        range_header = request.headers.get("Range")
        if range_header and "," not in range_header:  # multi-range requests get the whole file, as RFC 9110 allows
            match = re.fullmatch(r"\s*bytes\s*=\s*([0-9]{0,18})\s*-\s*([0-9]{0,18})\s*", range_header)
            if match is None or match.groups() == ("", ""):
                raise HubHTTPError(
                    416,
                    f"Invalid Range header {range_header[:100]!r}: expected bytes=FIRST-LAST.",
                    headers={"Content-Range": f"bytes */{size}"},
                )
            first, last = match.groups()
            if first == "":  # suffix range: the last N bytes
                start = max(0, size - int(last))
                end = size - 1
            else:
                start = int(first)
                end = min(int(last), size - 1) if last else size - 1
            if start >= size or end < start:
                raise HubHTTPError(
                    416,
                    f"Range {range_header!r} is not satisfiable for a file of {size} bytes.",
                    headers={"Content-Range": f"bytes */{size}"},
                )
            length, status = end - start + 1, 206
            headers.append(("Content-Range", f"bytes {start}-{end}/{size}"))
        if not blob.exists():
            raise HubHTTPError(
                500, f"Content of '{path}' (sha256 {entry['sha256']}) is missing from the data directory."
            )
        return Response(status, headers, file=(blob, start, length))

    # -- uploads -------------------------------------------------------------------------------------------------

    def _gitattributes(self, tree: dict) -> _PatternSet:
        entry = tree.get(".gitattributes")
        if entry is None:
            return _PatternSet()
        if entry["sha256"] not in self._gitattributes_cache:
            if len(self._gitattributes_cache) >= 64:
                self._gitattributes_cache.clear()
            with contextlib.suppress(OSError):
                text = self.storage.read_blob(entry["sha256"], limit=1024 * 1024).decode("utf-8", "replace")
                self._gitattributes_cache[entry["sha256"]] = _PatternSet.from_gitattributes(text)
        return self._gitattributes_cache.get(entry["sha256"], _PatternSet())

    def upload_mode(
        self, path: str, size: int, sample: bytes, lfs_patterns: _PatternSet, budget: _Budget | None = None
    ) -> str:
        """Decide `"lfs"` or `"regular"` for a file, as the Hub does: size, `.gitattributes`, binary content."""
        if size == 0:
            return "regular"
        if size > self.lfs_threshold or lfs_patterns.match(path, budget) or _is_binary_sample(sample):
            return "lfs"
        return "regular"

    def _writable_branch(self, repo_type: str, repo_id: str, revision: str, *, create_pr: bool) -> tuple[str, str]:
        """Resolve the target of a write: `(head_sha, kind)`; refuses tags and bare commit ids."""
        sha, kind, _ = self._resolve(repo_type, repo_id, revision)
        if kind in ("tag", "commit") and not create_pr:
            raise HubHTTPError(
                400, f"Cannot write to revision '{revision}': it is a {kind}; commits go to a branch (e.g. 'main')."
            )
        return sha, kind

    def preupload(self, request: Request, repo_type: str, repo_id: str, revision: str) -> Response:
        self._repo_for_write(request, repo_type, repo_id, "upload to")
        create_pr = request.flag("create_pr")
        sha, _ = self._writable_branch(repo_type, repo_id, revision, create_pr=create_pr)
        body = request.json_object()
        files = body.get("files")
        if not isinstance(files, list):
            raise HubHTTPError(400, "Missing 'files' list in the preupload request.")
        if len(files) > MAX_PREUPLOAD_FILES:
            raise HubHTTPError(
                400, f"Too many files in one preupload request: {len(files)} (at most {MAX_PREUPLOAD_FILES})."
            )
        tree = self._commit(repo_type, repo_id, sha)["tree"]
        lfs_patterns = self._gitattributes(tree)
        gitignore_text = body.get("gitIgnore")
        if gitignore_text is not None:
            if not isinstance(gitignore_text, str):
                raise HubHTTPError(400, "'gitIgnore' must be a string (the content of a .gitignore file).")
            ignore = _PatternSet.from_gitignore(gitignore_text[: MAX_GLOB_TEXT + 1])
            if len(gitignore_text) > MAX_GLOB_TEXT or ignore.skipped:
                raise HubHTTPError(
                    400,
                    f"'gitIgnore' is too large: at most {MAX_GLOB_PATTERNS} patterns of at most {MAX_GLOB_LENGTH} "
                    f"characters and {MAX_GLOB_TEXT} bytes in all.",
                )
        elif ".gitignore" in tree and tree[".gitignore"]["size"] <= MAX_GLOB_TEXT:
            text = self.storage.read_blob(tree[".gitignore"]["sha256"]).decode("utf-8", "replace")
            ignore = _PatternSet.from_gitignore(text)
        else:
            ignore = _PatternSet()
        budget = _Budget()
        try:
            answers = self._preupload_answers(files, tree, lfs_patterns, ignore, budget)
        except GlobTooExpensive:
            raise HubHTTPError(
                400,
                "The .gitignore/.gitattributes patterns are too costly to match against these paths: use fewer or "
                "simpler patterns, or send fewer files per request.",
            ) from None
        return _json_response({"files": answers, "commitOid": sha})

    def _preupload_answers(
        self, files: list, tree: dict, lfs_patterns: _PatternSet, ignore: _PatternSet, budget: _Budget
    ) -> list[dict]:
        answers = []
        for item in files:
            if not isinstance(item, dict):
                raise HubHTTPError(400, "Each entry of 'files' must be an object with 'path', 'size' and 'sample'.")
            path = check_repo_path(item.get("path"))
            size = item.get("size")
            if not isinstance(size, int) or size < 0:
                raise HubHTTPError(400, f"Invalid size {size!r} for '{path}': expected a non-negative integer.")
            try:
                sample = base64.b64decode(item.get("sample") or "", validate=True)
            except (binascii.Error, ValueError, TypeError):
                raise HubHTTPError(400, f"Invalid 'sample' for '{path}': expected base64.") from None
            mode = self.upload_mode(path, size, sample, lfs_patterns, budget)
            existing = tree.get(path)
            oid = None if existing is None else (existing["sha256"] if existing["lfs"] else existing["oid"])
            ignored = bool(ignore.match(path, budget))
            answers.append({"path": path, "uploadMode": mode, "shouldIgnore": ignored, "oid": oid})
        return answers

    def _sign(self, payload: str) -> str:
        return hmac.new(self._secret, payload.encode(), hashlib.sha256).hexdigest()[:40]

    def _upload_link(self, request: Request, repo_type: str, repo_id: str, oid: str, size: int) -> tuple[str, int]:
        expires = int(time.time() + self.upload_link_ttl)
        payload = base64.urlsafe_b64encode(f"{repo_type}|{repo_id}|{oid}|{size}|{expires}".encode()).decode()
        return f"{request.base_url}/_hftransfer/lfs-upload/{payload}.{self._sign(payload)}", expires

    def lfs_batch(self, request: Request, repo_type: str, repo_id: str) -> Response:
        body = request.json_object()
        operation = body.get("operation")
        if operation != "upload":
            self._repo_for_read(request, repo_type, repo_id)
            raise HubHTTPError(
                400, f"LFS operation {operation!r} is not supported here: only 'upload'; download with /resolve."
            )
        self._repo_for_write(request, repo_type, repo_id, "upload to")
        transfers = body.get("transfers") or ["basic"]
        if "basic" not in transfers:
            raise HubHTTPError(400, f"No supported LFS transfer in {transfers!r}: this server offers 'basic' only.")
        objects = body.get("objects")
        if not isinstance(objects, list):
            raise HubHTTPError(400, "Missing 'objects' list in the LFS batch request.")
        answers = []
        for obj in objects:
            oid = obj.get("oid") if isinstance(obj, dict) else None
            size = obj.get("size") if isinstance(obj, dict) else None
            if not isinstance(oid, str) or not _HEX64_RE.match(oid) or not isinstance(size, int) or size < 0:
                answers.append(
                    {
                        "oid": str(oid),
                        "size": size if isinstance(size, int) else -1,
                        "error": {"code": 422, "message": "expected a lowercase sha256 'oid' and a size >= 0"},
                    }
                )
                continue
            answer: dict[str, Any] = {"oid": oid, "size": size, "authenticated": True}
            if not (self.storage.has_blob(oid, size) and self.storage.has_lfs_link(repo_type, repo_id, oid)):
                href, expires = self._upload_link(request, repo_type, repo_id, oid, size)
                expires_at = datetime.datetime.fromtimestamp(expires, datetime.timezone.utc).isoformat()
                verify = f"{self._repo_url(request, repo_type, repo_id)}.git/info/lfs/objects/verify"
                answer["actions"] = {
                    "upload": {"href": href, "expires_at": expires_at},
                    "verify": {"href": verify, "expires_at": expires_at},
                }
            answers.append(answer)
        return _json_response(
            {"transfer": "basic", "objects": answers, "hash_algo": "sha256"},
            content_type="application/vnd.git-lfs+json",
        )

    def lfs_upload(self, request: Request, ticket: str) -> Response:
        payload, _, signature = ticket.partition(".")
        try:
            fields = base64.urlsafe_b64decode(payload.encode()).decode().split("|")
            repo_type, repo_id, oid, size_text, expires_text = fields
            size, expires = int(size_text), int(expires_text)
        except (ValueError, binascii.Error, UnicodeDecodeError):
            raise HubHTTPError(403, "Invalid upload link: ask the LFS batch endpoint for a new one.") from None
        if not hmac.compare_digest(signature, self._sign(payload)):
            raise HubHTTPError(403, "Invalid upload link signature: ask the LFS batch endpoint for a new one.")
        if time.time() > expires:
            raise HubHTTPError(403, "This upload link has expired: ask the LFS batch endpoint for a new one.")
        declared = request.body.declared_length
        if declared is not None and declared != size:
            raise HubHTTPError(400, f"The upload link is for {size} bytes but the request body has {declared}.")
        if self.storage.get_repo(repo_type, repo_id) is None:
            raise self._repo_not_found(repo_type, repo_id)
        # The content is hashed even when the blob is stored already (uploaded to another repository): the upload
        # proves that the client has the content, which is what entitles this repository to reference it.
        writer = self.storage.blob_writer()
        try:
            while chunk := request.body.read():
                if writer.size + len(chunk) > size:
                    raise HubHTTPError(400, f"Upload is larger than the {size} bytes announced for object {oid}.")
                writer.write(chunk)
            writer.finalize(oid, size)
        except ValueError as exc:
            raise HubHTTPError(400, f"Upload rejected: {exc}.") from None
        finally:
            writer.discard()  # no-op after a successful finalize; removes the partial file otherwise
        self.storage.link_lfs(repo_type, repo_id, oid)
        logger.info("stored LFS object %s (%d bytes) for %s %s", oid, size, repo_type, repo_id)
        return Response(200, [("ETag", f'"{oid}"')])

    def lfs_verify(self, request: Request, repo_type: str, repo_id: str) -> Response:
        self._repo_for_read(request, repo_type, repo_id)
        self._require_auth(request, "verify an LFS upload")
        body = request.json_object()
        oid, size = body.get("oid"), body.get("size")
        if not isinstance(oid, str) or not _HEX64_RE.match(oid):
            raise HubHTTPError(400, f"Invalid LFS oid {oid!r}: expected a lowercase sha256.")
        if not (
            self.storage.has_blob(oid, size if isinstance(size, int) else None)
            and self.storage.has_lfs_link(repo_type, repo_id, oid)
        ):
            raise HubHTTPError(404, f"LFS object {oid} ({size} bytes) was not uploaded (or has another size).")
        return _json_response({"oid": oid, "size": size})

    def commit(self, request: Request, repo_type: str, repo_id: str, revision: str) -> Response:
        _, principal = self._repo_for_write(request, repo_type, repo_id, "commit to")
        create_pr = request.flag("create_pr")
        self._writable_branch(repo_type, repo_id, revision, create_pr=create_pr)  # fail early, before the body
        header: dict | None = None
        operations: list[tuple[str, str, dict | None]] = []  # (kind, path, entry)
        max_line = max(MAX_JSON_BODY, self.lfs_threshold * 2)
        for number, line in enumerate(request.body.iter_lines(max_line), start=1):
            if not line.strip():
                continue
            try:
                item = _parse_json(line, f"Line {number} of the commit payload")
                key, value = item["key"], item["value"]
                if not isinstance(value, dict):
                    raise TypeError("value must be an object")
            except (KeyError, TypeError) as exc:
                raise HubHTTPError(
                    400, f"Line {number} of the commit payload is not a valid operation: {exc}"
                ) from None
            if key == "header":
                header = value
            elif key == "file":
                operations.append(("add", check_repo_path(value.get("path")), self._regular_file(value)))
            elif key == "lfsFile":
                entry = self._lfs_file(repo_type, repo_id, value)
                operations.append(("add", check_repo_path(value.get("path")), entry))
            elif key == "deletedFile":
                operations.append(("delete", check_repo_path(value.get("path")), None))
            elif key == "deletedFolder":
                operations.append(("delete_folder", check_repo_path(value.get("path")), None))
            else:
                raise HubHTTPError(400, f"Unknown commit operation {key!r} on line {number}.")
        if header is None:
            raise HubHTTPError(400, "The commit payload has no 'header' line (summary, description, parentCommit).")
        title = header.get("summary")
        if not isinstance(title, str) or not title.strip():
            raise HubHTTPError(400, "The commit needs a non-empty 'summary' (commit message).")
        message = header.get("description") or ""
        parent_commit = header.get("parentCommit")
        if parent_commit is not None and (
            not isinstance(parent_commit, str) or not _OID_PREFIX_RE.match(parent_commit)
        ):
            raise HubHTTPError(400, f"Invalid parentCommit {parent_commit!r}: expected a commit id (5 to 40 hex).")

        with self.storage.lock(repo_type, repo_id):
            # Re-read under the lock: another commit may have moved the branch while this body was streaming in.
            if self.storage.get_repo(repo_type, repo_id) is None:
                raise self._repo_not_found(repo_type, repo_id)
            head, kind = self._writable_branch(repo_type, repo_id, revision, create_pr=create_pr)
            base = head
            if parent_commit is not None:
                parent_commit = parent_commit.lower()
                if create_pr:
                    base = self._resolve(repo_type, repo_id, parent_commit)[0]
                elif not head.startswith(parent_commit):
                    raise HubHTTPError(
                        412,
                        f"A commit has happened since: parentCommit {parent_commit} is not the head of '{revision}' "
                        f"(now {head}). Fetch the new head and retry.",
                        "PreconditionFailed",
                    )
            tree = dict(self._commit(repo_type, repo_id, base)["tree"])
            self._apply(tree, operations)
            commit = self.storage.write_commit(
                repo_type, repo_id, parents=[base], tree=tree, title=title, message=message, author=principal.name
            )
            pr_url = None
            if create_pr:
                target = self._resolve(repo_type, repo_id, revision)[2] if kind == "branch" else "main"
                item = self._new_discussion(
                    repo_type,
                    repo_id,
                    title=title,
                    author=principal.name,
                    pull_request=True,
                    status="open",
                    base=target,
                )
                number = str(item["num"])
                discussions = self.storage.read_discussions(repo_type, repo_id)
                discussions[number]["baseCommit"] = base
                discussions[number]["events"].append(
                    self._discussion_event("comment", principal.name, self._comment_data(message))
                )
                discussions[number]["events"].append(
                    self._discussion_event("commit", principal.name, {"subject": title, "oid": commit["id"]})
                )
                self.storage.write_discussions(repo_type, repo_id, discussions)
                pr_url = f"{self._repo_url(request, repo_type, repo_id)}/discussions/{number}"
            refs = self.storage.read_refs(repo_type, repo_id)
            if create_pr:
                refs["prs"][number]["head"] = commit["id"]
            elif kind == "pr":
                number = _PR_REF_RE.match(revision).group(1)
                refs["prs"][number]["head"] = commit["id"]
                discussions = self.storage.read_discussions(repo_type, repo_id)
                if number in discussions:
                    discussions[number]["events"].append(
                        self._discussion_event("commit", principal.name, {"subject": title, "oid": commit["id"]})
                    )
                    self.storage.write_discussions(repo_type, repo_id, discussions)
            else:
                refs["branches"][self._resolve(repo_type, repo_id, revision)[2]] = commit["id"]
            self.storage.write_refs(repo_type, repo_id, refs)  # the commit becomes visible here, atomically
        logger.info(
            "commit %s on %s %s@%s by %s: %s", commit["id"][:10], repo_type, repo_id, revision, principal.name, title
        )
        return _json_response(
            {
                "success": True,
                "commitOid": commit["id"],
                "commitUrl": f"{self._repo_url(request, repo_type, repo_id)}/commit/{commit['id']}",
                "hookOutput": "",
                "pullRequestUrl": pr_url,
            }
        )

    def _regular_file(self, value: dict) -> dict:
        content, encoding = value.get("content"), value.get("encoding", "base64")
        if not isinstance(content, str):
            raise HubHTTPError(400, f"Missing 'content' for file {value.get('path')!r}.")
        try:
            data = base64.b64decode(content, validate=True) if encoding == "base64" else content.encode("utf-8")
        except (binascii.Error, ValueError):
            raise HubHTTPError(400, f"Content of {value.get('path')!r} is not valid base64.") from None
        if len(data) > self.lfs_threshold:
            raise HubHTTPError(
                400,
                f"File {value.get('path')!r} is {len(data)} bytes: files larger than {self.lfs_threshold} bytes must "
                "be uploaded with LFS (the preupload endpoint tells which).",
            )
        return self.storage.regular_entry(data)

    def _lfs_file(self, repo_type: str, repo_id: str, value: dict) -> dict:
        oid, size, path = value.get("oid"), value.get("size"), value.get("path")
        if value.get("algo", "sha256") != "sha256" or not isinstance(oid, str) or not _HEX64_RE.match(oid):
            raise HubHTTPError(400, f"Invalid LFS pointer for {path!r}: expected algo 'sha256' and a sha256 oid.")
        if not (
            self.storage.has_blob(oid, size if isinstance(size, int) else None)
            and self.storage.has_lfs_link(repo_type, repo_id, oid)
        ):
            raise HubHTTPError(
                422,
                f"LFS object {oid} for {path!r} was never uploaded (or has another size): upload it through the LFS "
                "batch API before committing.",
            )
        return self.storage.lfs_entry(oid, self.storage.blob_path(oid).stat().st_size)

    @staticmethod
    def _apply(tree: dict, operations: list[tuple[str, str, dict | None]]) -> None:
        for kind, path, entry in operations:
            if kind == "add":
                tree[path] = entry
            elif kind == "delete":
                if path not in tree:
                    raise HubHTTPError(404, f"A file with this name doesn't exist: '{path}'.", "EntryNotFound")
                del tree[path]
            else:
                prefix = path + "/"
                doomed = [p for p in tree if p.startswith(prefix)]
                if not doomed:
                    raise HubHTTPError(404, f"A file with this name doesn't exist: '{path}/'.", "EntryNotFound")
                for p in doomed:
                    del tree[p]
        # A path cannot be both a file and a folder.
        for path in tree:
            parts = path.split("/")
            for depth in range(1, len(parts)):
                if "/".join(parts[:depth]) in tree:
                    raise HubHTTPError(
                        400,
                        f"Conflict: '{'/'.join(parts[:depth])}' is a file, so '{path}' cannot be created below it.",
                    )

    # -- discussions and pull requests ---------------------------------------------------------------------------

    def _discussion_event(self, kind: str, author: str, data: dict) -> dict:
        return {
            "id": secrets.token_hex(12),
            "type": kind,
            "createdAt": _now_iso(),
            "author": {"name": author, "type": "user"},
            "data": data,
        }

    @staticmethod
    def _comment_data(text: str) -> dict:
        return {"edited": False, "hidden": False, "latest": {"raw": text, "html": html.escape(text)}, "numEdits": 0}

    def _discussion_summary(self, meta: dict, item: dict) -> dict:
        return {
            "num": item["num"],
            "title": item["title"],
            "status": item["status"],
            "author": {"name": item["author"], "type": "user"},
            "createdAt": item["createdAt"],
            "isPullRequest": item["isPullRequest"],
            "repo": {"name": meta["id"], "type": meta["type"]},
            "numComments": sum(1 for event in item["events"] if event["type"] == "comment"),
            "pinned": False,
        }

    def _discussion(self, repo_type: str, repo_id: str, num: str) -> tuple[dict, dict]:
        discussions = self.storage.read_discussions(repo_type, repo_id)
        if not num.isascii() or not num.isdigit() or num not in discussions:
            raise HubHTTPError(404, f"Discussion #{num} does not exist in {repo_type} '{repo_id}'.")
        return discussions, discussions[num]

    def _require_writer_token(self, request: Request, action: str) -> Principal:
        principal = self._require_auth(request, action)
        if principal.role != "write":
            raise HubHTTPError(
                403, f"The token of user '{principal.name}' is read-only: a write token is needed to {action}."
            )
        return principal

    def discussions(self, request: Request, repo_type: str, repo_id: str, args: list[str]) -> Response:
        """`/api/{type}s/{repo}/discussions[/N[/comment|status|title|merge|comment/ID/edit|hide]]`."""
        if not args:
            self._method(request, "GET", "POST")
            if request.method == "POST":
                return self.create_discussion(request, repo_type, repo_id)
            return self.list_discussions(request, repo_type, repo_id)
        if len(args) == 1:
            self._method(request, "GET")
            meta = self._repo_for_read(request, repo_type, repo_id)
            return _json_response(self._discussion_details(meta, self._discussion(repo_type, repo_id, args[0])[1]))
        self._method(request, "POST")
        num, action = args[0], "/".join(args[1:] if len(args) != 4 else [args[1], "*", args[3]])
        handlers = {
            "comment": self.comment_discussion,
            "status": self.discussion_status,
            "title": self.discussion_title,
            "merge": self.merge_pull_request,
            "comment/*/edit": self.edit_comment,
            "comment/*/hide": self.edit_comment,
        }
        if action not in handlers:
            raise HubHTTPError(404, f"Unknown endpoint {request.method} {urllib.parse.urlsplit(request.target).path}")
        return handlers[action](request, repo_type, repo_id, num, args[1:])

    def list_discussions(self, request: Request, repo_type: str, repo_id: str) -> Response:
        meta = self._repo_for_read(request, repo_type, repo_id)
        kind, status, author = (
            request.param("type") or "all",
            request.param("status") or "all",
            request.param("author"),
        )
        items = sorted(self.storage.read_discussions(repo_type, repo_id).values(), key=lambda d: -d["num"])
        if kind in ("discussion", "pull_request"):
            items = [d for d in items if d["isPullRequest"] == (kind == "pull_request")]
        if status in ("open", "closed"):
            items = [d for d in items if (d["status"] in ("open", "draft")) == (status == "open")]
        if author:
            items = [d for d in items if d["author"] == author]
        try:
            page = max(0, int(request.param("p") or 0))
        except ValueError:
            raise HubHTTPError(400, f"Invalid page {request.param('p')!r}: expected an integer.") from None
        start = page * DISCUSSIONS_PAGE_SIZE
        return _json_response(
            {
                "discussions": [
                    self._discussion_summary(meta, d) for d in items[start : start + DISCUSSIONS_PAGE_SIZE]
                ],
                "count": len(items),
                "start": start,
                "numClosedDiscussions": sum(1 for d in items if d["status"] in ("closed", "merged")),
            }
        )

    def _discussion_details(self, meta: dict, item: dict) -> dict:
        details = {**self._discussion_summary(meta, item), "events": item["events"], "diff": ""}
        if item["isPullRequest"]:
            details["changes"] = {"base": f"refs/heads/{item['base']}"}
            if item.get("mergeCommitId"):
                details["changes"]["mergeCommitId"] = item["mergeCommitId"]
            details["filesWithConflicts"] = []
        return details

    def _new_discussion(
        self, repo_type: str, repo_id: str, *, title: str, author: str, pull_request: bool, status: str, base: str
    ) -> dict:
        """Under the repo lock: add a discussion (numbered after every discussion and PR so far) and return it."""
        discussions = self.storage.read_discussions(repo_type, repo_id)
        refs = self.storage.read_refs(repo_type, repo_id)
        num = max([int(n) for n in discussions] + [int(n) for n in refs["prs"]] + [0]) + 1
        item = {
            "num": num,
            "title": title,
            "status": status,
            "author": author,
            "createdAt": _now_iso(),
            "isPullRequest": pull_request,
            "events": [],
        }
        if pull_request:
            head = self._resolve(repo_type, repo_id, base)[0]
            item.update(base=base, baseCommit=head)
            refs["prs"][str(num)] = {"head": head, "base": base, "title": title}
            self.storage.write_refs(repo_type, repo_id, refs)
        discussions[str(num)] = item
        self.storage.write_discussions(repo_type, repo_id, discussions)
        return item

    def create_discussion(self, request: Request, repo_type: str, repo_id: str) -> Response:
        body = request.json_object()
        pull_request = bool(body.get("pullRequest"))
        if pull_request:  # a pull request gets a branch of its own: the same rights as a commit
            _, principal = self._repo_for_write(request, repo_type, repo_id, "open a pull request on")
        else:
            self._repo_for_read(request, repo_type, repo_id)
            principal = self._require_writer_token(request, "open a discussion")
        title = body.get("title")
        if not isinstance(title, str) or not title.strip() or len(title) > 200:
            raise HubHTTPError(400, "A discussion needs a 'title' of 1 to 200 characters.")
        description = body.get("description") or ""
        if not isinstance(description, str) or len(description) > MAX_COMMENT:
            raise HubHTTPError(400, f"'description' must be a string of at most {MAX_COMMENT} characters.")
        with self.storage.lock(repo_type, repo_id):
            discussions = self.storage.read_discussions(repo_type, repo_id)
            item = self._new_discussion(
                repo_type,
                repo_id,
                title=title.strip(),
                author=principal.name,
                pull_request=pull_request,
                status="draft" if pull_request else "open",
                base="main",
            )
            discussions = self.storage.read_discussions(repo_type, repo_id)
            discussions[str(item["num"])]["events"].append(
                self._discussion_event("comment", principal.name, self._comment_data(description))
            )
            self.storage.write_discussions(repo_type, repo_id, discussions)
        url = f"{self._repo_url(request, repo_type, repo_id)}/discussions/{item['num']}"
        return _json_response({"num": item["num"], "url": url, "pullRequest": pull_request})

    def _change(self, request: Request, repo_type: str, repo_id: str, num: str, *, write: bool, action: str, apply):
        """Run `apply(discussions, item, principal)` under the repo lock after the access checks; save; answer it."""
        if write:
            _, principal = self._repo_for_write(request, repo_type, repo_id, action)
        else:
            self._repo_for_read(request, repo_type, repo_id)
            principal = self._require_writer_token(request, action)
        body = request.json_object()
        with self.storage.lock(repo_type, repo_id):
            discussions, item = self._discussion(repo_type, repo_id, num)
            answer = apply(discussions, item, principal, body)
            self.storage.write_discussions(repo_type, repo_id, discussions)
        return _json_response(answer)

    def comment_discussion(self, request: Request, repo_type: str, repo_id: str, num: str, _: list) -> Response:
        def apply(discussions, item, principal, body):
            comment = body.get("comment")
            if not isinstance(comment, str) or not comment.strip() or len(comment) > MAX_COMMENT:
                raise HubHTTPError(400, f"A comment needs a non-empty 'comment' of at most {MAX_COMMENT} characters.")
            event = self._discussion_event("comment", principal.name, self._comment_data(comment))
            item["events"].append(event)
            return {"newMessage": event}

        return self._change(request, repo_type, repo_id, num, write=False, action="comment", apply=apply)

    def edit_comment(self, request: Request, repo_type: str, repo_id: str, num: str, rest: list) -> Response:
        comment_id, verb = rest[1].lower(), rest[2]

        def apply(discussions, item, principal, body):
            event = next((e for e in item["events"] if e["id"] == comment_id and e["type"] == "comment"), None)
            if event is None:
                raise HubHTTPError(404, f"Comment {comment_id} does not exist in discussion #{num}.")
            if event["author"]["name"] != principal.name and not self._can_write_namespace(
                principal, repo_id.split("/")[0]
            ):
                raise HubHTTPError(403, f"User '{principal.name}' cannot {verb} a comment of another user.")
            if verb == "hide":
                event["data"]["hidden"] = True
            else:
                content = body.get("content")
                if not isinstance(content, str) or not content.strip() or len(content) > MAX_COMMENT:
                    raise HubHTTPError(400, "An edit needs a non-empty 'content'.")
                event["data"].update(edited=True, numEdits=event["data"]["numEdits"] + 1)
                event["data"]["latest"] = {"raw": content, "html": html.escape(content)}
            return {"updatedComment": event}

        return self._change(request, repo_type, repo_id, num, write=False, action=f"{verb} a comment", apply=apply)

    def discussion_status(self, request: Request, repo_type: str, repo_id: str, num: str, _: list) -> Response:
        def apply(discussions, item, principal, body):
            status = body.get("status")
            if status not in ("open", "closed"):
                raise HubHTTPError(400, f"Invalid status {status!r}: expected 'open' or 'closed'.")
            if item["status"] == "merged":
                raise HubHTTPError(400, f"Pull request #{num} is merged: its status cannot change.")
            item["status"] = status
            if isinstance(body.get("comment"), str) and body["comment"].strip():
                item["events"].append(
                    self._discussion_event("comment", principal.name, self._comment_data(body["comment"]))
                )
            event = self._discussion_event("status-change", principal.name, {"status": status})
            item["events"].append(event)
            return {"newStatus": event}

        return self._change(
            request, repo_type, repo_id, num, write=True, action="change the status of a discussion of", apply=apply
        )

    def discussion_title(self, request: Request, repo_type: str, repo_id: str, num: str, _: list) -> Response:
        def apply(discussions, item, principal, body):
            title = body.get("title")
            if not isinstance(title, str) or not title.strip() or len(title) > 200:
                raise HubHTTPError(400, "A discussion needs a 'title' of 1 to 200 characters.")
            event = self._discussion_event(
                "title-change", principal.name, {"from": item["title"], "to": title.strip()}
            )
            item["title"] = title.strip()
            item["events"].append(event)
            return {"newTitle": event}

        return self._change(request, repo_type, repo_id, num, write=True, action="rename a discussion of", apply=apply)

    def merge_pull_request(self, request: Request, repo_type: str, repo_id: str, num: str, _: list) -> Response:
        def apply(discussions, item, principal, body):
            if not item["isPullRequest"]:
                raise HubHTTPError(400, f"#{num} is a discussion, not a pull request: there is nothing to merge.")
            if item["status"] not in ("open", "draft"):
                raise HubHTTPError(400, f"Pull request #{num} is {item['status']}: only open pull requests merge.")
            refs = self.storage.read_refs(repo_type, repo_id)
            base_head = refs["branches"].get(item["base"])
            if base_head is None:
                raise HubHTTPError(400, f"The target branch '{item['base']}' of pull request #{num} no longer exists.")
            pr_head = refs["prs"][num]["head"]
            origin = self._commit(repo_type, repo_id, item["baseCommit"])["tree"]
            theirs = self._commit(repo_type, repo_id, pr_head)["tree"]
            tree = dict(self._commit(repo_type, repo_id, base_head)["tree"])
            conflicts = []
            for path in sorted(origin.keys() | theirs.keys()):
                if origin.get(path) == theirs.get(path):
                    continue  # not changed by the pull request
                if tree.get(path) != origin.get(path) and tree.get(path) != theirs.get(path):
                    conflicts.append(path)  # changed on both sides, differently
                elif path in theirs:
                    tree[path] = theirs[path]
                else:
                    tree.pop(path, None)
            if conflicts:
                raise HubHTTPError(
                    409, f"Pull request #{num} conflicts with '{item['base']}' in: {', '.join(conflicts)}."
                )
            commit = self.storage.write_commit(
                repo_type,
                repo_id,
                parents=[base_head, pr_head],
                tree=tree,
                title=f"Merge pull request #{num}: {item['title']}",
                message=body.get("comment") if isinstance(body.get("comment"), str) else "",
                author=principal.name,
            )
            refs["branches"][item["base"]] = commit["id"]
            self.storage.write_refs(repo_type, repo_id, refs)
            item.update(status="merged", mergeCommitId=commit["id"])
            item["events"].append(self._discussion_event("status-change", principal.name, {"status": "merged"}))
            return {"success": True, "commitOid": commit["id"]}

        return self._change(
            request, repo_type, repo_id, num, write=True, action="merge a pull request of", apply=apply
        )

    # -- branches and tags ---------------------------------------------------------------------------------------

    def create_branch(self, request: Request, repo_type: str, repo_id: str, branch: str) -> Response:
        self._repo_for_write(request, repo_type, repo_id, "create a branch in")
        check_ref_name(branch)
        body = request.json_object()
        starting_point = body.get("startingPoint") or "main"
        with self.storage.lock(repo_type, repo_id):
            sha, _, _ = self._resolve(repo_type, repo_id, str(starting_point))
            refs = self.storage.read_refs(repo_type, repo_id)
            if branch in refs["branches"]:
                raise HubHTTPError(409, f"Branch '{branch}' already exists in {repo_type} '{repo_id}'.")
            refs["branches"][branch] = sha
            self.storage.write_refs(repo_type, repo_id, refs)
        return _json_response({"success": True, "ref": f"refs/heads/{branch}", "targetCommit": sha})

    def delete_branch(self, request: Request, repo_type: str, repo_id: str, branch: str) -> Response:
        self._repo_for_write(request, repo_type, repo_id, "delete a branch of")
        if branch == "main":
            raise HubHTTPError(403, "The 'main' branch cannot be deleted.")
        with self.storage.lock(repo_type, repo_id):
            refs = self.storage.read_refs(repo_type, repo_id)
            if branch not in refs["branches"]:
                raise HubHTTPError(404, f"Branch '{branch}' does not exist in '{repo_id}'.", "RevisionNotFound")
            del refs["branches"][branch]
            self.storage.write_refs(repo_type, repo_id, refs)
        return _json_response({"success": True})

    def create_tag(self, request: Request, repo_type: str, repo_id: str, revision: str) -> Response:
        self._repo_for_write(request, repo_type, repo_id, "create a tag in")
        body = request.json_object()
        tag = check_ref_name(body.get("tag"), "tag")
        with self.storage.lock(repo_type, repo_id):
            sha, _, _ = self._resolve(repo_type, repo_id, revision)
            refs = self.storage.read_refs(repo_type, repo_id)
            if tag in refs["tags"]:
                raise HubHTTPError(409, f"Tag '{tag}' already exists in {repo_type} '{repo_id}'.")
            refs["tags"][tag] = sha
            self.storage.write_refs(repo_type, repo_id, refs)
        return _json_response({"success": True, "ref": f"refs/tags/{tag}", "targetCommit": sha})

    def delete_tag(self, request: Request, repo_type: str, repo_id: str, tag: str) -> Response:
        self._repo_for_write(request, repo_type, repo_id, "delete a tag of")
        with self.storage.lock(repo_type, repo_id):
            refs = self.storage.read_refs(repo_type, repo_id)
            if tag not in refs["tags"]:
                raise HubHTTPError(404, f"Tag '{tag}' does not exist in '{repo_id}'.", "RevisionNotFound")
            del refs["tags"][tag]
            self.storage.write_refs(repo_type, repo_id, refs)
        return _json_response({"success": True})


# --------------------------------------------------------------------------------------------------------------------
# HTTP server
# --------------------------------------------------------------------------------------------------------------------


def _split_target(target: str) -> tuple[list[str], dict[str, list[str]]]:
    """Split a request target into decoded path segments and query parameters, refusing path traversal.

    Each segment is percent-decoded on its own, so `%2F` inside a segment (how the client sends revisions such as
    `refs%2Fpr%2F1` and tree paths) stays inside that segment. `.`/`..` are refused in any spelling: plain,
    percent-encoded, double-encoded or hidden behind an encoded slash or backslash.
    """
    parts = urllib.parse.urlsplit(target)
    if not parts.path.startswith("/"):
        raise HubHTTPError(400, f"Invalid request target {target[:200]!r}: expected an absolute path.")
    raw_segments = parts.path.split("/")[1:]
    if raw_segments and raw_segments[-1] == "":
        raw_segments.pop()  # tolerate a trailing slash
    segments = []
    for raw in raw_segments:
        try:
            decoded = urllib.parse.unquote(raw, errors="strict")
        except UnicodeDecodeError:
            raise HubHTTPError(400, f"Invalid percent-encoding in URL segment {raw[:100]!r}.") from None
        if raw == "" or "\0" in decoded:
            raise HubHTTPError(400, f"Invalid URL path {parts.path[:200]!r}: empty segment or NUL byte.")
        for candidate in (decoded, urllib.parse.unquote(decoded)):
            if any(piece in (".", "..") for piece in re.split(r"[/\\]", candidate)):
                raise HubHTTPError(400, f"Path traversal refused in URL {parts.path[:200]!r}.")
        segments.append(decoded)
    return segments, urllib.parse.parse_qs(parts.query, keep_blank_values=True)


class _HubRequestHandler(http.server.BaseHTTPRequestHandler):
    """HTTP/1.1 keep-alive handler: frames bodies (Content-Length or chunked), always drains them, always sends
    Content-Length, and streams file downloads with `sendfile`."""

    protocol_version = "HTTP/1.1"
    server_version = "hftransfer-hub"
    sys_version = ""
    disable_nagle_algorithm = True  # small JSON answers must not wait for delayed ACKs on keep-alive connections
    timeout = 300  # seconds a connection may stay silent (idle keep-alive or stalled upload)
    server: _HubHTTPServer

    def log_message(self, format: str, *args: Any) -> None:
        logger.debug("%s - " + format, self.address_string(), *args)

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        pass  # one line per request is logged by `_handle`, with timing and user

    def _base_url(self) -> str:
        host = self.headers.get("Host", "")
        # URLs handed back to the client (upload links, commit URLs) use the address the client used.
        return f"http://{host}" if _HOST_RE.match(host) else self.server.public_url

    def _shown_path(self) -> str:
        if self.path.startswith("/_hftransfer/lfs-upload/"):
            return "/_hftransfer/lfs-upload/<signed link>"  # the link is a credential: keep it out of logs
        return self.path[:300]

    def handle_one_request(self) -> None:
        # Waiting for (or reading) the next request line and headers: this connection may be closed to make room.
        self.server.set_idle(self.connection, True)
        self.connection.settimeout(self.server.idle_timeout)
        super().handle_one_request()

    def _handle(self) -> None:
        self.server.set_idle(self.connection, False)
        self.connection.settimeout(self.timeout)
        started = time.monotonic()
        request_id = self.headers.get("X-Amzn-Trace-Id") or self.headers.get("X-Request-Id") or secrets.token_hex(8)
        request_id = _header_safe(request_id, 100)
        request: Request | None = None
        try:
            body = _RequestBody(self.rfile, self.headers)
        except _BadFraming as exc:
            response = _error_response(HubHTTPError(400, f"Bad request body framing: {exc}"))
            response.close = True
            self._send(response, request_id)
            return
        try:
            segments, query = _split_target(self.path)
            request = Request(self.command, self.path, segments, query, self.headers, body, self._base_url())
            request.request_id = request_id
            response = self.server.app.handle(request)
        except _ClientGone as exc:
            logger.warning(
                '%s "%s %s": client went away mid-request (%s)',
                self.client_address[0],
                self.command,
                self._shown_path(),
                exc,
            )
            self.close_connection = True
            return
        except _BadFraming as exc:
            response = _error_response(HubHTTPError(400, f"Bad request body framing: {exc}"))
            response.close = True
        except HubHTTPError as exc:
            response = _error_response(exc)
        except Exception:
            logger.exception("internal error on %s %s (request id %s)", self.command, self._shown_path(), request_id)
            response = _error_response(
                HubHTTPError(500, f"Internal server error (request id {request_id}); see the server log.")
            )
        if not response.close:
            try:
                # The next request on this connection starts right after this body; a large unread rest (an early
                # 413 or 401 on a big upload) is not waited for: the connection is closed instead.
                if not body.drain():
                    response.close = True
            except _ClientGone:
                self.close_connection = True
                return
            except _BadFraming as exc:
                response = _error_response(HubHTTPError(400, f"Bad request body framing: {exc}"))
                response.close = True
        self._send(response, request_id)
        user = request.principal.name if request is not None and request.principal else "-"
        logger.info(
            '%s "%s %s" %d %d %.3fs user=%s id=%s',
            self.client_address[0],
            self.command,
            self._shown_path(),
            response.status,
            response.content_length,
            time.monotonic() - started,
            user,
            request_id,
        )

    def _send(self, response: Response, request_id: str) -> None:
        try:
            self.send_response(response.status)
            for name, value in response.headers:
                self.send_header(name, value)
            self.send_header("X-Request-Id", request_id)
            self.send_header("Content-Length", str(response.content_length))
            if response.close:
                self.send_header("Connection", "close")  # also sets self.close_connection
            self.end_headers()
            if self.command == "HEAD":
                return
            if response.file is not None:
                path, offset, length = response.file
                with open(path, "rb") as handle:
                    sent = self.connection.sendfile(handle, offset, length)
                if sent != length:
                    raise OSError(f"sent {sent} of {length} bytes of {path}")
            elif response.body:
                self.wfile.write(response.body)
        except OSError as exc:  # client gone, reset, timeout, or a blob vanished
            logger.info("could not send the response to %s: %s", self.client_address[0], exc)
            self.close_connection = True

    do_GET = do_HEAD = do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = _handle


class _HubHTTPServer(http.server.ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True  # rebind the same port right after a stop, despite TIME_WAIT connections
    request_queue_size = 128

    def __init__(
        self,
        address: tuple[str, int],
        app: HubApp,
        family: socket.AddressFamily,
        *,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
        idle_timeout: float = DEFAULT_IDLE_TIMEOUT,
    ) -> None:
        self.address_family = family
        self.app = app
        self.public_url = ""
        self.max_connections = max_connections
        self.idle_timeout = idle_timeout
        self._connections: dict[Any, threading.Thread] = {}  # open connection -> the thread serving it
        self._idle: dict[Any, float] = {}  # connections waiting for their next request -> since when
        self._connections_lock = threading.Lock()
        super().__init__(address, _HubRequestHandler)

    def set_idle(self, connection: Any, idle: bool) -> None:
        with self._connections_lock:
            if idle:
                self._idle[connection] = time.monotonic()
            else:
                self._idle.pop(connection, None)

    def _make_room(self) -> bool:
        """Under the lock: whether a new connection may be served, closing the longest-idle one if all are taken.

        Idle keep-alive connections and clients still sending their request headers (slowloris) give way to new
        clients; connections in the middle of a request are never cut.
        """
        if len(self._connections) < self.max_connections:
            return True
        if not self._idle:
            return False
        victim = min(self._idle, key=self._idle.__getitem__)
        del self._idle[victim]
        self._connections.pop(victim, None)  # its thread ends on the shut-down socket
        with contextlib.suppress(OSError):
            victim.shutdown(socket.SHUT_RDWR)
        return True

    def _refuse(self, request: Any) -> None:
        """Answer 503 on a connection that cannot be served (every worker is busy), without blocking the accept loop."""
        message = (
            f"Server busy: all {self.max_connections} connections are serving requests. Retry in a moment "
            "(or start the server with a larger --max-connections)."
        )
        body = json.dumps({"error": message}).encode()
        head = (
            "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json; charset=utf-8\r\n"
            f"Content-Length: {len(body)}\r\nRetry-After: 1\r\nX-Error-Message: {message}\r\nConnection: close\r\n\r\n"
        )
        with contextlib.suppress(OSError):
            request.settimeout(1.0)
            request.sendall(head.encode() + body)
        logger.warning("refused a connection: all %d connections busy", self.max_connections)
        super().shutdown_request(request)

    def server_bind(self) -> None:
        # HTTPServer.server_bind resolves the host name (getfqdn), a DNS query this server must never make.
        socketserver_bind = super(http.server.HTTPServer, self).server_bind
        socketserver_bind()
        self.server_name, self.server_port = str(self.server_address[0]), int(self.server_address[1])

    def process_request(self, request: Any, client_address: Any) -> None:
        # Daemon threads (a forgotten server never blocks interpreter exit), but tracked, so `stop()` can wait for
        # requests in flight: no write may land after the data directory is released.
        thread = threading.Thread(
            target=self.process_request_thread, args=(request, client_address), name="hub-server-conn", daemon=True
        )
        with self._connections_lock:
            admitted = self._make_room()
            if admitted:
                self._connections[request] = thread
        if not admitted:
            self._refuse(request)
            return
        thread.start()

    def shutdown_request(self, request: Any) -> None:
        with self._connections_lock:
            self._connections.pop(request, None)
            self._idle.pop(request, None)
        super().shutdown_request(request)

    def close_all_connections(self, timeout: float = 30.0) -> None:
        """Cut open connections (idle keep-alive ones included) and wait for their threads to finish."""
        with self._connections_lock:
            connections = dict(self._connections)
        for connection in connections:
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)
        deadline = time.monotonic() + timeout
        for thread in connections.values():
            thread.join(max(0.0, deadline - time.monotonic()))

    def handle_error(self, request: Any, client_address: Any) -> None:
        logger.debug("connection error with %s", client_address, exc_info=True)


class _DataDirLock:
    """An exclusive lock on a data directory (flock), released by the kernel even if the process is killed."""

    def __init__(self, data_dir: Path) -> None:
        self.path = data_dir / "server.lock"
        self._handle: IO[str] | None = None

    def acquire(self) -> None:
        handle = open(self.path, "a+")  # noqa: SIM115 - held open for the server's lifetime
        if fcntl is not None:
            try:
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                handle.seek(0)
                owner = handle.read().strip() or "unknown"
                handle.close()
                raise RuntimeError(
                    f"Data directory {self.path.parent} is already served by another hub server (pid {owner}); stop "
                    "it first or use another data directory."
                ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(str(os.getpid()))
        handle.flush()
        self._handle = handle

    def release(self) -> None:
        if self._handle is not None:
            if fcntl is not None:
                with contextlib.suppress(OSError):
                    fcntl.flock(self._handle.fileno(), fcntl.LOCK_UN)
            self._handle.close()
            self._handle = None


def _token_for(tokens: Mapping[str, str], user: str, role: str) -> str:
    for token, value in tokens.items():
        _, name, token_role = parse_token_spec(f"{token}={value}")
        if name == user and token_role == role:
            return token
    users = sorted({parse_token_spec(f"{token}={value}")[1] for token, value in tokens.items()})
    raise KeyError(f"No {role} token configured for user {user!r}; users with tokens: {users}.")


def _format_url(host: str, port: int) -> str:
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


class LocalHubServer:
    """A Hub-compatible server running in a background thread of this process.

    Point `huggingface_hub` at [`LocalHubServer.url`] (`HfApi(endpoint=server.url)` or `HF_ENDPOINT`, set before
    `huggingface_hub` is imported) with `HF_HUB_DISABLE_XET=1`.

    Args:
        data_dir (`str` or `os.PathLike`):
            Where repositories and files are stored; created if missing. Data survives restarts. One server at a
            time may use a data directory.
        tokens (`Mapping[str, str]`, *optional*):
            Access tokens: token -> user name, or `"user:read"` for a read-only token. Without tokens the server
            only serves anonymous reads (of nothing, since nobody can create a repository).
        orgs (`Mapping[str, Sequence[str]]`, *optional*):
            Organizations: name -> member user names. Members may create and write repositories in the organization.
        host (`str`, *optional*, defaults to `"127.0.0.1"`):
            Address to listen on. The server has no TLS: keep it on loopback unless the network is trusted.
        port (`int`, *optional*, defaults to `0`):
            Port to listen on; `0` picks a free one (kept across [`restart`]).
        lfs_threshold (`int`, *optional*, defaults to 10 MiB):
            Files above this size go through LFS; regular files above it are refused, as on the Hub.
        upload_link_ttl (`float`, *optional*, defaults to 3600):
            Seconds an LFS upload link stays valid. Links are signed with a key kept in the data directory, so they
            stay valid across restarts and the client's automatic retries succeed.
        fsync (`bool`, *optional*, defaults to `True`):
            Flush writes to disk before making them visible. Turn off only for throw-away data.
        max_connections (`int`, *optional*, defaults to 64):
            Connections served at once, one thread each. When all are taken, a new client replaces the connection
            that has waited longest for its next request (idle keep-alive, or still sending headers); when every
            connection is in the middle of a request, the new client gets `503` with a JSON error.
        idle_timeout (`float`, *optional*, defaults to 60):
            Seconds a connection may wait for its next request (request line and headers) before it is closed.

    Example:

    ```python
    >>> from huggingface_hub import HfApi
    >>> with LocalHubServer("/tmp/hub", tokens={"secret-a": "alice"}) as server:
    ...     api = HfApi(endpoint=server.url, token=server.token_for("alice"))
    ...     api.create_repo("alice/demo")
    ...     api.upload_file(path_or_fileobj=b"hello", path_in_repo="hello.txt", repo_id="alice/demo")
    ```
    """

    def __init__(
        self,
        data_dir: str | os.PathLike,
        tokens: Mapping[str, str] | None = None,
        *,
        orgs: Mapping[str, Sequence[str]] | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        lfs_threshold: int = DEFAULT_LFS_THRESHOLD,
        upload_link_ttl: float = DEFAULT_UPLOAD_LINK_TTL,
        fsync: bool = True,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
        idle_timeout: float = DEFAULT_IDLE_TIMEOUT,
    ) -> None:
        if int(max_connections) < 1:
            raise ValueError(f"max_connections={max_connections!r} is invalid: expected at least 1.")
        self.max_connections = int(max_connections)
        self.idle_timeout = float(idle_timeout)
        self.data_dir = Path(data_dir).resolve()
        self.tokens = dict(tokens or {})
        for token, value in self.tokens.items():
            parse_token_spec(f"{token}={value}")  # fail here, with the bad spec named, rather than at start()
        self.orgs = {org: tuple(members) for org, members in (orgs or {}).items()}
        self.host = host
        self.port = int(port)
        self.lfs_threshold = int(lfs_threshold)
        self.upload_link_ttl = float(upload_link_ttl)
        self.fsync = fsync
        self._httpd: _HubHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._lock: _DataDirLock | None = None
        self._state = threading.Lock()

    # -- properties ----------------------------------------------------------------------------------------------

    @property
    def running(self) -> bool:
        return self._httpd is not None

    @property
    def url(self) -> str:
        """The endpoint to give to `huggingface_hub`, e.g. `http://127.0.0.1:54321` (available once started)."""
        if not self.port:
            raise RuntimeError("LocalHubServer has no port yet: call start() first.")
        return _format_url(self.host, self.port)

    @property
    def storage(self) -> HubStorage:
        """The running server's [`HubStorage`] (e.g. to inspect repositories on disk in tests)."""
        if self._httpd is None:
            raise RuntimeError("LocalHubServer is not running: call start() first.")
        return self._httpd.app.storage

    def token_for(self, user: str, role: str = "write") -> str:
        """Return a configured token of `user` with the given role (`"write"` or `"read"`).

        Raises:
            `KeyError`: naming the user and the users that have tokens.
        """
        return _token_for(self.tokens, user, role)

    # -- lifecycle -----------------------------------------------------------------------------------------------

    def start(self) -> LocalHubServer:
        """Start serving in a daemon thread (no-op if already running) and return `self`."""
        with self._state:
            if self._httpd is not None:
                return self
            self.data_dir.mkdir(parents=True, exist_ok=True)
            lock = _DataDirLock(self.data_dir)
            lock.acquire()
            try:
                storage = HubStorage(self.data_dir, fsync=self.fsync)
                removed = storage.cleanup_tmp()  # safe: the lock proves no other server writes here
                if removed:
                    logger.info("removed %d leftover(s) of interrupted writes from %s", removed, storage.tmp_dir)
                app = HubApp(
                    storage,
                    self.tokens,
                    orgs=self.orgs,
                    lfs_threshold=self.lfs_threshold,
                    upload_link_ttl=self.upload_link_ttl,
                )
                httpd = self._bind(app)
            except BaseException:
                lock.release()
                raise
            self.port = int(httpd.server_address[1])
            httpd.public_url = self.url
            thread = threading.Thread(
                target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, name=f"hub-server-{self.port}", daemon=True
            )
            thread.start()
            self._httpd, self._thread, self._lock = httpd, thread, lock
        if not _is_loopback(self.host):
            logger.warning("listening on %s, beyond loopback: there is no TLS, tokens travel in clear text", self.host)
        logger.info("hub server listening on %s (data dir %s)", self.url, self.data_dir)
        return self

    def _bind(self, app: HubApp) -> _HubHTTPServer:
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        deadline = time.monotonic() + 10
        while True:
            try:
                return _HubHTTPServer(
                    (self.host, self.port),
                    app,
                    family,
                    max_connections=self.max_connections,
                    idle_timeout=self.idle_timeout,
                )
            except OSError as exc:
                # Right after a stop the port can stay busy for a moment; a port in use by someone else stays busy.
                if self.port == 0 or time.monotonic() > deadline or exc.errno not in (98, 48, 10048):
                    raise OSError(exc.errno, f"cannot listen on {self.host}:{self.port}: {exc.strerror}") from exc
                time.sleep(0.1)

    def stop(self) -> None:
        """Stop serving: close the listening socket and every open connection, then release the data directory."""
        with self._state:
            httpd, thread, lock = self._httpd, self._thread, self._lock
            self._httpd = self._thread = self._lock = None
            if httpd is None:
                return
            httpd.shutdown()
            httpd.server_close()
            httpd.close_all_connections()
            if thread is not None:
                thread.join(timeout=10)
            if lock is not None:
                lock.release()
        logger.info("hub server on port %d stopped", self.port)

    def restart(self) -> LocalHubServer:
        """Stop and start again on the same port and data directory (e.g. to test interrupted transfers)."""
        self.stop()
        return self.start()

    def __enter__(self) -> LocalHubServer:
        return self.start()

    def __exit__(self, *exc_info: Any) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = self.url if self.running else "stopped"
        return f"LocalHubServer({state}, data_dir={str(self.data_dir)!r})"


class HubServerProcess:
    """The same server in a child process (`python -m hftransfer.testing.hub_server`), e.g. to SIGKILL it mid-upload.

    Tokens reach the child through the `HFTRANSFER_HUB_TOKENS` environment variable, not its command line.

    Args:
        data_dir (`str` or `os.PathLike`):
            The server's data directory.
        tokens (`Mapping[str, str]`, *optional*):
            Token -> user (or `"user:read"`), as for [`LocalHubServer`].
        orgs (`Mapping[str, Sequence[str]]`, *optional*):
            Organization -> members.
        host (`str`, *optional*, defaults to `"127.0.0.1"`):
            Address to listen on.
        port (`int`, *optional*, defaults to `0`):
            Port; `0` picks a free one, reused by [`restart`].
        extra_args (`Sequence[str]`, *optional*):
            More command-line options, e.g. `["--lfs-threshold", "1000"]`.
        python (`str`, *optional*):
            Interpreter to run; defaults to `sys.executable`.
        startup_timeout (`float`, *optional*, defaults to 120):
            Seconds to wait for the "listening on" line.
        run_as (`str`, *optional*, defaults to `"module"`):
            `"module"` runs `python -m hftransfer.testing.hub_server`; `"script"` runs this file directly, which
            skips importing the `hftransfer` package (and with it transformers and torch): same server, faster start.
    """

    def __init__(
        self,
        data_dir: str | os.PathLike,
        tokens: Mapping[str, str] | None = None,
        *,
        orgs: Mapping[str, Sequence[str]] | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        extra_args: Sequence[str] = (),
        python: str | None = None,
        startup_timeout: float = 120.0,
        run_as: str = "module",
    ) -> None:
        if run_as not in ("module", "script"):
            raise ValueError(f"run_as={run_as!r} is invalid: expected 'module' or 'script'.")
        self.run_as = run_as
        self.data_dir = Path(data_dir).resolve()
        self.tokens = dict(tokens or {})
        self.orgs = {org: tuple(members) for org, members in (orgs or {}).items()}
        self.host = host
        self.port = int(port)
        self.extra_args = list(extra_args)
        self.python = python or sys.executable
        self.startup_timeout = startup_timeout
        self.process: subprocess.Popen[str] | None = None

    @property
    def url(self) -> str:
        if not self.port:
            raise RuntimeError("HubServerProcess has no port yet: call start() first.")
        return _format_url(self.host, self.port)

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    def token_for(self, user: str, role: str = "write") -> str:
        """Return a configured token of `user` (see [`LocalHubServer.token_for`])."""
        return _token_for(self.tokens, user, role)

    def command(self) -> list[str]:
        entry = ["-m", MODULE_NAME] if self.run_as == "module" else [os.path.abspath(__file__)]
        command = [self.python, *entry, "--host", self.host, "--port", str(self.port)]
        command += ["--data-dir", str(self.data_dir)]
        for org, members in self.orgs.items():
            command += ["--org", f"{org}={','.join(members)}"]
        return command + self.extra_args

    def start(self) -> HubServerProcess:
        """Launch the child and wait for its "listening on URL" line; returns `self`."""
        if self.process is not None and self.process.poll() is None:
            return self
        env = dict(os.environ)
        env["HFTRANSFER_HUB_TOKENS"] = "\n".join(f"{token}={user}" for token, user in self.tokens.items())
        process = subprocess.Popen(
            self.command(), stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, env=env, text=True, bufsize=1
        )
        first_line: list[str] = []
        reader = threading.Thread(target=lambda: first_line.append(process.stdout.readline()), daemon=True)
        reader.start()
        reader.join(self.startup_timeout)
        line = first_line[0].strip() if first_line else ""
        match = re.search(rf"{STARTUP_LINE} (http://\S+)", line)
        if match is None:
            process.kill()
            process.wait()
            raise RuntimeError(
                f"Hub server process did not start within {self.startup_timeout}s (exit code {process.returncode}, "
                f"first line {line!r}); its log is on stderr. Command: {' '.join(self.command())}"
            )
        self.port = int(urllib.parse.urlsplit(match.group(1)).port or 0)
        # Keep reading stdout so that the child never blocks on a full pipe.
        threading.Thread(target=lambda: process.stdout.read(), daemon=True).start()
        self.process = process
        return self

    def kill(self) -> None:
        """SIGKILL the child (no cleanup runs: a crash) and wait for it."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def stop(self, timeout: float = 15.0) -> None:
        """Ask the child to stop (SIGTERM), SIGKILL it after `timeout` seconds."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()

    def restart(self) -> HubServerProcess:
        """Stop the child if it runs and start a new one on the same port and data directory."""
        self.stop()
        return self.start()

    def __enter__(self) -> HubServerProcess:
        return self.start()

    def __exit__(self, *exc_info: Any) -> None:
        self.stop()


# --------------------------------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------------------------------


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


if __name__ == "__main__":
    exit_code = main()
    # Skip the interpreter's teardown: `python -m` imports the hftransfer package, which imports torch and
    # transformers, whose teardown takes seconds and has nothing to flush for this process (the server has stopped,
    # its writes are on disk).
    sys.stdout.flush()
    sys.stderr.flush()
    logging.shutdown()
    os._exit(exit_code)
