"""The repository endpoints: whoami, create, delete, settings, info, listings, YAML validation."""

from __future__ import annotations

import contextlib
import json
from typing import Any

from .cards import MAX_CARD_JSON, _card_tags, _parse_card_metadata
from .common import REPO_TYPES, RESERVED_NAMESPACES, HubHTTPError, _lfs_pointer, _object_id, check_name, logger
from .transport import Request, Response, _json_response


class ReposAPI:
    """Accounts and repositories: whoami, create/delete, settings, repo info and listings, model-card metadata."""

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
