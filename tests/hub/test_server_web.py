"""The read-only web view (issue 12): pages a person reads in a browser, a sanitised model card, token sign-in with
an HttpOnly cookie. Checked over HTTP and in a real headless Chromium (DOM and screenshot)."""

from __future__ import annotations

import http.client
import io
import json
import shutil
import subprocess
import urllib.parse

import pytest
from PIL import Image

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
HOSTILE_CARD = (
    "---\nlicense: mit\ntags: [vision]\n---\n# Tiny VGG16\n\nSome **bold** text.\n\n![plot](plot.png)\n\n"
    "<script>document.body.setAttribute('data-pwned', 'script')</script>\n\n"
    "<img src=x onerror=\"document.body.setAttribute('data-pwned', 'onerror')\">\n\n"
    "[click me](javascript:document.body.setAttribute('data-pwned','link'))\n\n| metric | value |\n|---|---|\n| accuracy | 0.84 |\n"
)


def _get(server, target: str, headers: dict | None = None, method: str = "GET", body: bytes | None = None):
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    try:
        connection.request(method, target, body=body, headers=headers or {})
        response = connection.getresponse()
        return response.status, response, response.read().decode("utf-8", "replace")
    finally:
        connection.close()


def _red_png() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (300, 120), (220, 20, 20)).save(buffer, "PNG")
    return buffer.getvalue()


@pytest.fixture
def card_repo(hub_api, hub_repo):
    hub_api.upload_file(path_or_fileobj=_red_png(), path_in_repo="plot.png", repo_id=hub_repo)
    hub_api.upload_file(path_or_fileobj=HOSTILE_CARD.encode(), path_in_repo="README.md", repo_id=hub_repo)
    return hub_repo


def _sign_in(server, user: str = "alice") -> str:
    body = urllib.parse.urlencode({"token": server.token_for(user)}).encode()
    headers = {"Content-Type": "application/x-www-form-urlencoded"}
    status, response, _ = _get(server, "/login", headers, "POST", body)
    assert status == 303
    cookie = response.getheader("Set-Cookie")
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and server.token_for(user) not in cookie
    return cookie.split(";")[0]


def test_repo_page_renders_the_card_sanitised_with_files_and_history(hub_server, card_repo):
    status, response, page = _get(hub_server, f"/{card_repo}")
    assert status == 200 and response.getheader("Content-Type").startswith("text/html")
    assert "script-src" not in response.getheader("Content-Security-Policy")  # default-src 'none': no script at all
    assert "<h1>Tiny VGG16</h1>" in page and "<strong>bold</strong>" in page and "<td>accuracy</td>" in page
    assert "<script" not in page and "onerror=" not in page.replace("onerror=&quot;", "")
    assert 'href="javascript:' not in page
    assert "license: mit" not in page  # the front matter is metadata, not text
    assert f'src="/{card_repo}/resolve/' in page  # the image comes from the repo
    for name in ("README.md", "plot.png", ".gitattributes"):
        assert f">{name}</a>" in page
    assert "Upload README.md with huggingface_hub" in page and "initial commit" in page


def test_index_lists_visible_repos_and_private_ones_after_sign_in(hub_server, hub_api, hub_api_bob, hub_repo_id):
    hub_api.create_repo(hub_repo_id, private=True)
    bob_public = f"bob/{hub_repo_id.split('/')[1]}"
    hub_api_bob.create_repo(bob_public)
    status, _, page = _get(hub_server, "/")
    assert status == 200 and bob_public in page and hub_repo_id not in page
    assert _get(hub_server, f"/{hub_repo_id}")[0] == 404
    cookie = _sign_in(hub_server, "alice")
    status, _, page = _get(hub_server, "/", {"Cookie": cookie})
    assert hub_repo_id in page and "private" in page and "alice" in page
    assert _get(hub_server, f"/{hub_repo_id}", {"Cookie": cookie})[0] == 200
    bob = _sign_in(hub_server, "bob")
    assert hub_repo_id not in _get(hub_server, "/", {"Cookie": bob})[2]
    assert _get(hub_server, f"/{hub_repo_id}", {"Cookie": bob})[0] == 404


def test_session_cookie_reads_but_never_writes(hub_server, hub_api, hub_repo_id):
    hub_api.create_repo(hub_repo_id, private=True)
    cookie = _sign_in(hub_server, "alice")
    status, _, body = _get(hub_server, f"/api/models/{hub_repo_id}", {"Cookie": cookie})
    assert status == 200 and json.loads(body)["private"] is True
    payload = b'{"key":"header","value":{"summary":"csrf"}}\n'
    status, _, _ = _get(hub_server, f"/api/models/{hub_repo_id}/commit/main", {"Cookie": cookie}, "POST", payload)
    assert status == 404  # a cross-site form could send the cookie: for writes it counts as no credentials at all
    forged = cookie[:-4] + ("0000" if not cookie.endswith("0000") else "1111")
    assert _get(hub_server, f"/{hub_repo_id}", {"Cookie": forged})[0] == 404
    status, _, page = _get(hub_server, "/login", method="POST", body=b"token=nope")
    assert status == 401 and "not valid" in page


def test_repo_files_cannot_run_as_pages_of_the_web_view(hub_server, hub_api, hub_repo):
    hub_api.upload_file(path_or_fileobj=b"<script>alert(1)</script>", path_in_repo="x.html", repo_id=hub_repo)
    status, response, _ = _get(hub_server, f"/{hub_repo}/resolve/main/x.html")
    assert status == 200 and "sandbox" in response.getheader("Content-Security-Policy")
    assert response.getheader("X-Content-Type-Options") == "nosniff"


def _chromium(*args: str, tmp_path) -> subprocess.CompletedProcess:
    command = [
        CHROMIUM,
        "--headless",
        "--no-sandbox",  # the tests may run as root
        "--disable-gpu",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-default-apps",
        f"--user-data-dir={tmp_path / 'chromium-profile'}",
        *args,
    ]
    return subprocess.run(command, capture_output=True, text=True, timeout=120)


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (scripts/setup.sh installs it with apt-get)")
def test_in_headless_chromium_card_renders_image_shows_and_no_script_runs(hub_server, card_repo, tmp_path):
    url = f"{hub_server.url}/{card_repo}"
    dom = _chromium("--virtual-time-budget=3000", "--dump-dom", url, tmp_path=tmp_path).stdout
    assert '<h1 id="repo-title">' in dom and "<h1>Tiny VGG16</h1>" in dom
    assert "data-pwned" not in dom.split("<body", 1)[1].split(">", 1)[0]  # no handler or script touched <body>
    assert "<script" not in dom and "javascript:" not in dom.replace("(javascript:", "")
    assert f'src="/{card_repo}/resolve/' in dom
    shot = tmp_path / "page.png"
    _chromium("--window-size=1000,900", f"--screenshot={shot}", url, tmp_path=tmp_path)
    image = Image.open(shot).convert("RGB")
    assert image.size == (1000, 900)
    # The card's PNG (300x120, red) is drawn inline: a block of red pixels where the browser put it.
    red = sum(1 for r, g, b in image.getdata() if r > 200 and g < 60 and b < 60)
    assert red > 300 * 120 * 0.8, red
    header_blue = image.getpixel((5, 5))
    assert header_blue[2] > 120 and header_blue[0] < 60  # the page's own styles applied (header bar)
