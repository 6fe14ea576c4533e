"""hftransfer models: a timm VGG conv base (no fc6/fc7) with a new classification or fusion head.

This file is copied next to saved checkpoints as remote code: it imports only torch, timm, transformers and its
sibling configuration and image processing files (invariant 1).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

import timm
import torch
from timm.layers import SelectAdaptivePool2d
from torch import nn
from transformers import PreTrainedModel
from transformers import initialization as init
from transformers.modeling_outputs import ImageClassifierOutput, ModelOutput

from .configuration_hftransfer import NUM_BACKBONE_STAGES, TransferConfig
from .image_processing_hftransfer import TransferImageProcessor

PROCESSOR_FILE = "preprocessor_config.json"

_ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU, "silu": nn.SiLU, "tanh": nn.Tanh, "leaky_relu": nn.LeakyReLU}


@dataclass
class TransferModelOutput(ModelOutput):
    r"""
    Output of [`TransferModel`].

    Args:
        last_hidden_state (`torch.FloatTensor` of shape `(batch_size, channels, height, width)`):
            Output of the last backbone stage (Keras' `block5_pool`).
        pooler_output (`torch.FloatTensor` of shape `(batch_size, hidden_size)`):
            The pooled features the head consumes: the configured pooling of the last stage (classification head) or
            the concatenated global poolings of `config.fusion_stages` (fusion head, without `extra_features`).
        hidden_states (`tuple(torch.FloatTensor)`, *optional*, returned when `output_hidden_states=True`):
            Output of each of the five backbone stages.
    """

    last_hidden_state: torch.FloatTensor | None = None
    pooler_output: torch.FloatTensor | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None


class TransferBackbone(nn.Module):
    """The conv base of a timm VGG, split into its five stages.

    Only `features` is kept from the timm model, so the state dict has plain timm keys (`features.0.weight`, ...)
    and loads into `timm.create_model(name).features` unchanged.

    Args:
        config ([`TransferConfig`]): Provides `backbone` and `num_channels`.
    """

    def __init__(self, config: TransferConfig):
        super().__init__()
        # Build the whole timm model on the meta device: its fc6/fc7 (`pre_logits`, ~120M parameters) would cost
        # seconds to allocate and initialise just to be thrown away. Real storage comes from `to_empty` and the
        # model's `_init_weights` (or the checkpoint, under `from_pretrained`).
        target_device = torch.tensor([]).device
        with torch.device("meta"):
            vgg = timm.create_model(config.backbone, pretrained=False, in_chans=config.num_channels)
        self.features = vgg.features.to_empty(device=target_device)
        stage_ends = [i for i, layer in enumerate(self.features) if isinstance(layer, nn.MaxPool2d)]
        self.stage_slices = [
            (start, end + 1) for start, end in zip([0] + [e + 1 for e in stage_ends[:-1]], stage_ends, strict=True)
        ]
        self.stage_channels = [
            next(m.out_channels for m in reversed(self.features[start:end]) if isinstance(m, nn.Conv2d))
            for start, end in self.stage_slices
        ]
        self.num_features = self.stage_channels[-1]

    def stage_of_layer(self, layer_index: int) -> int:
        """0-based stage that `features[layer_index]` belongs to."""
        for stage, (start, end) in enumerate(self.stage_slices):
            if start <= layer_index < end:
                return stage
        raise IndexError(f"features[{layer_index}] is outside the {len(self.features)} layers of the backbone")

    def stage_parameters(self, stage: int):
        start, end = self.stage_slices[stage]
        for layer in self.features[start:end]:
            yield from layer.parameters()

    def group_matcher(self, coarse: bool = False) -> dict:
        """timm-style parameter grouping at stage granularity (one group per VGG block)."""
        return {
            "blocks": [
                (rf"^features\.({'|'.join(str(i) for i in range(start, end))})\.", (stage,))
                for stage, (start, end) in enumerate(self.stage_slices)
            ]
        }

    def forward_stages(self, pixel_values: torch.Tensor, stages: tuple[int, ...] | None = None) -> list[torch.Tensor]:
        """Run the conv base and return the outputs of the requested stages (all five by default), in order."""
        stages = tuple(range(NUM_BACKBONE_STAGES)) if stages is None else stages
        outputs, hidden = [], pixel_values
        for stage, (start, end) in enumerate(self.stage_slices[: max(stages) + 1]):
            hidden = self.features[start:end](hidden)
            if stage in stages:
                outputs.append(hidden)
        return outputs

    def forward_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Output of the last stage (`block5_pool`), like timm's `VGG.forward_features`."""
        return self.features(pixel_values)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.forward_features(pixel_values)


class TransferPooler(nn.Module):
    """Turns backbone stage outputs into the feature vector the head's MLP consumes (no parameters).

    Classification head: the configured pooling of the last stage (`"flatten"` keeps every position, like Keras'
    `Flatten`, in channels-first order). Fusion head: global pooling of each of `config.fusion_stages`, concatenated.
    """

    def __init__(self, config: TransferConfig, stage_channels: list[int]):
        super().__init__()
        self.stages = tuple(sorted(config.fusion_stages)) if config.head == "fusion" else (NUM_BACKBONE_STAGES - 1,)
        if config.pooling == "flatten":
            self.pool = nn.Flatten(1)
            spatial = config.image_size // 32
            self.output_size = stage_channels[-1] * spatial * spatial
        else:
            self.pool = SelectAdaptivePool2d(pool_type=config.pooling, flatten=True)
            self.output_size = sum(stage_channels[s] for s in self.stages)

    def forward(self, stage_outputs: list[torch.Tensor]) -> torch.Tensor:
        pooled = [self.pool(hidden) for hidden in stage_outputs]
        return pooled[0] if len(pooled) == 1 else torch.cat(pooled, dim=1)


class TransferHead(nn.Module):
    """The new head: optional extra features, hidden dense layers with activation and dropout, then the classifier.

    With `hidden_sizes=[1024]`, `activation="relu"`, `dropout=0` after a flatten pooler this is exactly Keras'
    `Dense(1024, relu) -> Dense(num_labels)`.
    """

    def __init__(self, config: TransferConfig, in_features: int):
        super().__init__()
        self.extra_features_dim = config.extra_features_dim
        layers: list[nn.Module] = []
        width = in_features + config.extra_features_dim
        for hidden_size in config.hidden_sizes:
            layers += [nn.Linear(width, hidden_size), _ACTIVATIONS[config.activation]()]
            if config.dropout:
                layers.append(nn.Dropout(config.dropout))
            width = hidden_size
        self.hidden = nn.Sequential(*layers)
        self.num_features = width
        self.classifier = nn.Linear(width, config.num_labels)

    def forward(
        self, pooled: torch.Tensor, extra_features: torch.Tensor | None = None, pre_logits: bool = False
    ) -> torch.Tensor:
        if self.extra_features_dim:
            if extra_features is None:
                raise ValueError(
                    f"This model's fusion head expects `extra_features` of shape (batch_size, "
                    f"{self.extra_features_dim}) (config.extra_features_dim), but none were given."
                )
            if extra_features.shape != (pooled.shape[0], self.extra_features_dim):
                raise ValueError(
                    f"`extra_features` has shape {tuple(extra_features.shape)}, expected "
                    f"({pooled.shape[0]}, {self.extra_features_dim}) = (batch_size, config.extra_features_dim)."
                )
            pooled = torch.cat([pooled, extra_features.to(pooled.dtype)], dim=1)
        elif extra_features is not None:
            raise ValueError("`extra_features` were given but config.extra_features_dim is 0: this head takes none.")
        hidden = self.hidden(pooled)
        return hidden if pre_logits else self.classifier(hidden)


class TransferPreTrainedModel(PreTrainedModel):
    """Weight init, backbone freezing and the Hugging Face plumbing shared by hftransfer models."""

    config_class = TransferConfig
    config: TransferConfig
    base_model_prefix = "backbone"
    main_input_name = "pixel_values"
    input_modalities = ("image",)
    supports_gradient_checkpointing = False
    _no_split_modules = ["TransferBackbone"]

    @torch.no_grad()
    def _init_weights(self, module: nn.Module):
        # timm's VGG init: the backbone is usually overwritten by pretrained weights, the head is always new.
        if isinstance(module, nn.Conv2d):
            init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, nn.BatchNorm2d):
            init.ones_(module.weight)
            init.zeros_(module.bias)
            init.zeros_(module.running_mean)
            init.ones_(module.running_var)
            init.zeros_(module.num_batches_tracked)
        elif isinstance(module, nn.Linear):
            init.normal_(module.weight, mean=0.0, std=self.config.initializer_range)
            init.zeros_(module.bias)

    # --- saving ---------------------------------------------------------------------------------------------------
    def save_pretrained(self, save_directory: str | os.PathLike, is_main_process: bool = True, **kwargs):
        """[`~transformers.PreTrainedModel.save_pretrained`], plus the image processor the config implies
        (`preprocessor_config.json`: `image_size`, `image_mean`, `image_std`) when the folder has none yet, so that
        `AutoImageProcessor.from_pretrained` and `pipeline` work on any saved model. A processor saved before or
        after (e.g. with a center crop) is kept or wins.

        Args:
            save_directory (`str` or `os.PathLike`): Folder to write to.
            is_main_process (`bool`, *optional*, defaults to `True`): Only the main process writes files.
            kwargs: Passed to [`~transformers.PreTrainedModel.save_pretrained`] (`push_to_hub`, `state_dict`, ...).
        """
        result = super().save_pretrained(save_directory, is_main_process=is_main_process, **kwargs)
        if is_main_process:
            self._save_default_processor(save_directory)
        return result

    def _upload_modified_files(self, working_dir, *args, **kwargs):
        # `save_pretrained(push_to_hub=True)` and `push_to_hub` upload from here: add the processor before they do.
        self._save_default_processor(working_dir)
        return super()._upload_modified_files(working_dir, *args, **kwargs)

    def _save_default_processor(self, save_directory: str | os.PathLike) -> None:
        if os.path.isfile(os.path.join(save_directory, PROCESSOR_FILE)):
            return
        if TransferImageProcessor._auto_class is None:  # loaded as remote code: keep `auto_map` in the saved file
            TransferImageProcessor.register_for_auto_class("AutoImageProcessor")
        TransferImageProcessor.from_transfer_config(self.config).save_pretrained(save_directory)

    # --- staged fine-tuning -------------------------------------------------------------------------------------
    def freeze_backbone(self) -> None:
        """Stop gradients to every backbone parameter; frozen BatchNorm layers stay in eval mode while training."""
        self.unfreeze_backbone(last_k_blocks=0)

    def unfreeze_backbone(self, last_k_blocks: int | None = None) -> None:
        """Make the backbone trainable: all of it (`None`) or only its last `last_k_blocks` stages (0..5).

        Fix the trainable set *before* the model is wrapped for distributed training: DDP only synchronises the
        parameters that required grad when it was built.
        """
        num_stages = len(self.backbone.stage_slices)
        if last_k_blocks is None:
            last_k_blocks = num_stages
        if not isinstance(last_k_blocks, int) or not 0 <= last_k_blocks <= num_stages:
            raise ValueError(
                f"last_k_blocks={last_k_blocks!r} is invalid: expected None or an integer in 0..{num_stages}."
            )
        for stage in range(num_stages):
            trainable = stage >= num_stages - last_k_blocks
            for param in self.backbone.stage_parameters(stage):
                param.requires_grad_(trainable)
        self.train(self.training)  # re-apply the BatchNorm mode rule below

    @property
    def trainable_backbone_stages(self) -> list[int]:
        """Stages whose parameters all require grad."""
        return [
            stage
            for stage in range(len(self.backbone.stage_slices))
            if all(p.requires_grad for p in self.backbone.stage_parameters(stage))
        ]

    def train(self, mode: bool = True):
        super().train(mode)
        if mode:
            # A frozen BatchNorm must not update its running statistics: keep it in eval mode.
            for module in self.backbone.modules():
                if isinstance(module, nn.modules.batchnorm._BatchNorm) and not any(
                    p.requires_grad for p in module.parameters()
                ):
                    module.eval()
        return self

    def group_matcher(self, coarse: bool = False) -> dict:
        """timm-style parameter grouping: one group per backbone stage, then the head."""
        blocks = [
            (rf"^backbone\.{pattern[1:]}", ordinal) for pattern, ordinal in self.backbone.group_matcher()["blocks"]
        ]
        return {"blocks": blocks + [(r"^(?!backbone\.)", (len(blocks),))]}

    def backbone_stage_of(self, parameter_name: str) -> int | None:
        """Backbone stage (0..4) a parameter belongs to, or `None` for head parameters."""
        match = re.match(r"^backbone\.features\.(\d+)\.", parameter_name)
        return self.backbone.stage_of_layer(int(match.group(1))) if match else None


