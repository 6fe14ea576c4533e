"""`predict` / `evaluate` (Python and CLI) take `device` and `dtype` the way `pipeline` does (issue 11)."""

import json
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch

from hftransfer import TransferConfig, TransferForImageClassification
from hftransfer.cli import main
from hftransfer.inference import (
    InferenceError,
    evaluate_model,
    load_model_and_processor,
    predict,
    resolve_device,
    resolve_dtype,
)

CLASSES = ("dark", "light")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    config = TransferConfig(
        backbone="vgg11",
        image_size=32,
        pooling="avg",
        hidden_sizes=[],
        id2label=dict(enumerate(CLASSES)),
        label2id={name: i for i, name in enumerate(CLASSES)},
        initializer_range=0.5,
    )
    directory = tmp_path_factory.mktemp("model")
    TransferForImageClassification(config).eval().save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    for split, count in (("train", 2), ("test", 3)):
        for name, level in zip(CLASSES, (40, 210)):
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(count):
                pixels = np.clip(level + rng.integers(-30, 30, (36, 36, 3)), 0, 255).astype(np.uint8)
                PIL.Image.fromarray(pixels).save(folder / f"{i}.png")
    return root


def scores_by_path(results) -> dict[str, list[float]]:
    return {r["path"]: [p["score"] for p in sorted(r["predictions"], key=lambda p: p["label"])] for r in results}


@pytest.mark.parametrize(
    ("device", "expected"), [(None, None), (-1, "cpu"), ("-1", "cpu"), ("cpu", "cpu"), (torch.device("cpu"), "cpu")]
)
def test_device_values_read_like_pipeline(device, expected):
    resolved = resolve_device(device)
    assert (resolved if resolved is None else str(resolved)) == expected


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-accelerator message")
def test_device_index_without_an_accelerator_is_a_clear_error():
    with pytest.raises(InferenceError, match="device=0 asks for an accelerator, but none is available"):
        resolve_device("0")
    with pytest.raises(InferenceError, match="device='gpu please' is invalid"):
        resolve_device("gpu please")


def test_dtype_values_read_like_pipeline():
    assert resolve_dtype("bfloat16") is torch.bfloat16 and resolve_dtype(torch.float16) is torch.float16
    assert resolve_dtype("auto") == "auto" and resolve_dtype(None) is None
    with pytest.raises(InferenceError, match="dtype='int8' is invalid: expected one of auto, float32"):
        resolve_dtype("int8")
    with pytest.raises(InferenceError, match="floating-point"):
        resolve_dtype(torch.int64)


def test_predict_in_bfloat16_on_cpu_device_index(model_dir, image_folder):
    model, _ = load_model_and_processor(model_dir, dtype="bfloat16", device=-1)
    assert model.dtype == torch.bfloat16 and model.device.type == "cpu"
    full = scores_by_path(predict(model_dir, image_folder / "test", top_k=2))
    half = scores_by_path(predict(model_dir, image_folder / "test", top_k=2, dtype="bfloat16", device=-1))
    assert full.keys() == half.keys() and len(full) == 6
    assert half != full  # computed in bfloat16 (rounded), not float32
    for path, scores in full.items():
        np.testing.assert_allclose(half[path], scores, atol=3e-2)
    # "auto" loads the dtype the checkpoint was saved in, like pipeline's default.
    bf16_dir = model_dir.parent / "bf16"
    TransferForImageClassification.from_pretrained(model_dir).to(torch.bfloat16).save_pretrained(bf16_dir)
    assert load_model_and_processor(bf16_dir, dtype="auto")[0].dtype == torch.bfloat16
    assert load_model_and_processor(bf16_dir, dtype="float32")[0].dtype == torch.float32


def test_evaluate_with_dtype_and_device(model_dir, image_folder):
    full = evaluate_model(model_dir, image_folder, split="test", device="cpu")
    half = evaluate_model(model_dir, image_folder, split="test", device="-1", dtype="bfloat16")
    assert half["num_samples"] == full["num_samples"] == 6
    assert half["loss"] == pytest.approx(full["loss"], abs=3e-2) and half["loss"] != full["loss"]


def test_cli_predict_and_evaluate_accept_dtype_and_device(model_dir, image_folder, capsys, caplog):
    args = ["predict", str(model_dir), str(image_folder / "test"), "--top-k", "2", "--json"]
    assert main(args) == 0
    full = scores_by_path(json.loads(capsys.readouterr().out))
    assert main([*args, "--dtype", "bfloat16", "--device", "-1"]) == 0
    half = scores_by_path(json.loads(capsys.readouterr().out))
    for path, scores in full.items():
        np.testing.assert_allclose(half[path], scores, atol=3e-2)
    code = main(
        ["evaluate", str(model_dir), "--data", str(image_folder), "--split", "test", "--no-save", "--json"]
        + ["--dtype", "float16", "--device", "cpu"]
    )
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert json.loads(captured.out)["num_samples"] == 6
    assert "Running a torch.float16 model on CPU" in caplog.text
    with pytest.raises(SystemExit):
        main([*args, "--dtype", "int8"])
    assert "invalid choice: 'int8'" in capsys.readouterr().err
