"""Fixtures for tests that talk to the Hub: one local Hub server for the whole session, on the port that the root
conftest reserved and put into `HF_ENDPOINT` (so `hf_hub_download`, `from_pretrained`, `push_to_hub` and `HfApi()`
all reach it without being told).

Typical use:

```python
def test_push(hub_api, hub_repo_id):
    hub_api.create_repo(hub_repo_id)
    hub_api.upload_file(path_or_fileobj=b"...", path_in_repo="x.txt", repo_id=hub_repo_id)
```

Users and tokens (fake, only valid on this server): `alice` and `bob` with write tokens, `alice` also with a read-only
token, and the organization `hf-team` whose only member is `alice`. Get a token with
`hub_server.token_for("alice")`.
"""

from __future__ import annotations

import os
import re
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from hftransfer.testing import HubServerProcess, LocalHubServer

HUB_TOKENS = {
    "hf_test_alice_write": "alice",
    "hf_test_alice_read": "alice:read",
    "hf_test_bob_write": "bob",
}
HUB_ORGS = {"hf-team": ["alice"]}


@pytest.fixture(scope="session")
def _hub_server_session(session_dir: Path) -> Iterator[LocalHubServer]:
    port = int(os.environ["HFTRANSFER_TEST_HUB_PORT"])
    # fsync off: the session's data is thrown away; crash-safety tests run their own server with fsync on.
    server = LocalHubServer(session_dir / "hub-server", HUB_TOKENS, orgs=HUB_ORGS, port=port, fsync=False)
    server.start()
    assert server.url == os.environ["HF_ENDPOINT"], "HF_ENDPOINT must point at the session's hub server"
    yield server
    server.stop()


@pytest.fixture
def hub_server(_hub_server_session: LocalHubServer) -> LocalHubServer:
    """The session's [`LocalHubServer`] at `$HF_ENDPOINT`, running (restarted if a previous test stopped it).

    Attributes worth knowing: `.url`, `.port`, `.data_dir`, `.token_for(user, role="write")`, `.restart()` (same
    port and data), `.stop()`/`.start()`.
    """
    return _hub_server_session.start()


@pytest.fixture
def hub_token(hub_server: LocalHubServer) -> str:
    """alice's write token."""
    return hub_server.token_for("alice")


@pytest.fixture
def hub_api(hub_server: LocalHubServer):
    """An `HfApi` logged in as alice (write token)."""
    from huggingface_hub import HfApi

    return HfApi(endpoint=hub_server.url, token=hub_server.token_for("alice"))


@pytest.fixture
def hub_api_bob(hub_server: LocalHubServer):
    """An `HfApi` logged in as bob (write token)."""
    from huggingface_hub import HfApi

    return HfApi(endpoint=hub_server.url, token=hub_server.token_for("bob"))


@pytest.fixture
def hub_repo_id(request: pytest.FixtureRequest) -> str:
    """A fresh, not yet created repo id in alice's namespace, unique per test: `alice/<test-name>-<random>`."""
    slug = re.sub(r"[^A-Za-z0-9]+", "-", request.node.name)[:60].strip("-")
    return f"alice/{slug}-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def hub_repo(hub_api, hub_repo_id: str) -> str:
    """Like `hub_repo_id`, but the (public, model) repo is created. Returns its id."""
    hub_api.create_repo(hub_repo_id)
    return hub_repo_id


@pytest.fixture
def hub_server_process(tmp_path: Path) -> Iterator[Callable[..., HubServerProcess]]:
    """Factory of servers in child processes (`python -m hftransfer.testing.hub_server`), e.g. to SIGKILL one.

    `hub_server_process(data_dir=None, **kwargs)` starts a child with the same users and tokens as `hub_server`
    (a fresh data dir under `tmp_path` unless given) and returns the [`HubServerProcess`]; all are stopped at the end.
    """
    started: list[HubServerProcess] = []

    def factory(data_dir: Path | None = None, **kwargs) -> HubServerProcess:
        process = HubServerProcess(data_dir or tmp_path / f"hub-{len(started)}", HUB_TOKENS, orgs=HUB_ORGS, **kwargs)
        started.append(process)
        return process.start()

    yield factory
    for process in started:
        process.stop()
