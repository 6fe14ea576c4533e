"""A recipe chosen from the data: `hftransfer train --data PATH` with no recipe.

The rule, in the spirit of BiT's HyperRule (Kolesnikov et al. 2020: resolution and schedule length from the image
size and the number of examples, everything else fixed), and measured on this project's datasets:

- **Image size** from the median short side of up to 64 training images: on a GPU 224 px (the ImageNet
  resolution), or 128 px for images smaller than 96 px; on a CPU the short side rounded to a multiple of 32,
  clamped to 64–128 px (VGG16 costs grow with the square of the side; 2 cores train ~1 img/s at 224 px).
- **Validation**: the source's own validation split, else 10% of train, stratified and seeded.
- **Stage 1, head on cached frozen features** (deterministic transform): 20 epochs below 1,000 training images, 10
  below 20,000, 5 above; learning rate 1e-3. The backbone runs once, so these epochs are cheap.
- **Stage 2, fine-tuning** (`light` augmentation, backbone at 0.1x the head's learning rate, cosine schedule with
  10% warmup, early stopping after 3 evaluations without improvement): on a CPU the last 2 blocks, on a GPU the
  whole backbone. Its length is a compute budget: `ceil(budget * (reference_size / image_size)**2 / num_train)`
  epochs, clamped to 2–30, with budget 15,000 images at 64 px on a CPU and 200,000 at 224 px on a GPU (a step
  costs about the square of the side, so 128 px photos on a CPU get a quarter of the 64 px images); mixup (alpha 0.2) above 20,000 training images (BiT uses
  mixup only for larger sets).
- **Model selection**: the best validation accuracy across both stages is the final model.

[`auto_recipe`] returns a plain recipe mapping; command-line overrides apply on top of it as on any recipe, and
`hftransfer train --data PATH --print-recipe` shows it.
"""

from __future__ import annotations

import logging
import math
import statistics
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

# The rule's constants, named so that the docstring above and the code say the same thing.
CPU_SIZE_RANGE = (64, 128)
GPU_SIZE, GPU_SMALL_IMAGE_SIZE, SMALL_IMAGE_SIDE = 224, 128, 96
HEAD_EPOCHS = ((1_000, 20), (20_000, 10), (math.inf, 5))
# Images seen in stage 2 at the reference size (px); other sizes get the same compute: images * (ref / size)^2.
FINETUNE_BUDGET = {"cpu": (15_000, 64), "gpu": (200_000, 224)}
FINETUNE_EPOCH_RANGE = (2, 30)
MIXUP_ABOVE = 20_000
SIZE_SAMPLE = 64
VALIDATION_SPLIT = 0.1


