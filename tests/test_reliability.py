"""Regression tests of issue 10 (training-run reliability) that are not data- or weights-specific: file modes under
the umask, a truncated checkpoint, bad override values, YAML alias bombs and float images."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch
from testing_common import save_tiny_model

from hftransfer import TransferForImageClassification, TransferImageProcessor
from hftransfer.cli import main

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
    return save_tiny_model(tmp_path_factory.mktemp("model") / "run", CLASSES)


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
    write_json_atomic(run / "eval" / "metrics.json", {"accuracy": 1.0})
    write_json_atomic(run / "history.json", history)
    state = {"features.0.weight": torch.zeros(64, 3, 3, 3), "features.0.bias": torch.zeros(64)}
    save_backbone_weights(
        BackboneWeights(state, (0.5,) * 3, (0.5,) * 3, "test", "vgg16"), run / "backbone.safetensors"
    )

    # The final model and the stages' final/ folders are saved through StagedFineTuner._save_pretrained_atomic.
    from hftransfer.training.staged import StagedFineTuner

    saver = StagedFineTuner.__new__(StagedFineTuner)
    saver.processor = TransferImageProcessor.from_pretrained(tiny_model)
    saver._save_pretrained_atomic(TransferForImageClassification.from_pretrained(tiny_model), run / "final")

    names = [
        "final/model.safetensors",
        "final/config.json",
        "final/preprocessor_config.json",
        "README.md",
        "training_curves.png",
        "confusion_matrix.png",
        "eval/metrics.json",
        "history.json",
        "backbone.safetensors",
    ]
    assert {name: oct(_mode(run / name)) for name in names} == {name: oct(umask_002) for name in names}
    assert not list(run.rglob("*.tmp"))


@pytest.mark.slow
def test_every_file_of_a_training_run_respects_the_umask(tmp_path, umask_002, session_dir):
    """A real run: final model, stage finals, checkpoints, best model, recipe.yaml, cached features: all 0664."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("training_conftest", Path(__file__).parent / "training/conftest.py")
    training_conftest = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(training_conftest)
    tiny_recipe = training_conftest.tiny_recipe

    from hftransfer.recipes import recipe_from_dict
    from hftransfer.training import train

    cache_dir = tmp_path / "features"
    recipe = tiny_recipe(
        tmp_path / "out",
        cache_dir,
        data={"max_train_samples": 32, "max_eval_samples": 32},
        stages=[
            {"name": "frozen", "epochs": 1, "learning_rate": 0.003, "trainable": "head"},
            {"name": "finetune", "max_steps": 1, "learning_rate": 0.001, "trainable": "last_k", "last_k_blocks": 1},
        ],
    )
    train(recipe_from_dict(recipe))
    files = [p for root in (tmp_path / "out", cache_dir) for p in root.rglob("*") if p.is_file()]
    wrong = {str(p.relative_to(tmp_path)): oct(_mode(p)) for p in files if _mode(p) != umask_002}
    assert wrong == {}
    for name in ("model.safetensors", "recipe.yaml", "stages/01-finetune/final/model.safetensors"):
        assert (tmp_path / "out" / name).is_file()
    assert list((tmp_path / "out" / "stages").glob("*/checkpoint-*/model.safetensors"))
    assert list(cache_dir.glob("*/shard-*.safetensors"))


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


# --- item 9: a truncated model.safetensors ------------------------------------------------------------------------


@pytest.mark.parametrize("command", ["predict", "evaluate"])
def test_a_truncated_checkpoint_is_a_clear_error_naming_the_file(tmp_path, tiny_model, capsys, command):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(tiny_model, run)
    weights = run / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 3])
    image = tmp_path / "x.png"
    PIL.Image.new("RGB", (8, 8), (200, 10, 10)).save(image)
    argv = [command, str(run), str(image)] if command == "predict" else [command, str(run), "--data", str(tmp_path)]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert str(weights) in err and "truncated or corrupt" in err, err
    assert "Traceback" not in err and "SafetensorError" not in err.split("(")[0]


