"""From a recipe to what training uses: the model and image processor, and the dataset splits.

The one place a recipe's `model` section is mapped to a [`TransferConfig`]: training, the benchmarks and the tests all
build through [`build_model_and_processor`] (or read the mapping from [`transfer_config_kwargs`]).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .data import ImageClassificationData
    from .image_processing_hftransfer import TransferImageProcessor
    from .modeling_hftransfer import TransferForImageClassification
    from .recipes import DataArguments, ModelArguments, Recipe


def transfer_config_kwargs(
    model_args: ModelArguments, data_args: DataArguments, id2label: dict[int, str]
) -> dict[str, Any]:
    """The [`TransferConfig`] keyword arguments a recipe's `model` and `data` sections describe.

    Args:
        model_args ([`~recipes.ModelArguments`]): The recipe's `model` section (backbone, head, pooling, ...).
        data_args ([`~recipes.DataArguments`]): The recipe's `data` section (its `extra_feature_columns` size the
            fusion of tabular features).
        id2label (`dict[int, str]`): Class names by id, as the dataset gives them.

    Returns:
        `dict[str, Any]`: `TransferConfig(**kwargs)` describes the model training builds (without its weights; the
        weights come from `model_args.backbone_weights`).
    """
    return {
        "backbone": model_args.backbone,
        "image_size": model_args.image_size,
        "head": model_args.head,
        "pooling": model_args.pooling,
        "hidden_sizes": model_args.hidden_sizes,
        "activation": model_args.activation,
        "dropout": model_args.dropout,
        "fusion_stages": model_args.fusion_stages,
        "extra_features_dim": len(data_args.extra_feature_columns),
        "num_labels": len(id2label),
        "id2label": id2label,
        "label2id": {name: idx for idx, name in id2label.items()},
    }


def build_model_and_processor(
    recipe: Recipe, id2label: dict[int, str]
) -> tuple[TransferForImageClassification, TransferImageProcessor]:
    """The model and image processor a recipe trains, before any training.

    With `model.init_from` set, the trained hftransfer model (local folder or Hub repo) and its processor are loaded
    as they are; their labels must be the dataset's. Otherwise a new model is created from the recipe's `model`
    section ([`transfer_config_kwargs`]) with the backbone weights of `model.backbone_weights` (see
    [`~weights.create_model`]), and a [`TransferImageProcessor`] matching its config and `model.resize_mode`.

    Args:
        recipe ([`~recipes.Recipe`]): The recipe to build for.
        id2label (`dict[int, str]`): Class names by id, as the dataset gives them (`{int(k): v}` of its `id2label`).

    Returns:
        `tuple[TransferForImageClassification, TransferImageProcessor]`: The model (in training mode, as created) and
        its processor.

    Raises:
        `ValueError`: `model.init_from` names a model whose labels are not `id2label`.

    Example:

    ```python
    >>> from hftransfer.building import build_model_and_processor, load_recipe_data
    >>> from hftransfer.recipes import load_recipe

    >>> recipe = load_recipe("quickstart")
    >>> data, test_split = load_recipe_data(recipe)
    >>> model, processor = build_model_and_processor(recipe, {int(k): v for k, v in data.id2label.items()})
    ```
    """
    from transformers import AutoImageProcessor

    from .image_processing_hftransfer import TransferImageProcessor
    from .modeling_hftransfer import TransferForImageClassification

    model_args = recipe.model
    if model_args.init_from:
        # Continue from a trained hftransfer model (local folder or Hub repo): its head must know these labels.
        model = TransferForImageClassification.from_pretrained(model_args.init_from)
        processor = AutoImageProcessor.from_pretrained(model_args.init_from)
        if {int(k): v for k, v in model.config.id2label.items()} != id2label:
            raise ValueError(
                f"model.init_from={model_args.init_from!r} predicts labels {model.config.id2label}, but the dataset "
                f"has {id2label}: fine-tune a new head instead (unset init_from) or use matching data."
            )
        return model, processor
    from .weights import create_model

    config_kwargs = transfer_config_kwargs(model_args, recipe.data, id2label)
    model = create_model(backbone_weights=model_args.backbone_weights, **config_kwargs)
    processor = TransferImageProcessor.from_transfer_config(model.config, resize_mode=model_args.resize_mode)
    return model, processor


def load_recipe_data(recipe: Recipe) -> tuple[ImageClassificationData, str | None]:
    """The dataset a recipe trains on, with its `data.max_train_samples` / `max_eval_samples` limits applied.

    With `data.streaming: true` the train split is a stream ([`~data.StreamingImageClassificationData`]): its first
    `max_train_samples` rows (no shuffle before the cut), validation and test in memory.

    Exactly what training loads ([`~training.StagedFineTuner`]): the splits of `data.dataset` (a validation split
    carved out with `data.validation_split` and `training.seed` where the source has none), the train and validation
    splits shuffled (seeded) and cut to their limits, the test split cut to `max_eval_samples`.

    Args:
        recipe ([`~recipes.Recipe`]): The recipe whose `data` section to load.

    Returns:
        `tuple[ImageClassificationData, str | None]`: The loaded data (`.splits`, `.id2label`, ...) and the name of
        its test split (`data.test_split` when the source has it, else `None`).
    """
    from .data import load_image_classification_dataset

    data_args = recipe.data
    source_options = dict(
        image_column=data_args.image_column,
        label_column=data_args.label_column,
        validation_split=data_args.validation_split,
        seed=recipe.training.seed,
        on_bad_image=data_args.on_bad_image,
        extra_feature_columns=tuple(data_args.extra_feature_columns),
    )
    if data_args.streaming:
        from .data.loading import load_streaming_dataset

        data = load_streaming_dataset(data_args.dataset, **source_options, max_eval_samples=data_args.max_eval_samples)
        if data_args.max_train_samples is not None:
            data.train = data.train.take(data_args.max_train_samples)
            if data.num_train_rows is not None:
                data.num_train_rows = min(data.num_train_rows, data_args.max_train_samples)
        test_split = data_args.test_split if data_args.test_split in data.splits else None
        return data, test_split
    data = load_image_classification_dataset(data_args.dataset, **source_options)
    splits = data.splits
    for split, limit in (("train", data_args.max_train_samples), ("validation", data_args.max_eval_samples)):
        if limit is not None and len(splits[split]) > limit:
            splits[split] = splits[split].shuffle(seed=recipe.training.seed).select(range(limit))
    test_split = data_args.test_split if data_args.test_split in splits else None
    if test_split and data_args.max_eval_samples is not None and len(splits[test_split]) > data_args.max_eval_samples:
        splits[test_split] = splits[test_split].select(range(data_args.max_eval_samples))
    return data, test_split


__all__ = ["build_model_and_processor", "load_recipe_data", "transfer_config_kwargs"]
