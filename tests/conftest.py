"""Test environment shared by the whole suite.

Everything here runs before `huggingface_hub`, `datasets` or `evaluate` are imported, so the clients read an
isolated HF_HOME and an endpoint on 127.0.0.1: nothing in the suite can reach the network or a real cache/token.
"""

import os
import socket
import tempfile
from pathlib import Path


def _reserve_port() -> int:
    # The local Hub server (tests/hub) binds this port later; HF_ENDPOINT must be fixed before imports.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


_SESSION_DIR = Path(tempfile.mkdtemp(prefix="hftransfer-tests-"))
HUB_PORT = int(os.environ.get("HFTRANSFER_TEST_HUB_PORT") or _reserve_port())
os.environ["HFTRANSFER_TEST_HUB_PORT"] = str(HUB_PORT)
os.environ.update(
    {
        "HF_HOME": str(_SESSION_DIR / "hf_home"),
        "HF_ENDPOINT": f"http://127.0.0.1:{HUB_PORT}",
        "HF_HUB_DISABLE_XET": "1",
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "HF_HUB_DISABLE_PROGRESS_BARS": "1",
        "HF_EVALUATE_OFFLINE": "1",  # evaluate ignores HF_HUB_OFFLINE
        "HF_UPDATE_DOWNLOAD_COUNTS": "0",  # datasets would otherwise make a DNS lookup per imagefolder load
        "HFTRANSFER_CACHE": str(_SESSION_DIR / "hftransfer_cache"),
        "TOKENIZERS_PARALLELISM": "false",
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2"),
    }
)
for _var in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_HUB_OFFLINE"):
    os.environ.pop(_var, None)

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def session_dir() -> Path:
    """A temporary folder shared by the whole test session (caches, converted weights, servers' data)."""
    return _SESSION_DIR
