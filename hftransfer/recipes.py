"""Recipe schema: the dataclasses a YAML recipe is parsed into, with `help` metadata for `hftransfer train --help`.

A recipe has five sections: `model`, `data`, `stages` (a list), `training` and `hub`. Unknown or mistyped keys are
errors that name the key and suggest the closest valid one.
"""

from __future__ import annotations

import dataclasses
import difflib
import fnmatch
import importlib.resources
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ._io import YAMLLimitError, load_yaml
from ._trainer_fields import _coerce_to, _trainer_type, trainer_type_name, transformers_training_fields
from .errors import RecipeError

TRAINABLE_CHOICES = ("head", "all", "last_k")
AUGMENTATION_CHOICES = ("none", "light", "strong")
PRECISION_CHOICES = ("no", "fp16", "bf16")
# Metrics a run can select its model by (the Trainer reports them as `eval_<name>`) and whether higher is better.
SELECTION_METRICS = {"accuracy": True, "f1": True, "precision": True, "recall": True, "loss": False}
MODEL_SELECTION_CHOICES = ("best", "last")
PREFIX_CACHE_CHOICES = ("auto", "always", "never")
FEATURE_CACHE_DTYPES = ("float32", "float16", "bfloat16")


@dataclass
class ModelArguments:
    """Which backbone, which weights, which head."""

    backbone: str = field(
        default="vgg16",
        metadata={
            "help": "timm backbone: vgg11/13/16/19, optionally _bn (Keras block stages), or any timm model with "
            "forward_intermediates (resnet50, convnext_tiny, efficientnet_b0, vit_small_patch16_224, ...)."
        },
    )
    backbone_weights: str | None = field(
        default="keras-imagenet",
        metadata={
            "help": "Backbone weight source: 'keras-imagenet' (offline ImageNet VGG16), a timm/Hub id such as "
            "'timm/vgg16.tv_in1k', a local .safetensors/.pth/.h5/.onnx file, or 'random'."
        },
    )
    init_from: str | None = field(
        default=None,
        metadata={"help": "Start from a trained hftransfer model (local dir or Hub repo id) instead of a new head."},
    )
    image_size: int = field(default=224, metadata={"help": "Square input resolution, a multiple of 32."})
    head: str = field(default="classification", metadata={"help": "'classification' or 'fusion'."})
    pooling: str = field(default="flatten", metadata={"help": "'flatten' (Keras Flatten), 'avg', 'max' or 'avgmax'."})
    hidden_sizes: list[int] = field(default_factory=lambda: [1024], metadata={"help": "Hidden dense layer widths."})
    activation: str = field(default="relu", metadata={"help": "Activation of the hidden layers."})
    dropout: float = field(default=0.0, metadata={"help": "Dropout after each hidden layer, in [0, 1)."})
    fusion_stages: list[int] | None = field(
        default=None,
        metadata={"help": "Backbone stages (0-based; 0..4 for VGG) pooled and concatenated by a fusion head."},
    )
    resize_mode: str = field(
        default="exact", metadata={"help": "'exact' resize to image_size, or 'crop' (shortest edge + center crop)."}
    )


@dataclass
class DataArguments:
    """Where the images come from and how they are transformed."""

    dataset: str = field(
        default="fashion-mnist-subset",
        metadata={
            "help": "A short name of an embedded dataset, a local image folder, a CSV/JSONL/parquet file, or a Hub "
            "dataset name."
        },
    )
    image_column: str | None = field(default=None, metadata={"help": "Image column (detected when unset)."})
    label_column: str | None = field(default=None, metadata={"help": "Label column (detected when unset)."})
    validation_split: float = field(
        default=0.1, metadata={"help": "Fraction of train held out (stratified) when the source has no validation."}
    )
    test_split: str | None = field(
        default="test", metadata={"help": "Split used for the final evaluation (falls back to validation)."}
    )
    extra_feature_columns: list[str] = field(
        default_factory=list, metadata={"help": "Numeric columns fed to a fusion head as `extra_features`."}
    )
    augmentation: str | dict = field(
        default="none",
        metadata={
            "help": "Default augmentation of every stage that does not set its own: 'none' (deterministic), "
            "'light', 'strong', or a mapping of AugmentationConfig fields (crop_scale, horizontal_flip, ...)."
        },
    )
    streaming: bool = field(
        default=False,
        metadata={
            "help": "Read train as a stream (datasets IterableDataset) instead of a table in memory: stages need "
            "max_steps, shuffling is by a buffer of streaming_shuffle_buffer rows."
        },
    )
    streaming_shuffle_buffer: int = field(
        default=1000, metadata={"help": "Rows in the shuffle buffer of a streamed train split."}
    )
    max_train_samples: int | None = field(default=None, metadata={"help": "Truncate train (quick experiments)."})
    max_eval_samples: int | None = field(default=None, metadata={"help": "Truncate validation and test."})
    on_bad_image: str = field(default="error", metadata={"help": "'error' or 'skip' undecodable images (logged)."})


