"""Tokens, users and organizations, and the access rules every endpoint applies."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .common import HubHTTPError, check_name

if TYPE_CHECKING:
    from .transport import Request


def _token_key(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "surrogateescape")).hexdigest()


@dataclass
class Principal:
    """The authenticated caller: a user name, the token's role and the organizations the user belongs to."""

    name: str
    role: str = "write"
    orgs: tuple[str, ...] = ()


class AccessControl:
    """Who may see and change what: tokens, private repositories, namespaces and organizations."""

    def authenticate(self, request: Request) -> None:
        header = request.headers.get("Authorization", "")
        if not header:
            request.principal = self.session_principal(request)  # the web view's cookie, for GET/HEAD only
            return
        scheme, _, token = header.partition(" ")
        principal = self.tokens.get(_token_key(token.strip())) if scheme.lower() == "bearer" else None
        if principal is None:
            request.auth_invalid = True
        request.principal = principal

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

    def _require_writer_token(self, request: Request, action: str) -> Principal:
        principal = self._require_auth(request, action)
        if principal.role != "write":
            raise HubHTTPError(
                403, f"The token of user '{principal.name}' is read-only: a write token is needed to {action}."
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
