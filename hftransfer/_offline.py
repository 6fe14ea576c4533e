"""The one offline policy of hftransfer: when the Hugging Face Hub is used, and how fast an unreachable one fails.

Every Hub access (backbone weights in `hftransfer.weights`, Hub datasets in `hftransfer.data`) goes through here:

- [`hub_offline`]: offline mode is on when `HF_HUB_OFFLINE` or `TRANSFORMERS_OFFLINE` is set to a true value, or
  when `huggingface_hub` (or an already imported `datasets`) says so. Then only local caches are used, and a miss
  fails at once, naming the offline alternatives.
- [`probe_hub`]: otherwise, before a download, ONE `HEAD` request without retries, waiting at most
  [`hub_timeout`] seconds (`$HFTRANSFER_HUB_TIMEOUT`, default 5). huggingface_hub itself retries connection errors
  with back-off for ~25 s; the probe answers "offline?" within seconds, with the caller's message. Any HTTP answer
  means the Hub is reachable; the response is returned (its status can choose between files).
"""

from __future__ import annotations

import os
import sys
from typing import Any

from .constants import DEFAULT_HUB_TIMEOUT_S, HUB_TIMEOUT_ENV, OFFLINE_ENVS, TRUTHY
from .errors import HubUnavailableError


def hub_offline() -> bool:
    """Whether offline mode is on: `HF_HUB_OFFLINE`/`TRANSFORMERS_OFFLINE`, huggingface_hub's or datasets' flag."""
    if any(os.environ.get(var, "").strip().lower() in TRUTHY for var in OFFLINE_ENVS):
        return True
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return True
    datasets = sys.modules.get("datasets")  # not imported for this: only a loaded datasets has read its settings
    return bool(getattr(getattr(datasets, "config", None), "HF_HUB_OFFLINE", False))


def hub_timeout(error: type[Exception] = ValueError) -> float:
    """Seconds to wait for the Hub before giving up (`$HFTRANSFER_HUB_TIMEOUT`, default 5); `error` if invalid."""
    value = os.environ.get(HUB_TIMEOUT_ENV)
    if not value:
        return DEFAULT_HUB_TIMEOUT_S
    try:
        return float(value)
    except ValueError as exc:
        raise error(f"{HUB_TIMEOUT_ENV}={value!r} is not a number of seconds.") from exc


def probe_hub(
    what: str,
    alternatives: str,
    *,
    url: str | None = None,
    timeout: float | None = None,
    error: type[Exception] = HubUnavailableError,
) -> Any:
    """One quick `HEAD` request to the Hub (no retries): its response, or `error` when there is no answer.

    Args:
        what (`str`): The start of the error message, e.g. `"Cannot load the Hub dataset 'user/name'"`.
        alternatives (`str`): What to do instead, ending the message (local files, embedded data, ...).
        url (`str`, *optional*): What to ask for; defaults to the endpoint (`HF_ENDPOINT`) itself.
        timeout (`float`, *optional*): Seconds; defaults to [`hub_timeout`].
        error (`type`, *optional*, defaults to [`HubUnavailableError`]): Raised when the Hub does not answer.

    Returns:
        The HTTP response, whatever its status (the Hub answered).
    """
    from huggingface_hub import constants
    from huggingface_hub.utils import build_hf_headers, get_session

    endpoint = constants.ENDPOINT
    timeout = hub_timeout() if timeout is None else timeout
    try:
        return get_session().head(url or endpoint, headers=build_hf_headers(), timeout=timeout, follow_redirects=False)
    except Exception as exc:  # connection refused, DNS failure, timeout, proxy errors: all "no answer"
        raise error(
            f"{what}: the Hub at {endpoint} is unreachable from this machine ({type(exc).__name__}: {exc}); "
            f"offline? {alternatives}"
        ) from exc


__all__ = ["hub_offline", "hub_timeout", "probe_hub"]
