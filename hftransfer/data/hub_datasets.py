"""Hub datasets, name -> `_RawSource`: `datasets.load_dataset` behind hftransfer's one offline policy.

Offline mode (`HF_HUB_OFFLINE`, see `hftransfer._offline`) uses the local datasets cache only; otherwise one quick
probe fails within seconds when the Hub is unreachable, naming the local alternatives. Streaming Hub splits
(`datasets.load_dataset(..., streaming=True)`) belong here too, behind the same policy.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import datasets
from datasets import Dataset, DatasetDict

from .._offline import hub_offline, hub_timeout, probe_hub
from ..errors import HubUnavailableError
from .dataset import _RawSource
from .images import DataError
from .sources import _from_datasets


def _from_hub(name: str, hub_kwargs: Mapping[str, Any]) -> _RawSource:
    from huggingface_hub import constants as hf_constants

    endpoint = hf_constants.ENDPOINT
    offline = hub_offline()
    alternatives = (
        "Use a local image folder, a .csv/.jsonl/.parquet file, a datasets.Dataset, or the embedded "
        "'fashion-mnist-subset'; with HF_HUB_OFFLINE=1 a copy already in the local datasets cache is used."
    )
    if not offline:
        _require_reachable(endpoint, f"Cannot load the Hub dataset {name!r}", alternatives)
    try:
        loaded = datasets.load_dataset(name, **hub_kwargs)
    except datasets.exceptions.DatasetNotFoundError as err:
        raise DataError(f"Hub dataset {name!r} was not found at {endpoint} (or is private or gated): {err}") from err
    except (ConnectionError, TimeoutError, OSError) as err:
        state = "offline mode (HF_HUB_OFFLINE=1) and not in the local cache" if offline else f"{endpoint} failed"
        raise HubUnavailableError(f"Cannot load the Hub dataset {name!r}: {state} ({err}). {alternatives}") from err
    except Exception as err:
        # httpx/requests errors do not all derive from OSError; anything that is a connectivity problem says so.
        if "connect" in type(err).__name__.lower() or "timeout" in type(err).__name__.lower():
            raise HubUnavailableError(f"Cannot load the Hub dataset {name!r}: {err}. {alternatives}") from err
        raise
    if not isinstance(loaded, (Dataset, DatasetDict)):
        raise DataError(f"Hub dataset {name!r} loaded as {type(loaded).__name__}; expected a Dataset or DatasetDict.")
    return _from_datasets(loaded, f"{name} (Hugging Face Hub)", remote=True)


def _require_reachable(endpoint: str, what: str, alternatives: str) -> None:
    # The shared offline policy (hftransfer._offline): one quick HEAD request, where the client would retry longer.
    probe_hub(what, alternatives, url=endpoint, timeout=hub_timeout(DataError), error=HubUnavailableError)
