"""Shared pieces of the server: limits and constants, the error type answered as JSON, name and path checks."""

from __future__ import annotations

import datetime
import hashlib
import json
import logging
import re
from typing import Any

try:  # inside the hftransfer package: the server's exceptions share hftransfer's root error
    from ...errors import HfTransferError
except ImportError:  # the folder run on its own (`python -m hub_server`, stdlib only): a local root instead

    class HfTransferError(Exception):  # type: ignore[no-redef]
        """Root of the server's exceptions when it runs outside the hftransfer package."""


LOGGER_NAME = "hftransfer.testing.hub_server"
logger = logging.getLogger(LOGGER_NAME)


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


class HubHTTPError(HfTransferError):
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


class _ClientGone(HfTransferError):
    """The client closed the connection or stopped sending mid-body: nothing can be answered."""


class _BadFraming(HfTransferError):
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
