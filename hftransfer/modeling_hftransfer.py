"""hftransfer models: a timm backbone without its classifier (VGG's conv base by default) with a new classification or
fusion head.

This file is copied next to saved checkpoints as remote code: it imports only torch, timm, transformers and its
sibling configuration and image processing files (invariant 1).
"""

from __future__ import annotations

import inspect
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

from .configuration_hftransfer import TransferConfig, backbone_spec, timm_stage_layout, vgg_stage_layout
from .image_processing_hftransfer import TransferImageProcessor

PROCESSOR_FILE = "preprocessor_config.json"

_ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU, "silu": nn.SiLU, "tanh": nn.Tanh, "leaky_relu": nn.LeakyReLU}


@dataclass
class TransferModelOutput(ModelOutput):
    r"""
    Output of [`TransferModel`].

    Args:
        last_hidden_state (`torch.FloatTensor` of shape `(batch_size, channels, height, width)`):
            Output of the last backbone stage (Keras' `block5_pool` for VGG).
        pooler_output (`torch.FloatTensor` of shape `(batch_size, hidden_size)`):
            The pooled features the head consumes: the configured pooling of the last stage (classification head) or
            the concatenated global poolings of `config.fusion_stages` (fusion head, without `extra_features`).
        hidden_states (`tuple(torch.FloatTensor)`, *optional*, returned when `output_hidden_states=True`):
            Output of each backbone stage (five for VGG).
    """

    last_hidden_state: torch.FloatTensor | None = None
    pooler_output: torch.FloatTensor | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None


