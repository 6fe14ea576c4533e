"""Model selection across stages and early stopping within a stage.

Every evaluation of every stage is offered to one [`ModelSelection`]; the best one by
`training.metric_for_best_model` is kept on disk (`stages/best.safetensors`, weights plus the evaluation that chose
them in the file's metadata, written atomically), so the run can end with the best model instead of the last one
and a resumed run knows what was best before it was interrupted. [`SelectionCallback`] feeds it from the Trainer
and stops a stage after `early_stopping_patience` evaluations without improving that stage's own best.

Only the main process writes; every rank sees the same gathered metrics, so every rank takes the same decisions.
"""

from __future__ import annotations

import json
import logging
import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from transformers import TrainerCallback

from .. import _io
from ..constants import BEST_MODEL_FILE
from ..recipes import SELECTION_METRICS

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Evaluation:
    """One validation evaluation during training: where it happened and what it scored."""

    stage: str
    stage_index: int
    epoch: float | None
    step: int
    metric: str
    value: float


class ModelSelection:
    """The best validation evaluation so far, across stages, and its weights.

    Args:
        path (`Path`): Where the best weights live (`stages/best.safetensors`).
        metric (`str`): A key of `recipes.SELECTION_METRICS` (`accuracy`, `f1`, `precision`, `recall`, `loss`).
        write (`bool`): Whether this process writes the file (the main process only).
    """

    def __init__(self, path: Path, metric: str, write: bool):
        if metric not in SELECTION_METRICS:
            raise ValueError(
                f"metric_for_best_model={metric!r} is invalid: expected one of {tuple(SELECTION_METRICS)}."
            )
        self.path = Path(path)
        self.metric = metric
        self.greater_is_better = SELECTION_METRICS[metric]
        self.write = write
        self.best: Evaluation | None = None

    def is_better(self, value: float, than: float | None) -> bool:
        if not math.isfinite(value):
            return False
        if than is None:
            return True
        return value > than if self.greater_is_better else value < than

    def consider(self, evaluation: Evaluation, model: torch.nn.Module) -> bool:
        """Keep `evaluation` (and `model`'s current weights) if it beats the best so far; return whether it did."""
        if not self.is_better(evaluation.value, None if self.best is None else self.best.value):
            return False
        self.best = evaluation
        if self.write:
            self._save(model)
        return True

    def _save(self, model: torch.nn.Module) -> None:
        tensors = {name: tensor.detach().to("cpu").contiguous() for name, tensor in model.state_dict().items()}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        save_file(tensors, str(tmp), metadata={"selected": json.dumps(asdict(self.best))})
        # A reader (or a resumed run) sees the old best or the new one, never half; save_file leaves mode 0600.
        _io.replace_with_umask_mode(tmp, self.path)

    def restore(self) -> Evaluation | None:
        """Read the best evaluation recorded by an earlier (interrupted) run of the same output dir, if any."""
        if not self.path.is_file():
            return None
        try:
            with safe_open(str(self.path), framework="pt") as handle:
                record = json.loads((handle.metadata() or {})["selected"])
            evaluation = Evaluation(**record)
        except (SafetensorError, OSError, KeyError, TypeError, ValueError) as err:
            logger.warning("Ignoring unreadable best-model file %s (%s).", self.path, err)
            return None
        if evaluation.metric != self.metric:
            logger.warning(
                "Ignoring %s: it was selected by %s, this run selects by %s.",
                self.path,
                evaluation.metric,
                self.metric,
            )
            return None
        self.best = evaluation
        return evaluation

    def load_into(self, model: torch.nn.Module) -> None:
        """Load the best weights into `model` (every rank reads the file the main process wrote)."""
        if self.best is None:
            raise RuntimeError("No evaluation has been selected yet.")
        model.load_state_dict(load_file(str(self.path)))


def stage_patience_state(log_history: list[dict[str, Any]], metric: str, selection: ModelSelection):
    """Replay a stage's evaluations: its best value and how many evaluations since it last improved."""
    best, since = None, 0
    for entry in log_history:
        value = entry.get(f"eval_{metric}")
        if value is None:
            continue
        if selection.is_better(float(value), best):
            best, since = float(value), 0
        else:
            since += 1
    return best, since


class SelectionCallback(TrainerCallback):
    """Offers each evaluation of a stage to a [`ModelSelection`] and stops the stage when it stops improving.

    Args:
        selection ([`ModelSelection`]): Shared by all stages of a run.
        stage_index (`int`), stage_name (`str`): The stage this callback's Trainer trains.
        patience (`int`, *optional*): Evaluations without improving the stage's own best before it stops; `None`: never.
    """

    def __init__(self, selection: ModelSelection, stage_index: int, stage_name: str, patience: int | None = None):
        self.selection = selection
        self.stage_index = stage_index
        self.stage_name = stage_name
        self.patience = patience
        self.stage_best: float | None = None
        self.since_improvement = 0
        self.stopped_early_at: int | None = None

    def on_train_begin(self, args, state, control, **kwargs):
        # A resumed stage: its earlier evaluations are in the restored log history.
        self.stage_best, self.since_improvement = stage_patience_state(
            state.log_history, self.selection.metric, self.selection
        )
        return control

    def on_evaluate(self, args, state, control, metrics=None, model=None, **kwargs):
        value = (metrics or {}).get(f"eval_{self.selection.metric}")
        if value is None:
            return control
        value = float(value)
        evaluation = Evaluation(
            stage=self.stage_name,
            stage_index=self.stage_index,
            epoch=None if state.epoch is None else round(float(state.epoch), 4),
            step=state.global_step,
            metric=self.selection.metric,
            value=value,
        )
        if self.selection.consider(evaluation, model):
            logger.info(
                "[%s] new best validation %s %.4f (epoch %s, step %d)",
                self.stage_name,
                self.selection.metric,
                value,
                evaluation.epoch,
                state.global_step,
            )
        if self.selection.is_better(value, self.stage_best):
            self.stage_best, self.since_improvement = value, 0
        else:
            self.since_improvement += 1
        if self.patience is not None and self.since_improvement >= self.patience:
            logger.info(
                "[%s] early stopping at step %d: validation %s did not improve on %.4f for %d evaluation(s)",
                self.stage_name,
                state.global_step,
                self.selection.metric,
                self.stage_best,
                self.since_improvement,
            )
            self.stopped_early_at = state.global_step
            control.should_training_stop = True
        return control


__all__ = ["BEST_MODEL_FILE", "Evaluation", "ModelSelection", "SelectionCallback", "stage_patience_state"]
