"""hftransfer: transfer learning with ImageNet VGG backbones, the Hugging Face way.

Importing the package registers the model with the transformers Auto classes, so that inside an environment with
hftransfer installed no remote code is needed; saved checkpoints also carry their code (`auto_map`) for
environments without it.
"""

from transformers import AutoConfig, AutoImageProcessor, AutoModel, AutoModelForImageClassification, AutoVideoProcessor

from .configuration_hftransfer import TransferConfig
from .image_processing_hftransfer import TransferImageProcessor, convert_to_rgb_image
from .modeling_hftransfer import (
    TransferBackbone,
    TransferForImageClassification,
    TransferModel,
    TransferModelOutput,
    TransferPreTrainedModel,
)

__version__ = "0.1.0"

AutoConfig.register(TransferConfig.model_type, TransferConfig, exist_ok=True)
AutoModel.register(TransferConfig, TransferModel, exist_ok=True)
AutoModelForImageClassification.register(TransferConfig, TransferForImageClassification, exist_ok=True)
AutoImageProcessor.register(
    TransferConfig, image_processor_classes={"torchvision": TransferImageProcessor}, exist_ok=True
)
# hftransfer models have no video processor. `pipeline(...)` probes `AutoVideoProcessor` anyway, which derives a remote
# class name from the image processor's `auto_map` and, finding no local code for this config, asks "Do you wish to
# run the custom code?" (15 s wait in a terminal). An empty backend map is local code that names no class: the probe
# ends in its ordinary "no video processor" ValueError, which pipelines treat as "none", without a prompt.
AutoVideoProcessor.register(TransferConfig, video_processor_classes={}, exist_ok=True)

# `save_pretrained` then writes the code files and `auto_map`, for `trust_remote_code=True` loading elsewhere.
TransferConfig.register_for_auto_class()
TransferModel.register_for_auto_class("AutoModel")
TransferForImageClassification.register_for_auto_class("AutoModelForImageClassification")
TransferImageProcessor.register_for_auto_class("AutoImageProcessor")


def create_model_and_processor(backbone_weights="keras-imagenet", **kwargs):
    r"""
    Build a model with pretrained backbone weights and the image processor that matches them, in one call.

    ```python
    >>> import hftransfer
    >>> model, processor = hftransfer.create_model_and_processor("keras-imagenet", num_labels=5, image_size=64)
    >>> processor.image_std  # the Keras weights expect 0-255 inputs minus the mean: std 1/255 in [0, 1] units
    ```

    Args:
        backbone_weights (`str`, `os.PathLike` or `None`, *optional*, defaults to `"keras-imagenet"`):
            Any source [`~hftransfer.weights.load_backbone_weights`] accepts (`"keras-imagenet"`,
            `"timm/vgg16.tv_in1k"`, a `.safetensors`/`.pth`/`.h5`/`.onnx` file); `None` keeps the random init.
        kwargs:
            `cache_dir` and the [`TransferConfig`] fields (`backbone`, `num_labels`, `image_size`, `pooling`, ...), as
            for [`~hftransfer.weights.create_model`].

    Returns:
        `tuple[TransferForImageClassification, TransferImageProcessor]`: the model (eval mode) and its processor
        (resize to `image_size`, the weights' `image_mean`/`image_std`).
    """
    from .weights import create_model

    return create_model(backbone_weights, return_processor=True, **kwargs)


def __getattr__(name: str):
    # Heavier entry points (weights conversion, data, training) are imported on first use so that
    # `import hftransfer` stays cheap.
    lazy = {"create_model": "weights", "load_backbone_weights": "weights", "load_image_classification_dataset": "data"}
    if name in lazy:
        import importlib

        return getattr(importlib.import_module(f".{lazy[name]}", __name__), name)
    raise AttributeError(f"module 'hftransfer' has no attribute {name!r}")


__all__ = [
    "TransferBackbone",
    "TransferConfig",
    "TransferForImageClassification",
    "TransferImageProcessor",
    "TransferModel",
    "TransferModelOutput",
    "TransferPreTrainedModel",
    "__version__",
    "convert_to_rgb_image",
    "create_model_and_processor",
]
