"""Internal file I/O helpers shared by the package: atomic writes that respect the umask.

Atomic writes (DESIGN.md invariant 6): data go to a temporary file in the destination folder, are flushed and
fsynced, get the mode a plain `open(path, "w")` would give (`0o666 & ~umask`: `tempfile.mkstemp` creates 0600, which
would hide a shared run from other users and web servers), and are renamed over the destination with `os.replace`.
Readers see the old file or the new one, never a partial one; a failure leaves no temporary file behind.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

__all__ = [
    "apply_umask_mode",
    "atomic_open",
    "default_file_mode",
    "replace_with_umask_mode",
    "write_bytes_atomic",
    "write_json_atomic",
    "write_text_atomic",
]

_UMASK_LOCK = threading.Lock()


def _current_umask() -> int:
    # Linux exposes the umask without changing it; elsewhere set and restore it (under a lock, briefly).
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    with _UMASK_LOCK:
        mask = os.umask(0o022)
        os.umask(mask)
    return mask


def default_file_mode() -> int:
    """The mode a new regular file gets from `open()` under the current umask: `0o666 & ~umask`."""
    return 0o666 & ~_current_umask()


def apply_umask_mode(path: str | os.PathLike) -> None:
    """chmod a file (or every file and folder under a folder) to the modes `open()` / `mkdir()` would give now.

    For outputs written by third-party code through temporary files (safetensors' `save_file`, `mkdtemp`), which
    leave 0600 files and 0700 folders.
    """
    path = Path(path)
    mask = _current_umask()
    if path.is_dir() and not path.is_symlink():
        os.chmod(path, 0o777 & ~mask)
        for dirpath, dirnames, filenames in os.walk(path):
            for name in dirnames:
                if not os.path.islink(os.path.join(dirpath, name)):
                    os.chmod(os.path.join(dirpath, name), 0o777 & ~mask)
            for name in filenames:
                if not os.path.islink(os.path.join(dirpath, name)):
                    os.chmod(os.path.join(dirpath, name), 0o666 & ~mask)
    else:
        os.chmod(path, 0o666 & ~mask)


def replace_with_umask_mode(source: str | os.PathLike, destination: str | os.PathLike) -> None:
    """Move a file or folder written under a temporary name into place (`os.replace`), with umask modes."""
    apply_umask_mode(source)
    os.replace(source, destination)


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "wb", *, fsync: bool = True, **kwargs: Any) -> Iterator[IO]:
    """Open a temporary file next to `path` for writing; on a clean exit it replaces `path` (umask mode).

    ```python
    with atomic_open(path, "wb") as handle:
        figure.savefig(handle, format="png")
    ```

    Args:
        path (`str` or `os.PathLike`): Destination; its folder is created if needed.
        mode (`str`, *optional*, defaults to `"wb"`): `"wb"` or `"w"` (text; `encoding` defaults to UTF-8).
        fsync (`bool`, *optional*, defaults to `True`): fsync the data before the rename.
        **kwargs: Passed to `os.fdopen` (`encoding`, `newline`).
    """
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_open mode={mode!r}: expected 'w' or 'wb'.")
    if mode == "w":
        kwargs.setdefault("encoding", "utf-8")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode, **kwargs) as handle:
            yield handle
            handle.flush()
            if fsync:
                os.fsync(handle.fileno())
        os.chmod(tmp_name, default_file_mode())
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise


def write_bytes_atomic(path: str | os.PathLike, data: bytes, *, fsync: bool = True) -> Path:
    """Write `data` to `path` atomically (temporary file, fsync, umask mode, rename). Returns the path."""
    with atomic_open(path, "wb", fsync=fsync) as handle:
        handle.write(data)
    return Path(path)


def write_text_atomic(path: str | os.PathLike, text: str, *, encoding: str = "utf-8", fsync: bool = True) -> Path:
    """Write `text` to `path` atomically, newlines unchanged (no platform translation). Returns the path."""
    return write_bytes_atomic(path, text.encode(encoding), fsync=fsync)


def write_json_atomic(
    path: str | os.PathLike, payload: Any, *, indent: int | None = 2, default: Any = None, fsync: bool = True
) -> Path:
    """Write `payload` as JSON (with a trailing newline) to `path` atomically. Returns the path."""
    text = json.dumps(payload, indent=indent, default=default) + "\n"
    return write_text_atomic(path, text, fsync=fsync)
