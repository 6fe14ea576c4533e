"""Hub datasets, name -> `_RawSource`: `datasets.load_dataset` behind hftransfer's one offline policy.

Offline mode (`HF_HUB_OFFLINE`, see `hftransfer._offline`) uses the local datasets cache only; otherwise one quick
probe fails within seconds when the Hub is unreachable, naming the local alternatives. Streaming Hub splits
(`datasets.load_dataset(..., streaming=True)`, `_stream_from_hub`) go through the same policy; offline they fail at
once, since a stream reads from the Hub.
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

_ALTERNATIVES = (
    "Use a local image folder, a .csv/.jsonl/.parquet file, a datasets.Dataset, or the embedded "
    "'fashion-mnist-subset'; with HF_HUB_OFFLINE=1 a copy already in the local datasets cache is used."
)


def _from_hub(name: str, hub_kwargs: Mapping[str, Any]) -> _RawSource:
    loaded = _load_hub(name, hub_kwargs)
    if not isinstance(loaded, (Dataset, DatasetDict)):
        raise DataError(f"Hub dataset {name!r} loaded as {type(loaded).__name__}; expected a Dataset or DatasetDict.")
    return _from_datasets(loaded, f"{name} (Hugging Face Hub)", remote=True)


def _stream_from_hub(name: str, hub_kwargs: Mapping[str, Any]) -> datasets.IterableDatasetDict:
    """`datasets.load_dataset(name, streaming=True)` behind the same policy. Streaming reads from the Hub as it
    goes, so offline mode fails here at once (a cached copy cannot be streamed: load it without streaming)."""
    if hub_offline():
        raise HubUnavailableError(
            f"Cannot load the Hub dataset {name!r}: offline mode (HF_HUB_OFFLINE=1) and streaming reads from the "
            "Hub (a copy in the local datasets cache is only used without data.streaming). "
            "Use a local image folder, a .parquet file (both stream), or the embedded 'fashion-mnist-subset'."
        )
    loaded = _load_hub(name, {**hub_kwargs, "streaming": True})
    if isinstance(loaded, datasets.IterableDataset):
        loaded = datasets.IterableDatasetDict({"train": loaded})
    if not isinstance(loaded, datasets.IterableDatasetDict):
        raise DataError(f"Hub dataset {name!r} streamed as {type(loaded).__name__}; expected an IterableDatasetDict.")
    return loaded


def _load_hub(name: str, hub_kwargs: Mapping[str, Any]) -> Any:
    from huggingface_hub import constants as hf_constants

    endpoint = hf_constants.ENDPOINT
    offline = hub_offline()
    if not offline:
        _require_reachable(endpoint, f"Cannot load the Hub dataset {name!r}", _ALTERNATIVES)
    try:
        return datasets.load_dataset(name, **hub_kwargs)
    except datasets.exceptions.DatasetNotFoundError as err:
        raise DataError(f"Hub dataset {name!r} was not found at {endpoint} (or is private or gated): {err}") from err
    except (ConnectionError, TimeoutError, OSError) as err:
        state = "offline mode (HF_HUB_OFFLINE=1) and not in the local cache" if offline else f"{endpoint} failed"
        raise HubUnavailableError(f"Cannot load the Hub dataset {name!r}: {state} ({err}). {_ALTERNATIVES}") from err
    except Exception as err:
        # httpx/requests errors do not all derive from OSError; anything that is a connectivity problem says so.
        if "connect" in type(err).__name__.lower() or "timeout" in type(err).__name__.lower():
            raise HubUnavailableError(f"Cannot load the Hub dataset {name!r}: {err}. {_ALTERNATIVES}") from err
        raise


def _require_reachable(endpoint: str, what: str, alternatives: str) -> None:
    # The shared offline policy (hftransfer._offline): one quick HEAD request, where the client would retry longer.
    probe_hub(what, alternatives, url=endpoint, timeout=hub_timeout(DataError), error=HubUnavailableError)
