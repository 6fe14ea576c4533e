"""`transformers.Trainer` glue: discriminative learning rates, stage-aware checkpoints, rank checksums."""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
from pathlib import Path

import torch
from timm.data import Mixup
from timm.loss import SoftTargetCrossEntropy
from transformers import Trainer, TrainerCallback

from .. import _io
from ..constants import STAGE_MARKER_FILE
from ..errors import NonFiniteError
from .freezing import build_parameter_groups

STAGE_MARKER = STAGE_MARKER_FILE


@contextlib.contextmanager
def quiet_progress_bars():
    """transformers' own progress bars off inside the block ("Writing model shards" for every small save)."""
    from transformers.utils import logging as transformers_logging

    enabled = transformers_logging.is_progress_bar_enabled()
    transformers_logging.disable_progress_bar()
    try:
        yield
    finally:
        if enabled:
            transformers_logging.enable_progress_bar()


class _DropMessages(logging.Filter):
    """Drops log records whose message contains one of `fragments`."""

    def __init__(self, *fragments: str):
        super().__init__()
        self.fragments = fragments

    def filter(self, record: logging.LogRecord) -> bool:
        return not any(fragment in str(record.msg) for fragment in self.fragments)


def _silence_checkpoint_sorting_warning() -> None:
    # Checkpoints saved less than a second apart (small stages) make transformers warn "mtime may not be reliable on
    # this filesystem" and sort by step number, which is the right order for stage checkpoints anyway.
    trainer_utils_logger = logging.getLogger("transformers.trainer_utils")
    if not any(isinstance(f, _DropMessages) for f in trainer_utils_logger.filters):
        trainer_utils_logger.addFilter(_DropMessages("mtime may not be reliable"))


