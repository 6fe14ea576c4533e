"""A read-only web view for people: the repositories a visitor may see, a model card rendered from Markdown, files
and history; sign-in with a token kept in an HttpOnly cookie.

- `GET /` lists the repositories the visitor may see; `GET /{namespace}/{name}` (also under `datasets/`, `spaces/`)
  shows one: the model card rendered to HTML, the files with their sizes, the commit history.
- The card is rendered with markdown-it-py (CommonMark + tables) with raw HTML turned off: a `<script>` or an
  `onerror=` in a card is shown as text, never run; links with `javascript:` and similar schemes are not made
  links. Relative images (`![plot](plot.png)`) are shown from the repository itself. Every page also carries a
  Content-Security-Policy that allows no script at all and images from this server only. Without markdown-it-py the
  card is shown as plain text.
- `GET /login` asks for a token; `POST /login` checks it and sets a session cookie (HttpOnly, SameSite=Strict,
  signed with the server's key, holding neither the token nor anything it could be derived from). The cookie is only
  honoured for `GET`/`HEAD` (pages and `/resolve` downloads such as card images), so a page elsewhere cannot use it
  to change anything. Private repositories appear only to a signed-in owner or organization member. Tokens never go
  into URLs.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import html
import time
import urllib.parse
from typing import TYPE_CHECKING

from .auth import Principal, _token_key
from .cards import _card_body
from .common import REPO_TYPES, HubHTTPError, logger
from .transport import Response

if TYPE_CHECKING:
    from .transport import Request

SESSION_COOKIE = "hftransfer_session"
SESSION_TTL = 7 * 24 * 3600
HISTORY_LIMIT = 50
CSP = (
    "default-src 'none'; img-src 'self'; style-src 'unsafe-inline'; form-action 'self'; base-uri 'none'; "
    "frame-ancestors 'none'"
)
_STYLE = """
body{font-family:system-ui,sans-serif;margin:0;color:#1f2328;background:#fff}
header{background:#0b3d91;color:#fff;padding:12px 24px;display:flex;justify-content:space-between;align-items:center}
header a{color:#fff;text-decoration:none;font-weight:600}
main{max-width:980px;margin:0 auto;padding:16px 24px}
table{border-collapse:collapse;width:100%;margin:8px 0 24px}
td,th{border-bottom:1px solid #d0d7de;padding:6px 8px;text-align:left;font-size:14px}
td.size{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
.badge{font-size:12px;border:1px solid #bf8700;color:#9a6700;border-radius:10px;padding:1px 8px;margin-left:8px}
.card{border:1px solid #d0d7de;border-radius:6px;padding:8px 24px;margin:16px 0}
.card img{max-width:100%}
code,pre{background:#f6f8fa}
pre{padding:8px;overflow:auto}
.muted{color:#656d76;font-size:13px}
"""


def _render_markdown(text: str, image_base: str) -> str:
    """Card Markdown -> HTML with raw HTML off; relative image sources point into the repository."""
    try:
        from markdown_it import MarkdownIt
    except ImportError:
        return f"<pre>{html.escape(text)}</pre>"
    md = MarkdownIt("commonmark", {"html": False}).enable("table")
    tokens = md.parse(text)
    stack = list(tokens)
    while stack:
        token = stack.pop()
        stack.extend(token.children or [])
        if token.type == "image":
            src = str(token.attrGet("src") or "")
            parts = urllib.parse.urlsplit(src)
            if src and not parts.scheme and not parts.netloc and not src.startswith(("/", "#")):
                token.attrSet("src", f"{image_base}/{src}")
    return md.renderer.render(tokens, md.options, {})


def _human_size(size: int) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if size < 1000 or unit == "GB":
            return f"{size} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    return f"{size} B"  # pragma: no cover


class WebView:
    """The web pages (mixed into [`HubApp`]); see the module docstring."""

    # -- session cookie ------------------------------------------------------------------------------------------

    def _session_value(self, token: str) -> str:
        payload = base64.urlsafe_b64encode(f"{_token_key(token)}|{int(time.time()) + SESSION_TTL}".encode()).decode()
        signature = hmac.new(self._secret, b"session|" + payload.encode(), hashlib.sha256).hexdigest()
        return f"{payload}.{signature}"

    def session_principal(self, request: Request) -> Principal | None:
        """The principal of a valid session cookie (GET/HEAD only), else None."""
        if request.method not in ("GET", "HEAD"):
            return None
        for part in request.headers.get("Cookie", "").split(";"):
            name, _, value = part.strip().partition("=")
            if name != SESSION_COOKIE:
                continue
            payload, _, signature = value.partition(".")
            expected = hmac.new(self._secret, b"session|" + payload.encode(), hashlib.sha256).hexdigest()
            if not hmac.compare_digest(signature, expected):
                return None
            try:
                key, expires = base64.urlsafe_b64decode(payload.encode()).decode().split("|")
                if int(expires) < time.time():
                    return None
            except (ValueError, binascii.Error, UnicodeDecodeError):
                return None
            return self.tokens.get(key)
        return None

    # -- pages ---------------------------------------------------------------------------------------------------

    def _page(
        self, request: Request, title: str, body: str, status: int = 200, headers: list | None = None
    ) -> Response:
        who = request.principal.name if request.principal else None
        account = (
            f'<span>{html.escape(who)} · <form method="post" action="/logout" style="display:inline">'
            '<button type="submit">Sign out</button></form></span>'
            if who
            else '<a href="/login">Sign in</a>'
        )
        page = (
            f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
            f'<meta name="viewport" content="width=device-width"><style>{_STYLE}</style></head><body>'
            f'<header><a href="/">hftransfer hub</a>{account}</header><main>{body}</main></body></html>'
        )
        return Response(
            status,
            [
                ("Content-Type", "text/html; charset=utf-8"),
                ("Content-Security-Policy", CSP),
                ("X-Content-Type-Options", "nosniff"),
                ("Referrer-Policy", "no-referrer"),
                ("Cache-Control", "no-store"),
                *(headers or []),
            ],
            page.encode(),
        )

    def web_index(self, request: Request) -> Response:
        rows = []
        for repo_type in REPO_TYPES:
            for meta in self.storage.list_repos(repo_type):
                if not self._can_read(request.principal, meta):
                    continue
                resolved = self.storage.resolve(repo_type, meta["id"], "main")
                commit = self.storage.read_commit(repo_type, meta["id"], resolved[0]) if resolved else None
                href = f"/{REPO_TYPES[repo_type][1]}{meta['id']}"
                badge = '<span class="badge">private</span>' if meta.get("private") else ""
                rows.append(
                    f'<tr><td><a href="{html.escape(href)}">{html.escape(meta["id"])}</a>{badge}</td>'
                    f"<td>{repo_type}</td><td>{html.escape(commit['date'] if commit else '')}</td></tr>"
                )
        table = (
            "<table><thead><tr><th>Repository</th><th>Type</th><th>Updated</th></tr></thead><tbody>"
            + "".join(rows)
            + "</tbody></table>"
            if rows
            else "<p>No repositories to show.</p>"
        )
        hint = "" if request.principal else '<p class="muted">Private repositories appear after you sign in.</p>'
        return self._page(request, "Repositories", f"<h1>Repositories</h1>{table}{hint}")

    def web_repo(self, request: Request, repo_type: str, repo_id: str) -> Response:
        try:
            meta = self._repo_for_read(request, repo_type, repo_id)
        except HubHTTPError as exc:
            return self._page(request, "Not found", f"<h1>Not found</h1><p>{html.escape(exc.message)}</p>", 404)
        sha, _, _ = self._resolve(repo_type, repo_id, "main")
        commit = self._commit(repo_type, repo_id, sha)
        tree = commit["tree"]
        prefix = f"/{REPO_TYPES[repo_type][1]}{repo_id}"
        card_html = '<p class="muted">No model card (README.md).</p>'
        entry = tree.get("README.md")
        if entry is not None and entry["size"] <= 1024 * 1024:
            text = self.storage.read_blob(entry["sha256"]).decode("utf-8", "replace")
            card_html = _render_markdown(_card_body(text), f"{prefix}/resolve/{sha}")
        lfs_mark = ' <span class="muted">LFS</span>'
        files = "".join(
            f'<tr><td><a href="{html.escape(prefix)}/resolve/main/{html.escape(urllib.parse.quote(path))}">'
            f"{html.escape(path)}</a>{lfs_mark if tree[path]['lfs'] else ''}</td>"
            f'<td class="size">{_human_size(tree[path]["size"])}</td></tr>'
            for path in sorted(tree)
        )
        history, current, count = [], commit, 0
        while current is not None and count < HISTORY_LIMIT:
            history.append(
                f"<tr><td><code>{current['id'][:10]}</code></td><td>{html.escape(current['title'])}</td>"
                f"<td>{html.escape(current['author'])}</td><td>{html.escape(current['date'])}</td></tr>"
            )
            parents, count = current["parents"], count + 1
            current = self.storage.read_commit(repo_type, repo_id, parents[0]) if parents else None
        badge = '<span class="badge">private</span>' if meta.get("private") else ""
        body = (
            f'<h1 id="repo-title">{html.escape(repo_id)}{badge}</h1>'
            f'<section class="card" id="model-card">{card_html}</section>'
            f'<h2>Files</h2><table id="files"><thead><tr><th>Path</th><th>Size</th></tr></thead><tbody>{files}'
            "</tbody></table>"
            f'<h2>History</h2><table id="history"><thead><tr><th>Commit</th><th>Title</th><th>Author</th>'
            f"<th>Date</th></tr></thead><tbody>{''.join(history)}</tbody></table>"
        )
        return self._page(request, repo_id, body)

    def web_login_form(self, request: Request, error: str = "", status: int = 200) -> Response:
        message = f'<p style="color:#cf222e">{html.escape(error)}</p>' if error else ""
        body = (
            f"<h1>Sign in</h1>{message}"
            '<form method="post" action="/login"><label>Access token <input type="password" name="token" '
            'autocomplete="off" required></label> <button type="submit">Sign in</button></form>'
            '<p class="muted">The token stays on this server; the browser keeps only a signed session cookie.</p>'
        )
        return self._page(request, "Sign in", body, status)

    def web_login(self, request: Request) -> Response:
        raw = request.body.read_all(64 * 1024)
        form = urllib.parse.parse_qs(raw.decode("utf-8", "replace"))
        token = (form.get("token") or [""])[-1].strip()
        principal = self.tokens.get(_token_key(token)) if token else None
        if principal is None:
            return self.web_login_form(request, "This token is not valid on this server.", 401)
        logger.info("web sign-in of %s", principal.name)
        cookie = (
            f"{SESSION_COOKIE}={self._session_value(token)}; HttpOnly; SameSite=Strict; Path=/; Max-Age={SESSION_TTL}"
        )
        return Response(303, [("Location", "/"), ("Set-Cookie", cookie), ("Cache-Control", "no-store")])

    def web_logout(self, request: Request) -> Response:
        cookie = f"{SESSION_COOKIE}=; HttpOnly; SameSite=Strict; Path=/; Max-Age=0"
        return Response(303, [("Location", "/"), ("Set-Cookie", cookie)])
