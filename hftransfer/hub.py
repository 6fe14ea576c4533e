"""Sharing a trained model on the Hugging Face Hub: `push_to_hub(output_dir, repo_id)`.

A push uploads what a finished `hftransfer train` run wrote into its output folder, in ONE commit:

```
config.json (with auto_map), model.safetensors (or its shards + index), preprocessor_config.json,
configuration_hftransfer.py, modeling_hftransfer.py, image_processing_hftransfer.py   the model, loadable anywhere
README.md                                                                             the model card (re-rendered)
metrics.json, history.json, recipe.yaml, *.png                                        what ran and how it scored
```

and nothing else: not the per-stage checkpoints under `stages/`, cached features or `eval-*` folders. The files are
an allow-list, so a stray large file in the folder is never published by accident.

Why one `create_commit` with explicit operations rather than `upload_folder`: the Hub applies a commit atomically, so
a push that fails half-way (network gone, server restarted, Ctrl-C) leaves the repository exactly as it was, and
re-running the same push is safe (LFS objects already uploaded are not sent again).

Every failure a user can cause (no model in the folder, an invalid repo id, no or a wrong token, another user's
namespace, an unreachable endpoint) raises [`HubPushError`], whose message says what was wrong and what to do; the
command line prints it as is.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shlex
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ._io import safetensors_tensor_info

# Files of a training output folder that make up the model (besides the code files named by `auto_map`).
from .constants import (
    CARD_FILE,
    CONFIG_FILE,
    HISTORY_FILE,
    METRICS_FILE,
    PROCESSOR_FILE,
    RECIPE_FILE,
    WEIGHTS_FILE,
    WEIGHTS_INDEX_FILE,
)
from .errors import HubPushError

logger = logging.getLogger(__name__)

# Training artifacts pushed when present (metrics.json is required: the card is rendered from it).
ARTIFACT_FILES = (HISTORY_FILE, RECIPE_FILE)
# Weight files a previous push may have left in the repo; they are deleted in the same commit when this push does
# not overwrite them, so that a repo never holds two checkpoints (e.g. old shards next to a new single file).
_STALE_WEIGHT_RE = re.compile(
    r"^(model(-\d{5}-of-\d{5})?\.safetensors|model\.safetensors\.index\.json|pytorch_model.*\.bin)$"
)
_RELATIVE_IMPORT_RE = re.compile(r"^\s*from\s+\.(\w+)\s+import\s", re.MULTILINE)
# huggingface_hub closes its shared HTTP client after a connection error; a request racing with that fails so.
_CLOSED_CLIENT = "client has been closed"
_TRAIN_HINT = "A finished `hftransfer train` run writes them into its training.output_dir: push that folder."


# --- the output folder --------------------------------------------------------------------------------------------


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise HubPushError(f"Cannot push: {path} is not valid JSON ({err}). {_TRAIN_HINT}") from None


def _auto_map_modules(auto_map: Any) -> list[str]:
    """Module names referenced by an `auto_map` ("module.Class", "repo--module.Class", or a [slow, fast] pair)."""
    modules = []
    values = auto_map.values() if isinstance(auto_map, dict) else []
    for value in values:
        for reference in value if isinstance(value, (list, tuple)) else [value]:
            if isinstance(reference, str) and "." in reference:
                modules.append(reference.split("--")[-1].rsplit(".", 1)[0])
    return modules


def _check_safetensors(path: Path) -> str | None:
    """Why `path` is not a complete safetensors file, or `None` (reads the header only, not the tensors)."""
    from safetensors import SafetensorError

    try:
        safetensors_tensor_info(path)  # safetensors checks that the header covers the whole file, exactly
    except SafetensorError as err:
        size = path.stat().st_size
        return f"it is truncated, padded or not a safetensors file ({size} bytes; safetensors: {err})"
    except OSError as err:
        return f"it cannot be read ({type(err).__name__}: {err})"
    return None


def _weight_files(output_dir: Path, missing: list[str], problems: list[str]) -> list[str]:
    if (output_dir / WEIGHTS_FILE).is_file():
        files = [WEIGHTS_FILE]
    elif (output_dir / WEIGHTS_INDEX_FILE).is_file():
        index = _read_json(output_dir / WEIGHTS_INDEX_FILE)
        shards = sorted(set((index.get("weight_map") or {}).values())) if isinstance(index, dict) else []
        if not shards:
            problems.append(f"{WEIGHTS_INDEX_FILE} lists no shards (expected a 'weight_map')")
        missing += [shard for shard in shards if not (output_dir / shard).is_file()]
        files = [WEIGHTS_INDEX_FILE, *shards]
    else:
        legacy = sorted(p.name for p in output_dir.glob("pytorch_model*.bin"))
        note = f" (found {', '.join(legacy)}: only safetensors weights are pushed)" if legacy else ""
        missing.append(WEIGHTS_FILE + note)
        return []
    for name in files:
        if name.endswith(".safetensors") and (output_dir / name).is_file():
            problem = _check_safetensors(output_dir / name)
            if problem:
                problems.append(f"{name}: {problem}")
    return files


def _code_files(output_dir: Path, configs: dict[str, Any], missing: list[str], problems: list[str]) -> list[str]:
    """The `.py` files named by `auto_map` in config.json / preprocessor_config.json, and what they import."""
    config = configs.get(CONFIG_FILE)
    if isinstance(config, dict) and not config.get("auto_map"):
        problems.append(
            f"{CONFIG_FILE} has no 'auto_map', so the model would not load with trust_remote_code=True where "
            "hftransfer is not installed (save it with hftransfer imported: `import hftransfer` registers the classes)"
        )
    queue = [
        module
        for name, data in configs.items()
        if isinstance(data, dict)
        for module in _auto_map_modules(data.get("auto_map"))
    ]
    found: list[str] = []
    while queue:
        module = queue.pop(0)
        filename = f"{module}.py"
        if filename in found or any(m.startswith(filename) for m in missing):
            continue
        path = output_dir / filename
        if not path.is_file():
            missing.append(f"{filename} (model code named by auto_map)")
            continue
        found.append(filename)
        # Remote code imports its siblings relatively (`from .configuration_hftransfer import ...`): they must ship too.
        queue += _RELATIVE_IMPORT_RE.findall(path.read_text(encoding="utf-8", errors="replace"))
    return found


def collect_push_files(output_dir: str | Path) -> list[str]:
    """Check that `output_dir` holds a complete trained model and list the files a push uploads.

    Args:
        output_dir (`str` or `Path`):
            A training output folder (`training.output_dir` of a finished `hftransfer train` run).

    Returns:
        `list[str]`: file names relative to `output_dir`, sorted. The model card (`README.md`) is included even when
        it does not exist yet: [`push_to_hub`] renders it.

    Raises:
        [`HubPushError`]: naming every missing or broken file, and how to produce them.
    """
    output_dir = Path(output_dir)
    if not output_dir.is_dir():
        raise HubPushError(f"Cannot push {output_dir}: no such folder. {_TRAIN_HINT}")
    missing: list[str] = []
    problems: list[str] = []
    configs: dict[str, Any] = {}
    for name in (CONFIG_FILE, PROCESSOR_FILE):
        if (output_dir / name).is_file():
            configs[name] = _read_json(output_dir / name)
        else:
            missing.append(name)
    weights = _weight_files(output_dir, missing, problems)
    code = _code_files(output_dir, configs, missing, problems)
    if not (output_dir / METRICS_FILE).is_file():
        missing.append(f"{METRICS_FILE} (the model card is generated from it)")
    if missing or problems:
        parts = []
        if missing:
            parts.append(f"missing {', '.join(missing)}")
        parts += problems
        raise HubPushError(
            f"Cannot push {output_dir}: it does not hold a complete trained model: {'; '.join(parts)}. {_TRAIN_HINT}"
        )
    artifacts = [name for name in ARTIFACT_FILES if (output_dir / name).is_file()]
    pictures = sorted(path.name for path in output_dir.glob("*.png") if path.is_file())
    return sorted({CONFIG_FILE, PROCESSOR_FILE, CARD_FILE, METRICS_FILE, *weights, *code, *artifacts, *pictures})


# --- repo ids, tokens, errors -------------------------------------------------------------------------------------


def _check_repo_id(repo_id: Any) -> str:
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    expected = "expected 'namespace/name', e.g. 'alice/fashion-vgg16' (your user name or an organization, a slash, "
    expected += "then letters, digits, '-', '_' or '.')"
    if not isinstance(repo_id, str) or repo_id.count("/") != 1:
        # One slash exactly: without a namespace the Hub would pick one (the token's user), which hides mistakes.
        raise HubPushError(f"Invalid repo id {repo_id!r}: {expected}.")
    try:
        validate_repo_id(repo_id)
    except HFValidationError as err:
        raise HubPushError(f"Invalid repo id {repo_id!r}: {expected}. ({err})") from None
    return repo_id


def _transport_errors() -> tuple[type[BaseException], ...]:
    # huggingface_hub 2.x speaks httpx2, 1.x httpx: both have a TransportError base (connect, read, write, timeout).
    errors: list[type[BaseException]] = [ConnectionError, TimeoutError]
    for module in ("httpx2", "httpx"):
        with contextlib.suppress(ImportError):
            errors.append(__import__(module).TransportError)
    return tuple(errors)


def _causes(err: BaseException) -> Iterator[BaseException]:
    # huggingface_hub wraps LFS upload failures in `RuntimeError("Error while uploading ...") from exc`.
    seen = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        yield err
        err = err.__cause__ or err.__context__


class _Push:
    """The state of one push, so that errors can name the repo, endpoint, user and the command to re-run."""

    def __init__(self, output_dir: Path, repo_id: str, revision: str | None, endpoint: str) -> None:
        self.output_dir, self.repo_id, self.revision, self.endpoint = output_dir, repo_id, revision, endpoint
        self.user: str | None = None
        self.token_source = "the token"

    @property
    def rerun(self) -> str:
        command = f"hftransfer push {shlex.quote(str(self.output_dir))} --repo-id {self.repo_id}"
        return command + (f" --revision {shlex.quote(self.revision)}" if self.revision else "")

    @contextlib.contextmanager
    def step(self, what: str) -> Iterator[None]:
        """Run one Hub request; turn the client's exceptions into a [`HubPushError`] that says what to do."""
        from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled, RepositoryNotFoundError

        try:
            yield
        except HubPushError:
            raise
        except Exception as err:
            chain = list(_causes(err))
            http = next((e for e in chain if isinstance(e, HfHubHTTPError) and e.response is not None), None)
            status = http.response.status_code if http is not None else None
            detail = (http.server_message or str(http)).strip().splitlines()[0] if http is not None else ""
            namespace = self.repo_id.split("/")[0]
            if any(isinstance(e, OfflineModeIsEnabled) for e in chain):
                raise HubPushError(
                    f"Cannot push to {self.repo_id} while {what}: HF_HUB_OFFLINE is set. Unset it to push."
                ) from err
            if status == 401:
                raise HubPushError(
                    f"The Hub at {self.endpoint} refused {self.token_source} (401 Unauthorized) while {what}: it is "
                    "invalid or expired. Log in again with `hf auth login`, or pass a valid --token / set HF_TOKEN."
                    + (f" Server said: {detail}" if detail else "")
                ) from err
            if status == 403:
                who = f"user '{self.user}'" if self.user else "this token's user"
                raise HubPushError(
                    f"Permission denied (403) while {what}: {who} may not write to namespace '{namespace}' of "
                    f"{self.repo_id}, or the token is read-only. Push to your own namespace or an organization you "
                    f"belong to, with a write token." + (f" Server said: {detail}" if detail else "")
                ) from err
            if isinstance(http, RepositoryNotFoundError) or status == 404:
                raise HubPushError(
                    f"Not found (404) while {what}: {self.repo_id}"
                    + (f" (revision {self.revision})" if self.revision else "")
                    + " does not exist or this token cannot see it."
                    + (f" Server said: {detail}" if detail else "")
                ) from err
            transport = next(
                (e for e in chain if isinstance(e, _transport_errors()) or _CLOSED_CLIENT in str(e)), None
            )
            if transport is not None or (status is not None and status >= 500):
                problem = (
                    f"Could not reach the Hub at {self.endpoint} while {what} ({type(transport).__name__}: {transport})"
                    if transport is not None
                    else f"The Hub at {self.endpoint} failed while {what} (HTTP {status}: {detail})"
                )
                raise HubPushError(
                    f"{problem}. The push did not complete; a push lands as one atomic commit, so {self.repo_id} "
                    f"holds either all of it or none of it, and re-running it is safe: `{self.rerun}`."
                ) from err
            if http is not None:
                raise HubPushError(f"The Hub refused the push while {what} (HTTP {status}): {detail or http}") from err
            raise


