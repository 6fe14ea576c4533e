"""Connection limits of the local Hub server (issue 12, finding 4): a flood of idle or slow clients cannot stop it
serving others. Every loop is bounded in count and time, and only talks to 127.0.0.1."""

from __future__ import annotations

import contextlib
import http.client
import json
import socket
import time

import pytest

from hftransfer.testing import LocalHubServer

MAX_CONNECTIONS = 8
FLOOD = 40  # connections opened by the flood: 5x the limit


@pytest.fixture
def small_server(tmp_path):
    with LocalHubServer(
        tmp_path / "hub", {"tok": "alice"}, fsync=False, max_connections=MAX_CONNECTIONS, idle_timeout=30
    ) as server:
        yield server


def _get(server, target: str, timeout: float = 10.0):
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=timeout)
    try:
        connection.request("GET", target)
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def _open(server, first_bytes: bytes = b"") -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    if first_bytes:
        sock.sendall(first_bytes)
    return sock


def test_idle_and_slowloris_flood_does_not_stop_others(small_server):
    sockets = []
    try:
        for index in range(FLOOD):
            # Half idle (nothing sent), half slowloris (a request line and part of the headers, never finished).
            sockets.append(_open(small_server, b"" if index % 2 else b"GET /health HTTP/1.1\r\nHost: x\r\nX-Slow: "))
        time.sleep(0.2)
        started = time.monotonic()
        for _ in range(5):
            status, body = _get(small_server, "/health")
            assert status == 200 and json.loads(body)["status"] == "ok"
        assert time.monotonic() - started < 5.0
    finally:
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.close()


def test_busy_server_answers_503_then_recovers(small_server):
    sockets = []
    head = (
        "POST /api/repos/create HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer tok\r\n"
        "Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{"
    )  # a request whose body never finishes: the connection is busy, not idle
    try:
        for _ in range(MAX_CONNECTIONS):
            sockets.append(_open(small_server, head.encode()))
        time.sleep(0.3)
        started = time.monotonic()
        status, body = _get(small_server, "/health")
        assert status == 503 and "busy" in json.loads(body)["error"]
        assert time.monotonic() - started < 5.0
    finally:
        for sock in sockets:
            sock.close()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:  # the stalled requests end as their clients close
        status, _ = _get(small_server, "/health")
        if status == 200:
            break
        time.sleep(0.1)
    assert status == 200


def test_max_connections_must_be_positive(tmp_path):
    with pytest.raises(ValueError, match="max_connections"):
        LocalHubServer(tmp_path, max_connections=0)
