"""Model cards for trained hftransfer models, rendered from the Jinja template in `model_cards/`.

`render_model_card(output_dir)` reads what training wrote into `output_dir` (`config.json`, `metrics.json`,
`recipe.yaml`, `history.json`, the PNG plots) and renders `model_cards/hftransfer_model_card.md` through
huggingface_hub's `ModelCard.from_template`, so the YAML metadata (`model-index` included) is produced by
`ModelCardData`/`EvalResult` and parses back with `ModelCard.load`. Nothing here touches the network.
"""

from __future__ import annotations

import importlib.resources
import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from huggingface_hub import EvalResult, ModelCard, ModelCardData
from huggingface_hub.errors import HFValidationError
from huggingface_hub.utils import validate_repo_id

from ._io import safetensors_shapes, write_text_atomic

TEMPLATE_NAME = "hftransfer_model_card.md"
METRIC_NAMES = {"accuracy": "Accuracy", "f1": "Macro F1", "precision": "Macro precision", "recall": "Macro recall"}
SPLIT_ORDER = ("validation", "test")
CARD_TAGS = ["hftransfer", "timm", "transfer-learning", "vgg", "image-classification"]

# Where each input comes from, for errors that say what to run.
_PRODUCERS = {
    "config.json": "the saved model configuration, written by `save_pretrained` at the end of `hftransfer train`",
    "metrics.json": "the final and per-stage evaluation results, written at the end of `hftransfer train`",
}


def model_card_templates_dir() -> Path:
    """`model_cards/` of a source checkout, or the copy shipped inside the wheel (`hftransfer/_resources/`)."""
    packaged = Path(str(importlib.resources.files("hftransfer"))) / "_resources" / "model_cards"
    if packaged.is_dir():
        return packaged
    return Path(__file__).resolve().parent.parent / "model_cards"


def default_template_path() -> Path:
    """The hftransfer model card template; a clear error when neither install layout has it."""
    path = model_card_templates_dir() / TEMPLATE_NAME
    if not path.is_file():
        raise FileNotFoundError(
            f"Model card template {TEMPLATE_NAME} not found in {model_card_templates_dir()} (looked for "
            "hftransfer/_resources/model_cards/ in an installed wheel, then model_cards/ of a source checkout)."
        )
    return path


# --- reading the training outputs ---------------------------------------------------------------------------------
def _read_json(output_dir: Path, name: str) -> Any:
    path = output_dir / name
    if not path.is_file():
        raise FileNotFoundError(
            f"Cannot render a model card: {path} does not exist. It should hold {_PRODUCERS[name]}. Train first, or "
            f"pass the output_dir of a finished `hftransfer train` run."
        )
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not valid JSON ({err}); expected {_PRODUCERS[name]}.") from None


def _read_optional(output_dir: Path, name: str) -> Any:
    path = output_dir / name
    if not path.is_file():
        return None
    text = path.read_text(encoding="utf-8")
    try:
        return yaml.safe_load(text) if name.endswith((".yaml", ".yml")) else json.loads(text)
    except (json.JSONDecodeError, yaml.YAMLError) as err:
        raise ValueError(f"{path} could not be parsed: {err}") from None


def _check_metrics(metrics: Any, path: Path) -> None:
    if not isinstance(metrics, Mapping):
        raise ValueError(f"{path} must hold a JSON object, got {type(metrics).__name__}.")
    final = metrics.get("final")
    if not isinstance(final, Mapping) or not any(isinstance(v, Mapping) for v in final.values()):
        raise ValueError(
            f"{path} has no usable 'final' section: expected {{'final': {{'validation': {{'accuracy': ..., ...}}, "
            "'test': {...}}}} as written by `hftransfer train`."
        )


