"""Regression tests of issue 10 (training-run reliability) that are not data- or weights-specific: file modes under
the umask."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest
import torch

from hftransfer import TransferConfig, TransferForImageClassification, TransferImageProcessor

CLASSES = ("cat", "dog", "owl")


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def umask_002():
    """Run under umask 002 (group-writable, as on shared project folders), then restore the previous umask."""
    previous = os.umask(0o002)
    try:
        yield 0o664
    finally:
        os.umask(previous)


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    config = TransferConfig(
        image_size=32,
        pooling="avg",
        hidden_sizes=[8],
        num_labels=3,
        id2label=dict(enumerate(CLASSES)),
        label2id={name: i for i, name in enumerate(CLASSES)},
    )
    model_dir = tmp_path_factory.mktemp("model") / "run"
    TransferForImageClassification(config).save_pretrained(model_dir)
    TransferImageProcessor.from_transfer_config(config).save_pretrained(model_dir)
    return model_dir


# --- item 8: every file hftransfer writes respects the umask ---------------------------------------------------------


def test_atomic_writes_respect_the_umask(tmp_path, umask_002):
    from hftransfer import _io

    written = [
        _io.write_bytes_atomic(tmp_path / "a.bin", b"\x00\x01"),
        _io.write_text_atomic(tmp_path / "b.md", "caf\u00e9\r\n"),
        _io.write_json_atomic(tmp_path / "c.json", {"x": [1, 2]}),
    ]
    assert [_mode(p) for p in written] == [umask_002] * 3
    assert (tmp_path / "b.md").read_bytes() == "caf\u00e9\r\n".encode()  # newlines untouched
    assert json.loads((tmp_path / "c.json").read_text()) == {"x": [1, 2]}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.bin", "b.md", "c.json"]  # no temporary files left
    os.umask(0o077)
    assert _mode(_io.write_bytes_atomic(tmp_path / "private.bin", b"")) == 0o600


def test_outputs_of_a_run_respect_the_umask(tmp_path, tiny_model, umask_002):
    """README.md, the PNGs, metrics.json, backbone weights and JSON records: 0664 under umask 002 (were 0600/0644)."""
    import shutil

    from hftransfer.cards import render_model_card
    from hftransfer.inference import _write_json_atomic
    from hftransfer.plots import plot_confusion_matrix, plot_training_curves
    from hftransfer.training.trainer import write_json_atomic
    from hftransfer.weights import BackboneWeights, save_backbone_weights

    run = tmp_path / "run"
    shutil.copytree(tiny_model, run)
    (run / "metrics.json").write_text(json.dumps({"final": {"validation": {"accuracy": 0.5, "loss": 1.0}}}))
    history = [{"stage": "frozen", "epochs": 1.0, "log_history": [{"epoch": 1.0, "step": 1, "loss": 1.0}]}]
    plot_training_curves(history, run / "training_curves.png")
    plot_confusion_matrix([[1, 0, 0], [0, 1, 0], [0, 0, 1]], list(CLASSES), run / "confusion_matrix.png")
    render_model_card(run)
    (run / "eval").mkdir()
    _write_json_atomic(run / "eval" / "metrics.json", {"accuracy": 1.0})
    write_json_atomic(run / "history.json", history)
    state = {"features.0.weight": torch.zeros(64, 3, 3, 3), "features.0.bias": torch.zeros(64)}
    save_backbone_weights(
        BackboneWeights(state, (0.5,) * 3, (0.5,) * 3, "test", "vgg16"), run / "backbone.safetensors"
    )

    names = [
        "README.md",
        "training_curves.png",
        "confusion_matrix.png",
        "eval/metrics.json",
        "history.json",
        "backbone.safetensors",
    ]
    assert {name: oct(_mode(run / name)) for name in names} == {name: oct(umask_002) for name in names}
    assert not list(run.rglob("*.tmp"))


def test_apply_umask_mode_fixes_save_pretrained_outputs(tmp_path, tiny_model, umask_002):
    # safetensors' save_file writes model.safetensors through a 0600 temporary file.
    from hftransfer._io import apply_umask_mode

    model = TransferForImageClassification.from_pretrained(tiny_model)
    model.save_pretrained(tmp_path / "saved")
    apply_umask_mode(tmp_path / "saved")
    assert _mode(tmp_path / "saved") == 0o775
    assert {p.name: _mode(p) for p in (tmp_path / "saved").iterdir()} == {
        p.name: umask_002 for p in (tmp_path / "saved").iterdir()
    }
    assert (tmp_path / "saved" / "model.safetensors").is_file()
