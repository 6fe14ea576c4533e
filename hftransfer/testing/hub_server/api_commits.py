"""The history endpoints: NDJSON commits, commit and ref listings, branches and tags."""

from __future__ import annotations

import base64
import binascii
from typing import Any

from .common import (
    _HEX64_RE,
    _OID_PREFIX_RE,
    _PR_REF_RE,
    MAX_JSON_BODY,
    HubHTTPError,
    check_ref_name,
    check_repo_path,
    logger,
)
from .transport import Request, Response, _json_response, _parse_json


class CommitsAPI:
    """History and refs: NDJSON commits, commit and ref listings, branches and tags."""

    def _writable_branch(self, repo_type: str, repo_id: str, revision: str, *, create_pr: bool) -> tuple[str, str]:
        """Resolve the target of a write: `(head_sha, kind)`; refuses tags and bare commit ids."""
        sha, kind, _ = self._resolve(repo_type, repo_id, revision)
        if kind in ("tag", "commit") and not create_pr:
            raise HubHTTPError(
                400, f"Cannot write to revision '{revision}': it is a {kind}; commits go to a branch (e.g. 'main')."
            )
        return sha, kind

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
