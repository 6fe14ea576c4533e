"""A local HTTP server that speaks enough of the Hugging Face Hub API for the unmodified `huggingface_hub` client.

It lets tests, CI and air-gapped teams push, pull and browse models and datasets without huggingface.co: point the
client at it with `HF_ENDPOINT=http://127.0.0.1:PORT` (and `HF_HUB_DISABLE_XET=1` when `hf_xet` is installed: this
server speaks the classic LFS protocol, not Xet; `hftransfer push` finds that out by itself) and use `HfApi`, `hf_hub_download`, `snapshot_download`, `push_to_hub` or
`from_pretrained` as usual.

Start it from a shell:

```bash
python -m hftransfer.testing.hub_server --data-dir ./hub-data --token hf_alice_secret=alice --port 8080
# first line on stdout: "hftransfer hub server listening on http://127.0.0.1:8080"
```

or in-process:

```python
>>> from hftransfer.testing import LocalHubServer
>>> with LocalHubServer("./hub-data", tokens={"hf_alice_secret": "alice"}) as server:
...     api = HfApi(endpoint=server.url, token=server.token_for("alice"))
```

What it implements: whoami, repo create/delete/settings, model/dataset info and listing, tree and paths-info
listings, refs, commit history, branches, tags, README metadata validation, preupload (regular vs LFS), the git-LFS
batch API with signed single-part upload links, NDJSON commits (with `parentCommit` checks and pull-request refs) and
`/resolve` downloads with `Range`. Errors carry the `X-Error-Code` headers (`RepoNotFound`, `RevisionNotFound`,
`EntryNotFound`) that the client turns into its typed exceptions.

Storage is content-addressed: file contents live once under `blobs/` by sha256, a commit is an immutable JSON file
holding the whole tree, and a branch is a line in `refs.json`. Every write goes to a temporary file first and is then
renamed into place, and a branch only moves after its commit is on disk, so a crash (even SIGKILL) at any point
leaves each repository at a commit that was fully written. Partial uploads are discarded at the next start.

Where things are (each module starts with what it is for):

```
common.py           limits and constants, HubHTTPError (answered as JSON), name and path checks
storage.py          content-addressed blobs, immutable commits, refs, discussions; atomic writes
auth.py             tokens, users, organizations; who may read or write what
transport.py        HTTP on the standard library: body framing, Request/Response, handler, bounded threaded server
routing.py          Route: methods + path pattern + handler name
app.py              the route tables and HubApp, which mixes in one class per API area:
  api_repos.py        whoami, create/delete/settings, repo info and listings, YAML validation
  api_files.py        tree, paths-info, /resolve downloads
  api_lfs.py          preupload, git-LFS batch, signed upload links, verify
  api_commits.py      NDJSON commits, refs and commit listings, branches, tags
  api_discussions.py  discussions and pull requests (list, details, comment, status, title, merge)
  web.py              the read-only web view for people (model card, files, history; token sign-in)
globs.py, cards.py  linear-time glob matching for .gitattributes/.gitignore; YAML card metadata without aliases
server.py           LocalHubServer (a thread) and HubServerProcess (a child process)
cli.py, __main__.py the command line
```

The package uses only the Python standard library (PyYAML validates model-card metadata and markdown-it-py renders
cards in the web view, when installed), so the folder also runs on its own:
`PYTHONPATH=hftransfer/testing python -m hub_server --help`.
"""

from .app import HubApp
from .cards import _parse_card_metadata
from .cli import build_arg_parser, main
from .common import (
    DEFAULT_IDLE_TIMEOUT,
    DEFAULT_LFS_THRESHOLD,
    DEFAULT_MAX_CONNECTIONS,
    DEFAULT_UPLOAD_LINK_TTL,
    MODULE_NAME,
    STARTUP_LINE,
    HubHTTPError,
    check_name,
    check_ref_name,
    check_repo_path,
    parse_token_spec,
)
from .globs import Glob, _PatternSet
from .server import HubServerProcess, LocalHubServer
from .storage import HubStorage, default_gitattributes

__all__ = [
    "DEFAULT_IDLE_TIMEOUT",
    "DEFAULT_LFS_THRESHOLD",
    "DEFAULT_MAX_CONNECTIONS",
    "DEFAULT_UPLOAD_LINK_TTL",
    "MODULE_NAME",
    "STARTUP_LINE",
    "Glob",
    "HubApp",
    "HubHTTPError",
    "HubServerProcess",
    "HubStorage",
    "LocalHubServer",
    "_PatternSet",
    "_parse_card_metadata",
    "build_arg_parser",
    "check_name",
    "check_ref_name",
    "check_repo_path",
    "default_gitattributes",
    "main",
    "parse_token_spec",
]