class TransferModel(TransferPreTrainedModel):
    """A headless hftransfer model: the VGG conv base and the parameter-free pooler.

    Args:
        config ([`TransferConfig`]): Model configuration. Initialising from a config does not load pretrained
            weights; use `hftransfer.create_model(backbone_weights=...)` or `from_pretrained`.
    """

    def __init__(self, config: TransferConfig):
        super().__init__(config)
        self.backbone = TransferBackbone(config)
        self.pooler = TransferPooler(config, self.backbone.stage_channels)
        self.post_init()

    def forward(
        self,
        pixel_values: torch.Tensor,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> TransferModelOutput | tuple:
        output_hidden_states = (
            output_hidden_states if output_hidden_states is not None else self.config.output_hidden_states
        )
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        stage_outputs = self.backbone.forward_stages(pixel_values)
        pooled = self.pooler([stage_outputs[s] for s in self.pooler.stages])
        hidden_states = tuple(stage_outputs) if output_hidden_states else None
        if not return_dict:
            return tuple(v for v in (stage_outputs[-1], pooled, hidden_states) if v is not None)
        return TransferModelOutput(
            last_hidden_state=stage_outputs[-1], pooler_output=pooled, hidden_states=hidden_states
        )


class TransferForImageClassification(TransferPreTrainedModel):
    """An ImageNet-style VGG conv base with a new classification or fusion head.

    `forward_features` (backbone + pooler, no trainable parameters when the backbone is frozen) and `forward_head`
    split the model where a frozen stage can cache features: `forward(pooled_features=...)` skips the backbone.

    Args:
        config ([`TransferConfig`]): Model configuration. Initialising from a config does not load pretrained
            weights; use `hftransfer.create_model(backbone_weights=...)` or `from_pretrained`.
    """

    # The loss is a per-example mean on each rank (DDP averages gradients). Declaring no loss kwargs stops the Trainer
    # from also scaling the loss by the number of processes, which assumes a loss normalised by the global item count.
    accepts_loss_kwargs = False

    def __init__(self, config: TransferConfig):
        super().__init__(config)
        self.backbone = TransferBackbone(config)
        self.pooler = TransferPooler(config, self.backbone.stage_channels)
        self.head = TransferHead(config, self.pooler.output_size)
        self.post_init()

    def forward_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Pooled backbone features, shape `(batch_size, pooler.output_size)`: what a frozen stage can cache."""
        if self.pooler.stages == (NUM_BACKBONE_STAGES - 1,):
            stage_outputs = [self.backbone.forward_features(pixel_values)]
        else:
            stage_outputs = self.backbone.forward_stages(pixel_values, self.pooler.stages)
        return self.pooler(stage_outputs)

    def forward_head(
        self, pooled_features: torch.Tensor, extra_features: torch.Tensor | None = None, pre_logits: bool = False
    ) -> torch.Tensor:
        return self.head(pooled_features, extra_features=extra_features, pre_logits=pre_logits)

    def forward(
        self,
        pixel_values: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        extra_features: torch.Tensor | None = None,
        pooled_features: torch.Tensor | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> ImageClassifierOutput | tuple:
        r"""
        Args:
            pixel_values (`torch.FloatTensor` of shape `(batch_size, num_channels, height, width)`):
                Images prepared by [`TransferImageProcessor`].
            labels (`torch.LongTensor` of shape `(batch_size,)` or `torch.FloatTensor`, *optional*):
                Targets for the loss chosen by `config.problem_type` (cross-entropy, BCE-with-logits or MSE).
            extra_features (`torch.FloatTensor` of shape `(batch_size, config.extra_features_dim)`, *optional*):
                Per-example feature vector for a fusion head configured with `extra_features_dim > 0`.
            pooled_features (`torch.FloatTensor` of shape `(batch_size, pooler.output_size)`, *optional*):
                Precomputed `forward_features(pixel_values)` (cached frozen-backbone features); replaces `pixel_values`.
        """
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        if pooled_features is None:
            if pixel_values is None:
                raise ValueError("Pass `pixel_values` (images) or `pooled_features` (cached backbone features).")
            if pixel_values.ndim != 4 or pixel_values.shape[1] != self.config.num_channels:
                raise ValueError(
                    f"`pixel_values` has shape {tuple(pixel_values.shape)}, expected (batch_size, "
                    f"{self.config.num_channels}, height, width)."
                )
            if self.config.pooling == "flatten" and pixel_values.shape[-2:] != (self.config.image_size,) * 2:
                raise ValueError(
                    f"pooling='flatten' fixes the input size to {self.config.image_size}x{self.config.image_size} "
                    f"(config.image_size), got {pixel_values.shape[-2]}x{pixel_values.shape[-1]}."
                )
            pooled_features = self.forward_features(pixel_values)
        logits = self.forward_head(pooled_features, extra_features=extra_features)
        loss = self.loss_function(labels, logits, self.config) if labels is not None else None
        if not return_dict:
            return (loss, logits) if loss is not None else (logits,)
        return ImageClassifierOutput(loss=loss, logits=logits)


__all__ = [
    "TransferBackbone",
    "TransferForImageClassification",
    "TransferModel",
    "TransferModelOutput",
    "TransferPreTrainedModel",
]
