"""Configuration of hftransfer models: a timm backbone (VGG by default) plus a new classification or fusion head.

This file is copied next to saved checkpoints as remote code: it imports only torch, timm and transformers
(invariant 1). Besides `TransferConfig` it holds [`backbone_spec`], the stage layout of a backbone (channels and
reduction per stage, which timm feature each stage is), which the config validates against and the model builds from.
"""

from __future__ import annotations

import difflib
import functools
import inspect
import re
from dataclasses import dataclass

import timm
import torch
from transformers import PretrainedConfig

# timm VGG conv bases, split into stages the Keras way (each stage closed by its 2x2 max pool, `block{n}_pool`).
# The `_bn` variants add BatchNorm after each conv. Any other timm model with `forward_intermediates` is accepted too.
VGG_BACKBONES = ("vgg11", "vgg11_bn", "vgg13", "vgg13_bn", "vgg16", "vgg16_bn", "vgg19", "vgg19_bn")
SUPPORTED_BACKBONES = VGG_BACKBONES  # kept for existing imports: the backbones with Keras block semantics
VIT_STYLE_STAGES = 4  # a model whose features all have one stride (ViT, DeiT, ...) is split into this many stages
HEAD_TYPES = ("classification", "fusion")
POOLING_TYPES = ("flatten", "avg", "max", "avgmax")
ACTIVATIONS = ("relu", "gelu", "silu", "tanh", "leaky_relu")
PROBLEM_TYPES = ("single_label_classification", "multi_label_classification", "regression")

# timm's ImageNet defaults, the convention of `timm/vgg16.tv_in1k`. Keras-imported weights use other values
# (see `hftransfer.weights`), which the weight loader writes into the config.
IMAGENET_DEFAULT_MEAN = (0.485, 0.456, 0.406)
IMAGENET_DEFAULT_STD = (0.229, 0.224, 0.225)
_HUB_PREFIX = re.compile(r"^(?:hf[-_]hub:)?(?:timm/)?")


def _invalid(field: str, value, expected: str) -> ValueError:
    return ValueError(f"TransferConfig.{field}={value!r} is invalid: expected {expected}.")


@dataclass(frozen=True)
class BackboneSpec:
    r"""
    The stage layout of a backbone, in timm's vocabulary.

    Args:
        name (`str`): timm architecture.
        feature_info (`tuple[dict]`): One entry per stage: `num_chs`, `reduction` (stride w.r.t. the input) and
            `module` (the timm module whose output the stage is).
        timm_indices (`tuple[int]`): For each stage, the index `forward_intermediates` takes for it (empty for VGG,
            which hftransfer splits itself at its max pools).
        fixed_input_size (`bool`): The model needs `img_size` at construction (ViT-style position embeddings).
        accepts_img_size (`bool`): `timm.create_model(name, img_size=...)` works.
        has_batchnorm (`bool`): The backbone has BatchNorm layers.
    """

    name: str
    feature_info: tuple[dict, ...]
    timm_indices: tuple[int, ...]
    fixed_input_size: bool
    accepts_img_size: bool
    has_batchnorm: bool

    @property
    def is_vgg(self) -> bool:
        return self.name in VGG_BACKBONES

    @property
    def num_stages(self) -> int:
        return len(self.feature_info)

    @property
    def stage_channels(self) -> list[int]:
        return [info["num_chs"] for info in self.feature_info]

    @property
    def stage_reductions(self) -> list[int]:
        return [info["reduction"] for info in self.feature_info]


def vgg_stage_layout(features: torch.nn.Sequential) -> tuple[list[tuple[int, int]], list[dict]]:
    """Keras stages of a timm VGG `features`: `(start, end)` layer slices closed by each max pool, and their info."""
    ends = [i for i, layer in enumerate(features) if isinstance(layer, torch.nn.MaxPool2d)]
    slices = [(start, end + 1) for start, end in zip([0] + [e + 1 for e in ends[:-1]], ends, strict=True)]
    info = [
        {
            "num_chs": next(m.out_channels for m in reversed(features[start:end]) if isinstance(m, torch.nn.Conv2d)),
            "reduction": 2 ** (stage + 1),
            "module": f"features.{end - 1}",
        }
        for stage, (start, end) in enumerate(slices)
    ]
    return slices, info


