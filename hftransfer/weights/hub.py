"""Backbone weights from the Hugging Face Hub: timm tags (`vgg16.tv_in1k`) and Hub ids (`timm/vgg16.tv_in1k`).

The local Hub cache is tried first (no network); then the shared offline policy of `hftransfer._offline` applies:
offline mode fails at once, and one quick `HEAD` request (which also picks `model.safetensors` or
`pytorch_model.bin`) fails within seconds when the Hub is unreachable, naming the offline alternatives.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from .._offline import hub_offline, hub_timeout, probe_hub
from ..constants import CONFIG_FILE, LEGACY_WEIGHTS_FILE, WEIGHTS_FILE
from ..errors import BackboneWeightsError, HubWeightsUnavailableError
from .sources import _TIMM_NAME, BackboneWeights, _offline_alternatives, _Source
from .torch_files import _load_torch_file, _normalisation_from_metadata


def _hub_timeout() -> float:
    """Seconds to wait for the Hub (`$HFTRANSFER_HUB_TIMEOUT`, default 5); a bad value is a BackboneWeightsError."""
    return hub_timeout(BackboneWeightsError)


def _load_from_hub(parsed: _Source, backbone: str) -> BackboneWeights:
    from huggingface_hub import hf_hub_download, hf_hub_url

    repo_id, normalisation = parsed.spec, None
    if parsed.timm_name:
        from timm.models import get_pretrained_cfg

        arch = _TIMM_NAME.match(parsed.timm_name).group("arch")
        cfg = get_pretrained_cfg(parsed.timm_name)
        if cfg is None or not cfg.hf_hub_id:
            import timm

            known = timm.list_pretrained(f"{arch}.*")
            raise BackboneWeightsError(
                f"timm has no Hub weights named {parsed.timm_name!r}; known: {', '.join(known) or '(none)'}."
            )
        if arch != backbone:
            raise BackboneWeightsError(f"{parsed.timm_name!r} holds {arch} weights, but backbone={backbone!r}.")
        repo_id, normalisation = cfg.hf_hub_id, (cfg.mean, cfg.std)
    display = f"hf-hub:{repo_id}"

    def unavailable(reason: str) -> HubWeightsUnavailableError:
        return HubWeightsUnavailableError(
            f"Cannot get backbone weights {display!r} from the Hugging Face Hub: {reason}. {_offline_alternatives()}"
        )

    filenames = (WEIGHTS_FILE, LEGACY_WEIGHTS_FILE)
    path = None
    for filename in filenames:  # an earlier download in the Hub cache needs no network at all
        try:
            path = hf_hub_download(repo_id, filename, local_files_only=True)
            break
        except Exception:  # not cached under this name
            continue
    if path is None:
        if hub_offline():
            raise unavailable("offline mode is on (HF_HUB_OFFLINE) and the weights are not in the local Hub cache")
        # One quick request without retries (the shared offline policy): its status also picks the file name.
        timeout = _hub_timeout()
        response = probe_hub(
            f"Cannot get backbone weights {display!r} from the Hugging Face Hub",
            _offline_alternatives(),
            url=hf_hub_url(repo_id, filenames[0]),
            timeout=timeout,
            error=HubWeightsUnavailableError,
        )
        filename = filenames[1] if response.status_code == 404 else filenames[0]
        try:
            path = hf_hub_download(repo_id, filename, etag_timeout=timeout)
        except Exception as exc:
            raise unavailable(f"download of {filename} failed ({type(exc).__name__}: {exc})") from exc
    path = Path(path)
    weights = _load_torch_file(path, backbone, source=repo_id)
    if normalisation is None:
        try:  # timm and hftransfer repos record their normalisation in config.json
            offline = hub_offline()
            config_path = Path(
                hf_hub_download(repo_id, CONFIG_FILE, local_files_only=offline, etag_timeout=_hub_timeout())
            )
            normalisation = _normalisation_from_metadata(config_path, {})
        except Exception:
            normalisation = None
    if normalisation is not None:
        weights = replace(
            weights, image_mean=tuple(map(float, normalisation[0])), image_std=tuple(map(float, normalisation[1]))
        )
    return weights
