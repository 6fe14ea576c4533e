"""Content-addressed, crash-safe storage: blobs by sha256, immutable commits, refs, atomic writes."""

from __future__ import annotations

import collections
import contextlib
import hashlib
import json
import os
import secrets
import shutil
import tempfile
import threading
from pathlib import Path
from typing import Any

from .common import (
    _HEX40_RE,
    _HEX64_RE,
    _PR_REF_RE,
    REPO_TYPES,
    _git_blob_oid,
    _json_bytes,
    _lfs_pointer,
    _now_iso,
    _object_id,
)

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
