"""The Hub API: the route table and the application object that dispatches a parsed request to its handler."""

from __future__ import annotations

import urllib.parse
from collections.abc import Mapping, Sequence
from typing import Any

from .api_commits import CommitsAPI
from .api_discussions import DiscussionsAPI
from .api_files import FilesAPI
from .api_lfs import UploadsAPI
from .api_repos import ReposAPI
from .auth import AccessControl, Principal, _token_key
from .common import (
    DEFAULT_LFS_THRESHOLD,
    DEFAULT_UPLOAD_LINK_TTL,
    REPO_TYPES,
    RESERVED_NAMESPACES,
    XET_HINT,
    XET_HINT_PATH,
    HubHTTPError,
    check_name,
    parse_token_spec,
)
from .globs import _PatternSet
from .routing import Route, _routes
from .storage import HubStorage
from .transport import Request, Response, _json_response
from .web import WebView

_REPO = "api/{type}/{namespace}/{name}"
_DISCUSSION = f"{_REPO}/discussions/{{num}}"
# Served before the token is checked: the upload link is its own credential.
INTERNAL_ROUTES = _routes(
    ("PUT", "_hftransfer/lfs-upload/{ticket}", "lfs_upload"),
    ("GET POST PUT", XET_HINT_PATH, "xet_hint"),
)
API_ROUTES = _routes(
    ("GET", "api/whoami-v2", "whoami"),
    ("POST", "api/repos/create", "create_repo"),
    ("DELETE", "api/repos/delete", "delete_repo"),
    ("GET", "api/agent-harnesses", "agent_harnesses"),  # fetched (best-effort) by huggingface_hub
    ("POST", "api/validate-yaml", "validate_yaml"),
    ("GET", "api/resolve-cache/{type}/{namespace}/{name}/{revision}/{path_parts+}", "resolve"),
    ("GET", "api/{type}", "list_repos"),
    ("GET POST PUT DELETE", "api/{type}/{canonical}", "canonical_not_found"),  # "gpt2": not hosted here
    # repositories
    ("GET", _REPO, "repo_info", {"revision": "main"}),
    ("GET", f"{_REPO}/revision/{{revision}}", "repo_info"),
    ("PUT", f"{_REPO}/settings", "update_settings"),
    # files
    ("GET", f"{_REPO}/tree/{{revision}}/{{path*}}", "tree"),
    ("POST", f"{_REPO}/paths-info/{{revision}}", "paths_info"),
    # uploads and commits
    ("POST", f"{_REPO}/preupload/{{revision}}", "preupload"),
    ("POST", f"{_REPO}/commit/{{revision}}", "commit"),
    ("GET POST", f"{_REPO}/xet-write-token/{{rest*}}", "xet_token"),
    ("GET POST", f"{_REPO}/xet-read-token/{{rest*}}", "xet_token"),
    # refs and history
    ("GET", f"{_REPO}/refs", "list_refs"),
    ("GET", f"{_REPO}/commits/{{revision}}", "list_commits"),
    ("POST", f"{_REPO}/branch/{{branch}}", "create_branch"),
    ("DELETE", f"{_REPO}/branch/{{branch}}", "delete_branch"),
    ("POST", f"{_REPO}/tag/{{revision}}", "create_tag"),
    ("DELETE", f"{_REPO}/tag/{{tag}}", "delete_tag"),
    # discussions and pull requests
    ("GET", f"{_REPO}/discussions", "list_discussions"),
    ("POST", f"{_REPO}/discussions", "create_discussion"),
    ("GET", _DISCUSSION, "discussion_details"),
    ("POST", f"{_DISCUSSION}/comment", "comment_discussion"),
    ("POST", f"{_DISCUSSION}/comment/{{comment_id}}/edit", "edit_comment", {"verb": "edit"}),
    ("POST", f"{_DISCUSSION}/comment/{{comment_id}}/hide", "edit_comment", {"verb": "hide"}),
    ("POST", f"{_DISCUSSION}/status", "discussion_status"),
    ("POST", f"{_DISCUSSION}/title", "discussion_title"),
    ("POST", f"{_DISCUSSION}/merge", "merge_pull_request"),
)
# git-style URLs: /{namespace}/{name}.git/info/lfs/... and /{namespace}/{name}/resolve/..., also under datasets/, spaces/
GIT_ROUTES = tuple(
    route
    for prefix, repo_type in (("", "model"), ("datasets/", "dataset"), ("spaces/", "space"))
    for route in _routes(
        ("POST", f"{prefix}{{namespace}}/{{name.git}}/info/lfs/objects/batch", "lfs_batch", {"repo_type": repo_type}),
        (
            "POST",
            f"{prefix}{{namespace}}/{{name.git}}/info/lfs/objects/verify",
            "lfs_verify",
            {"repo_type": repo_type},
        ),
        (
            "GET",
            f"{prefix}{{namespace}}/{{name}}/resolve/{{revision}}/{{path_parts+}}",
            "resolve",
            {"repo_type": repo_type},
        ),
        (
            "GET",
            f"{prefix}{{canonical}}/resolve/{{revision}}/{{path_parts+}}",
            "canonical_not_found",
            {"repo_type": repo_type},
        ),
    )
)