# --- Xet or LFS ----------------------------------------------------------------------------------------------------


def _endpoint_speaks_xet(api: Any, repo_id: str, revision: str | None) -> bool:
    """Whether uploads to this endpoint may go through Xet (hf_xet installed and the endpoint hands out Xet tokens).

    huggingface_hub uploads through Xet whenever `hf_xet` is installed, without asking the server; an endpoint that
    only speaks LFS (a local or self-hosted Hub, e.g. `hftransfer.testing.hub_server`) then fails every upload. One
    request for a Xet write token tells: anything but 200 means LFS.
    """
    from urllib.parse import quote

    from huggingface_hub.utils import build_hf_headers, get_session
    from huggingface_hub.utils._runtime import is_xet_available

    if not is_xet_available():
        return False
    url = f"{api.endpoint}/api/models/{repo_id}/xet-write-token/{quote(revision or 'main', safe='')}"
    try:
        response = get_session().get(url, headers=build_hf_headers(token=api.token), follow_redirects=False)
    except _transport_errors():
        raise
    except Exception as err:  # noqa: BLE001 - an odd answer is not a reason to fail the push: LFS works everywhere
        logger.debug("Xet probe of %s failed (%s): uploading with LFS", api.endpoint, err)
        return False
    if response.status_code != 200:
        logger.info(
            "%s does not hand out Xet tokens (HTTP %d): uploading with LFS", api.endpoint, response.status_code
        )
        return False
    return True