class TransferBackbone(nn.Module):
    r"""
    A timm backbone without its classifier, split into stages, with timm's vocabulary: `feature_info` (channels,
    reduction and module per stage), `forward_intermediates` (stage outputs) and `group_matcher` (the stage of each
    parameter).

    The backbone's own state dict has plain timm keys: `features.0.weight`, ... for VGG (only `features` is kept, no
    fc6/fc7), `conv1.weight`, `layer1.0.conv1.weight`, ... for a ResNet, so its weights load into
    `timm.create_model(config.backbone)` with only the classifier (and the head-only layers timm's
    `prune_intermediate_layers` drops, such as a final norm no stage output uses) missing. The modules are the timm
    model's own (the backbone shares its module, parameter and buffer tables), so timm's `forward_intermediates` runs
    them unchanged.

    Stages: VGG keeps Keras' five `block{n}_pool` stages (each closed by its max pool). Other models use timm's
    `feature_info` (one stage per reduction step); ViT-style models, whose blocks all have one stride, are split into
    four evenly spaced blocks, returned as `NCHW` feature maps of the patch tokens.

    Args:
        config ([`TransferConfig`]): Provides `backbone`, `num_channels` and (for fixed-size models) `image_size`.
    """

    def __init__(self, config: TransferConfig):
        super().__init__()
        spec = backbone_spec(config.backbone)
        self.name = config.backbone
        self.fixed_input_size = spec.fixed_input_size
        target_device = torch.tensor([]).device
        if spec.is_vgg:
            # Build the whole timm model on the meta device: its fc6/fc7 (`pre_logits`, ~120M parameters) would cost
            # seconds to allocate and initialise just to be thrown away. Real storage comes from `to_empty` and the
            # model's `_init_weights` (or the checkpoint, under `from_pretrained`).
            with torch.device("meta"):
                vgg = timm.create_model(config.backbone, pretrained=False, in_chans=config.num_channels)
            self.features = vgg.features.to_empty(device=target_device)
            self.stage_slices, feature_info = vgg_stage_layout(self.features)
            self._timm_model = None
            self._timm_indices: tuple[int, ...] = ()
            self._intermediate_kwargs: dict = {}
        else:
            kwargs = {"img_size": config.image_size} if spec.accepts_img_size else {}
            model = timm.create_model(
                config.backbone, pretrained=False, num_classes=0, in_chans=config.num_channels, **kwargs
            )
            feature_info, indices = timm_stage_layout(model)
            # Drop what no stage output uses (classifier, pre-logits, a final norm): it would hold parameters that
            # never get a gradient, which DDP rejects and freezing would misreport.
            model.prune_intermediate_layers(indices, prune_norm=True, prune_head=True)
            for module in model.modules():
                module._hftransfer_timm_init = True  # timm initialised these; `_init_weights` leaves them alone
            # Share the timm model's tables: `backbone.<timm key>` are its parameters, and `.to()`, `to_empty`,
            # `from_pretrained` or DDP replacing a tensor here replace it in the timm model too.
            for table in ("_parameters", "_buffers", "_modules", "_non_persistent_buffers_set"):
                object.__setattr__(self, table, getattr(model, table))
            object.__setattr__(self, "_timm_model", model)  # not a submodule: its modules are already ours
            self._timm_indices = tuple(indices)
            accepted = inspect.signature(model.forward_intermediates).parameters
            self._intermediate_kwargs = {
                key: value for key, value in (("norm", False), ("output_fmt", "NCHW")) if key in accepted
            }
        self.feature_info: list[dict] = [dict(info) for info in feature_info]
        self.num_stages = len(self.feature_info)
        self.stage_channels = [info["num_chs"] for info in self.feature_info]
        self.stage_reductions = [info["reduction"] for info in self.feature_info]
        self.num_features = self.stage_channels[-1]
        self._stage_of = self._assign_stages()

    # --- stages of parameters -------------------------------------------------------------------------------------
    def _assign_stages(self) -> dict[str, int]:
        """Backbone-relative parameter/buffer name -> stage. A tensor inside a stage's module belongs to it; one
        between two stage modules (a stem, a transition block) to the stage it feeds; one after the last to the last."""
        names = []  # parameters and buffers in registration order, module by module
        for prefix, module in self.named_modules():
            for tensors in (module.named_parameters(recurse=False), module.named_buffers(recurse=False)):
                names += [f"{prefix}.{n}" if prefix else n for n, _ in tensors]
        if self._timm_model is None:
            return {name: self.stage_of_layer(int(name.split(".")[1])) for name in names}
        modules = [info["module"] for info in self.feature_info]
        stages, current = {}, 0
        for name in names:
            inside = [s for s, m in enumerate(modules) if name.startswith(m + ".")]
            if inside:
                stages[name] = inside[0]
                current = max(current, inside[0] + 1)
            else:
                stages[name] = min(current, self.num_stages - 1)
        return stages

    def stage_of(self, name: str) -> int | None:
        """Stage (0-based) of a backbone parameter or buffer, by its name relative to the backbone."""
        return self._stage_of.get(name)

    def stage_of_layer(self, layer_index: int) -> int:
        """VGG: 0-based stage that `features[layer_index]` belongs to."""
        for stage, (start, end) in enumerate(self.stage_slices):
            if start <= layer_index < end:
                return stage
        raise IndexError(f"features[{layer_index}] is outside the {len(self.features)} layers of the backbone")

    def stage_parameters(self, stage: int):
        """The parameters of one stage, in order."""
        for name, param in self.named_parameters():
            if self._stage_of.get(name) == stage:
                yield param

    def group_matcher(self, coarse: bool = False) -> dict:
        """timm-style parameter grouping at stage granularity: `{"blocks": [(regex, (stage,)), ...]}`, one entry per
        stage, matching backbone-relative names (one VGG block, one ResNet layer, ... per group)."""
        if self._timm_model is None:
            return {
                "blocks": [
                    (rf"^features\.({'|'.join(str(i) for i in range(start, end))})\.", (stage,))
                    for stage, (start, end) in enumerate(self.stage_slices)
                ]
            }
        units: list[list[str]] = [[] for _ in range(self.num_stages)]
        names = list(self._stage_of)
        for name in names:
            parts = name.split(".")
            for depth in range(1, len(parts) + 1):  # the shortest prefix whose tensors all share this stage
                prefix = ".".join(parts[:depth])
                members = [n for n in names if n == prefix or n.startswith(prefix + ".")]
                if all(self._stage_of[n] == self._stage_of[name] for n in members):
                    unit = re.escape(prefix) + ("$" if prefix == name else r"\.")
                    if unit not in units[self._stage_of[name]]:
                        units[self._stage_of[name]].append(unit)
                    break
        return {"blocks": [(rf"^(?:{'|'.join(u)})", (stage,)) for stage, u in enumerate(units) if u]}

    # --- forward --------------------------------------------------------------------------------------------------
    def _take(self, indices: int | list[int] | tuple[int, ...] | None) -> list[int]:
        if indices is None:
            return list(range(self.num_stages))
        if isinstance(indices, int):
            if not 0 < indices <= self.num_stages:
                raise ValueError(f"indices={indices} is invalid: expected 1..{self.num_stages} (the last n stages).")
            return list(range(self.num_stages - indices, self.num_stages))
        take = sorted({i + self.num_stages if i < 0 else i for i in indices})
        if not take or not all(0 <= i < self.num_stages for i in take):
            raise ValueError(
                f"indices={list(indices)} is invalid: expected stage indices in 0..{self.num_stages - 1}."
            )
        return take

    def forward_intermediates(
        self,
        pixel_values: torch.Tensor,
        indices: int | list[int] | tuple[int, ...] | None = None,
        stop_early: bool = False,
        intermediates_only: bool = False,
    ) -> list[torch.Tensor] | tuple[torch.Tensor, list[torch.Tensor]]:
        """Stage outputs, as timm's `forward_intermediates`.

        Args:
            pixel_values (`torch.Tensor` of shape `(batch_size, num_channels, height, width)`): Images.
            indices (`int` or `list[int]`, *optional*): The last n stages (int), these stages (list), or all (None).
            stop_early (`bool`, *optional*, defaults to `False`): Stop after the last requested stage.
            intermediates_only (`bool`, *optional*, defaults to `False`): Return only the stage outputs.

        Returns:
            The requested stage outputs (`NCHW`, in stage order); unless `intermediates_only`, a tuple of the last
            stage's output and that list.
        """
        take = self._take(indices)
        wanted = (
            take
            if intermediates_only or stop_early or take[-1] == self.num_stages - 1
            else take + [self.num_stages - 1]
        )
        if self._timm_model is None:
            outputs, hidden = [], pixel_values
            for stage, (start, end) in enumerate(self.stage_slices[: wanted[-1] + 1]):
                hidden = self.features[start:end](hidden)
                if stage in wanted:
                    outputs.append(hidden)
        else:
            outputs = self._timm_model.forward_intermediates(
                pixel_values,
                indices=[self._timm_indices[s] for s in wanted],
                stop_early=True,
                intermediates_only=True,
                **self._intermediate_kwargs,
            )
        if intermediates_only:
            return list(outputs)
        final = outputs[-1]
        return final, list(outputs[: len(take)])

    @property
    def can_forward_from_stage(self) -> bool:
        """Whether [`forward_from_stage`] works: a backbone that is a plain sequence of stages (VGG)."""
        return self._timm_model is None

    def forward_from_stage(
        self, hidden_state: torch.Tensor, stage: int, indices: tuple[int, ...] | list[int]
    ) -> list[torch.Tensor]:
        """Outputs of stages `indices` (all after `stage`), computed from `hidden_state`, the output of stage `stage`.

        The entry point of a frozen-prefix cache: stages `0..stage` ran once, the later ones run here every epoch.
        """
        if not self.can_forward_from_stage:
            raise ValueError(f"backbone {self.name!r} cannot resume from an intermediate stage (only VGG can).")
        if not indices or min(indices) <= stage or max(indices) >= self.num_stages:
            raise ValueError(
                f"indices={list(indices)} is invalid after stage {stage}: expected stages in {stage + 1}.."
                f"{self.num_stages - 1}."
            )
        outputs, hidden = [], hidden_state
        for index in range(stage + 1, max(indices) + 1):
            start, end = self.stage_slices[index]
            hidden = self.features[start:end](hidden)
            if index in indices:
                outputs.append(hidden)
        return outputs

    def forward_stages(self, pixel_values: torch.Tensor, stages: tuple[int, ...] | None = None) -> list[torch.Tensor]:
        """Run the backbone and return the outputs of the requested stages (all by default), in order."""
        return self.forward_intermediates(pixel_values, stages, stop_early=True, intermediates_only=True)

    def forward_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Output of the last stage (VGG: `block5_pool`, like timm's `VGG.forward_features`)."""
        if self._timm_model is None:
            return self.features(pixel_values)
        return self.forward_intermediates(pixel_values, [self.num_stages - 1], intermediates_only=True)[0]

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.forward_features(pixel_values)

    def train(self, mode: bool = True):
        super().train(mode)
        if self._timm_model is not None:  # the timm model object is not a submodule: give it the mode too
            self._timm_model.training = mode
        return self


class TransferPooler(nn.Module):
    """Turns backbone stage outputs into the feature vector the head's MLP consumes (no parameters).

    Classification head: the configured pooling of the last stage (`"flatten"` keeps every position, like Keras'
    `Flatten`, in channels-first order; its size comes from the last stage's channels and reduction). Fusion head:
    global pooling of each of `config.fusion_stages`, concatenated.

    Args:
        config ([`TransferConfig`]): Provides `head`, `pooling`, `fusion_stages` and `image_size`.
        backbone ([`TransferBackbone`]): Provides the channels and reduction of each stage.
    """

    def __init__(self, config: TransferConfig, backbone: TransferBackbone):
        super().__init__()
        last = backbone.num_stages - 1
        self.stages = tuple(sorted(config.fusion_stages)) if config.head == "fusion" else (last,)
        channels = backbone.stage_channels
        if config.pooling == "flatten":
            self.pool = nn.Flatten(1)
            spatial = config.image_size // backbone.stage_reductions[last]
            self.output_size = channels[last] * spatial * spatial
        else:
            self.pool = SelectAdaptivePool2d(pool_type=config.pooling, flatten=True)
            self.output_size = sum(channels[s] for s in self.stages)

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
        # timm's VGG init: the backbone is usually overwritten by pretrained weights, the head is always new. Other
        # timm backbones keep the init timm gave them at construction.
        if getattr(module, "_hftransfer_timm_init", False):
            return
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
        """Make the backbone trainable: all of it (`None`) or only its last `last_k_blocks` stages (0..5 for VGG,
        0..`backbone.num_stages` in general).

        Fix the trainable set *before* the model is wrapped for distributed training: DDP only synchronises the
        parameters that required grad when it was built.
        """
        num_stages = self.backbone.num_stages
        if last_k_blocks is None:
            last_k_blocks = num_stages
        if (
            not isinstance(last_k_blocks, int)
            or isinstance(last_k_blocks, bool)
            or not 0 <= last_k_blocks <= num_stages
        ):
            raise ValueError(
                f"last_k_blocks={last_k_blocks!r} is invalid: expected None or an integer in 0..{num_stages} "
                f"({self.config.backbone} has {num_stages} stages)."
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
            for stage in range(self.backbone.num_stages)
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
        """Backbone stage (0-based; 0..4 for VGG) a parameter belongs to, or `None` for head parameters."""
        if not parameter_name.startswith("backbone."):
            return None
        return self.backbone.stage_of(parameter_name[len("backbone.") :])


class TransferModel(TransferPreTrainedModel):
    """A headless hftransfer model: the timm backbone (VGG's conv base by default) and the parameter-free pooler.

    Args:
        config ([`TransferConfig`]): Model configuration. Initialising from a config does not load pretrained
            weights; use `hftransfer.create_model(backbone_weights=...)` or `from_pretrained`.
    """

    def __init__(self, config: TransferConfig):
        super().__init__(config)
        self.backbone = TransferBackbone(config)
        self.pooler = TransferPooler(config, self.backbone)
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
        stage_outputs = self.backbone.forward_intermediates(pixel_values, intermediates_only=True)
        pooled = self.pooler([stage_outputs[s] for s in self.pooler.stages])
        hidden_states = tuple(stage_outputs) if output_hidden_states else None
        if not return_dict:
            return tuple(v for v in (stage_outputs[-1], pooled, hidden_states) if v is not None)
        return TransferModelOutput(
            last_hidden_state=stage_outputs[-1], pooler_output=pooled, hidden_states=hidden_states
        )


class TransferForImageClassification(TransferPreTrainedModel):
    """An ImageNet-style timm backbone (VGG16's conv base by default) with a new classification or fusion head.

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
        self.pooler = TransferPooler(config, self.backbone)
        self.head = TransferHead(config, self.pooler.output_size)
        self.post_init()

    def forward_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Pooled backbone features, shape `(batch_size, pooler.output_size)`: what a frozen stage can cache."""
        if self.pooler.stages == (self.backbone.num_stages - 1,):
            stage_outputs = [self.backbone.forward_features(pixel_values)]
        else:
            stage_outputs = self.backbone.forward_intermediates(
                pixel_values, self.pooler.stages, stop_early=True, intermediates_only=True
            )
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
        backbone_hidden_state: torch.Tensor | None = None,
        backbone_hidden_stage: int | None = None,
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
            backbone_hidden_state (`torch.FloatTensor` of shape `(batch_size, channels, height, width)`, *optional*):
                Output of backbone stage `backbone_hidden_stage` (a cached frozen prefix); the later stages, pooler and
                head run on it. Replaces `pixel_values`.
            backbone_hidden_stage (`int`, *optional*):
                The stage `backbone_hidden_state` comes from.
        """
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        if backbone_hidden_state is not None:
            if backbone_hidden_stage is None:
                raise ValueError(
                    "`backbone_hidden_state` needs `backbone_hidden_stage` (the stage it is the output of)."
                )
            stage_outputs = self.backbone.forward_from_stage(
                backbone_hidden_state, backbone_hidden_stage, self.pooler.stages
            )
            pooled_features = self.pooler(stage_outputs)
        if pooled_features is None:
            if pixel_values is None:
                raise ValueError("Pass `pixel_values` (images) or `pooled_features` (cached backbone features).")
            if pixel_values.ndim != 4 or pixel_values.shape[1] != self.config.num_channels:
                raise ValueError(
                    f"`pixel_values` has shape {tuple(pixel_values.shape)}, expected (batch_size, "
                    f"{self.config.num_channels}, height, width)."
                )
            fixed = "pooling='flatten'" if self.config.pooling == "flatten" else None
            if fixed is None and self.backbone.fixed_input_size:
                fixed = f"backbone {self.config.backbone!r} (position embeddings)"
            if fixed and pixel_values.shape[-2:] != (self.config.image_size,) * 2:
                raise ValueError(
                    f"{fixed} fixes the input size to {self.config.image_size}x{self.config.image_size} "
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