class TransferTrainer(Trainer):
    """A `Trainer` with discriminative learning rates and the fine-tuning regularisers of a stage.

    Only parameters that require grad when the optimizer is created are optimised, so the stage's freeze plan must
    be applied before the Trainer is built (one Trainer per stage: fresh optimizer, scheduler and DDP wrap). The
    regularisers change the *training* loss only; evaluation always reports the plain cross-entropy, so validation
    losses stay comparable across stages.

    Args:
        backbone_lr_scale (`float`, *optional*, defaults to 1.0):
            Multiplier of `args.learning_rate` for backbone parameter groups.
        layer_lr_decay (`float`, *optional*, defaults to 1.0):
            Each backbone stage trains `layer_lr_decay` times slower than the one after it (1: off).
        label_smoothing (`float`, *optional*, defaults to 0.0):
            Label smoothing of the training cross-entropy.
        mixup_alpha (`float`, *optional*, defaults to 0.0), cutmix_alpha (`float`, *optional*, defaults to 0.0):
            timm's `Mixup` on training batches of `pixel_values`, trained with timm's `SoftTargetCrossEntropy`.
        l2sp_strength (`float`, *optional*, defaults to 0.0):
            L2-SP: adds `l2sp_strength / 2 * sum((w - w0) ** 2)` over the trainable backbone parameters, `w0` their
            values in `l2sp_reference` (the pretrained weights); the backbone then gets no plain weight decay.
        l2sp_reference (`dict[str, torch.Tensor]`, *optional*):
            Pretrained backbone tensors by parameter name (required when `l2sp_strength > 0`).
        stage_name (`str`, *optional*):
            The stage this Trainer runs, named by the error raised when the training loss becomes NaN or inf.
        **kwargs: Passed to `transformers.Trainer`.
    """

    def __init__(
        self,
        *args,
        backbone_lr_scale: float = 1.0,
        layer_lr_decay: float = 1.0,
        label_smoothing: float = 0.0,
        mixup_alpha: float = 0.0,
        cutmix_alpha: float = 0.0,
        l2sp_strength: float = 0.0,
        l2sp_reference: dict[str, torch.Tensor] | None = None,
        stage_name: str | None = None,
        **kwargs,
    ):
        self.stage_name = stage_name
        self.backbone_lr_scale = backbone_lr_scale
        self.layer_lr_decay = layer_lr_decay
        self.label_smoothing = label_smoothing
        self.l2sp_strength = l2sp_strength
        if l2sp_strength > 0 and not l2sp_reference:
            raise ValueError("l2sp_strength > 0 needs l2sp_reference: the pretrained backbone tensors by name.")
        self.l2sp_reference = l2sp_reference or {}
        _silence_checkpoint_sorting_warning()
        super().__init__(*args, **kwargs)
        self.mixup = None
        if mixup_alpha > 0 or cutmix_alpha > 0:
            self.mixup = Mixup(
                mixup_alpha=mixup_alpha,
                cutmix_alpha=cutmix_alpha,
                label_smoothing=label_smoothing,
                num_classes=self.model.config.num_labels,
            )

    def create_optimizer(self, model=None) -> torch.optim.Optimizer:
        if self.optimizer is None:
            opt_model = self.model if model is None else model
            groups = build_parameter_groups(
                opt_model,
                self.args.learning_rate,
                self.backbone_lr_scale,
                self.args.weight_decay,
                layer_lr_decay=self.layer_lr_decay,
                backbone_weight_decay=self.l2sp_strength == 0,
            )
            if not groups:
                raise ValueError("Nothing to train: every parameter is frozen in this stage.")
            optimizer_cls, optimizer_kwargs = self.get_optimizer_cls_and_kwargs(self.args, opt_model)
            self.optimizer = optimizer_cls(groups, **optimizer_kwargs)
        return self.optimizer

    def _save(self, output_dir: str | None = None, state_dict=None) -> None:
        # A checkpoint is a routine save: no "Writing model shards" progress bar for each one.
        with quiet_progress_bars():
            super()._save(output_dir, state_dict=state_dict)

    def training_step(self, model, inputs, num_items_in_batch=None):
        loss = super().training_step(model, inputs, num_items_in_batch)
        # The Trainer reads the loss as a Python bool for its NaN filter anyway: this check adds no device sync. All
        # ranks decide together, so that no rank is left waiting in a collective for one that stopped.
        bad = torch.logical_not(torch.isfinite(loss.detach()).all()).to(torch.int32).reshape(1)
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(bad, op=torch.distributed.ReduceOp.MAX)
        if bool(bad.item()):
            for callback in self.callback_handler.callbacks:  # end the progress bar's line before the error
                if getattr(callback, "training_bar", None) is not None:
                    callback.training_bar.close()
                    callback.training_bar = None
            raise NonFiniteError(non_finite_loss_message(self.stage_name, self.state, float(loss.detach().max())))
        return loss

    @property
    def regularizes_loss(self) -> bool:
        return self.label_smoothing > 0 or self.mixup is not None or self.l2sp_strength > 0

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if not (model.training and self.regularizes_loss):
            return super().compute_loss(
                model, inputs, return_outputs=return_outputs, num_items_in_batch=num_items_in_batch
            )
        inputs = dict(inputs)
        labels = inputs.pop("labels")
        # timm's Mixup pairs examples within the batch and needs an even size: an odd (last) batch trains unmixed.
        # (Not drop_last: the Trainer applies it to evaluation too, which would score part of the validation set.)
        if self.mixup is not None and len(labels) % 2 == 0:
            if "pixel_values" not in inputs:
                raise ValueError("mixup/cutmix need image batches (`pixel_values`), not cached features.")
            inputs["pixel_values"], soft_targets = self.mixup(inputs["pixel_values"], labels)
            outputs = model(**inputs)
            loss = SoftTargetCrossEntropy()(outputs.logits, soft_targets)
        else:
            outputs = model(**inputs)
            loss = torch.nn.functional.cross_entropy(outputs.logits, labels, label_smoothing=self.label_smoothing)
        if self.l2sp_strength > 0:
            loss = loss + self.l2sp_penalty(model)
        return (loss, outputs) if return_outputs else loss

    def l2sp_penalty(self, model) -> torch.Tensor:
        """`l2sp_strength / 2` times the squared distance of the trainable backbone weights from the reference."""
        unwrapped = self.accelerator.unwrap_model(model)
        total = None
        for name, param in unwrapped.named_parameters():
            reference = self.l2sp_reference.get(name)
            if reference is None or not param.requires_grad:
                continue
            if reference.device != param.device:
                reference = self.l2sp_reference[name] = reference.to(param.device)
            term = (param - reference).pow(2).sum()
            total = term if total is None else total + term
        if total is None:
            return torch.zeros((), device=self.args.device)
        return 0.5 * self.l2sp_strength * total