@dataclass
class StageArguments:
    """One stage of staged fine-tuning, trained by a fresh Trainer (fresh optimizer, scheduler and DDP wrap)."""

    name: str = field(default="stage", metadata={"help": "Stage name (checkpoint folders, logs, model card)."})
    epochs: float = field(default=1.0, metadata={"help": "Number of epochs."})
    max_steps: int = field(default=-1, metadata={"help": "Overrides epochs when > 0."})
    learning_rate: float = field(default=1e-3, metadata={"help": "Peak learning rate of the head."})
    lr_scheduler_type: str = field(default="constant", metadata={"help": "transformers scheduler name."})
    warmup_ratio: float = field(default=0.0, metadata={"help": "Warmup fraction of the stage's steps."})
    weight_decay: float = field(default=0.0, metadata={"help": "Decoupled weight decay."})
    optimizer: str = field(default="adamw_torch", metadata={"help": "transformers `optim` name."})
    trainable: str = field(
        default="head", metadata={"help": "'head' (backbone frozen), 'all', or 'last_k' (the last k blocks)."}
    )
    last_k_blocks: int | None = field(
        default=None, metadata={"help": "k for trainable='last_k' (1..number of backbone stages; 5 for VGG)."}
    )
    backbone_lr_scale: float = field(
        default=1.0, metadata={"help": "Discriminative LR: backbone groups train at learning_rate x this."}
    )
    cache_features: bool = field(
        default=True,
        metadata={"help": "Head-only stage with deterministic transforms: train on cached backbone features."},
    )
    cache_frozen_prefix: str = field(
        default="auto",
        metadata={
            "help": "trainable='last_k' with deterministic transforms: train the last k blocks on cached outputs of "
            "the frozen blocks. 'auto' (when the measured cost pays: enough epochs, small enough activations), "
            "'always' or 'never'."
        },
    )
    augmentation: str | dict | None = field(
        default=None,
        metadata={
            "help": "This stage's training augmentation ('none', 'light', 'strong' or a mapping); unset: "
            "data.augmentation. A cached head-only stage trains on features of the deterministic transform."
        },
    )
    early_stopping_patience: int | None = field(
        default=None,
        metadata={
            "help": "Stop the stage after this many evaluations without improving its best "
            "training.metric_for_best_model; unset: off."
        },
    )
    label_smoothing: float = field(default=0.0, metadata={"help": "Label smoothing of the training loss, in [0, 1)."})
    mixup_alpha: float = field(default=0.0, metadata={"help": "Mixup alpha (timm's Mixup, soft-target loss); 0: off."})
    cutmix_alpha: float = field(default=0.0, metadata={"help": "CutMix alpha (timm's Mixup); 0: off."})
    l2sp_strength: float = field(
        default=0.0,
        metadata={
            "help": "L2-SP (Li et al. 2018): penalise strength/2 x squared distance of the trainable backbone weights "
            "from their pretrained values, instead of plain weight decay on them; 0: off."
        },
    )
    layer_lr_decay: float = field(
        default=1.0,
        metadata={
            "help": "Per-block LR decay: block b of n trains at learning_rate x backbone_lr_scale x decay^(n-b); "
            "1: off."
        },
    )
    trainer_args: dict[str, Any] = field(
        default_factory=dict,
        metadata={
            "help": "transformers TrainingArguments fields set for this stage only (written as plain stage keys).",
            "passthrough": True,
        },
    )