@contextlib.contextmanager
def _xet_enabled(enabled: bool) -> Iterator[None]:
    """Let huggingface_hub use Xet inside the block only if `enabled` (it reads `constants.HF_HUB_DISABLE_XET`)."""
    from huggingface_hub import constants

    if enabled or constants.HF_HUB_DISABLE_XET:
        yield
        return
    constants.HF_HUB_DISABLE_XET = True
    try:
        yield
    finally:
        constants.HF_HUB_DISABLE_XET = False


# --- push ---------------------------------------------------------------------------------------------------------


def _resolve_token(token: str | None) -> tuple[str | None, str]:
    from huggingface_hub import get_token

    if token:
        return token, "the given token (--token)"
    found = get_token()
    if found and found == os.environ.get("HF_TOKEN"):
        return found, "the token in HF_TOKEN"
    return found, "the token saved by `hf auth login`"


def _default_commit_message(output_dir: Path) -> str:
    name = None
    with contextlib.suppress(OSError, ValueError):
        name = json.loads((output_dir / METRICS_FILE).read_text(encoding="utf-8")).get("recipe_name")
    return "Upload hftransfer model" + (f" (recipe '{name}')" if name else "")


def push_to_hub(
    output_dir: str | Path,
    repo_id: str,
    *,
    private: bool = False,
    revision: str | None = None,
    token: str | None = None,
    commit_message: str | None = None,
    endpoint: str | None = None,
) -> str:
    """Push a training output folder to a Hub model repo in one commit, creating the repo (and branch) if needed.

    The model card (`README.md`) is re-rendered first with [`hftransfer.cards.render_model_card`], so its usage
    snippet names `repo_id`. Uploaded: weights (safetensors), `config.json` (with `auto_map`), the code files it names,
    `preprocessor_config.json`, `README.md`, `metrics.json`, `history.json`, `recipe.yaml` and the top-level PNG plots
    (see [`collect_push_files`]). The result loads without hftransfer:
    `AutoModelForImageClassification.from_pretrained(repo_id, trust_remote_code=True)`.

    Args:
        output_dir (`str` or `Path`):
            The `training.output_dir` of a finished `hftransfer train` run.
        repo_id (`str`):
            Target repo, `"namespace/name"`: your user name or an organization you may write to.
        private (`bool`, *optional*, defaults to `False`):
            Create the repo as private. An existing public repo is not made private: that is an error instead.
        revision (`str`, *optional*):
            Branch to push to, created from `main` if missing. Defaults to `main`.
        token (`str`, *optional*):
            A Hub token with write access. Defaults to `HF_TOKEN`, then the token saved by `hf auth login`.
        commit_message (`str`, *optional*):
            Defaults to "Upload hftransfer model (recipe '<name>')".
        endpoint (`str`, *optional*):
            Hub endpoint. Defaults to `HF_ENDPOINT` (e.g. a local server, see `hftransfer.testing`), else
            huggingface.co.

    Returns:
        `str`: the URL of the commit.

    Raises:
        [`HubPushError`]: with a message for the user: incomplete output folder, invalid repo id, no token, an invalid
        token (401), a namespace the token's user may not write to (403), the Hub unreachable (re-running is safe).
    """
    from huggingface_hub import CommitOperationAdd, CommitOperationDelete, HfApi

    output_dir = Path(output_dir)
    files = collect_push_files(output_dir)  # before any request: a bad folder must not create an empty repo
    repo_id = _check_repo_id(repo_id)
    token, token_source = _resolve_token(token)
    if not token:
        raise HubPushError(
            f"Cannot push to {repo_id}: no Hub token found. Log in with `hf auth login`, or pass --token / set "
            "HF_TOKEN to a token with write access (https://huggingface.co/settings/tokens)."
        )
    api = HfApi(endpoint=endpoint, token=token)
    push = _Push(output_dir, repo_id, revision, api.endpoint)
    push.token_source = token_source
    namespace = repo_id.split("/")[0]

    with push.step("checking the token"):
        identity = api.whoami()
    push.user = identity.get("name")
    role = ((identity.get("auth") or {}).get("accessToken") or {}).get("role")
    if role == "read":
        raise HubPushError(
            f"Cannot push to {repo_id}: {token_source} of user '{push.user}' is read-only. Use a token with write "
            "access (`hf auth login`, --token or HF_TOKEN)."
        )
    namespaces = {push.user} | {org.get("name") for org in identity.get("orgs") or []}
    if namespace not in namespaces:
        raise HubPushError(
            f"Cannot push to {repo_id}: user '{push.user}' ({token_source}) may not write to namespace '{namespace}'. "
            f"Push to your own namespace, e.g. '{push.user}/{repo_id.split('/')[1]}'"
            + (
                f", or to an organization you belong to ({', '.join(sorted(namespaces - {push.user}))})"
                if len(namespaces) > 1
                else ""
            )
            + "."
        )

    # The card's usage snippet and model name follow the repo id; it is written locally too, so both agree.
    from .cards import render_model_card

    try:
        render_model_card(output_dir, repo_id=repo_id)
    except (OSError, ValueError) as err:
        raise HubPushError(f"Cannot push {output_dir}: the model card could not be rendered: {err}") from err

    with push.step(f"creating {repo_id}"):
        api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
    if private:
        with push.step(f"checking the visibility of {repo_id}"):
            is_private = api.repo_info(repo_id, repo_type="model").private
        if not is_private:
            # Asked for private but the repo already exists as public: uploading would publish the model.
            raise HubPushError(
                f"{repo_id} already exists and is public, but the push asked for a private repo: nothing was "
                "uploaded. Make the repo private on the Hub first, push without --private, or choose another name."
            )
    if revision:
        with push.step(f"creating branch {revision!r}"):
            api.create_branch(repo_id, branch=revision, exist_ok=True, repo_type="model")
    with push.step("listing the files already in the repo"):
        existing = api.list_repo_files(repo_id, revision=revision, repo_type="model")

    operations: list[Any] = [
        CommitOperationAdd(path_in_repo=name, path_or_fileobj=str(output_dir / name)) for name in files
    ]
    operations += [
        CommitOperationDelete(path_in_repo=name)
        for name in existing
        if _STALE_WEIGHT_RE.match(name) and name not in files
    ]
    size = sum((output_dir / name).stat().st_size for name in files)
    logger.info(
        "Pushing %d files (%.1f MB) from %s to %s%s",
        len(files),
        size / 1e6,
        output_dir,
        repo_id,
        f"@{revision}" if revision else "",
    )
    with push.step(f"checking whether {api.endpoint} speaks Xet"):
        use_xet = _endpoint_speaks_xet(api, repo_id, revision)
    with push.step(f"uploading {len(files)} files to {repo_id}"), _xet_enabled(use_xet):
        info = api.create_commit(
            repo_id,
            operations,
            commit_message=commit_message or _default_commit_message(output_dir),
            revision=revision,
            repo_type="model",
            # One LFS upload at a time: when the connection drops, huggingface_hub closes its shared HTTP client,
            # and concurrent uploads then fail with "client has been closed" instead of the network error. The
            # weights dominate the upload anyway; the other LFS files are small plots.
            num_threads=1,
        )
    logger.info("Pushed %s: %s", repo_id, info.commit_url)
    return info.commit_url


__all__ = ["HubPushError", "collect_push_files", "push_to_hub"]