class StageCheckpointCallback(TrainerCallback):
    """Marks each complete checkpoint with the stage it belongs to.

    `on_save` runs after the Trainer has written weights, optimizer, scheduler, RNG and trainer state, so a
    checkpoint folder without the marker was interrupted mid-write and is never resumed from.
    """

    def __init__(self, stage_index: int, stage_name: str):
        self.stage_index = stage_index
        self.stage_name = stage_name

    def on_save(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            checkpoint = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            if checkpoint.is_dir():
                payload = {"stage_index": self.stage_index, "stage_name": self.stage_name, "step": state.global_step}
                _io.apply_umask_mode(checkpoint)  # the Trainer's files (model.safetensors: 0600) before the marker
                write_json_atomic(checkpoint / STAGE_MARKER, payload)
        return control


class RankChecksumCallback(TrainerCallback):
    """Writes, per rank, a checksum of every parameter at the end of each stage.

    Diagnostic for distributed runs (are the replicas really identical?): enabled by the environment variable
    `HFTRANSFER_RANK_CHECKSUM_DIR`; each rank writes only its own file there, never into `output_dir`.
    """

    def __init__(self, directory: str, stage_name: str):
        self.directory = Path(directory)
        self.stage_name = stage_name

    def on_train_end(self, args, state, control, model=None, **kwargs):
        rank = int(os.environ.get("RANK", "0"))
        world = int(os.environ.get("WORLD_SIZE", "1"))
        checksums = {
            name: hashlib.sha256(param.detach().cpu().contiguous().numpy().tobytes()).hexdigest()
            for name, param in model.named_parameters()
        }
        self.directory.mkdir(parents=True, exist_ok=True)
        write_json_atomic(
            self.directory / f"{self.stage_name}-rank{rank}.json",
            {"rank": rank, "world_size": world, "stage": self.stage_name, "checksums": checksums},
        )
        return control


def non_finite_loss_message(stage_name: str | None, state, value: float) -> str:
    where = f"Stage {stage_name}" if stage_name else "Training"
    epoch = f" (epoch {state.epoch:.2f})" if state.epoch is not None else ""
    return (
        f"{where}: the training loss is {value} at step {state.global_step + 1}{epoch}; training stopped and no "
        "final model was saved. Lower the stage's learning_rate (or warmup_ratio > 0, a max_grad_norm, "
        "precision 'no') and run again."
    )


def check_finite_weights(model: torch.nn.Module, what: str) -> None:
    """Raise [`NonFiniteError`] naming the tensors of `model` that hold NaN or inf, before `what` is saved."""
    bad = [
        name
        for name, tensor in model.state_dict().items()
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all())
    ]
    if bad:
        shown = ", ".join(bad[:5]) + (f" and {len(bad) - 5} more" if len(bad) > 5 else "")
        raise NonFiniteError(
            f"{len(bad)} weight tensors hold NaN or inf ({shown}): {what} was not saved. Lower the learning rate "
            "and run again."
        )


def write_json_atomic(path: Path, payload) -> None:
    """JSON to `path` via a temporary file, fsync and rename, with the umask's mode (values JSON lacks -> str)."""
    _io.write_json_atomic(path, payload, default=str)


def complete_checkpoints(stage_dir: Path) -> list[Path]:
    """Checkpoints of a stage that were fully written (have the stage marker), oldest first."""
    found = []
    for checkpoint in Path(stage_dir).glob("checkpoint-*"):
        if (checkpoint / STAGE_MARKER).is_file() and checkpoint.name.split("-")[-1].isdigit():
            found.append(checkpoint)
    return sorted(found, key=lambda p: int(p.name.split("-")[-1]))