def timm_stage_layout(model: torch.nn.Module) -> tuple[list[dict], list[int]]:
    """Stages of a timm model with `forward_intermediates`: its `feature_info` entries (the reduction steps), or, when
    every feature has the same stride (ViT-style), `VIT_STYLE_STAGES` evenly spaced blocks. Returns the stage info and
    the `forward_intermediates` index of each stage."""
    info = [
        {"num_chs": int(f["num_chs"]), "reduction": int(f["reduction"]), "module": str(f["module"])}
        for f in model.feature_info
    ]
    if len(info) > 1 and len({f["reduction"] for f in info}) == 1:
        count = min(VIT_STYLE_STAGES, len(info))
        indices = [round((stage + 1) * len(info) / count) - 1 for stage in range(count)]
    else:
        indices = list(range(len(info)))
    return [info[i] for i in indices], indices


def _usable(name: str) -> bool:
    return isinstance(_build_spec(name), BackboneSpec)


def _close_matches(name: str) -> str:
    """Up to five timm models named like `name` that hftransfer can use (each checked on the meta device)."""
    usable = []
    for candidate in difflib.get_close_matches(name, timm.list_models(), n=12, cutoff=0.5):
        if candidate != name and _usable(candidate):
            usable.append(candidate)
            if len(usable) == 5:
                break
    return ", ".join(usable) or "none"


@functools.cache
def _build_spec(name: str) -> BackboneSpec | str:
    """The spec of a registered timm model, or why it cannot be used (no close matches: `backbone_spec` adds them)."""
    try:
        with torch.device("meta"):
            model = timm.create_model(name, pretrained=False, num_classes=0)
    except Exception as exc:  # a registered name timm cannot build without extra arguments
        return f"a model timm can build ({type(exc).__name__}: {exc})"
    has_batchnorm = any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in model.modules())
    pretrained_cfg = getattr(model, "pretrained_cfg", None) or {}
    fixed = bool(pretrained_cfg.get("fixed_input_size", False))
    if name in VGG_BACKBONES:
        _, info = vgg_stage_layout(model.features)
        return BackboneSpec(name, tuple(info), (), False, False, has_batchnorm)
    if not callable(getattr(model, "forward_intermediates", None)) or not getattr(model, "feature_info", None):
        return (
            f"a timm model with `forward_intermediates` and `feature_info` ({type(model).__name__} has no such "
            "feature path)"
        )
    info, indices = timm_stage_layout(model)
    accepts_img_size = "img_size" in inspect.signature(type(model).__init__).parameters
    return BackboneSpec(name, tuple(info), tuple(indices), fixed, accepts_img_size, has_batchnorm)


def backbone_spec(name: str) -> BackboneSpec:
    """The stage layout of timm backbone `name` (built once on the meta device, no memory); `ValueError` with close
    matches for names timm does not know and for models without a usable feature path."""
    if not isinstance(name, str) or not name:
        raise _invalid("backbone", name, "a timm model name such as 'vgg16', 'resnet50' or 'convnext_tiny'")
    if not timm.is_model(name) or "." in name:
        arch = name.split(".")[0]
        if "." in name and timm.is_model(arch):
            raise _invalid(
                "backbone",
                name,
                f"an architecture without a pretrained tag: backbone={arch!r} with backbone_weights='timm/{name}'",
            )
        raise _invalid(
            "backbone",
            name,
            "a timm model name (timm.list_models()) whose architecture has `forward_intermediates`, "
            f"or vgg11/13/16/19[_bn]; close matches: {_close_matches(name)}",
        )
    spec = _build_spec(name)
    if isinstance(spec, str):
        raise _invalid("backbone", name, f"{spec}; close matches that have one: {_close_matches(name)}")
    return spec


def timm_pretrained_cfg(backbone: str, backbone_weights: str | None = None) -> dict:
    """timm's `pretrained_cfg` (mean, std, interpolation, crop_pct, ...) for the weights `backbone_weights` names when
    it is a timm tag of `backbone` (`timm/resnet50.a1_in1k`), else for `backbone`'s default tag; `{}` if timm has none."""
    from timm.models import get_pretrained_cfg

    candidates = [backbone]
    if isinstance(backbone_weights, str):
        tagged = _HUB_PREFIX.sub("", backbone_weights.strip())
        if tagged.split(".")[0] == backbone and "/" not in tagged:
            candidates.insert(0, tagged)
    for candidate in candidates:
        try:
            cfg = get_pretrained_cfg(candidate)
        except Exception:  # unknown tag
            cfg = None
        if cfg is not None:
            return cfg.to_dict()
    return {}


