"""`transformers.Trainer` glue: discriminative learning rates, stage-aware checkpoints, rank checksums."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch
from transformers import Trainer, TrainerCallback

from .freezing import build_parameter_groups

STAGE_MARKER = "hftransfer_stage.json"


class TransferTrainer(Trainer):
    """A `Trainer` whose optimizer gives the backbone `backbone_lr_scale` times the head's learning rate.

    Only parameters that require grad when the optimizer is created are optimised, so the stage's freeze plan must
    be applied before the Trainer is built (one Trainer per stage: fresh optimizer, scheduler and DDP wrap).

    Args:
        backbone_lr_scale (`float`, *optional*, defaults to 1.0):
            Multiplier of `args.learning_rate` for backbone parameter groups.
        **kwargs: Passed to `transformers.Trainer`.
    """

    def __init__(self, *args, backbone_lr_scale: float = 1.0, **kwargs):
        self.backbone_lr_scale = backbone_lr_scale
        super().__init__(*args, **kwargs)

    def create_optimizer(self, model=None) -> torch.optim.Optimizer:
        if self.optimizer is None:
            opt_model = self.model if model is None else model
            groups = build_parameter_groups(
                opt_model, self.args.learning_rate, self.backbone_lr_scale, self.args.weight_decay
            )
            if not groups:
                raise ValueError("Nothing to train: every parameter is frozen in this stage.")
            optimizer_cls, optimizer_kwargs = self.get_optimizer_cls_and_kwargs(self.args, opt_model)
            self.optimizer = optimizer_cls(groups, **optimizer_kwargs)
        return self.optimizer


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


def write_json_atomic(path: Path, payload) -> None:
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(payload, indent=2, default=str))
    os.replace(tmp, path)


def complete_checkpoints(stage_dir: Path) -> list[Path]:
    """Checkpoints of a stage that were fully written (have the stage marker), oldest first."""
    found = []
    for checkpoint in Path(stage_dir).glob("checkpoint-*"):
        if (checkpoint / STAGE_MARKER).is_file() and checkpoint.name.split("-")[-1].isdigit():
            found.append(checkpoint)
    return sorted(found, key=lambda p: int(p.name.split("-")[-1]))
