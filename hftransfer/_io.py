"""Internal file I/O helpers shared by the package: atomic writes that respect the umask, and bounded YAML.

Atomic writes (DESIGN.md invariant 6): data go to a temporary file in the destination folder, are flushed and
fsynced, get the mode a plain `open(path, "w")` would give (`0o666 & ~umask`: `tempfile.mkstemp` creates 0600, which
would hide a shared run from other users and web servers), and are renamed over the destination with `os.replace`.
Readers see the old file or the new one, never a partial one; a failure leaves no temporary file behind.

safetensors headers ([`safetensors_shapes`], [`safetensors_tensor_info`]) are read with `safetensors.safe_open`, which
validates the whole file layout, instead of parsing the header by hand.

YAML read from users (recipes, command-line values) goes through [`load_yaml`]: `yaml.safe_load` with a size limit
and a limit on aliases, so that a small file cannot expand into gigabytes ("billion laughs").
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

from .errors import YAMLLimitError

__all__ = [
    "YAMLLimitError",
    "apply_umask_mode",
    "atomic_open",
    "default_file_mode",
    "load_yaml",
    "replace_with_umask_mode",
    "safetensors_shapes",
    "safetensors_tensor_info",
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


# --------------------------------------------------------------------------------------------------------------------
# safetensors headers
# --------------------------------------------------------------------------------------------------------------------


def safetensors_tensor_info(path: str | os.PathLike) -> dict[str, tuple[tuple[int, ...], str]]:
    """Name -> (shape, dtype) of every tensor in a safetensors file, read from its header (no tensor is loaded).

    The dtype is safetensors' name (`"F32"`, `"BF16"`, `"I64"`, ...). safetensors checks the whole file while
    opening it: a truncated, padded or corrupt file raises `safetensors.SafetensorError`; a missing one `OSError`.
    """
    from safetensors import safe_open

    with safe_open(os.fspath(path), framework="numpy") as reader:
        info = {}
        for key in reader.keys():  # noqa: SIM118 - a safe_open handle is not a mapping
            tensor = reader.get_slice(key)
            info[key] = (tuple(tensor.get_shape()), tensor.get_dtype())
    return info


def safetensors_shapes(path: str | os.PathLike) -> dict[str, tuple[int, ...]]:
    """Name -> shape of every tensor in a safetensors file (see [`safetensors_tensor_info`] for the errors)."""
    return {key: shape for key, (shape, _) in safetensors_tensor_info(path).items()}


# --------------------------------------------------------------------------------------------------------------------
# Bounded YAML
# --------------------------------------------------------------------------------------------------------------------

# A recipe is a few KB; 1 MiB leaves room for long descriptions and generated files.
MAX_YAML_BYTES = 1 << 20
# Anchors/aliases are legitimate (`&defaults` / `*defaults`), but a few dozen cover any real file.
MAX_YAML_ALIASES = 100
# Nodes after expanding every alias: what a consumer that walks the data (a dataclass, str(), json) would see.
MAX_YAML_NODES = 100_000


def _bounded_loader(max_aliases: int, max_nodes: int, where: str):
    import yaml

    class _BoundedLoader(yaml.SafeLoader):
        aliases = 0

        def compose_node(self, parent, index):
            if self.check_event(yaml.AliasEvent):
                self.aliases += 1
                if self.aliases > max_aliases:
                    raise YAMLLimitError(
                        f"{where} uses more than {max_aliases} YAML aliases (*name); refused as a possible alias bomb "
                        f"that would expand to a huge document. Write the values out instead."
                    )
            return super().compose_node(parent, index)

    def expanded_size(root) -> int:
        # Nodes with every alias expanded, counted without expanding (memoised per node); cycles are refused.
        sizes: dict[int, int] = {}
        active: set[int] = set()

        def size(node) -> int:
            key = id(node)
            if key in sizes:
                return sizes[key]
            if key in active:
                raise YAMLLimitError(f"{where} has a recursive YAML alias (an anchor used inside itself).")
            active.add(key)
            total = 1
            if isinstance(node, yaml.MappingNode):
                for k, v in node.value:
                    total += size(k) + size(v)
                    if total > max_nodes:
                        break
            elif isinstance(node, yaml.SequenceNode):
                for item in node.value:
                    total += size(item)
                    if total > max_nodes:
                        break
            active.discard(key)
            sizes[key] = total
            return total

        return size(root)

    return _BoundedLoader, expanded_size


def load_yaml(
    text: str | bytes,
    *,
    where: str = "YAML",
    max_bytes: int = MAX_YAML_BYTES,
    max_aliases: int = MAX_YAML_ALIASES,
    max_nodes: int = MAX_YAML_NODES,
) -> Any:
    """`yaml.safe_load` for YAML that comes from users, with limits that stop alias bombs and huge documents.

    Args:
        text (`str` or `bytes`): The YAML document.
        where (`str`, *optional*): What the text is (`"Recipe recipes/x.yaml"`, `"--model.hidden_sizes"`), used at
            the start of error messages.
        max_bytes (`int`, *optional*, defaults to 1 MiB): Largest accepted document.
        max_aliases (`int`, *optional*, defaults to 100): Most alias uses (`*name`).
        max_nodes (`int`, *optional*, defaults to 100,000): Most nodes once every alias is expanded.

    Returns:
        The parsed value (`None` for an empty document).

    Raises:
        [`YAMLLimitError`] (a `ValueError`) when a limit is exceeded, naming the limit; `yaml.YAMLError` for invalid
        YAML (callers wrap it with their own context).
    """
    size = len(text.encode("utf-8") if isinstance(text, str) else text)
    if size > max_bytes:
        raise YAMLLimitError(f"{where} is {size:,} bytes; at most {max_bytes:,} bytes of YAML are accepted.")
    loader_cls, expanded_size = _bounded_loader(max_aliases, max_nodes, where)
    loader = loader_cls(text)
    try:
        try:
            node = loader.get_single_node()
            nodes = 0 if node is None else expanded_size(node)
        except RecursionError:
            raise YAMLLimitError(f"{where} is nested too deeply to be parsed.") from None
        if node is None:
            return None
        if nodes > max_nodes:
            raise YAMLLimitError(
                f"{where} expands to more than {max_nodes:,} YAML nodes through its aliases (*name); refused as a "
                "possible alias bomb. Write the values out instead."
            )
        try:
            return loader.construct_document(node)
        except RecursionError:
            raise YAMLLimitError(f"{where} is nested too deeply to be built.") from None
    finally:
        loader.dispose()