@dataclass
class TrainingArguments:
    """Settings shared by all stages. Any other field of transformers' `TrainingArguments` may be set here too."""

    output_dir: str = field(default="outputs/hftransfer", metadata={"help": "Where models, metrics, plots go."})
    per_device_train_batch_size: int = field(default=32, metadata={"help": "Batch size per device for training."})
    per_device_eval_batch_size: int = field(default=64, metadata={"help": "Batch size per device for evaluation."})
    precision: str = field(default="no", metadata={"help": "'no', 'fp16' or 'bf16' (never bf16 on CPU: 40x slower)."})
    seed: int = field(default=42, metadata={"help": "Random seed (data order, head init, augmentation)."})
    logging_steps: int = field(default=10, metadata={"help": "Log the training loss every N steps."})
    eval_strategy: str = field(default="epoch", metadata={"help": "'epoch', 'steps' or 'no'."})
    save_strategy: str = field(default="epoch", metadata={"help": "'epoch', 'steps' or 'no'."})
    save_steps: int = field(default=500, metadata={"help": "Checkpoint interval for save_strategy='steps'."})
    save_total_limit: int | None = field(default=2, metadata={"help": "Checkpoints kept per stage."})
    report_to: list[str] = field(default_factory=lambda: ["none"], metadata={"help": "Trainer integrations."})
    dataloader_num_workers: int = field(default=2, metadata={"help": "DataLoader worker processes."})
    torch_compile: bool = field(default=False, metadata={"help": "torch.compile the model."})
    channels_last: bool = field(default=False, metadata={"help": "channels_last memory format (GPU: faster)."})
    use_cpu: bool = field(default=False, metadata={"help": "Train on CPU even when a GPU is present."})
    feature_cache_dir: str | None = field(
        default=None, metadata={"help": "Cached backbone features (default: $HFTRANSFER_CACHE/features)."}
    )
    feature_cache_dtype: str = field(
        default="float32",
        metadata={
            "help": "Storage dtype of cached features: 'float32', 'float16' or 'bfloat16' (half the disk and page "
            "cache; the head still trains in float32)."
        },
    )
    metric_for_best_model: str = field(
        default="accuracy",
        metadata={
            "help": "Validation metric that ranks evaluations: 'accuracy', 'f1', 'precision', 'recall', 'loss'."
        },
    )
    model_selection: str = field(
        default="best",
        metadata={
            "help": "'best': the final model is the best validation evaluation across all stages (each stage starts "
            "from the best model so far); 'last': the model as the last stage ends."
        },
    )
    trainer_args: dict[str, Any] = field(
        default_factory=dict,
        metadata={
            "help": "transformers TrainingArguments fields set for every stage (written as plain training keys).",
            "passthrough": True,
        },
    )


@dataclass
class HubArguments:
    """Sharing the result on the Hub at the end of training (rank 0 only)."""

    push_to_hub: bool = field(default=False, metadata={"help": "Push the final model, card and artifacts."})
    repo_id: str | None = field(default=None, metadata={"help": "Target repo, 'user/name'."})
    private: bool = field(default=False, metadata={"help": "Create the repo as private."})
    revision: str | None = field(default=None, metadata={"help": "Branch to push to (default main)."})
    license: str = field(default="apache-2.0", metadata={"help": "License in the model card metadata."})


@dataclass
class Recipe:
    """A whole training recipe: model, data, stages, training settings and Hub settings."""

    name: str = "hftransfer"
    description: str = ""
    model: ModelArguments = field(default_factory=ModelArguments)
    data: DataArguments = field(default_factory=DataArguments)
    stages: list[StageArguments] = field(
        default_factory=lambda: [
            StageArguments(name="frozen", epochs=3, learning_rate=1e-3, trainable="head"),
            StageArguments(name="finetune", epochs=2, learning_rate=1e-4, trainable="all", backbone_lr_scale=0.1),
        ]
    )
    training: TrainingArguments = field(default_factory=TrainingArguments)
    hub: HubArguments = field(default_factory=HubArguments)

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        # Pass-through TrainingArguments fields are written as plain keys of their section, as a user writes them.
        for section in (data["training"], *data["stages"]):
            section.update(section.pop(PASSTHROUGH_FIELD))
        return data

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


SECTIONS: dict[str, type] = {
    "model": ModelArguments,
    "data": DataArguments,
    "training": TrainingArguments,
    "hub": HubArguments,
}


def _closest(key: str, valid: list[str]) -> str:
    match = difflib.get_close_matches(key, valid, n=1, cutoff=0.5)
    return f" Did you mean '{match[0]}'?" if match else f" Valid keys: {', '.join(sorted(valid))}."


def _annotation_text(annotation: Any) -> str:
    # Annotations are strings here (`from __future__ import annotations`): "int", "str | None", "list[int]", ...
    return annotation if isinstance(annotation, str) else getattr(annotation, "__name__", str(annotation))


def field_type_name(annotation: Any) -> str:
    """The type a recipe key takes, from its dataclass field annotation: `int`, `str`, `list[int]`, `str | dict`
    (without `| None`: whether null is allowed is the key's default's business)."""
    return _annotation_text(annotation).replace(" | None", "").strip()


