"""The upload endpoints: preupload, the git-LFS batch API, signed upload links and verify."""

from __future__ import annotations

import base64
import binascii
import contextlib
import datetime
import hashlib
import hmac
import time
from typing import Any

from .common import _HEX64_RE, MAX_PREUPLOAD_FILES, HubHTTPError, _is_binary_sample, check_repo_path, logger
from .globs import MAX_GLOB_LENGTH, MAX_GLOB_PATTERNS, MAX_GLOB_TEXT, GlobTooExpensive, _Budget, _PatternSet
from .transport import Request, Response, _json_response


class UploadsAPI:
    """Uploads: preupload (regular or LFS, .gitignore), the git-LFS batch API, signed upload links, verify."""

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