WEB_ROUTES = _routes(
    ("GET", "login", "web_login_form"),
    ("POST", "login", "web_login"),
    ("POST", "logout", "web_logout"),
    ("GET", "datasets/{namespace}/{name}", "web_repo", {"repo_type": "dataset"}),
    ("GET", "spaces/{namespace}/{name}", "web_repo", {"repo_type": "space"}),
    ("GET", "{namespace}/{name}", "web_repo", {"repo_type": "model"}),
)


class HubApp(AccessControl, ReposAPI, FilesAPI, UploadsAPI, CommitsAPI, DiscussionsAPI, WebView):
    """The Hub API on top of a [`HubStorage`]: turns a parsed [`Request`] into a [`Response`].

    Each API area is a mixin in a module of its own (`api_repos`, `api_files`, `api_lfs`, `api_commits`,
    `api_discussions`, `web`); access rules live in `auth`. Requests are dispatched by the route tables above.

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

    def handle(self, request: Request) -> Response:
        self.authenticate(request)
        segments = request.segments
        if segments[:1] == ["_hftransfer"]:
            return self._dispatch(request, INTERNAL_ROUTES)
        if segments == ["health"]:
            return _json_response({"status": "ok", "server": "hftransfer hub server"})
        if request.auth_invalid:
            # Same answer as the Hub, which the client reports as a bad token rather than a missing repo.
            raise HubHTTPError(401, "Invalid credentials in Authorization header")
        if not segments:
            self._dispatch_method(request, ("GET",))
            return self.web_index(request)
        if segments[0] == "api":
            return self._dispatch(request, API_ROUTES)
        return self._dispatch(request, GIT_ROUTES + WEB_ROUTES)

    def _dispatch(self, request: Request, routes: Sequence[Route]) -> Response:
        method = "GET" if request.method == "HEAD" else request.method
        allowed: list[str] = []
        for route in routes:
            params = route.match(request.segments)
            if params is None:
                continue
            if method in route.methods:
                return getattr(self, route.handler)(request, **params)
            allowed += [m for m in route.methods if m not in allowed]
        if allowed:
            raise HubHTTPError(405, f"Method {request.method} is not allowed here; use {' or '.join(allowed)}.")
        raise HubHTTPError(404, f"Unknown endpoint {request.method} {urllib.parse.urlsplit(request.target).path}")

    @staticmethod
    def _dispatch_method(request: Request, allowed: tuple[str, ...]) -> None:
        if ("GET" if request.method == "HEAD" else request.method) not in allowed:
            raise HubHTTPError(405, f"Method {request.method} is not allowed here; use {' or '.join(allowed)}.")

    # -- small endpoints -----------------------------------------------------------------------------------------

    def agent_harnesses(self, request: Request) -> Response:
        return _json_response({"standardEnvVars": [], "harnesses": {}})

    def canonical_not_found(self, request: Request, repo_type: str, canonical: str, **_: Any) -> Response:
        raise self._repo_not_found(repo_type, canonical)

    def xet_token(self, request: Request, repo_type: str, repo_id: str, rest: str) -> Response:
        # hf_xet (Rust) reports only the status and the URL of a failed token request, never the body: redirect to a
        # URL that says what to set, so the hint is in the message the user sees.
        return Response(307, [("Location", f"{request.base_url}{XET_HINT_PATH}")])

    def xet_hint(self, request: Request) -> Response:
        raise HubHTTPError(501, XET_HINT, "XetNotSupported")

    # -- shared lookups ------------------------------------------------------------------------------------------

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

    @staticmethod
    def _repo_url(request: Request, repo_type: str, repo_id: str) -> str:
        return f"{request.base_url}/{REPO_TYPES[repo_type][1]}{repo_id}"