def _median_short_side(train) -> float | None:
    sides = []
    step = max(1, len(train) // SIZE_SAMPLE)
    for index in range(0, len(train), step):
        image = train[index]["image"]
        if hasattr(image, "size"):
            sides.append(min(image.size))
        if len(sides) >= SIZE_SAMPLE:
            break
    return statistics.median(sides) if sides else None


def choose_image_size(median_side: float | None, budget: str) -> int:
    """The rule's input resolution for images whose median short side is `median_side` (see the module doc)."""
    if budget == "gpu":
        return GPU_SMALL_IMAGE_SIZE if median_side is not None and median_side < SMALL_IMAGE_SIDE else GPU_SIZE
    low, high = CPU_SIZE_RANGE
    side = high if median_side is None else int(round(median_side / 32) * 32)
    return max(low, min(high, side))


def head_epochs(num_train: int) -> int:
    return next(epochs for limit, epochs in HEAD_EPOCHS if num_train < limit)


def finetune_epochs(num_train: int, budget: str, image_size: int | None = None) -> int:
    """Stage 2 epochs for `num_train` images at `image_size` px (default: the budget's reference size)."""
    low, high = FINETUNE_EPOCH_RANGE
    images, reference_size = FINETUNE_BUDGET[budget]
    images *= (reference_size / (image_size or reference_size)) ** 2
    return max(low, min(high, math.ceil(images / max(num_train, 1))))


def auto_recipe(data: str, output_dir: str | None = None, budget: str | None = None) -> dict[str, Any]:
    """A recipe for `data` chosen by the rule in this module's docstring.

    Args:
        data (`str`): Any source `hftransfer.data.load_image_classification_dataset` accepts (an image folder, a
            CSV/parquet file, `fashion-mnist-subset`, ...).
        output_dir (`str`, *optional*): Where the run writes; defaults to `outputs/<name of the data>`.
        budget (`str`, *optional*): `"cpu"` or `"gpu"`; defaults to `"gpu"` when CUDA is available.

    Returns:
        `dict`: A recipe mapping for [`~hftransfer.recipes.recipe_from_dict`] (overrides may be applied first).
    """
    import torch

    from .data import load_image_classification_dataset

    if budget is None:
        budget = "gpu" if torch.cuda.is_available() else "cpu"
    if budget not in FINETUNE_BUDGET:
        raise ValueError(f"budget={budget!r} is invalid: expected 'cpu' or 'gpu'.")
    probe = load_image_classification_dataset(data, check_images="none", validation_split=VALIDATION_SPLIT)
    train = probe.splits["train"]
    num_train = len(train)  # exactly what training will see: the same split, the same seed
    median_side = _median_short_side(train)
    image_size = choose_image_size(median_side, budget)
    name = Path(str(data).rstrip("/")).name or "data"
    finetune = {
        "name": "finetune",
        "trainable": "last_k" if budget == "cpu" else "all",
        "epochs": finetune_epochs(num_train, budget, image_size),
        "learning_rate": 3.0e-4,
        "backbone_lr_scale": 0.1,
        "lr_scheduler_type": "cosine",
        "warmup_ratio": 0.1,
        "augmentation": "light",
        "early_stopping_patience": 3,
    }
    if budget == "cpu":
        finetune["last_k_blocks"] = 2
    if num_train > MIXUP_ABOVE:
        finetune["mixup_alpha"] = 0.2
    recipe = {
        "name": f"auto-{name}",
        "description": (
            f"Chosen by hftransfer's auto-recipe rule for {num_train} training images in {probe.num_labels} classes "
            f"(median short side {median_side if median_side is not None else 'unknown'} px, {budget} budget)."
        ),
        "model": {
            "backbone": "vgg16",
            "backbone_weights": "keras-imagenet",
            "image_size": image_size,
            "pooling": "avg",
            "hidden_sizes": [256],
            "dropout": 0.2,
        },
        "data": {"dataset": str(data), "validation_split": VALIDATION_SPLIT, "augmentation": "none"},
        "stages": [
            {
                "name": "frozen",
                "trainable": "head",
                "epochs": head_epochs(num_train),
                "learning_rate": 1.0e-3,
                "cache_features": True,
            },
            finetune,
        ],
        "training": {
            "output_dir": output_dir or f"outputs/{name}",
            "per_device_train_batch_size": 32,
            "per_device_eval_batch_size": 64,
            "channels_last": budget == "cpu",
            "precision": "bf16" if budget == "gpu" else "no",
            "dataloader_num_workers": 0 if budget == "cpu" else 4,
            "metric_for_best_model": "accuracy",
            "model_selection": "best",
            "save_total_limit": 1,
        },
    }
    logger.info(
        "Auto recipe for %s: %d training images, %d classes, median short side %s px -> %d px, %d head epochs, "
        "%d fine-tuning epochs (%s budget)",
        data,
        num_train,
        probe.num_labels,
        median_side,
        image_size,
        recipe["stages"][0]["epochs"],
        finetune["epochs"],
        budget,
    )
    return recipe


__all__ = ["auto_recipe", "choose_image_size", "finetune_epochs", "head_epochs"]