def _coerce(where: str, value: Any, annotation: Any) -> Any:
    """Check/convert a YAML or command-line value against a dataclass field annotation."""
    text = _annotation_text(annotation)
    optional = "None" in text
    if value is None:
        if optional:
            return None
        raise RecipeError(f"{where}: null is not allowed, expected {text}.")
    base = field_type_name(annotation)
    try:
        if base == "bool":
            if isinstance(value, bool):
                return value
            if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
                return value.lower() in ("true", "1", "yes")
            raise ValueError
        if base == "int":
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError
            return int(value)
        if base == "float":
            if isinstance(value, bool):
                raise ValueError
            number = float(value)
            if not math.isfinite(number):
                raise RecipeError(f"{where}={value!r} is invalid: expected a finite number.")
            return number
        if base == "str | dict":
            if isinstance(value, dict):
                return dict(value)
            if isinstance(value, list):
                raise ValueError
            return str(value)
        if base == "str":
            if isinstance(value, (dict, list)):
                raise ValueError
            return str(value)
        if base.startswith("list["):
            item = base[5:-1]
            if isinstance(value, str):
                value = [v for v in value.replace(",", " ").split() if v]
            if not isinstance(value, (list, tuple)):
                raise ValueError
            try:
                return [_coerce(f"{where}[{i}]", v, item) for i, v in enumerate(value)]
            except RecipeError:
                raise ValueError from None  # name the whole list and its expected type
    except RecipeError:
        raise
    except (TypeError, ValueError):
        raise RecipeError(f"{where}={value!r} is invalid: expected {text}.") from None
    return value


def _build_section(section: str, cls: type, values: Any) -> Any:
    if values is None:
        return cls()
    if not isinstance(values, dict):
        raise RecipeError(
            f"Recipe section '{section}' must be a mapping of keys to values, got {type(values).__name__}."
        )
    valid = {f.name: f for f in dataclasses.fields(cls) if not f.metadata.get("passthrough")}
    passthrough = cls in (TrainingArguments, StageArguments)
    kwargs: dict[str, Any] = {}
    extra: dict[str, Any] = {}
    for key, value in values.items():
        if key in valid:
            kwargs[key] = _coerce(f"{section}.{key}", value, valid[key].type)
        elif passthrough and key in transformers_training_fields():
            extra[key] = _coerce_passthrough(section, key, value, cls is StageArguments)
        else:
            candidates = list(valid) + (list(transformers_training_fields()) if passthrough else [])
            raise RecipeError(f"Unknown key '{section}.{key}' in recipe.{_closest(key, candidates)}")
    if passthrough:
        kwargs[PASSTHROUGH_FIELD] = extra
    return cls(**kwargs)


# --- transformers TrainingArguments pass-through ---------------------------------------------------------------------

PASSTHROUGH_FIELD = "trainer_args"
# TrainingArguments fields hftransfer sets from its own keys (or needs as they are): where to set them instead.
RESERVED_TRAINER_FIELDS = {
    "num_train_epochs": "stages[].epochs",
    "optim": "stages[].optimizer",
    "warmup_steps": "stages[].warmup_ratio",
    "bf16": "training.precision",
    "fp16": "training.precision",
    "load_best_model_at_end": "training.model_selection",
    "greater_is_better": "training.metric_for_best_model (the direction follows the metric)",
    "resume_from_checkpoint": "hftransfer train --resume",
    "push_to_hub": "hub.push_to_hub (hftransfer pushes the final model, card and artifacts)",
    "remove_unused_columns": "nothing: hftransfer's collator needs every column",
    "label_names": "nothing: hftransfer's models take `labels`",
    "local_rank": "nothing: the launcher sets it",
    "label_smoothing_factor": "stages[].label_smoothing",
}
# hftransfer keys of `training:` that hold for all stages and cannot differ per stage.
RUN_WIDE_TRAINER_FIELDS = (
    "output_dir",
    "seed",
    "data_seed",
    "eval_strategy",
    "metric_for_best_model",
    "use_cpu",
    "report_to",
)


def _coerce_passthrough(section: str, key: str, value: Any, in_stage: bool) -> Any:
    where = f"{section}.{key}"
    if key in RESERVED_TRAINER_FIELDS:
        raise RecipeError(f"{where} is set by hftransfer: use {RESERVED_TRAINER_FIELDS[key]} instead.")
    if in_stage and key in RUN_WIDE_TRAINER_FIELDS:
        raise RecipeError(f"{where} holds for the whole run: set training.{key} instead.")
    if not in_stage and key in {f.name for f in dataclasses.fields(StageArguments)}:
        raise RecipeError(f"{where} is a stage key: set it in each stage (stages[].{key}).")
    annotation = _trainer_type(key)
    try:
        return _coerce_to(value, annotation)
    except (TypeError, ValueError) as err:
        detail = str(err) if str(err).startswith("expected") else f"expected {trainer_type_name(annotation)}"
        raise RecipeError(f"{where}={value!r} is invalid: {detail} (transformers.TrainingArguments.{key}).") from None


