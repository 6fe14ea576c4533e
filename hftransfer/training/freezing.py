"""Freeze plans and optimizer parameter groups for one stage of staged fine-tuning."""

from __future__ import annotations

from torch import nn

from ..modeling_hftransfer import TransferPreTrainedModel
from ..recipes import StageArguments


def apply_stage_trainable(model: TransferPreTrainedModel, stage: StageArguments) -> None:
    """Set `requires_grad` for a stage: the head always trains; the backbone per `stage.trainable`.

    Must run before the stage's Trainer wraps the model: DDP only synchronises what requires grad at wrap time.
    """
    if stage.trainable == "head":
        model.freeze_backbone()
    elif stage.trainable == "all":
        model.unfreeze_backbone()
    elif stage.trainable == "last_k":
        model.unfreeze_backbone(last_k_blocks=stage.last_k_blocks)
    else:
        raise ValueError(f"stage.trainable={stage.trainable!r} is invalid: expected 'head', 'all' or 'last_k'.")
    for name, param in model.named_parameters():
        if model.backbone_stage_of(name) is None:
            param.requires_grad_(True)


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def build_parameter_groups(
    model: TransferPreTrainedModel,
    learning_rate: float,
    backbone_lr_scale: float,
    weight_decay: float,
    layer_lr_decay: float = 1.0,
    backbone_weight_decay: bool = True,
) -> list[dict]:
    """Optimizer groups with discriminative learning rates.

    Head parameters train at `learning_rate`; backbone stage `s` of `n` at
    `learning_rate * backbone_lr_scale * layer_lr_decay ** (n - 1 - s)` (the last stage at `learning_rate *
    backbone_lr_scale`, each earlier one `layer_lr_decay` times slower). Biases and normalisation weights get no weight
    decay, and neither does the backbone when `backbone_weight_decay` is `False` (L2-SP replaces it). Only parameters
    that require grad are included (a frozen backbone adds no group), and empty groups are dropped. Each group carries
    its own `lr`, which the scheduler scales.
    """
    num_stages = model.backbone.num_stages
    groups: dict[tuple[int, bool], list[nn.Parameter]] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        stage = model.backbone_stage_of(name)
        part = num_stages if stage is None else stage  # the head sorts after the backbone stages
        decay = param.ndim > 1 and (stage is None or backbone_weight_decay)  # conv/linear weights decay
        groups.setdefault((part, decay), []).append(param)

    def rate(part: int) -> float:
        if part == num_stages:
            return learning_rate
        return learning_rate * backbone_lr_scale * layer_lr_decay ** (num_stages - 1 - part)

    return [
        {
            "params": params,
            "lr": rate(part),
            "weight_decay": weight_decay if decay else 0.0,
            "name": "head" if part == num_stages else f"backbone.stage{part}",
        }
        for (part, decay), params in sorted(groups.items())
    ]