def _checkpoint_parameter_counts(output_dir: Path) -> tuple[int, int] | None:
    """(backbone, head) parameter counts read from the safetensors headers alone: no torch, no tensor loading."""
    index = output_dir / "model.safetensors.index.json"
    if index.is_file():
        files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
    elif (output_dir / "model.safetensors").is_file():
        files = ["model.safetensors"]
    else:
        return None
    from safetensors import SafetensorError

    backbone = head = 0
    try:
        for name in files:
            for key, shape in safetensors_shapes(output_dir / name).items():
                count = math.prod(shape)
                if key.startswith("backbone."):
                    backbone += count
                else:
                    head += count
    except (OSError, ValueError, SafetensorError):
        return None  # an unreadable checkpoint only costs the card its parameter counts
    return backbone, head


# --- formatting --------------------------------------------------------------------------------------------------
def _number(value: Any, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    return f"{value:.{digits}f}"


def _integer(value: Any) -> str:
    return f"{int(value):,}" if isinstance(value, (int, float)) and not isinstance(value, bool) else "–"


def _duration(seconds: Any) -> str:
    if not isinstance(seconds, (int, float)) or isinstance(seconds, bool) or not math.isfinite(seconds):
        return "–"
    seconds = float(seconds)
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {secs:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


def _lr(value: Any) -> str:
    return f"{value:g}" if isinstance(value, (int, float)) and not isinstance(value, bool) else "–"


def _cell(text: Any) -> str:
    """Make a value safe inside a Markdown table cell."""
    return str(text).replace("|", "\\|").replace("\n", " ")


def _backbone_display(backbone: str) -> str:
    match = re.fullmatch(r"vgg(\d+)(_bn)?", backbone)
    if not match:
        return backbone
    return f"VGG{match.group(1)}" + ("-BN" if match.group(2) else "")


def _as_hub_id(value: Any) -> str | None:
    """The Hub repo id a weight source names (`timm/vgg16.tv_in1k`, `hf-hub:timm/...`), else `None`.

    `base_model` in card metadata must be a real Hub model id: Keras imports, local files and `random` are not.
    """
    if not isinstance(value, str):
        return None
    candidate = re.sub(r"^hf[-_]hub:", "", value.strip())
    if not re.fullmatch(r"[A-Za-z0-9][\w.-]*/[\w.-]+", candidate) or Path(candidate).exists():
        return None
    if candidate.lower().endswith((".safetensors", ".pth", ".pt", ".bin", ".h5", ".onnx", ".ckpt", ".npz")):
        return None
    try:
        validate_repo_id(candidate)
    except HFValidationError:
        return None
    return candidate


def _weights_description(source: Any) -> str:
    if not source or str(source).strip().lower() in ("random", "none", "scratch"):
        return "random initialisation (no pretraining)"
    text = str(source)
    hub_id = _as_hub_id(text)
    if hub_id:
        return f"[`{hub_id}`](https://huggingface.co/{hub_id}) (timm / Hugging Face Hub)"
    if text.startswith("keras-imagenet"):
        detail = text[len("keras-imagenet") :].strip().removeprefix("(").removesuffix(")").strip()
        return (
            "ImageNet-1k weights of Keras' `VGG16(include_top=False)` (the original conv weights of Simonyan & "
            "Zisserman), converted to timm's layout" + (f" — {detail}" if detail else "")
        )
    return f"`{text}`"


def _is_pretrained(source: Any) -> bool:
    return bool(source) and str(source).strip().lower() not in ("random", "none", "scratch")


def _last_stage(backbone: str) -> tuple[int, int]:
    """(reduction, channels) of the backbone's last stage; VGG's (32, 512) when timm cannot describe it."""
    try:
        from .configuration_hftransfer import backbone_spec

        spec = backbone_spec(backbone)
        return int(spec.stage_reductions[-1]), int(spec.stage_channels[-1])
    except (ImportError, ValueError, AttributeError, IndexError):
        return 32, 512


def _stage_name(backbone: str, stage: int, last: bool = False) -> str:
    if backbone.startswith("vgg"):
        return f"block{stage + 1}_pool"
    return "the last stage" if last else f"stage {stage}"


def _head_description(config: Mapping[str, Any], num_labels: int) -> str:
    pooling = config.get("pooling", "flatten")
    image_size = int(config.get("image_size", 224))
    backbone = str(config.get("backbone", "vgg16"))
    reduction, channels = _last_stage(backbone)
    side = image_size // reduction
    pooled = {
        "flatten": f"Flatten ({side}x{side}x{channels})",
        "avg": "global average pooling",
        "max": "global max pooling",
        "avgmax": "global average+max pooling",
    }.get(pooling, pooling)
    if config.get("head") == "fusion":
        stages = ", ".join(_stage_name(backbone, s) for s in config.get("fusion_stages") or [2, 3, 4])
        parts = [f"{pooled} of {stages}, concatenated"]
        if config.get("extra_features_dim"):
            parts[0] += f" with {config['extra_features_dim']} extra per-example features"
    else:
        parts = [f"{pooled} of {_stage_name(backbone, 4, last=True)}"]
    activation, dropout = config.get("activation", "relu"), config.get("dropout", 0.0)
    for width in config.get("hidden_sizes", [1024]):
        parts.append(f"Dense({width}, {activation})" + (f" → Dropout({dropout:g})" if dropout else ""))
    parts.append(f"Dense({num_labels})")
    return " → ".join(parts)


def _is_fashion_mnist(dataset: Mapping[str, Any]) -> bool:
    text = " ".join(str(dataset.get(key) or "") for key in ("name", "hub_id")).lower()
    return "fashionmnist" in re.sub(r"[\s_\-]", "", text)


def _accuracy_interval(accuracy: Any, n: Any) -> float | None:
    """Half-width of the normal-approximation 95% interval of an accuracy measured on `n` examples."""
    if not isinstance(accuracy, (int, float)) or not isinstance(n, int) or n <= 0:
        return None
    return 1.96 * math.sqrt(max(accuracy * (1 - accuracy), 0.0) / n)


def _splits(final: Mapping[str, Any]) -> list[str]:
    present = [s for s in final if isinstance(final[s], Mapping)]
    return [s for s in SPLIT_ORDER if s in present] + [s for s in present if s not in SPLIT_ORDER]


# --- card assembly -----------------------------------------------------------------------------------------------
def _card_data(
    config: Mapping[str, Any], metrics: Mapping[str, Any], recipe: Mapping[str, Any], model_name: str
) -> ModelCardData:
    dataset = metrics.get("dataset") or {}
    hub_id = dataset.get("hub_id")
    dataset_name = str(dataset.get("name") or hub_id or "custom dataset")
    eval_results = []
    for split in _splits(metrics["final"]):
        for metric, pretty in METRIC_NAMES.items():
            value = metrics["final"][split].get(metric)
            if not isinstance(value, (int, float)) or not math.isfinite(value):
                continue
            eval_results.append(
                EvalResult(
                    task_type="image-classification",
                    task_name="Image Classification",
                    dataset_type=str(hub_id or dataset_name),
                    dataset_name=dataset_name,
                    dataset_split=split,
                    metric_type=metric,
                    metric_name=pretty,
                    metric_value=float(value),
                    metric_args={"average": "macro"} if metric != "accuracy" else None,
                )
            )
    model_section = recipe.get("model") or {}
    # A model fine-tuned from another hftransfer model derives from it; otherwise from the backbone weights, when
    # they are a Hub repo (timm/vgg16.tv_in1k). Keras-imported or random weights have no Hub id: no base_model.
    base_model = _as_hub_id(model_section.get("init_from")) or _as_hub_id(
        config.get("backbone_weights") or metrics.get("backbone_weights") or model_section.get("backbone_weights")
    )
    backbone = str(config.get("backbone", "vgg16"))
    tags = [tag for tag in CARD_TAGS if tag != "vgg" or backbone.startswith("vgg")]  # the family tag: VGG only
    tags += [backbone] if backbone not in tags else []
    return ModelCardData(
        model_name=model_name,
        # `transformers`, not `hftransfer`: the Hub picks the inference widget and the "Use this model" snippet by
        # library_name, and hftransfer is not a Hub-registered library (it would get neither). With `transformers`
        # and the `auto_map` in config.json, the Hub tags the repo `custom_code` and its snippet loads the model
        # with `AutoModelForImageClassification.from_pretrained(..., trust_remote_code=True)`, which works without
        # hftransfer installed (the modeling code ships with the checkpoint).
        library_name="transformers",
        pipeline_tag="image-classification",
        license=(recipe.get("hub") or {}).get("license") or "apache-2.0",
        tags=tags,
        base_model=base_model,
        datasets=[hub_id] if hub_id else None,
        metrics=list(METRIC_NAMES),
        eval_results=eval_results or None,
    )


@dataclass(frozen=True)
class _CardInputs:
    """What the card sections share, read once from the training outputs."""

    output_dir: Path
    config: Mapping[str, Any]
    metrics: Mapping[str, Any]
    recipe: Mapping[str, Any]
    labels: list[str]
    dataset: dict[str, Any]
    training: Mapping[str, Any]
    final: Mapping[str, Any]
    splits: list[str]
    primary: str
    backbone: str
    image_size: int
    weights_source: Any
    stage_records: list[Mapping[str, Any]]

    @classmethod
    def read(
        cls, output_dir: Path, config: Mapping[str, Any], metrics: Mapping[str, Any], recipe: Mapping[str, Any]
    ) -> _CardInputs:
        id2label = config.get("id2label") or metrics.get("id2label") or {}
        labels = [str(name) for _, name in sorted(((int(k), v) for k, v in id2label.items()), key=lambda kv: kv[0])]
        training = metrics.get("training") or {}
        final = metrics["final"]
        splits = _splits(final)
        weights_source = config.get("backbone_weights") or metrics.get("backbone_weights")
        if weights_source is None:
            weights_source = (recipe.get("model") or {}).get("backbone_weights")
        return cls(
            output_dir=output_dir,
            config=config,
            metrics=metrics,
            recipe=recipe,
            labels=labels,
            dataset=dict(metrics.get("dataset") or {}),
            training=training,
            final=final,
            splits=splits,
            primary="test" if "test" in splits else splits[0],
            backbone=str(config.get("backbone", "vgg16")),
            image_size=int(training.get("image_size") or config.get("image_size") or 224),
            weights_source=weights_source,
            stage_records=metrics.get("stages") or [],
        )

    @property
    def num_labels(self) -> int:
        return len(self.labels)

    @property
    def pretrained(self) -> bool:
        return _is_pretrained(self.weights_source)

    def image(self, name: str) -> str | None:
        """`name` when the output folder has that picture, else `None` (the template leaves it out)."""
        return name if (self.output_dir / name).is_file() else None


def _model_section(inputs: _CardInputs) -> dict[str, Any]:
    """The model: backbone, weights, head, input size, labels and parameter counts."""
    config = inputs.config
    counts = _checkpoint_parameter_counts(inputs.output_dir)
    total_parameters = counts and sum(counts)
    if not total_parameters:
        total_parameters = max((s.get("total_parameters") or 0 for s in inputs.stage_records), default=0) or None
    return {
        "backbone": inputs.backbone,
        "backbone_display": _backbone_display(inputs.backbone),
        "weights_description": _weights_description(inputs.weights_source),
        "head_type": config.get("head", "classification"),
        "head_description": _head_description(config, inputs.num_labels),
        "image_size": inputs.image_size,
        "num_labels": inputs.num_labels,
        "labels": inputs.labels,
        "parameters": {
            "total": _integer(total_parameters),
            "backbone": _integer(counts[0]) if counts else "–",
            "head": _integer(counts[1]) if counts else "–",
        },
        "extra_features_dim": int(config.get("extra_features_dim") or 0),
    }


def _summary(inputs: _CardInputs) -> str:
    """The card's opening paragraph: what the model is and how it scored on the primary split."""
    primary_metrics = inputs.final[inputs.primary]
    stage_names = [str(s.get("name")) for s in inputs.stage_records]
    return (
        f"An image classifier ({inputs.num_labels} classes) made by transfer learning with "
        f"hftransfer: a {_backbone_display(inputs.backbone)} conv base "
        f"{'pretrained on ImageNet' if inputs.pretrained else '(not pretrained)'} with a new head, fine-tuned on "
        f"{inputs.dataset.get('name') or 'a custom dataset'}"
        + (f" in {len(stage_names)} stage(s) ({', '.join(stage_names)})" if stage_names else "")
        + f". {inputs.primary.capitalize()} accuracy: {_number(primary_metrics.get('accuracy'))}"
        + f" (macro F1 {_number(primary_metrics.get('f1'))}, {_integer(primary_metrics.get('num_samples'))} images)."
    )


def _warnings_section(inputs: _CardInputs) -> list[str]:
    """Training warnings (a collapsed model, chance accuracy, ...) recorded in metrics.json."""
    return [str(w) for w in inputs.metrics.get("warnings") or []]


def _selection_section(inputs: _CardInputs) -> str | None:
    """Which checkpoint became the final model and why (`training.model_selection`), when recorded."""
    selected = inputs.metrics.get("selected") or {}
    if not selected.get("reason"):
        return None
    value = selected.get("value")
    return (
        f"Model selection ({selected.get('policy', 'best')}, by validation {selected.get('metric')}): "
        f"{selected['reason']}"
        + (f" (validation {selected.get('metric')} {_number(value)})." if isinstance(value, (int, float)) else ".")
    )


def _dataset_section(inputs: _CardInputs) -> dict[str, Any]:
    dataset = inputs.dataset
    return {
        "name": dataset.get("name") or "custom dataset",
        "hub_id": dataset.get("hub_id"),
        "num_train": _integer(dataset.get("num_train")),
        "num_validation": _integer(dataset.get("num_validation")),
        "num_test": _integer(dataset.get("num_test")),
    }


def _stage_row(stage: Mapping[str, Any], recipe_stage: Mapping[str, Any]) -> dict[str, str]:
    """One row of the stages table: what trained, for how long, with which optimiser settings, and its score."""
    trainable = stage.get("trainable", "–")
    k = recipe_stage.get("last_k_blocks")
    trainable_text = {
        "head": "head only (backbone frozen)",
        "all": "whole model",
        "last_k": f"last {k} block(s) + head" if k else "last blocks + head",
    }.get(trainable, str(trainable))
    trainable_parameters, stage_total = stage.get("trainable_parameters"), stage.get("total_parameters")
    fraction = (
        trainable_parameters / stage_total
        if isinstance(trainable_parameters, (int, float)) and isinstance(stage_total, (int, float)) and stage_total
        else None
    )
    # A head is a tiny share of a VGG: show it with two decimals rather than as "0.0%".
    share = "" if fraction is None else f" ({fraction:.2%})" if fraction < 0.1 else f" ({fraction:.0%})"
    lr, scale = stage.get("learning_rate"), stage.get("backbone_lr_scale", 1.0)
    backbone_lr = (
        "–"
        if trainable == "head" or not isinstance(lr, (int, float)) or not isinstance(scale, (int, float))
        else _lr(lr * scale)
    )
    max_steps = stage.get("max_steps", -1)
    length = (
        f"{max_steps} steps" if isinstance(max_steps, int) and max_steps > 0 else f"{_lr(stage.get('epochs'))} epochs"
    )
    if stage.get("stopped_early_at_step"):
        length += f", stopped early at step {stage['stopped_early_at_step']}"
    augmentation = stage.get("augmentation", "–")
    regularization = stage.get("regularization") or {}
    extras = [f"{key.replace('_', ' ')} {value:g}" for key, value in regularization.items()]
    if isinstance(stage.get("layer_lr_decay"), (int, float)) and stage["layer_lr_decay"] != 1:
        extras.append(f"layer LR decay {stage['layer_lr_decay']:g}")
    validation = stage.get("validation") or {}
    return {
        "name": _cell(stage.get("name", "–")),
        "trainable": _cell(trainable_text),
        "parameters": f"{_integer(trainable_parameters)}{share}",
        "length": length,
        "learning_rate": _lr(lr),
        "backbone_lr": backbone_lr,
        "scheduler": _cell(stage.get("lr_scheduler_type", "–")),
        "optimizer": _cell(stage.get("optimizer", "–")),
        "weight_decay": _lr(stage.get("weight_decay")),
        "feature_cache": "yes" if stage.get("used_feature_cache") else "no",
        "augmentation": _cell(
            augmentation if isinstance(augmentation, str) else "custom: " + json.dumps(augmentation)
        ),
        "regularization": _cell(", ".join(extras) or "–"),
        "wall_time": _duration(stage.get("wall_time_s")),
        "val_accuracy": _number(validation.get("accuracy")),
        "val_f1": _number(validation.get("f1")),
    }


def _stages_section(inputs: _CardInputs) -> list[dict[str, str]]:
    """The stages table, one row per stage that ran (the recipe adds what metrics.json does not record)."""
    recipe_stages = {s.get("name"): s for s in inputs.recipe.get("stages") or [] if isinstance(s, Mapping)}
    return [_stage_row(stage, recipe_stages.get(stage.get("name")) or {}) for stage in inputs.stage_records]


def _training_section(inputs: _CardInputs) -> dict[str, Any]:
    """Batch sizes, precision, seed, hardware and wall time of the run."""
    training, metrics = inputs.training, inputs.metrics
    world_size = training.get("world_size") or 1
    batch = training.get("per_device_train_batch_size")
    return {
        "batch_size": _integer(batch),
        "world_size": _integer(world_size),
        "global_batch_size": _integer(batch * world_size) if isinstance(batch, int) else "–",
        "precision": training.get("precision", "–"),
        "seed": training.get("seed", "–"),
        "hardware": metrics.get("hardware") or "–",
        "wall_time": _duration(metrics.get("wall_time_s")),
    }


def _recipe_section(inputs: _CardInputs, recipe_text: str | None) -> dict[str, Any]:
    """The recipe's name and its YAML as it ran (the card shows it to reproduce the run)."""
    return {
        "recipe_name": inputs.metrics.get("recipe_name") or inputs.recipe.get("name"),
        "recipe_yaml": (recipe_text or "").strip() or None,
    }


def _results_section(inputs: _CardInputs) -> dict[str, Any]:
    """The results table (one row per split) and the per-class accuracy table (one column per split)."""
    final, splits = inputs.final, inputs.splits
    result_rows = []
    for split in splits:
        m = final[split]
        interval = _accuracy_interval(m.get("accuracy"), m.get("num_samples"))
        result_rows.append(
            {
                "split": split,
                "num_samples": _integer(m.get("num_samples")),
                "accuracy": _number(m.get("accuracy")),
                "interval": f"± {interval:.3f}" if interval is not None else "–",
                "f1": _number(m.get("f1")),
                "precision": _number(m.get("precision")),
                "recall": _number(m.get("recall")),
                "loss": _number(m.get("loss")),
            }
        )
    per_class_rows = [
        {
            "label": _cell(label),
            "values": [_number((final[s].get("per_class_accuracy") or {}).get(label)) for s in splits],
        }
        for label in inputs.labels
    ]
    return {
        "splits": splits,
        "primary_split": inputs.primary,
        "result_rows": result_rows,
        "per_class_rows": per_class_rows,
    }


def _plots_section(inputs: _CardInputs) -> dict[str, Any]:
    """The PNG plots training wrote: training curves, final and per-stage confusion matrices."""
    stage_images = [
        {"stage": stage.get("name"), "file": f"confusion_matrix_{stage.get('name')}.png"}
        for stage in inputs.stage_records
        if inputs.image(f"confusion_matrix_{stage.get('name')}.png")
    ]
    return {
        "training_curves": inputs.image("training_curves.png"),
        "confusion_matrix": inputs.image("confusion_matrix.png"),
        "stages": stage_images,
    }


def _limitations_section(inputs: _CardInputs) -> list[str]:
    """What the model cannot do and how far its numbers can be trusted, from what the run recorded."""
    config, image_size, backbone, pretrained = inputs.config, inputs.image_size, inputs.backbone, inputs.pretrained
    primary, primary_metrics = inputs.primary, inputs.final[inputs.primary]
    interval = _accuracy_interval(primary_metrics.get("accuracy"), primary_metrics.get("num_samples"))
    limitations = [
        f"It knows only the {inputs.num_labels} classes it was trained on and gives one of them to any image, "
        'including images of something else entirely; there is no "none of these" answer.'
    ]
    if _is_fashion_mnist(inputs.dataset):
        limitations.append(
            f"Fashion-MNIST images are 28x28 grayscale Zalando product photos on a plain background, here upscaled to "
            f"{image_size}x{image_size} and replicated to 3 channels. Real photos of clothes (people, backgrounds, "
            "colour, pose) look very different: expect much lower accuracy on them."
        )
        if pretrained and backbone.startswith("vgg"):
            limitations.append(
                "ImageNet features matter little on this dataset: in hftransfer's own measurement, a linear probe on "
                "frozen average-pooled VGG16 features (1,000 training images) scored 0.758 with ImageNet weights vs "
                "0.764 with random weights at 32 px (0.778 vs 0.781 at 64 px). The accuracy comes mostly from "
                "training on the task, not from the pretraining."
            )
    last_reduction = _last_stage(backbone)[0]
    if pretrained and image_size < 224:
        limitations.append(
            f"The ImageNet weights were learned at 224x224; at {image_size}x{image_size} the last block works on "
            f"{image_size // last_reduction}x{image_size // last_reduction} feature maps, far "
            "from what it was pretrained for."
        )
    if not pretrained:
        limitations.append("The backbone was not pretrained (random initialisation): this is not transfer learning.")
    if interval is not None:
        limitations.append(
            f"The {primary} numbers come from {_integer(primary_metrics.get('num_samples'))} images: the 95% interval "
            f"of the accuracy is about ±{interval * 100:.1f} points, so small differences between runs mean little."
        )
    if "test" not in inputs.splits:
        limitations.append(
            "There was no separate test split: the final numbers are on the validation split, which also guided "
            "training, so they are optimistic."
        )
    if config.get("extra_features_dim"):
        limitations.append(
            f"The fusion head needs {config['extra_features_dim']} extra features per image (`extra_features=`), "
            "which the `image-classification` pipeline cannot supply: call the model directly."
        )
    limitations.append(
        "It was not evaluated for robustness to distribution shift, adversarial inputs or fairness; do not use it "
        "for decisions that matter without validating it on your own data."
    )
    return limitations


def _versions_section(inputs: _CardInputs) -> list[dict[str, Any]]:
    """Library versions of the run, hftransfer first."""
    versions = inputs.metrics.get("versions") or {}
    return [{"name": "hftransfer", "version": versions.get("hftransfer", "–")}] + [
        {"name": name, "version": value} for name, value in versions.items() if name != "hftransfer"
    ]


def _template_context(
    output_dir: Path,
    config: Mapping[str, Any],
    metrics: Mapping[str, Any],
    recipe: Mapping[str, Any] | None,
    recipe_text: str | None,
    model_id: str,
    model_name: str,
) -> dict[str, Any]:
    """The `card` variable of the template, assembled section by section."""
    inputs = _CardInputs.read(output_dir, config, metrics, recipe or {})
    return {
        "model_id": model_id,
        "model_name": model_name,
        "summary": _summary(inputs),
        "warnings": _warnings_section(inputs),
        "selection": _selection_section(inputs),
        **_model_section(inputs),
        "dataset": _dataset_section(inputs),
        "fashion_mnist": _is_fashion_mnist(inputs.dataset),
        "stage_rows": _stages_section(inputs),
        "training": _training_section(inputs),
        **_recipe_section(inputs, recipe_text),
        **_results_section(inputs),
        "images": _plots_section(inputs),
        "limitations": _limitations_section(inputs),
        "version_rows": _versions_section(inputs),
    }


def _write_atomic(path: Path, text: str) -> None:
    write_text_atomic(path, text)  # temporary file, fsync, umask mode, rename


def render_model_card(
    output_dir: str | Path,
    repo_id: str | None = None,
    write: bool = True,
    template_path: str | Path | None = None,
) -> ModelCard:
    """Render the model card of a finished training run and (by default) write it to `output_dir/README.md`.

    Args:
        output_dir (`str` or `Path`):
            The training output folder. Needs `config.json` and `metrics.json`; uses `recipe.yaml`,
            `training_curves.png`, `confusion_matrix*.png` and the safetensors checkpoint when present.
        repo_id (`str`, *optional*):
            The Hub repo the model is (or will be) published to, used in the usage snippet and as the model name.
            Defaults to the recipe's `hub.repo_id` when the recipe pushes to the Hub, else the local path of
            `output_dir`.
        write (`bool`, *optional*, defaults to `True`):
            Write `output_dir/README.md` (atomically: a temporary file, then a rename).
        template_path (`str` or `Path`, *optional*):
            A custom Jinja template; defaults to `model_cards/hftransfer_model_card.md`.

    Returns:
        `huggingface_hub.ModelCard`: The rendered card (`card.data` holds the metadata, `model-index` included).
    """
    output_dir = Path(output_dir)
    if not output_dir.is_dir():
        raise FileNotFoundError(f"Cannot render a model card: output_dir {output_dir} is not a directory.")
    config = _read_json(output_dir, "config.json")
    metrics = _read_json(output_dir, "metrics.json")
    _check_metrics(metrics, output_dir / "metrics.json")
    recipe_path = output_dir / "recipe.yaml"
    recipe_text = recipe_path.read_text(encoding="utf-8") if recipe_path.is_file() else None
    recipe = _read_optional(output_dir, "recipe.yaml") or {}
    if not isinstance(recipe, Mapping):
        raise ValueError(f"{recipe_path} must be a YAML mapping of recipe sections, got {type(recipe).__name__}.")

    hub = recipe.get("hub") or {}
    if repo_id is None and hub.get("push_to_hub") and hub.get("repo_id"):
        repo_id = str(hub["repo_id"])
    if repo_id is not None:
        try:
            validate_repo_id(repo_id)
        except HFValidationError as err:
            raise ValueError(f"repo_id={repo_id!r} is not a valid Hub repo id (expected 'user/name'): {err}") from None
    model_id = repo_id or str(output_dir.resolve())
    model_name = (
        repo_id.split("/")[-1] if repo_id else str(metrics.get("recipe_name") or recipe.get("name") or output_dir.name)
    )

    card_data = _card_data(config, metrics, recipe, model_name)
    context = _template_context(output_dir, config, metrics, recipe, recipe_text, model_id, model_name)
    template = Path(template_path) if template_path is not None else default_template_path()
    # The context goes in as a single `card` variable: ModelCard.from_template also passes every metadata field as a
    # template variable, and a flat context could silently shadow them.
    card = ModelCard.from_template(card_data, template_path=str(template), card=context)
    if write:
        _write_atomic(output_dir / "README.md", str(card))
    return card


__all__ = ["default_template_path", "model_card_templates_dir", "render_model_card"]