def passthrough_keys_help(width: int = 100) -> list[str]:
    """Help lines for the TrainingArguments fields a recipe passes through (those hftransfer does not set itself)."""
    import textwrap

    own = {f.name for cls in (TrainingArguments, StageArguments) for f in dataclasses.fields(cls)}
    lines = textwrap.wrap(
        "transformers TrainingArguments pass-through: every other field of the installed "
        "transformers.TrainingArguments may be set under training: (all stages) or in a stage (that stage only; "
        "it overrides training:). hftransfer's own keys win (a stage's epochs, learning_rate, optimizer, ...); "
        f"fields it sets itself are refused with the key to use ({', '.join(sorted(RESERVED_TRAINER_FIELDS))}). "
        "E.g. --training.gradient_accumulation_steps 4 --stages.finetune.max_grad_norm 0.5:",
        width=width,
    )
    for name, fld in transformers_training_fields().items():
        if name in own or name in RESERVED_TRAINER_FIELDS:
            continue
        default = fld.default if fld.default is not dataclasses.MISSING else None
        summary = " ".join(str(fld.metadata.get("help", "")).split())
        summary = summary.split(". ")[0].rstrip(".")
        text = f"{name} {trainer_type_name(_trainer_type(name))} (default {default!r}): {summary}."
        lines += textwrap.wrap(text, width=width, initial_indent="  ", subsequent_indent="      ")
    return lines


def _check_augmentation(where: str, value: str | dict) -> None:
    if isinstance(value, dict):
        from .data.transforms import AugmentationConfig  # lazy: the data layer imports torch and datasets

        try:
            AugmentationConfig.from_dict(value)
        except (TypeError, ValueError) as err:
            raise RecipeError(f"{where}={value!r} is invalid: {err}") from None
    elif value not in AUGMENTATION_CHOICES:
        raise RecipeError(
            f"{where}={value!r} is invalid: expected one of {AUGMENTATION_CHOICES} or a mapping of augmentation "
            "options."
        )


def stage_augmentation(recipe: Recipe, stage: StageArguments) -> str | dict:
    """The augmentation a stage trains with: its own `augmentation`, else `data.augmentation`."""
    return recipe.data.augmentation if stage.augmentation is None else stage.augmentation


def _backbone_num_stages(recipe: Recipe) -> int:
    """Number of stages of the recipe's backbone (5 for VGG), from timm's layout of it."""
    from .configuration_hftransfer import backbone_spec

    try:
        return backbone_spec(recipe.model.backbone).num_stages
    except ValueError as exc:
        raise RecipeError(f"model.backbone: {exc}") from None


