"""Configuration of hftransfer models: a timm VGG conv base plus a new classification or fusion head.

This file is copied next to saved checkpoints as remote code: it imports only transformers (invariant 1).
"""

from transformers import PretrainedConfig

# timm VGG conv bases this library knows how to split into stages. The `_bn` variants add BatchNorm after each conv.
SUPPORTED_BACKBONES = ("vgg11", "vgg11_bn", "vgg13", "vgg13_bn", "vgg16", "vgg16_bn", "vgg19", "vgg19_bn")
NUM_BACKBONE_STAGES = 5  # every VGG has five conv blocks, each closed by a 2x2 max pool (Keras' block{1..5}_pool)
HEAD_TYPES = ("classification", "fusion")
POOLING_TYPES = ("flatten", "avg", "max", "avgmax")
ACTIVATIONS = ("relu", "gelu", "silu", "tanh", "leaky_relu")
PROBLEM_TYPES = ("single_label_classification", "multi_label_classification", "regression")

# timm's ImageNet defaults, the convention of `timm/vgg16.tv_in1k`. Keras-imported weights use other values
# (see `hftransfer.weights`), which the weight loader writes into the config.
IMAGENET_DEFAULT_MEAN = (0.485, 0.456, 0.406)
IMAGENET_DEFAULT_STD = (0.229, 0.224, 0.225)


def _invalid(field: str, value, expected: str) -> ValueError:
    return ValueError(f"TransferConfig.{field}={value!r} is invalid: expected {expected}.")


class TransferConfig(PretrainedConfig):
    r"""
    Configuration for [`TransferModel`] and [`TransferForImageClassification`]: an ImageNet-style VGG conv base from
    timm (no fc6/fc7) followed by a new head.

    Args:
        backbone (`str`, *optional*, defaults to `"vgg16"`):
            timm architecture of the conv base, one of `vgg11`, `vgg13`, `vgg16`, `vgg19` and their `_bn` variants.
        image_size (`int`, *optional*, defaults to 224):
            Square input resolution. Must be a multiple of 32 (five 2x2 max pools). The `"flatten"` pooling sizes its
            first dense layer from it; global poolings accept any multiple of 32 at inference.
        num_channels (`int`, *optional*, defaults to 3):
            Input channels.
        image_mean (`list[float]`, *optional*, defaults to timm's ImageNet mean):
            Per-channel mean used by the image processor; must match the convention the backbone weights were trained with.
        image_std (`list[float]`, *optional*, defaults to timm's ImageNet std):
            Per-channel std used by the image processor.
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
            0-based backbone stages (0..4) whose pooled outputs feed a fusion head. Defaults to `[2, 3, 4]` for
            `head="fusion"`; ignored by the classification head.
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
        self.image_mean = list(self.image_mean if self.image_mean is not None else IMAGENET_DEFAULT_MEAN)
        self.image_std = list(self.image_std if self.image_std is not None else IMAGENET_DEFAULT_STD)
        self.hidden_sizes = list(self.hidden_sizes)
        if self.fusion_stages is None and self.head == "fusion":
            self.fusion_stages = [2, 3, 4]
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
        if self.backbone not in SUPPORTED_BACKBONES:
            raise _invalid("backbone", self.backbone, f"one of {', '.join(SUPPORTED_BACKBONES)}")
        if not isinstance(self.image_size, int) or isinstance(self.image_size, bool) or self.image_size < 32:
            raise _invalid("image_size", self.image_size, "an integer >= 32")
        if self.image_size % 32:
            raise _invalid("image_size", self.image_size, "a multiple of 32 (VGG halves the resolution five times)")
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
            if any(not isinstance(s, int) or not 0 <= s < NUM_BACKBONE_STAGES for s in stages):
                raise _invalid("fusion_stages", stages, f"stage indices in 0..{NUM_BACKBONE_STAGES - 1}")
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
        return self.backbone.endswith("_bn")


__all__ = ["TransferConfig"]
