"""Data layer: one entry point from any image source to `datasets` splits, lazy transforms and batch collation.

```python
from hftransfer.data import ImageClassificationCollator, build_transforms, load_image_classification_dataset

data = load_image_classification_dataset("fashion-mnist-subset")  # or a folder, a CSV, a Hub name, a Dataset
splits = data.with_transforms(build_transforms(processor, AugmentationConfig()), build_transforms(processor))
collator = ImageClassificationCollator()
```
"""

from .collate import ImageClassificationCollator, default_num_workers
from .fashion_mnist import FASHION_MNIST_CLASSES
from .images import BadImage, BadImageError, DataError
from .loading import (
    EMBEDDED_SOURCES,
    HubUnavailableError,
    ImageClassificationData,
    StreamingImageClassificationData,
    load_image_classification_dataset,
    load_streaming_dataset,
    stratified_split_indices,
)
from .transforms import AUGMENTATION_PRESETS, AugmentationConfig, ImageTransform, augmentation_config, build_transforms

__all__ = [
    "AUGMENTATION_PRESETS",
    "EMBEDDED_SOURCES",
    "FASHION_MNIST_CLASSES",
    "AugmentationConfig",
    "BadImage",
    "BadImageError",
    "DataError",
    "HubUnavailableError",
    "ImageClassificationCollator",
    "ImageClassificationData",
    "ImageTransform",
    "StreamingImageClassificationData",
    "augmentation_config",
    "build_transforms",
    "default_num_workers",
    "load_image_classification_dataset",
    "load_streaming_dataset",
    "stratified_split_indices",
]