def _validate(recipe: Recipe) -> None:
    if not recipe.stages:
        raise RecipeError("Recipe has no stages: expected at least one entry under 'stages'.")
    names = [s.name for s in recipe.stages]
    if len(set(names)) != len(names):
        raise RecipeError(f"Stage names must be unique, got {names}.")
    for i, stage in enumerate(recipe.stages):
        where = f"stages[{i}] ({stage.name})"
        if stage.trainable not in TRAINABLE_CHOICES:
            raise RecipeError(
                f"{where}.trainable={stage.trainable!r} is invalid: expected one of {TRAINABLE_CHOICES}."
            )
        if stage.trainable == "last_k":
            num_stages = _backbone_num_stages(recipe)
            if stage.last_k_blocks is None or not 1 <= stage.last_k_blocks <= num_stages:
                raise RecipeError(
                    f"{where}.last_k_blocks={stage.last_k_blocks!r} is invalid: expected 1..{num_stages} with last_k "
                    f"({recipe.model.backbone} has {num_stages} stages)."
                )
        if stage.epochs <= 0 and stage.max_steps <= 0:
            raise RecipeError(f"{where}: set epochs > 0 or max_steps > 0.")
        if stage.learning_rate <= 0:
            raise RecipeError(f"{where}.learning_rate={stage.learning_rate!r} is invalid: expected > 0.")
        if stage.backbone_lr_scale < 0:
            raise RecipeError(f"{where}.backbone_lr_scale={stage.backbone_lr_scale!r} is invalid: expected >= 0.")
        if not 0 <= stage.warmup_ratio < 1:
            raise RecipeError(
                f"{where}.warmup_ratio={stage.warmup_ratio!r} is invalid: expected a fraction of the stage's steps in "
                "[0, 1)."
            )
        if stage.early_stopping_patience is not None and stage.early_stopping_patience < 1:
            raise RecipeError(
                f"{where}.early_stopping_patience={stage.early_stopping_patience!r} is invalid: expected an integer "
                ">= 1, or unset (off)."
            )
        if not 0 <= stage.label_smoothing < 1:
            raise RecipeError(f"{where}.label_smoothing={stage.label_smoothing!r} is invalid: expected in [0, 1).")
        for key in ("mixup_alpha", "cutmix_alpha", "l2sp_strength", "weight_decay"):
            if getattr(stage, key) < 0:
                raise RecipeError(f"{where}.{key}={getattr(stage, key)!r} is invalid: expected >= 0 (0 is off).")
        if not 0 < stage.layer_lr_decay <= 1:
            raise RecipeError(
                f"{where}.layer_lr_decay={stage.layer_lr_decay!r} is invalid: expected in (0, 1] (1 is off)."
            )
        if stage.augmentation is not None:
            _check_augmentation(f"{where}.augmentation", stage.augmentation)
        if stage.cache_frozen_prefix not in PREFIX_CACHE_CHOICES:
            raise RecipeError(
                f"{where}.cache_frozen_prefix={stage.cache_frozen_prefix!r} is invalid: expected one of "
                f"{PREFIX_CACHE_CHOICES}."
            )
        if recipe.data.streaming and stage.max_steps <= 0 and not (stage.trainable == "head" and stage.cache_features):
            raise RecipeError(
                f"{where}: data.streaming reads train as a stream of unknown length; set max_steps > 0 instead of "
                "epochs (only a cached head-only stage, which trains on features of known length, can use epochs)."
            )
    _check_augmentation("data.augmentation", recipe.data.augmentation)
    if recipe.training.feature_cache_dtype not in FEATURE_CACHE_DTYPES:
        raise RecipeError(
            f"training.feature_cache_dtype={recipe.training.feature_cache_dtype!r} is invalid: expected one of "
            f"{FEATURE_CACHE_DTYPES}."
        )
    if recipe.data.streaming_shuffle_buffer < 1:
        raise RecipeError(
            f"data.streaming_shuffle_buffer={recipe.data.streaming_shuffle_buffer!r} is invalid: expected >= 1 rows."
        )
    if recipe.training.metric_for_best_model not in SELECTION_METRICS:
        raise RecipeError(
            f"training.metric_for_best_model={recipe.training.metric_for_best_model!r} is invalid: expected one of "
            f"{tuple(SELECTION_METRICS)}."
        )
    if recipe.training.model_selection not in MODEL_SELECTION_CHOICES:
        raise RecipeError(
            f"training.model_selection={recipe.training.model_selection!r} is invalid: expected one of "
            f"{MODEL_SELECTION_CHOICES}."
        )
    if recipe.data.on_bad_image not in ("error", "skip"):
        raise RecipeError(f"data.on_bad_image={recipe.data.on_bad_image!r} is invalid: expected 'error' or 'skip'.")
    for key in ("max_train_samples", "max_eval_samples"):
        value = getattr(recipe.data, key)
        if value is not None and value < 1:
            raise RecipeError(
                f"data.{key}={value!r} is invalid: expected a positive number of images, or null for all of them."
            )
    if not 0 < recipe.data.validation_split < 1:
        raise RecipeError(f"data.validation_split={recipe.data.validation_split!r} is invalid: expected in (0, 1).")
    if recipe.training.precision not in PRECISION_CHOICES:
        raise RecipeError(
            f"training.precision={recipe.training.precision!r} is invalid: expected one of {PRECISION_CHOICES}."
        )
    if recipe.hub.push_to_hub and not recipe.hub.repo_id:
        raise RecipeError("hub.push_to_hub is true but hub.repo_id is not set: expected 'user/name'.")


def recipe_from_dict(data: dict[str, Any]) -> Recipe:
    """Build and validate a [`Recipe`] from a plain mapping (parsed YAML)."""
    if not isinstance(data, dict):
        raise RecipeError(f"A recipe must be a YAML mapping with sections, got {type(data).__name__}.")
    valid_top = ["name", "description", "stages", *SECTIONS]
    for key in data:
        if key not in valid_top:
            raise RecipeError(f"Unknown recipe section '{key}'.{_closest(key, valid_top)}")
    kwargs: dict[str, Any] = {name: _build_section(name, cls, data.get(name)) for name, cls in SECTIONS.items()}
    if "stages" in data:
        stages = data["stages"]
        if not isinstance(stages, list):
            raise RecipeError(f"'stages' must be a list of stage mappings, got {type(stages).__name__}.")
        kwargs["stages"] = [_build_section(f"stages[{i}]", StageArguments, s) for i, s in enumerate(stages)]
    for key in ("name", "description"):
        if key in data:
            kwargs[key] = str(data[key])
    recipe = Recipe(**kwargs)
    _validate(recipe)
    return recipe


# --- command-line overrides -------------------------------------------------------------------------------------------