# --- items 11 and 12: override values that are not YAML, and YAML alias bombs ----------------------------------------


def test_an_override_value_that_is_not_yaml_names_the_flag(capsys):
    assert main(["train", "quickstart", "--model.hidden_sizes", "[1,", "--print-recipe"]) == 2
    err = capsys.readouterr().err
    assert "error: The value of --model.hidden_sizes is not valid YAML: '[1,'" in err, err
    assert "Traceback" not in err


def _alias_bomb(levels: int) -> str:
    """A flow list whose last item expands to 9**levels strings."""
    items = ['&a ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    for level in range(1, levels):
        previous, current = chr(ord("a") + level - 1), chr(ord("a") + level)
        items.append(f"&{current} [" + ", ".join([f"*{previous}"] * 9) + "]")
    return "[" + ", ".join(items) + "]"


def test_a_yaml_alias_bomb_in_a_recipe_is_refused(tmp_path, capsys):
    # 6 levels: under 1 KB of YAML, a description of 9**6 = 531,441 strings (4 MB); 9 levels was a MemoryError.
    recipe = tmp_path / "bomb.yaml"
    recipe.write_text(f"name: bomb\ndescription: {_alias_bomb(6)}\n")
    assert len(recipe.read_bytes()) < 1024
    assert main(["train", str(recipe), "--print-recipe"]) == 2
    err = capsys.readouterr().err
    assert f"error: Recipe {recipe} expands to more than 100,000 YAML nodes through its aliases" in err, err[:300]
    assert "alias bomb" in err and len(err) < 1000


def test_yaml_limits(tmp_path, capsys):
    from hftransfer._io import YAMLLimitError, load_yaml

    assert load_yaml("defaults: &d {lr: 1}\nstage: *d\n") == {"defaults": {"lr": 1}, "stage": {"lr": 1}}
    with pytest.raises(YAMLLimitError, match="more than 100 YAML aliases"):
        load_yaml("a: &x 1\nb: [" + ", ".join(["*x"] * 101) + "]")
    with pytest.raises(YAMLLimitError, match="recursive YAML alias"):
        load_yaml("a: &x [*x]")
    big = tmp_path / "big.yaml"
    big.write_text("description: '" + "x" * (1 << 20) + "'\n")
    assert main(["train", str(big), "--print-recipe"]) == 2
    assert f"error: Recipe {big} is 1,048,592 bytes; at most 1,048,576 bytes of YAML are accepted." in (
        capsys.readouterr().err
    )
    assert main(["train", "quickstart", "--model.hidden_sizes", _alias_bomb(6), "--print-recipe"]) == 2
    assert "The value of --model.hidden_sizes expands to more than 100,000 YAML nodes" in capsys.readouterr().err


# --- item 16: float images in [0, 1] --------------------------------------------------------------------------------


def test_float_images_in_unit_range_are_scaled_not_black(tmp_path):
    from hftransfer.image_processing_hftransfer import convert_to_rgb_image

    values = np.linspace(0.0, 1.0, 8 * 6, dtype=np.float32).reshape(6, 8)
    image = PIL.Image.fromarray(values, mode="F")
    rgb = np.asarray(convert_to_rgb_image(image))
    np.testing.assert_array_equal(rgb[..., 0], np.round(values * 255).astype(np.uint8))
    assert rgb.max() == 255 and (rgb[..., 0] == rgb[..., 2]).all()
    # Saved as a float TIFF and read back through the processor: the same picture, not a black square.
    path = tmp_path / "float.tif"
    image.save(path)
    processor = TransferImageProcessor(size={"height": 6, "width": 8}, do_normalize=False)
    pixels = processor(PIL.Image.open(path), return_tensors="pt")["pixel_values"][0]
    assert torch.allclose(pixels[0], torch.from_numpy(np.round(values * 255) / 255), atol=1e-6)
    # Float images in 0..255 (or beyond) keep their scale.
    np.testing.assert_array_equal(
        np.asarray(convert_to_rgb_image(PIL.Image.fromarray(values * 255, mode="F")))[..., 0],
        np.round(values * 255).astype(np.uint8),
    )
