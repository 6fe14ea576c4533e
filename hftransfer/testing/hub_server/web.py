"""A read-only web view for people: the repositories a visitor may see, a model card rendered from Markdown, files
and history; sign-in with a token kept in an HttpOnly cookie."""

from __future__ import annotations

WEB_ROUTES: tuple = ()


class WebView:
    """The read-only web view (see `web.py`)."""