# Top-level recipe keys an override may set (`--name NAME`); every other override is `--section.key`.
TOP_LEVEL_OVERRIDE_KEYS = ("name", "description")


def check_override_flags(
    overrides: Sequence[str], options: Sequence[str] = (), command: str = "hftransfer train"
) -> None:
    """Refuse override flags that are no recipe key at all, before the recipe is loaded.

    `--resum` or `--print` are typos of the command's own options, not recipe keys: the error says so (with the
    closest option) rather than "not --section.key".

    Args:
        overrides (`Sequence[str]`): The raw `--section.key value` / `--section.key=value` strings.
        options (`Sequence[str]`): The command's own options (`--resume`, ...), for suggestions.
        command (`str`): The command, for the message.
    """
    for token in overrides:
        if not token.startswith("--"):
            continue
        flag = token.split("=", 1)[0]
        if "." not in flag and flag[2:] not in TOP_LEVEL_OVERRIDE_KEYS:
            long_options = [option for option in options if option.startswith("--")]
            match = difflib.get_close_matches(flag, long_options, n=1, cutoff=0.6)
            hint = f" Did you mean '{match[0]}'?" if match else " Recipe overrides look like --section.key VALUE."
            raise RecipeError(f"Unknown option '{flag}' for '{command}'.{hint}")


