"""Helpers for testing code that talks to the Hugging Face Hub, without the network.

[`LocalHubServer`] runs a Hub-compatible HTTP server in a background thread; [`HubServerProcess`] runs the same
server as a child process (`python -m hftransfer.testing.hub_server`), e.g. to kill it in crash tests. Both work with
the unmodified `huggingface_hub` client: point it at `server.url` and, when `hf_xet` is installed, set
`HF_HUB_DISABLE_XET=1` (the server speaks LFS, not Xet). The server is the package `hftransfer.testing.hub_server`.

Imports are lazy: `import hftransfer.testing` does not load the server.
"""

from typing import TYPE_CHECKING, Any

__all__ = ["HubServerProcess", "LocalHubServer"]

if TYPE_CHECKING:
    from .hub_server import HubServerProcess, LocalHubServer


def __getattr__(name: str) -> Any:
    if name in __all__:
        from . import hub_server

        return getattr(hub_server, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