class TransferConfig(PretrainedConfig):
    r"""
    Configuration for [`TransferModel`] and [`TransferForImageClassification`]: an ImageNet-style backbone from timm
    without its classifier (VGG16's conv base by default) followed by a new head.

    Args:
        backbone (`str`, *optional*, defaults to `"vgg16"`):
            timm architecture of the backbone: `vgg11`, `vgg13`, `vgg16`, `vgg19` and their `_bn` variants (five
            stages, Keras' `block{n}_pool`), or any timm model whose architecture has `forward_intermediates`
            (`resnet50`, `convnext_tiny`, `efficientnet_b0`, `regnety_016`, `vit_small_patch16_224`, ...): its stages
            are timm's `feature_info` reduction steps, or four evenly spaced blocks for ViT-style models.
        image_size (`int`, *optional*, defaults to 224):
            Square input resolution, a multiple of the last stage's reduction (32 for VGG's five 2x2 max pools). The
            `"flatten"` pooling sizes its first dense layer from it; global poolings accept other sizes at inference
            unless the backbone has a fixed input size (ViT-style models are built with `img_size=image_size`).
        num_channels (`int`, *optional*, defaults to 3):
            Input channels.
        image_mean (`list[float]`, *optional*, defaults to timm's ImageNet mean):
            Per-channel mean used by the image processor; must match the convention the backbone weights were trained
            with. Defaults to the `mean` of timm's `pretrained_cfg` for the backbone (ImageNet's for VGG).
        image_std (`list[float]`, *optional*, defaults to timm's ImageNet std):
            Per-channel std used by the image processor (default: the backbone's `pretrained_cfg` `std`).
        head (`str`, *optional*, defaults to `"classification"`):
            `"classification"`: pooled last-stage features -> MLP. `"fusion"`: globally pooled features of several
            stages (and optionally a user feature vector) concatenated -> MLP.
        pooling (`str`, *optional*, defaults to `"flatten"`):
            How a feature map becomes a vector: `"flatten"` (Keras `Flatten`, classification head only), `"avg"`,
            `"max"` or `"avgmax"` (mean of avg and max, as in timm).
        hidden_sizes (`list[int]`, *optional*, defaults to `[1024]`):
            Widths of the hidden dense layers of the head; `[]` gives a linear classifier.
        activation (`str`, *optional*, defaults to `"relu"`):
            Activation after each hidden layer.
        dropout (`float`, *optional*, defaults to 0.0):
            Dropout probability after each hidden layer (and before the classifier). In `[0, 1)`.
        fusion_stages (`list[int]`, *optional*):
            0-based backbone stages (0..4 for VGG; `backbone_spec(backbone).num_stages` in general) whose pooled outputs
            feed a fusion head. Defaults to the last three stages (`[2, 3, 4]` for VGG) for `head="fusion"`; ignored by
            the classification head.
        extra_features_dim (`int`, *optional*, defaults to 0):
            Size of the per-example `extra_features` vector concatenated by a fusion head (0 = none).
        backbone_weights (`str`, *optional*):
            Where the backbone weights came from (timm/Hub id, file, Keras import); informational, used by model cards.
        initializer_range (`float`, *optional*, defaults to 0.01):
            Std of the normal init of the head's dense layers (timm's VGG classifier init).
        num_labels, id2label, label2id, problem_type:
            As in [`PretrainedConfig`]: a `num_labels` that disagrees with `id2label` replaces the label names by
            `LABEL_0..LABEL_{num_labels - 1}` (with transformers' warning), which is how
            `from_pretrained(checkpoint, num_labels=K, ignore_mismatched_sizes=True)` re-fine-tunes a saved model on
            K new classes.
    """

    model_type = "hftransfer"

    backbone: str = "vgg16"
    image_size: int = 224
    num_channels: int = 3
    image_mean: list[float] | tuple[float, ...] | None = None
    image_std: list[float] | tuple[float, ...] | None = None
    head: str = "classification"
    pooling: str = "flatten"
    hidden_sizes: list[int] | tuple[int, ...] = (1024,)
    activation: str = "relu"
    dropout: float = 0.0
    fusion_stages: list[int] | tuple[int, ...] | None = None
    extra_features_dim: int = 0
    backbone_weights: str | None = None
    initializer_range: float = 0.01

    def __post_init__(self, **kwargs):
        # JSON has no tuples: store lists so that a saved and reloaded config compares equal.
        spec = backbone_spec(self.backbone) if self.backbone not in VGG_BACKBONES else None
        pretrained_cfg = timm_pretrained_cfg(self.backbone, self.backbone_weights) if spec is not None else {}
        default_mean = pretrained_cfg.get("mean") or IMAGENET_DEFAULT_MEAN
        default_std = pretrained_cfg.get("std") or IMAGENET_DEFAULT_STD
        self.image_mean = list(self.image_mean if self.image_mean is not None else default_mean)
        self.image_std = list(self.image_std if self.image_std is not None else default_std)
        self.hidden_sizes = list(self.hidden_sizes)
        if self.fusion_stages is None and self.head == "fusion":
            num_stages = spec.num_stages if spec is not None else 5
            self.fusion_stages = list(range(max(num_stages - 3, 0), num_stages))
        if self.fusion_stages is not None:
            self.fusion_stages = list(self.fusion_stages)
        num_labels = kwargs.get("num_labels")
        if num_labels is not None and (
            not isinstance(num_labels, int) or isinstance(num_labels, bool) or num_labels < 1
        ):
            raise _invalid("num_labels", num_labels, "a positive integer")
        # `PretrainedConfig` semantics: a `num_labels` that disagrees with `id2label` wins. transformers warns and
        # rebuilds `id2label`/`label2id` as LABEL_0..LABEL_{n-1}; `from_pretrained(dir, num_labels=K,
        # ignore_mismatched_sizes=True)` (re-fine-tuning a checkpoint on new labels) relies on it.
        super().__post_init__(**kwargs)
        self.validate()

    def validate(self):
        """Raise `ValueError` naming the field, the value and what is allowed, for any invalid setting."""
        spec = backbone_spec(self.backbone)
        if not isinstance(self.image_size, int) or isinstance(self.image_size, bool) or self.image_size < 32:
            raise _invalid("image_size", self.image_size, "an integer >= 32")
        reduction = spec.stage_reductions[-1]
        if self.image_size % reduction:
            why = (
                "VGG halves the resolution five times"
                if spec.is_vgg
                else f"the last stage of {self.backbone} has stride {reduction}"
            )
            raise _invalid("image_size", self.image_size, f"a multiple of {reduction} ({why})")
        if not isinstance(self.num_channels, int) or self.num_channels < 1:
            raise _invalid("num_channels", self.num_channels, "a positive integer")
        for name in ("image_mean", "image_std"):
            values = getattr(self, name)
            if len(values) != self.num_channels or not all(isinstance(v, (int, float)) for v in values):
                raise _invalid(name, values, f"{self.num_channels} numbers (one per input channel)")
        if any(v <= 0 for v in self.image_std):
            raise _invalid("image_std", self.image_std, "strictly positive values")
        if self.head not in HEAD_TYPES:
            raise _invalid("head", self.head, f"one of {', '.join(HEAD_TYPES)}")
        if self.pooling not in POOLING_TYPES:
            raise _invalid("pooling", self.pooling, f"one of {', '.join(POOLING_TYPES)}")
        if self.head == "fusion" and self.pooling == "flatten":
            raise _invalid("pooling", self.pooling, "a global pooling ('avg', 'max', 'avgmax') for head='fusion'")
        if not all(isinstance(h, int) and not isinstance(h, bool) and h > 0 for h in self.hidden_sizes):
            raise _invalid("hidden_sizes", self.hidden_sizes, "a list of positive integers")
        if self.activation not in ACTIVATIONS:
            raise _invalid("activation", self.activation, f"one of {', '.join(ACTIVATIONS)}")
        if not isinstance(self.dropout, (int, float)) or not 0.0 <= self.dropout < 1.0:
            raise _invalid("dropout", self.dropout, "a probability in [0, 1)")
        if self.head == "fusion":
            stages = self.fusion_stages
            if not stages:
                raise _invalid("fusion_stages", stages, "a non-empty list of stage indices for head='fusion'")
            if any(not isinstance(s, int) or isinstance(s, bool) or not 0 <= s < spec.num_stages for s in stages):
                raise _invalid(
                    "fusion_stages",
                    stages,
                    f"stage indices in 0..{spec.num_stages - 1} ({self.backbone} has {spec.num_stages} stages)",
                )
            if len(set(stages)) != len(stages):
                raise _invalid("fusion_stages", stages, "distinct stage indices")
        if not isinstance(self.extra_features_dim, int) or self.extra_features_dim < 0:
            raise _invalid("extra_features_dim", self.extra_features_dim, "an integer >= 0")
        if self.extra_features_dim and self.head != "fusion":
            raise _invalid("extra_features_dim", self.extra_features_dim, "0 unless head='fusion'")
        if self.problem_type is not None and self.problem_type not in PROBLEM_TYPES:
            raise _invalid("problem_type", self.problem_type, f"one of {', '.join(PROBLEM_TYPES)} or None")
        if self.label2id is not None and len(self.label2id) != self.num_labels:
            raise _invalid("label2id", self.label2id, f"{self.num_labels} entries, like id2label")

    @property
    def backbone_uses_batchnorm(self) -> bool:
        return backbone_spec(self.backbone).has_batchnorm

    @property
    def num_backbone_stages(self) -> int:
        """Number of backbone stages (5 for VGG): `fusion_stages`, freezing and per-stage learning rates use them."""
        return backbone_spec(self.backbone).num_stages


__all__ = ["BackboneSpec", "TransferConfig", "backbone_spec", "timm_pretrained_cfg"]
