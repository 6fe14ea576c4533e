"""The route table's vocabulary: a [`Route`] is methods + a path pattern + the name of a handler method."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .common import _PLURAL_TO_TYPE


@dataclass(frozen=True)
class Route:
    """One line of the route table: HTTP methods, a path pattern and the name of the handler method.

    Pattern segments are literals or placeholders: `{type}` (`models`, `datasets`, `spaces`: gives `repo_type`),
    `{namespace}` and `{name}` (together: `repo_id`), `{name.git}` (a segment ending in `.git`), any other `{param}`
    (one segment), and a final `{param*}` (the rest of the path, maybe empty, joined with `/`) or `{param+}` (one or
    more segments, as a list). `fixed` adds constant keyword arguments.
    """

    methods: tuple[str, ...]
    pattern: tuple[str, ...]
    handler: str
    fixed: tuple[tuple[str, Any], ...] = ()

    def match(self, segments: list[str]) -> dict[str, Any] | None:
        params: dict[str, Any] = dict(self.fixed)
        for index, token in enumerate(self.pattern):
            if token.endswith(("*}", "+}")):
                rest = segments[index:]
                if token.endswith("+}") and not rest:
                    return None
                params[token[1:-2]] = rest if token.endswith("+}") else "/".join(rest)
                break
            if index >= len(segments):
                return None
            segment = segments[index]
            if token == "{type}":
                if segment not in _PLURAL_TO_TYPE:
                    return None
                params["repo_type"] = _PLURAL_TO_TYPE[segment]
            elif token == "{name.git}":
                if not segment.endswith(".git"):
                    return None
                params["name"] = segment[: -len(".git")]
            elif token.startswith("{"):
                params[token[1:-1]] = segment
            elif token != segment:
                return None
        else:
            if len(segments) != len(self.pattern):
                return None
        if "namespace" in params:
            params["repo_id"] = f"{params.pop('namespace')}/{params.pop('name')}"
        return params


def _routes(*lines: tuple) -> tuple[Route, ...]:
    return tuple(
        Route(tuple(methods.split()), tuple(pattern.strip("/").split("/")), handler, tuple(fixed.items()))
        for methods, pattern, handler, *rest in lines
        for fixed in [rest[0] if rest else {}]
    )
