"""`hftransfer export`: ONNX with a dynamic batch axis, checked against PyTorch (issue 11)."""

import re
import sys

import numpy as np
import onnx
import pytest
import torch

from hftransfer import TransferConfig, TransferForImageClassification, TransferImageProcessor
from hftransfer.cli import main
from hftransfer.export import ExportError, export_onnx


def save_model(model_dir, **overrides) -> TransferForImageClassification:
    # initializer_range=1: logits of order 1-100, so that a max abs difference of 1e-4 means something.
    values = {"backbone": "vgg11", "image_size": 32, "pooling": "avg", "hidden_sizes": [16], "num_labels": 4}
    values.update(initializer_range=1.0, **overrides)
    torch.manual_seed(0)
    model = TransferForImageClassification(TransferConfig(**values)).eval()
    model.save_pretrained(model_dir)
    return model


def graph_inputs(path) -> dict[str, list]:
    graph = onnx.load(str(path)).graph
    return {i.name: [d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim] for i in graph.input}


def run_reference(path, feeds: dict) -> np.ndarray:
    from onnx.reference import ReferenceEvaluator

    return ReferenceEvaluator(onnx.load(str(path))).run(["logits"], feeds)[0]


@pytest.fixture(params=["onnxruntime", "onnx.reference"])
def runtime(request, monkeypatch):
    if request.param == "onnxruntime":
        pytest.importorskip("onnxruntime")
    else:
        monkeypatch.setitem(sys.modules, "onnxruntime", None)  # `import onnxruntime` raises ImportError
    return request.param


def test_export_has_a_dynamic_batch_axis_and_matches_pytorch(tmp_path, runtime):
    model = save_model(tmp_path / "model")
    result = export_onnx(tmp_path / "model")
    assert result.path == (tmp_path / "model" / "model.onnx").resolve() and result.path.is_file()
    assert result.verified_with == runtime and result.num_samples == 3
    assert result.max_abs_diff is not None and result.max_abs_diff <= result.tolerance
    assert result.tolerance == pytest.approx(1e-4 * max(1.0, result.max_abs_logit))
    assert graph_inputs(result.path) == {"pixel_values": ["batch_size", 3, 32, 32]}
    assert [o.name for o in onnx.load(str(result.path)).graph.output] == ["logits"]
    onnx.checker.check_model(str(result.path))
    for batch_size in (1, 5):  # neither is the traced batch size (2)
        pixel_values = torch.randn(batch_size, 3, 32, 32)
        with torch.no_grad():
            expected = model(pixel_values).logits.numpy()
        assert np.abs(expected).max() > 0.1  # real signal, not all-zero logits
        actual = run_reference(result.path, {"pixel_values": pixel_values.numpy()})
        assert actual.shape == (batch_size, 4)
        np.testing.assert_allclose(actual, expected, atol=1e-4, rtol=1e-4)
    assert not list((tmp_path / "model").glob("*.tmp"))


def test_fusion_model_exports_with_extra_features_as_second_input(tmp_path):
    model = save_model(
        tmp_path / "fusion", head="fusion", fusion_stages=[3, 4], extra_features_dim=3, hidden_sizes=[8]
    )
    output = tmp_path / "deploy" / "fusion.onnx"
    result = export_onnx(tmp_path / "fusion", output, opset=18)
    assert result.path == output.resolve() and result.input_names == ["pixel_values", "extra_features"]
    assert graph_inputs(output) == {"pixel_values": ["batch_size", 3, 32, 32], "extra_features": ["batch_size", 3]}
    assert onnx.load(str(output)).opset_import[0].version == 18
    assert result.max_abs_diff <= result.tolerance
    pixel_values = torch.randn(4, 3, 32, 32)
    for extra in (torch.zeros(4, 3), 10 * torch.randn(4, 3)):
        with torch.no_grad():
            expected = model(pixel_values, extra_features=extra).logits.numpy()
        actual = run_reference(output, {"pixel_values": pixel_values.numpy(), "extra_features": extra.numpy()})
        np.testing.assert_allclose(actual, expected, atol=1e-4, rtol=1e-4)
    zeros = run_reference(output, {"pixel_values": pixel_values.numpy(), "extra_features": np.zeros((4, 3), "f4")})
    assert not np.allclose(zeros, actual)  # the second input is used


def test_cli_export_prints_the_max_abs_difference(tmp_path, capsys):
    save_model(tmp_path / "model", image_size=64, pooling="flatten")
    TransferImageProcessor.from_transfer_config(TransferConfig(image_size=64), resize_mode="crop").save_pretrained(
        tmp_path / "model"
    )  # a saved processor is used for the sample images
    target = tmp_path / "out.onnx"
    code = main(["export", str(tmp_path / "model"), "--format", "onnx", "--opset", "18", "--output", str(target)])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert f"wrote {target.resolve()}" in out and "pixel_values[batch_size, 3, 64, 64]" in out
    match = re.search(
        r"verified with (onnxruntime|onnx\.reference) on 3 sample images: max abs difference (\S+) "
        r"\(logits up to (\S+); tolerance (\S+)\)",
        out,
    )
    assert match, out
    difference, scale, tolerance = (float(match.group(i)) for i in (2, 3, 4))
    assert difference <= tolerance and tolerance == pytest.approx(1e-4 * max(1.0, scale), rel=0.01)
    assert onnx.load(str(target)).opset_import[0].version == 18
    assert graph_inputs(target) == {"pixel_values": ["batch_size", 3, 64, 64]}


def test_an_export_that_disagrees_with_pytorch_is_an_error_and_keeps_the_old_file(tmp_path, monkeypatch):
    import hftransfer.export as export

    save_model(tmp_path / "model")
    target = tmp_path / "model" / "model.onnx"
    target.write_bytes(b"previous export")
    real_run = export._run_onnx

    def off_by_a_bit(path, names, inputs):
        logits, runtime = real_run(path, names, inputs)
        return logits + 0.01 * max(1.0, float(np.abs(logits).max())), runtime  # 100x the tolerance

    monkeypatch.setattr(export, "_run_onnx", off_by_a_bit)
    with pytest.raises(ExportError, match=r"disagrees with PyTorch: max abs difference of the logits \S+ > tolerance"):
        export_onnx(tmp_path / "model")
    assert target.read_bytes() == b"previous export"
    assert not list((tmp_path / "model").glob("*.tmp"))


def test_export_errors_name_the_problem(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main(["export", str(tmp_path / "empty")]) == 1
    assert "has no config.json" in capsys.readouterr().err
    assert main(["export", str(tmp_path / "missing")]) == 1
    assert "is not a folder" in capsys.readouterr().err
    save_model(tmp_path / "model")
    with pytest.raises(ExportError, match="opset=11 is invalid"):
        export_onnx(tmp_path / "model", opset=11)
    with pytest.raises(SystemExit):
        main(["export", str(tmp_path / "model"), "--format", "tflite"])
    assert "invalid choice: 'tflite'" in capsys.readouterr().err
