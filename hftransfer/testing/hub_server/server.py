"""Running the server: in a thread of this process ([`LocalHubServer`]) or as a child process ([`HubServerProcess`])."""

from __future__ import annotations

import contextlib
import ipaddress
import os
import re
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO, Any

from .app import HubApp
from .common import (
    DEFAULT_IDLE_TIMEOUT,
    DEFAULT_LFS_THRESHOLD,
    DEFAULT_MAX_CONNECTIONS,
    DEFAULT_UPLOAD_LINK_TTL,
    MODULE_NAME,
    STARTUP_LINE,
    logger,
    parse_token_spec,
)
from .storage import HubStorage
from .transport import _HubHTTPServer

PACKAGE_DIR = Path(__file__).resolve().parent

try:  # POSIX only: used to stop two servers from sharing one data directory
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]


class _DataDirLock:
    """An exclusive lock on a data directory (flock), released by the kernel even if the process is killed."""

    def __init__(self, data_dir: Path) -> None:
        self.path = data_dir / "server.lock"
        self._handle: IO[str] | None = None

    def acquire(self) -> None:
        handle = open(self.path, "a+")  # noqa: SIM115 - held open for the server's lifetime
        if fcntl is not None:
            try:
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                handle.seek(0)
                owner = handle.read().strip() or "unknown"
                handle.close()
                raise RuntimeError(
                    f"Data directory {self.path.parent} is already served by another hub server (pid {owner}); stop "
                    "it first or use another data directory."
                ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(str(os.getpid()))
        handle.flush()
        self._handle = handle

    def release(self) -> None:
        if self._handle is not None:
            if fcntl is not None:
                with contextlib.suppress(OSError):
                    fcntl.flock(self._handle.fileno(), fcntl.LOCK_UN)
            self._handle.close()
            self._handle = None


def _token_for(tokens: Mapping[str, str], user: str, role: str) -> str:
    for token, value in tokens.items():
        _, name, token_role = parse_token_spec(f"{token}={value}")
        if name == user and token_role == role:
            return token
    users = sorted({parse_token_spec(f"{token}={value}")[1] for token, value in tokens.items()})
    raise KeyError(f"No {role} token configured for user {user!r}; users with tokens: {users}.")


def _format_url(host: str, port: int) -> str:
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


class LocalHubServer:
    """A Hub-compatible server running in a background thread of this process.

    Point `huggingface_hub` at [`LocalHubServer.url`] (`HfApi(endpoint=server.url)` or `HF_ENDPOINT`, set before
    `huggingface_hub` is imported) with `HF_HUB_DISABLE_XET=1`.

    Args:
        data_dir (`str` or `os.PathLike`):
            Where repositories and files are stored; created if missing. Data survives restarts. One server at a
            time may use a data directory.
        tokens (`Mapping[str, str]`, *optional*):
            Access tokens: token -> user name, or `"user:read"` for a read-only token. Without tokens the server
            only serves anonymous reads (of nothing, since nobody can create a repository).
        orgs (`Mapping[str, Sequence[str]]`, *optional*):
            Organizations: name -> member user names. Members may create and write repositories in the organization.
        host (`str`, *optional*, defaults to `"127.0.0.1"`):
            Address to listen on. The server has no TLS: keep it on loopback unless the network is trusted.
        port (`int`, *optional*, defaults to `0`):
            Port to listen on; `0` picks a free one (kept across [`restart`]).
        lfs_threshold (`int`, *optional*, defaults to 10 MiB):
            Files above this size go through LFS; regular files above it are refused, as on the Hub.
        upload_link_ttl (`float`, *optional*, defaults to 3600):
            Seconds an LFS upload link stays valid. Links are signed with a key kept in the data directory, so they
            stay valid across restarts and the client's automatic retries succeed.
        fsync (`bool`, *optional*, defaults to `True`):
            Flush writes to disk before making them visible. Turn off only for throw-away data.
        max_connections (`int`, *optional*, defaults to 64):
            Connections served at once, one thread each. When all are taken, a new client replaces the connection
            that has waited longest for its next request (idle keep-alive, or still sending headers); when every
            connection is in the middle of a request, the new client gets `503` with a JSON error.
        idle_timeout (`float`, *optional*, defaults to 60):
            Seconds a connection may wait for its next request (request line and headers) before it is closed.

    Example:

    ```python
    >>> from huggingface_hub import HfApi
    >>> with LocalHubServer("/tmp/hub", tokens={"secret-a": "alice"}) as server:
    ...     api = HfApi(endpoint=server.url, token=server.token_for("alice"))
    ...     api.create_repo("alice/demo")
    ...     api.upload_file(path_or_fileobj=b"hello", path_in_repo="hello.txt", repo_id="alice/demo")
    ```
    """

    def __init__(
        self,
        data_dir: str | os.PathLike,
        tokens: Mapping[str, str] | None = None,
        *,
        orgs: Mapping[str, Sequence[str]] | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        lfs_threshold: int = DEFAULT_LFS_THRESHOLD,
        upload_link_ttl: float = DEFAULT_UPLOAD_LINK_TTL,
        fsync: bool = True,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
        idle_timeout: float = DEFAULT_IDLE_TIMEOUT,
    ) -> None:
        if int(max_connections) < 1:
            raise ValueError(f"max_connections={max_connections!r} is invalid: expected at least 1.")
        self.max_connections = int(max_connections)
        self.idle_timeout = float(idle_timeout)
        self.data_dir = Path(data_dir).resolve()
        self.tokens = dict(tokens or {})
        for token, value in self.tokens.items():
            parse_token_spec(f"{token}={value}")  # fail here, with the bad spec named, rather than at start()
        self.orgs = {org: tuple(members) for org, members in (orgs or {}).items()}
        self.host = host
        self.port = int(port)
        self.lfs_threshold = int(lfs_threshold)
        self.upload_link_ttl = float(upload_link_ttl)
        self.fsync = fsync
        self._httpd: _HubHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._lock: _DataDirLock | None = None
        self._state = threading.Lock()

    # -- properties ----------------------------------------------------------------------------------------------

    @property
    def running(self) -> bool:
        return self._httpd is not None

    @property
    def url(self) -> str:
        """The endpoint to give to `huggingface_hub`, e.g. `http://127.0.0.1:54321` (available once started)."""
        if not self.port:
            raise RuntimeError("LocalHubServer has no port yet: call start() first.")
        return _format_url(self.host, self.port)

    @property
    def storage(self) -> HubStorage:
        """The running server's [`HubStorage`] (e.g. to inspect repositories on disk in tests)."""
        if self._httpd is None:
            raise RuntimeError("LocalHubServer is not running: call start() first.")
        return self._httpd.app.storage

    def token_for(self, user: str, role: str = "write") -> str:
        """Return a configured token of `user` with the given role (`"write"` or `"read"`).

        Raises:
            `KeyError`: naming the user and the users that have tokens.
        """
        return _token_for(self.tokens, user, role)

    # -- lifecycle -----------------------------------------------------------------------------------------------

    def start(self) -> LocalHubServer:
        """Start serving in a daemon thread (no-op if already running) and return `self`."""
        with self._state:
            if self._httpd is not None:
                return self
            self.data_dir.mkdir(parents=True, exist_ok=True)
            lock = _DataDirLock(self.data_dir)
            lock.acquire()
            try:
                storage = HubStorage(self.data_dir, fsync=self.fsync)
                removed = storage.cleanup_tmp()  # safe: the lock proves no other server writes here
                if removed:
                    logger.info("removed %d leftover(s) of interrupted writes from %s", removed, storage.tmp_dir)
                app = HubApp(
                    storage,
                    self.tokens,
                    orgs=self.orgs,
                    lfs_threshold=self.lfs_threshold,
                    upload_link_ttl=self.upload_link_ttl,
                )
                httpd = self._bind(app)
            except BaseException:
                lock.release()
                raise
            self.port = int(httpd.server_address[1])
            httpd.public_url = self.url
            thread = threading.Thread(
                target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, name=f"hub-server-{self.port}", daemon=True
            )
            thread.start()
            self._httpd, self._thread, self._lock = httpd, thread, lock
        if not _is_loopback(self.host):
            logger.warning("listening on %s, beyond loopback: there is no TLS, tokens travel in clear text", self.host)
        logger.info("hub server listening on %s (data dir %s)", self.url, self.data_dir)
        return self

    def _bind(self, app: HubApp) -> _HubHTTPServer:
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        deadline = time.monotonic() + 10
        while True:
            try:
                return _HubHTTPServer(
                    (self.host, self.port),
                    app,
                    family,
                    max_connections=self.max_connections,
                    idle_timeout=self.idle_timeout,
                )
            except OSError as exc:
                # Right after a stop the port can stay busy for a moment; a port in use by someone else stays busy.
                if self.port == 0 or time.monotonic() > deadline or exc.errno not in (98, 48, 10048):
                    raise OSError(exc.errno, f"cannot listen on {self.host}:{self.port}: {exc.strerror}") from exc
                time.sleep(0.1)

    def stop(self) -> None:
        """Stop serving: close the listening socket and every open connection, then release the data directory."""
        with self._state:
            httpd, thread, lock = self._httpd, self._thread, self._lock
            self._httpd = self._thread = self._lock = None
            if httpd is None:
                return
            httpd.shutdown()
            httpd.server_close()
            httpd.close_all_connections()
            if thread is not None:
                thread.join(timeout=10)
            if lock is not None:
                lock.release()
        logger.info("hub server on port %d stopped", self.port)

    def restart(self) -> LocalHubServer:
        """Stop and start again on the same port and data directory (e.g. to test interrupted transfers)."""
        self.stop()
        return self.start()

    def __enter__(self) -> LocalHubServer:
        return self.start()

    def __exit__(self, *exc_info: Any) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = self.url if self.running else "stopped"
        return f"LocalHubServer({state}, data_dir={str(self.data_dir)!r})"


class HubServerProcess:
    """The same server in a child process (`python -m hftransfer.testing.hub_server`), e.g. to SIGKILL it mid-upload.

    Tokens reach the child through the `HFTRANSFER_HUB_TOKENS` environment variable, not its command line.

    Args:
        data_dir (`str` or `os.PathLike`):
            The server's data directory.
        tokens (`Mapping[str, str]`, *optional*):
            Token -> user (or `"user:read"`), as for [`LocalHubServer`].
        orgs (`Mapping[str, Sequence[str]]`, *optional*):
            Organization -> members.
        host (`str`, *optional*, defaults to `"127.0.0.1"`):
            Address to listen on.
        port (`int`, *optional*, defaults to `0`):
            Port; `0` picks a free one, reused by [`restart`].
        extra_args (`Sequence[str]`, *optional*):
            More command-line options, e.g. `["--lfs-threshold", "1000"]`.
        python (`str`, *optional*):
            Interpreter to run; defaults to `sys.executable`.
        startup_timeout (`float`, *optional*, defaults to 120):
            Seconds to wait for the "listening on" line.
        run_as (`str`, *optional*, defaults to `"module"`):
            `"module"` runs `python -m hftransfer.testing.hub_server`; `"script"` runs the package folder on its own
            (`python -m hub_server` with its parent folder on `PYTHONPATH`), which skips importing the `hftransfer`
            package (and with it transformers and torch): same server, faster start.
    """

    def __init__(
        self,
        data_dir: str | os.PathLike,
        tokens: Mapping[str, str] | None = None,
        *,
        orgs: Mapping[str, Sequence[str]] | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        extra_args: Sequence[str] = (),
        python: str | None = None,
        startup_timeout: float = 120.0,
        run_as: str = "module",
    ) -> None:
        if run_as not in ("module", "script"):
            raise ValueError(f"run_as={run_as!r} is invalid: expected 'module' or 'script'.")
        self.run_as = run_as
        self.data_dir = Path(data_dir).resolve()
        self.tokens = dict(tokens or {})
        self.orgs = {org: tuple(members) for org, members in (orgs or {}).items()}
        self.host = host
        self.port = int(port)
        self.extra_args = list(extra_args)
        self.python = python or sys.executable
        self.startup_timeout = startup_timeout
        self.process: subprocess.Popen[str] | None = None

    @property
    def url(self) -> str:
        if not self.port:
            raise RuntimeError("HubServerProcess has no port yet: call start() first.")
        return _format_url(self.host, self.port)

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    def token_for(self, user: str, role: str = "write") -> str:
        """Return a configured token of `user` (see [`LocalHubServer.token_for`])."""
        return _token_for(self.tokens, user, role)

    def command(self) -> list[str]:
        # "script": the package folder alone, as a top-level package (`python -m hub_server` with its parent folder on
        # PYTHONPATH), which skips importing hftransfer (and with it torch and transformers).
        entry = ["-m", MODULE_NAME if self.run_as == "module" else PACKAGE_DIR.name]
        command = [self.python, *entry, "--host", self.host, "--port", str(self.port)]
        command += ["--data-dir", str(self.data_dir)]
        for org, members in self.orgs.items():
            command += ["--org", f"{org}={','.join(members)}"]
        return command + self.extra_args

    def start(self) -> HubServerProcess:
        """Launch the child and wait for its "listening on URL" line; returns `self`."""
        if self.process is not None and self.process.poll() is None:
            return self
        env = dict(os.environ)
        env["HFTRANSFER_HUB_TOKENS"] = "\n".join(f"{token}={user}" for token, user in self.tokens.items())
        if self.run_as == "script":
            env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(PACKAGE_DIR.parent), env.get("PYTHONPATH")]))
        process = subprocess.Popen(
            self.command(), stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, env=env, text=True, bufsize=1
        )
        first_line: list[str] = []
        reader = threading.Thread(target=lambda: first_line.append(process.stdout.readline()), daemon=True)
        reader.start()
        reader.join(self.startup_timeout)
        line = first_line[0].strip() if first_line else ""
        match = re.search(rf"{STARTUP_LINE} (http://\S+)", line)
        if match is None:
            process.kill()
            process.wait()
            raise RuntimeError(
                f"Hub server process did not start within {self.startup_timeout}s (exit code {process.returncode}, "
                f"first line {line!r}); its log is on stderr. Command: {' '.join(self.command())}"
            )
        self.port = int(urllib.parse.urlsplit(match.group(1)).port or 0)
        # Keep reading stdout so that the child never blocks on a full pipe.
        threading.Thread(target=lambda: process.stdout.read(), daemon=True).start()
        self.process = process
        return self

    def kill(self) -> None:
        """SIGKILL the child (no cleanup runs: a crash) and wait for it."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def stop(self, timeout: float = 15.0) -> None:
        """Ask the child to stop (SIGTERM), SIGKILL it after `timeout` seconds."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()

    def restart(self) -> HubServerProcess:
        """Stop the child if it runs and start a new one on the same port and data directory."""
        self.stop()
        return self.start()

    def __enter__(self) -> HubServerProcess:
        return self.start()

    def __exit__(self, *exc_info: Any) -> None:
        self.stop()