def _parse_override_value(flag: str, raw: str) -> Any:
    """An override's value, parsed as YAML (`2`, `1e-5`, `[512,256]`, `null`); clear errors name the flag."""
    try:
        return load_yaml(raw, where=f"The value of {flag}", max_bytes=64 * 1024)
    except YAMLLimitError as err:
        raise RecipeError(str(err)) from None
    except yaml.YAMLError as err:
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise RecipeError(
            f"The value of {flag} is not valid YAML: {raw!r} ({problem}). Expected a YAML value such as 2, 1e-5, "
            "[512, 256] or a string (a string that contains YAML syntax needs quotes inside the shell quotes)."
        ) from None


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply `--section.key value` (or `--section.key=value`) command-line overrides to a parsed recipe mapping.

    Stages are addressed by index or name: `--stages.0.epochs 2`, `--stages.finetune.learning_rate 1e-5`.
    Values are parsed as YAML scalars/lists (`--model.hidden_sizes [512,256]`).
    """
    data = dict(data)
    args = list(overrides)
    while args:
        flag = args.pop(0)
        if not flag.startswith("--"):
            raise RecipeError(f"Unexpected argument {flag!r}: expected --section.key value overrides.")
        if "=" in flag:
            flag, raw = flag.split("=", 1)
        else:
            if not args:
                raise RecipeError(f"Override {flag} has no value.")
            raw = args.pop(0)
        path = flag[2:].replace("-", "_").split(".")
        value = _parse_override_value(flag, raw)
        if path[0] == "stages":
            if len(path) != 3:
                raise RecipeError(f"Stage overrides look like --stages.<index|name>.<key>, got {flag}.")
            given = data.get("stages")
            if given is not None and (
                not isinstance(given, list) or not all(isinstance(stage, dict) for stage in given)
            ):
                raise RecipeError(
                    f"{flag}: the recipe's 'stages' must be a list of stage mappings (- name: frozen ...), got "
                    f"{'a mapping' if isinstance(given, dict) else type(given).__name__}; stage overrides address "
                    "list entries by index or name."
                )
            stages = [dict(s) for s in given or [dataclasses.asdict(s) for s in Recipe().stages]]
            names = [s.get("name") for s in stages]
            selector = path[1]
            index = int(selector) if selector.isdigit() else (names.index(selector) if selector in names else None)
            if index is None or index >= len(stages):
                raise RecipeError(f"{flag}: no stage {selector!r}; stages are {names}.")
            stages[index][path[2]] = value
            data["stages"] = stages
        elif len(path) == 1 and path[0] in TOP_LEVEL_OVERRIDE_KEYS:
            data[path[0]] = value
        elif len(path) == 2:
            section = dict(data.get(path[0]) or {})
            section[path[1]] = value
            data[path[0]] = section
        else:
            raise RecipeError(f"Override {flag} is not of the form --section.key (sections: {', '.join(SECTIONS)}).")
    return data


# Keys a resumed run may change: they do not change what is trained or how (logging, reporting, where files go,
# loader workers, Hub settings, the description). Patterns as for `fnmatch`; stage keys are `stages.<name>.<key>`.
SAFE_RESUME_KEYS = (
    "description",
    "training.output_dir",
    "training.logging_steps",
    "training.logging_*",
    "training.report_to",
    "training.run_name",
    "training.disable_tqdm",
    "training.dataloader_num_workers",
    "training.dataloader_prefetch_factor",
    "training.dataloader_persistent_workers",
    "training.per_device_eval_batch_size",
    "training.feature_cache_dir",
    "training.hub_*",
    "training.push_to_hub",
    "stages.*.logging_*",
    "stages.*.disable_tqdm",
    "stages.*.dataloader_num_workers",
    "hub.*",
)


def _flatten_for_comparison(recipe: dict[str, Any]) -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in recipe.items():
        if key == "stages" and isinstance(value, list):
            names = [s.get("name") if isinstance(s, dict) else None for s in value]
            flat["stages"] = names  # the list of stages itself (count, order, names)
            for index, stage in enumerate(value):
                if isinstance(stage, dict):
                    label = stage.get("name") or str(index)
                    for field_name, field_value in stage.items():
                        if field_name != "name":
                            flat[f"stages.{label}.{field_name}"] = field_value
        elif isinstance(value, dict):
            for field_name, field_value in value.items():
                flat[f"{key}.{field_name}"] = field_value
        else:
            flat[key] = value
    return flat


def _normalised(recipe: dict[str, Any]) -> dict[str, Any]:
    # Defaults filled in, values coerced (an older recipe.yaml lacks newer keys); as written if it no longer parses.
    try:
        return recipe_from_dict(recipe).to_dict()
    except RecipeError:
        return recipe


def recipe_changes(
    ran: dict[str, Any], new: Recipe | dict[str, Any], allowed: Sequence[str] = ()
) -> list[tuple[str, Any, Any]]:
    """The keys whose value differs between the recipe that ran and a new one, minus safe and `allowed` keys.

    Args:
        ran (`dict`): The recipe that ran (the parsed `recipe.yaml` of the output folder).
        new ([`Recipe`] or `dict`): The recipe of the resuming run.
        allowed (`Sequence[str]`): Further keys (or `fnmatch` patterns, `*` for all) the user allows to change.

    Returns:
        `[(key, value that ran, new value), ...]` sorted by key; stage keys read `stages.<name>.<key>`.
    """
    before = _flatten_for_comparison(_normalised(ran))
    after = _flatten_for_comparison(new.to_dict() if isinstance(new, Recipe) else _normalised(new))
    patterns = (*SAFE_RESUME_KEYS, *allowed)
    # A stage that only one recipe has is reported once, as a change of `stages`, not key by key.
    one_sided = set(before.get("stages") or []) ^ set(after.get("stages") or [])
    changes = []
    for key in sorted(set(before) | set(after)):
        if key.startswith("stages.") and key.split(".")[1] in one_sided:
            continue
        old_value, new_value = before.get(key, "<unset>"), after.get(key, "<unset>")
        if old_value != new_value and not any(fnmatch.fnmatchcase(key, pattern) for pattern in patterns):
            changes.append((key, old_value, new_value))
    return changes


def builtin_recipes_dir() -> Path:
    """`recipes/` of a source checkout, or the copy shipped inside the wheel."""
    packaged = Path(str(importlib.resources.files("hftransfer"))) / "_resources" / "recipes"
    if packaged.is_dir():
        return packaged
    return Path(__file__).resolve().parent.parent / "recipes"


def resolve_recipe_path(name_or_path: str | Path) -> Path:
    """A recipe file path, or the name of a shipped recipe (`quickstart`, `keras-seed`, ...)."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    for candidate in (builtin_recipes_dir() / f"{name_or_path}", builtin_recipes_dir() / f"{name_or_path}.yaml"):
        if candidate.is_file():
            return candidate
    shipped = sorted(p.stem for p in builtin_recipes_dir().glob("*.yaml"))
    raise RecipeError(f"Recipe {str(name_or_path)!r} is neither a file nor a shipped recipe ({', '.join(shipped)}).")


def load_recipe(name_or_path: str | Path, overrides: list[str] | None = None) -> Recipe:
    """Load a YAML recipe (file or shipped name), apply command-line overrides, validate, return a [`Recipe`]."""
    path = resolve_recipe_path(name_or_path)
    try:
        data = load_yaml(path.read_bytes(), where=f"Recipe {path}") or {}
    except YAMLLimitError as err:
        raise RecipeError(str(err)) from None
    except yaml.YAMLError as err:
        raise RecipeError(f"Recipe {path} is not valid YAML: {err}") from None
    except UnicodeDecodeError as err:
        raise RecipeError(f"Recipe {path} is not UTF-8 text ({err}); save it as UTF-8.") from None
    if not isinstance(data, dict):
        raise RecipeError(f"Recipe {path} must be a YAML mapping with sections, got {type(data).__name__}.")
    return recipe_from_dict(apply_overrides(data, overrides or []))
