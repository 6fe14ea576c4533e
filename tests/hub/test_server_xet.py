"""Uploads with the default client, `hf_xet` installed and no HF_HUB_DISABLE_XET (issue 12, finding 5).

The suite sets HF_HUB_DISABLE_XET=1 before huggingface_hub is imported (tests/conftest.py); these tests turn it off
again the way huggingface_hub reads it (`constants.HF_HUB_DISABLE_XET`), which is what a user without the variable
has."""

from __future__ import annotations

from pathlib import Path

import pytest
from huggingface_hub import constants, hf_hub_download

pytest.importorskip("hf_xet", reason="hf_xet is not installed: huggingface_hub never tries Xet then")


@pytest.fixture
def xet_on(monkeypatch):
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", False)
    from huggingface_hub.utils._runtime import is_xet_available

    assert is_xet_available()


@pytest.fixture(scope="module")
def tiny_output(tmp_path_factory, session_dir):
    """A finished tiny training run (two short stages at 32 px on 64 images), not pushed."""
    from hftransfer.recipes import recipe_from_dict
    from hftransfer.training import train

    output_dir = tmp_path_factory.mktemp("xet-run") / "out"
    recipe = {
        "name": "tiny",
        "model": {"backbone_weights": "keras-imagenet", "image_size": 32, "pooling": "avg", "hidden_sizes": [16]},
        "data": {"dataset": "fashion-mnist-subset", "max_train_samples": 64, "max_eval_samples": 32},
        "stages": [{"name": "frozen", "epochs": 1, "learning_rate": 0.003, "trainable": "head"}],
        "training": {
            "output_dir": str(output_dir),
            "per_device_train_batch_size": 32,
            "dataloader_num_workers": 0,
            "feature_cache_dir": str(session_dir / "feature_cache"),
            "eval_strategy": "no",
            "save_strategy": "no",
        },
    }
    train(recipe_from_dict(recipe))
    return output_dir


def test_generic_client_trying_xet_is_told_what_to_set(xet_on, hub_api, hub_repo, tmp_path):
    weights = tmp_path / "w.bin"
    weights.write_bytes(b"\x00\x01" * 1000)
    with pytest.raises(Exception, match=r"HF_HUB_DISABLE_XET=1") as caught:
        hub_api.upload_file(path_or_fileobj=str(weights), path_in_repo="w.bin", repo_id=hub_repo)
    print(f"what huggingface_hub raises: {type(caught.value).__name__}: {caught.value}")
    assert hub_api.list_repo_files(hub_repo) == [".gitattributes"]


def test_hftransfer_push_works_with_xet_installed_and_no_variable(
    xet_on, tiny_output, hub_server, hub_api, hub_repo_id
):
    from hftransfer.hub import push_to_hub

    url = push_to_hub(tiny_output, hub_repo_id, token=hub_server.token_for("alice"))
    assert "/commit/" in url
    info = hub_api.model_info(hub_repo_id, files_metadata=True)
    lfs = {sibling.rfilename for sibling in info.siblings if sibling.lfs}
    assert "model.safetensors" in lfs
    assert constants.HF_HUB_DISABLE_XET is False  # the push switched Xet off for its own upload only
    local = hf_hub_download(hub_repo_id, "model.safetensors", force_download=True)
    assert Path(local).read_bytes() == (tiny_output / "model.safetensors").read_bytes()
