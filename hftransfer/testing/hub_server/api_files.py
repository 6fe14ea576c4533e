"""The read endpoints for files: tree, paths-info and `/resolve` downloads."""

from __future__ import annotations

import contextlib
import hashlib
import mimetypes
import re
import urllib.parse
from typing import Any

from .common import TREE_PAGE_SIZE, HubHTTPError, check_repo_path
from .transport import Request, Response, _json_response, _parse_json


class FilesAPI:
    """Reading files: tree and paths-info listings, `/resolve` downloads with `Range`."""

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
            # A file opened in a browser (say an .html one) must not run as a page of the web view's origin.
            ("Content-Security-Policy", "sandbox; default-src 'none'; img-src 'self'; style-src 'unsafe-inline'"),
            ("X-Content-Type-Options", "nosniff"),
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
