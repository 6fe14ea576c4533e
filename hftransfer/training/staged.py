"""Staged fine-tuning: run a recipe's stages, one fresh `TransferTrainer` per stage, and write the results.

Output layout (`training.output_dir`), the contract with `hftransfer.cards` and `hftransfer.hub`:

```
config.json, model.safetensors, preprocessor_config.json, *_hftransfer.py   final model (loads anywhere)
recipe.yaml, metrics.json, history.json                                      what ran and what it scored
training_curves.png, confusion_matrix.png, confusion_matrix_<stage>.png      pictures for the model card
README.md                                                                    generated model card
stages/<NN>-<name>/checkpoint-<step>/                                        Trainer checkpoints of a stage
stages/<NN>-<name>/final/, stage_complete.json                               a finished stage (for --resume)
```
Only the main process writes there.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import platform
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import TrainingArguments, set_seed

from .._io import replace_with_umask_mode, write_text_atomic
from ..building import build_model_and_processor, load_recipe_data
from ..constants import (
    CONFUSION_MATRIX_FILE,
    HISTORY_FILE,
    METRICS_FILE,
    RECIPE_FILE,
    STAGE_COMPLETE_FILE,
    TRAINING_CURVES_FILE,
    WEIGHTS_FILE,
)
from ..data import build_transforms
from ..metrics import training_warnings
from ..modeling_hftransfer import TransferForImageClassification
from ..recipes import Recipe, RecipeError, StageArguments, recipe_changes
from .distributed import Ranks
from .feature_cache import image_content_fingerprint
from .freezing import apply_stage_trainable, count_parameters
from .run_lock import RunLock
from .selection import BEST_MODEL_FILE, ModelSelection, SelectionCallback
from .stage_inputs import plan_stage, stage_datasets
from .trainer import (
    RankChecksumCallback,
    StageCheckpointCallback,
    TransferTrainer,
    check_finite_weights,
    complete_checkpoints,
    quiet_progress_bars,
    write_json_atomic,
)

logger = logging.getLogger(__name__)

STAGE_COMPLETE = STAGE_COMPLETE_FILE  # the name older code imported


@dataclass
class TrainResult:
    """What `train` produced: the output folder, the metrics written to `metrics.json`, and the trained model."""

    output_dir: Path
    metrics: dict[str, Any]
    model: TransferForImageClassification


def _stage_dir(output_dir: Path, index: int, stage: StageArguments) -> Path:
    return output_dir / "stages" / f"{index:02d}-{stage.name}"


def _hardware() -> str:
    if torch.cuda.is_available():
        return f"{torch.cuda.device_count()}x {torch.cuda.get_device_name(0)}"
    return f"{os.cpu_count()}x CPU ({platform.machine()}, {platform.processor() or 'unknown'})"


def _versions() -> dict[str, str]:
    import accelerate
    import datasets
    import timm
    import transformers

    from .. import __version__

    return {
        "hftransfer": __version__,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "timm": timm.__version__,
        "datasets": datasets.__version__,
        "accelerate": accelerate.__version__,
    }


def _training_arguments(
    recipe: Recipe, stage: StageArguments, stage_dir: Path, cached: bool, evaluation_only: bool = False
) -> TrainingArguments:
    """The stage's `transformers.TrainingArguments`.

    Precedence, lowest first: hftransfer's `training:` keys; transformers fields passed through under `training:`;
    the stage's own keys (epochs, learning_rate, optimizer, ... -- a pass-through key cannot name these); transformers
    fields passed through in the stage; and what hftransfer needs whatever the recipe says (the stage's folder, the
    columns its collator reads, no data workers for in-memory cached features, even batches for mixup).
    """
    train = recipe.training
    kwargs: dict[str, Any] = dict(
        per_device_train_batch_size=train.per_device_train_batch_size,
        per_device_eval_batch_size=train.per_device_eval_batch_size,
        bf16=train.precision == "bf16",
        fp16=train.precision == "fp16",
        seed=train.seed,
        data_seed=train.seed,
        logging_steps=train.logging_steps,
        logging_first_step=True,
        eval_strategy=train.eval_strategy,
        save_strategy=train.save_strategy,
        save_steps=train.save_steps,
        save_total_limit=train.save_total_limit,
        report_to=train.report_to,
        dataloader_num_workers=train.dataloader_num_workers,
        torch_compile=train.torch_compile,
        use_cpu=train.use_cpu,
        ddp_find_unused_parameters=False,
        dataloader_pin_memory=torch.cuda.is_available(),
        disable_tqdm=False,
    )
    kwargs.update(train.trainer_args)
    kwargs.update(
        num_train_epochs=stage.epochs,
        max_steps=stage.max_steps,
        learning_rate=stage.learning_rate,
        lr_scheduler_type=stage.lr_scheduler_type,
        # transformers reads a float warmup_steps < 1 as a fraction of the steps (the recipe checks 0 <= ratio < 1).
        warmup_steps=stage.warmup_ratio,
        weight_decay=stage.weight_decay,
        optim=stage.optimizer,
    )
    kwargs.update(stage.trainer_args)
    kwargs.update(
        output_dir=str(stage_dir),
        remove_unused_columns=False,
        label_names=["labels"],
        # On a machine without GPU, `use_cpu` is what makes accelerate set up multi-process CPU (gloo) DDP.
        use_cpu=kwargs["use_cpu"] or not torch.cuda.is_available(),
    )
    if cached:  # cached features are in-memory tensors: worker processes would only add start-up cost
        kwargs.update(dataloader_num_workers=0, dataloader_persistent_workers=False, dataloader_prefetch_factor=None)
    if evaluation_only:
        kwargs.update(eval_strategy="no", save_strategy="no")
    return TrainingArguments(**kwargs)


class StagedFineTuner:
    """Runs a [`Recipe`]: data, model, then each stage with its own freeze plan, optimizer and Trainer.

    Args:
        recipe ([`Recipe`]): What to train and how.
        resume (`bool`, *optional*, defaults to `False`):
            Continue an interrupted run in the same `output_dir`: finished stages are skipped (their final weights
            reloaded) and the current stage resumes from its latest complete checkpoint, with optimizer, scheduler
            and RNG state. The recipe must train as the one that ran (`output_dir/recipe.yaml`): keys that change
            results are refused unless listed in `allow_recipe_changes`; logging, reporting, loader workers, Hub
            settings and the description may change.
        allow_recipe_changes (`Sequence[str]`, *optional*):
            Recipe keys (`training.seed`, `stages.finetune.epochs`; `fnmatch` patterns, `*` for all) a resumed run may
            change although they change results.

    While it runs, the main process holds an exclusive lock on `output_dir` (see [`RunLock`]).
    """

    def __init__(self, recipe: Recipe, resume: bool = False, allow_recipe_changes: Sequence[str] = ()):
        self.recipe = recipe
        self.resume = resume
        self.allow_recipe_changes = tuple(allow_recipe_changes)
        self.ranks = Ranks()
        self.output_dir = Path(recipe.training.output_dir)

    # --- data -------------------------------------------------------------------------------------------------
    def _load_data(self):
        return load_recipe_data(self.recipe)

    # --- one stage --------------------------------------------------------------------------------------------
    def split_fingerprint(self, split: str) -> str:
        """What identifies a split's rows and image content (part of the feature-cache key), computed once per run:
        the dataset fingerprint and a hash of its image bytes; for a streamed train split, the stream's fingerprint."""
        hashes = self.__dict__.setdefault("_split_fingerprints", {})
        if split not in hashes:
            if split == "train" and self.recipe.data.streaming:
                hashes[split] = f"stream:{self.data.fingerprint}"
            else:
                dataset = self.data.splits[split]
                hashes[split] = f"{dataset._fingerprint}|images={image_content_fingerprint(dataset)}"
        return hashes[split]

    def _train_rows(self) -> int | None:
        """Rows of the train split (a streamed one: as its source says, or None when unknown)."""
        if self.recipe.data.streaming:
            return self.data.num_train_rows
        return len(self.data.splits["train"])

    def _run_stage(self, index: int, stage: StageArguments) -> dict[str, Any]:
        stage_dir = _stage_dir(self.output_dir, index, stage)
        if self.selection is not None and self.selection.best is not None:
            # Each stage starts from the best model so far (LP-FT: fine-tune from the best head, not the last).
            self.selection.load_into(self.model)
            logger.info(
                "Stage %s starts from the best model so far (%s, epoch %s: validation %s %.4f)",
                stage.name,
                self.selection.best.stage,
                self.selection.best.epoch,
                self.selection.best.metric,
                self.selection.best.value,
            )
        apply_stage_trainable(self.model, stage)
        splits = self.data.splits
        plan = plan_stage(
            self.recipe,
            stage,
            self.model,
            self.processor,
            rows=(self._train_rows() or 0) + len(splits["validation"]),
            train_rows=self._train_rows() or 0,
            world_size=self.ranks.world_size,
            later_stages=tuple(self.recipe.stages[index + 1 :]),
        )
        augmentation = plan.augmentation
        # Building the arguments sets up the process group (multi-process runs) that the cache step synchronises on.
        args = _training_arguments(self.recipe, stage, stage_dir, cached=plan.cached)
        started = time.perf_counter()  # the stage's wall time includes computing its feature cache
        train_dataset, eval_dataset, collator, cache_report = stage_datasets(self, stage, plan, args.device)
        if self.recipe.training.channels_last:
            self.model.to(memory_format=torch.channels_last)
        callbacks = [StageCheckpointCallback(index, stage.name)]
        selection_callback = None
        if self.selection is not None:
            selection_callback = SelectionCallback(self.selection, index, stage.name, stage.early_stopping_patience)
            callbacks.append(selection_callback)
        if os.environ.get("HFTRANSFER_RANK_CHECKSUM_DIR"):
            callbacks.append(RankChecksumCallback(os.environ["HFTRANSFER_RANK_CHECKSUM_DIR"], stage.name))
        from ..metrics import make_compute_metrics

        trainer = TransferTrainer(
            model=self.model,
            args=args,
            train_dataset=train_dataset,
            eval_dataset=eval_dataset,
            data_collator=collator,
            compute_metrics=make_compute_metrics(self.id2label),
            callbacks=callbacks,
            backbone_lr_scale=stage.backbone_lr_scale,
            layer_lr_decay=stage.layer_lr_decay,
            label_smoothing=stage.label_smoothing,
            mixup_alpha=stage.mixup_alpha,
            cutmix_alpha=stage.cutmix_alpha,
            l2sp_strength=stage.l2sp_strength,
            l2sp_reference=self.pretrained_backbone if stage.l2sp_strength > 0 else None,
            stage_name=stage.name,
        )
        checkpoints = complete_checkpoints(stage_dir) if self.resume else []
        if checkpoints:
            logger.info("Stage %s: resuming from %s", stage.name, checkpoints[-1])
        logger.info(
            "Stage %s: training on %s train images (%s), evaluating on %d validation images",
            stage.name,
            len(train_dataset) if hasattr(train_dataset, "__len__") else "streamed",
            {True: "cached features", False: f"augmentation {augmentation}"}[plan.use_feature_cache]
            if plan.prefix_stage is None
            else f"cached frozen prefix, backbone stages 0-{plan.prefix_stage}",
            len(eval_dataset),
        )
        trainer.train(resume_from_checkpoint=str(checkpoints[-1]) if checkpoints else None)
        wall_time = time.perf_counter() - started
        validation = self._evaluate(
            trainer, eval_dataset, f"confusion_matrix_{stage.name}.png", f"{stage.name}: validation"
        )
        logger.info(
            "Stage %s done: validation accuracy %.4f, loss %.4f (%d images)",
            stage.name,
            validation["accuracy"],
            validation["loss"],
            validation["num_samples"],
        )
        stage_warnings = training_warnings(validation, self.id2label, f"stage {stage.name}")
        for warning in stage_warnings:
            logger.warning(warning)
        record = {
            "name": stage.name,
            "index": index,
            "trainable": stage.trainable if stage.trainable != "last_k" else f"last {stage.last_k_blocks} blocks",
            "trainable_parameters": count_parameters(self.model, trainable_only=True),
            "total_parameters": count_parameters(self.model),
            "epochs": stage.epochs,
            "max_steps": stage.max_steps,
            "global_steps": trainer.state.global_step,
            "learning_rate": stage.learning_rate,
            "backbone_lr_scale": stage.backbone_lr_scale,
            "layer_lr_decay": stage.layer_lr_decay,
            "lr_scheduler_type": stage.lr_scheduler_type,
            "warmup_ratio": stage.warmup_ratio,
            "optimizer": stage.optimizer,
            "weight_decay": stage.weight_decay,
            "augmentation": augmentation,
            "regularization": {
                key: getattr(stage, key)
                for key in ("label_smoothing", "mixup_alpha", "cutmix_alpha", "l2sp_strength")
                if getattr(stage, key)
            },
            "trainer_args": dict(stage.trainer_args),
            "early_stopping_patience": stage.early_stopping_patience,
            "stopped_early_at_step": None if selection_callback is None else selection_callback.stopped_early_at,
            "used_feature_cache": plan.use_feature_cache,
            "used_prefix_cache": plan.prefix_stage is not None,
            "prefix_cache": plan.prefix_decision or None,
            "feature_cache": cache_report,
            "wall_time_s": round(wall_time, 2),
            "validation": validation,
            "warnings": stage_warnings,
            "log_history": trainer.state.log_history,
        }
        check_finite_weights(self.model, f"stage {stage.name}'s final model ({stage_dir / 'final'})")
        if self.ranks.is_main_process:
            self._save_pretrained_atomic(self.model, stage_dir / "final", with_processor=False)
            write_json_atomic(stage_dir / STAGE_COMPLETE, record)
        self.ranks.barrier()
        return record

    def _evaluate(self, trainer, dataset, png_name: str | None, title: str) -> dict[str, Any]:
        """Full evaluation with per-class accuracy and a confusion matrix (JSON in metrics, PNG in output_dir)."""
        from ..metrics import compute_classification_metrics

        prediction = trainer.predict(dataset, metric_key_prefix="eval")
        metrics = compute_classification_metrics(
            prediction.predictions.argmax(-1), prediction.label_ids, self.id2label
        )
        metrics["loss"] = float(prediction.metrics.get("eval_loss", float("nan")))
        if png_name and self.ranks.is_main_process:
            from ..plots import plot_confusion_matrix

            labels = [self.id2label[i] for i in sorted(self.id2label)]
            plot_confusion_matrix(metrics["confusion_matrix"], labels, self.output_dir / png_name, title=title)
        return metrics

    # --- writing ----------------------------------------------------------------------------------------------
    def _save_pretrained_atomic(self, model, target: Path, with_processor: bool = True) -> None:
        """save_pretrained into a temp folder, then move each file into place (no half-written model)."""
        target.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=target.parent, prefix=f".{target.name}.") as tmp:
            with quiet_progress_bars():
                model.save_pretrained(tmp)
            if with_processor:
                self.processor.save_pretrained(tmp)
            for item in Path(tmp).iterdir():
                # safetensors writes model.safetensors through a 0600 temporary file: give it the umask's mode.
                replace_with_umask_mode(item, target / item.name)

    def _check_output_dir(self) -> None:
        stages_dir = self.output_dir / "stages"
        if not self.resume and stages_dir.is_dir() and any(stages_dir.iterdir()):
            raise FileExistsError(
                f"{self.output_dir} already holds a training run. Pass --resume to continue it, or choose another "
                f"training.output_dir (nothing was overwritten)."
            )

    # --- checks before anything runs -------------------------------------------------------------------------
    def _preflight(self) -> None:
        """Checks of the recipe and the launch that can refuse the run before anything is loaded or written."""
        warning = launch_world_size_warning(_launcher_command_line(), self.ranks.world_size)
        if warning and self.ranks.is_main_process:
            logger.warning(warning)
        check_report_to(self.recipe.training.report_to)
        if self.recipe.model.init_from:
            reconcile_init_from(self.recipe)

    def _check_resume_recipe(self) -> None:
        """--resume continues the run described by output_dir/recipe.yaml: a recipe that trains differently is refused."""
        ran_path = self.output_dir / RECIPE_FILE
        if not self.resume or not ran_path.is_file():
            return
        from .._io import YAMLLimitError, load_yaml

        try:
            ran = load_yaml(ran_path.read_bytes(), where=str(ran_path))
        except (YAMLLimitError, ValueError, OSError) as err:
            raise RecipeError(f"--resume: cannot read the recipe that ran, {ran_path} ({err}).") from None
        if not isinstance(ran, dict):
            raise RecipeError(f"--resume: {ran_path} is not a recipe mapping; cannot tell what ran.")
        changes = recipe_changes(ran, self.recipe, self.allow_recipe_changes)
        if changes:
            listed = "; ".join(f"{key}: {old!r} -> {new!r}" for key, old, new in changes)
            keys = ",".join(key for key, _, _ in changes)
            raise RecipeError(
                f"--resume: the recipe differs from the one that ran in {self.output_dir} (its recipe.yaml) in "
                f"{len(changes)} key{'s' if len(changes) > 1 else ''} that change what is trained: {listed}. Resume "
                f"with the recipe that ran, train into another training.output_dir, or accept the changes with "
                f"--allow-recipe-changes {keys}. Nothing was changed."
            )

    # --- the run ----------------------------------------------------------------------------------------------
    def run(self) -> TrainResult:
        self._preflight()
        # Rank 0 owns output_dir for the whole run; the other ranks of the same launch share it.
        lock = RunLock(self.output_dir) if self.ranks.is_main_process else contextlib.nullcontext()
        with lock:
            return self._run()

    def _run(self) -> TrainResult:
        recipe = self.recipe
        # Under the lock, before anything in output_dir is written: is it free, or the same run (--resume)?
        self._check_output_dir()
        self._check_resume_recipe()
        if self.ranks.is_main_process:
            self.output_dir.mkdir(parents=True, exist_ok=True)
            write_text_atomic(self.output_dir / RECIPE_FILE, recipe.to_yaml())
        set_seed(recipe.training.seed)
        started = time.perf_counter()
        from ..data import ImageClassificationCollator

        self.data, test_split = self._load_data()
        self.id2label = {int(k): v for k, v in self.data.id2label.items()}
        self._log_splits(test_split)
        # Head initialisation is seeded too, so a resumed or repeated run starts from the same weights.
        set_seed(recipe.training.seed)
        self.model, self.processor = build_model_and_processor(recipe, self.id2label)
        run_warnings = _weights_warnings(self.model)
        for warning in run_warnings:
            logger.warning(warning)
        # L2-SP pulls the backbone towards these pretrained values (a rebuilt model gives the same ones on resume).
        self.pretrained_backbone = (
            {
                name: param.detach().clone()
                for name, param in self.model.named_parameters()
                if self.model.backbone_stage_of(name) is not None
            }
            if any(stage.l2sp_strength > 0 for stage in recipe.stages)
            else {}
        )
        self.eval_transform = build_transforms(self.processor)
        self.collator = ImageClassificationCollator(extra_feature_columns=tuple(recipe.data.extra_feature_columns))
        self.selection = self._model_selection()

        stage_records = []
        for index, stage in enumerate(recipe.stages):
            stage_dir = _stage_dir(self.output_dir, index, stage)
            done = stage_dir / STAGE_COMPLETE
            if self.resume and done.is_file() and (stage_dir / "final" / WEIGHTS_FILE).is_file():
                logger.info("Stage %s already complete: loading its final weights", stage.name)
                from safetensors.torch import load_file

                self.model.load_state_dict(load_file(str(stage_dir / "final" / WEIGHTS_FILE)))
                stage_records.append(json.loads(done.read_text()))
                continue
            set_seed(recipe.training.seed + index)
            stage_records.append(self._run_stage(index, stage))

        # The final model: the best evaluation across stages, or the model as the last stage ends.
        selected = self._select_final_model(stage_records)
        final_trainer = TransferTrainer(
            model=self.model,
            args=_training_arguments(
                recipe, recipe.stages[-1], self.output_dir / "stages", cached=False, evaluation_only=True
            ),
            data_collator=self.collator,
        )
        validation_png = None if test_split else CONFUSION_MATRIX_FILE
        if selected["from_best"] or validation_png:
            validation_dataset = self.data.splits["validation"].with_transform(self.eval_transform)
            validation = self._evaluate(final_trainer, validation_dataset, validation_png, "validation split")
        else:
            validation = stage_records[-1]["validation"]
        final = {"validation": validation}
        if test_split:
            test_dataset = self.data.splits[test_split].with_transform(self.eval_transform)
            final[test_split] = self._evaluate(
                final_trainer, test_dataset, CONFUSION_MATRIX_FILE, f"{test_split} split"
            )
        for split, split_metrics in final.items():
            logger.info(
                "Final model (%s): %s accuracy %.4f, macro F1 %.4f on %d images",
                selected["reason"],
                split,
                split_metrics["accuracy"],
                split_metrics["f1"],
                split_metrics["num_samples"],
            )
        run_warnings += training_warnings(validation, self.id2label, "the final model")
        for warning in run_warnings:
            logger.warning(warning)

        metrics = {
            "recipe_name": recipe.name,
            "dataset": {
                "name": str(recipe.data.dataset),
                "description": str(self.data.source),
                "hub_id": getattr(self.data, "hub_id", None),
                **{f"num_{split}": len(ds) for split, ds in self.data.splits.items()},
                **({"num_train": self._train_rows(), "streaming": True} if self.recipe.data.streaming else {}),
            },
            "id2label": {str(k): v for k, v in self.id2label.items()},
            "evaluation_split": test_split or "validation",
            "selected": {k: v for k, v in selected.items() if k != "from_best"},
            "warnings": run_warnings,
            "final": final,
            "stages": [{k: v for k, v in r.items() if k != "log_history"} for r in stage_records],
            "training": {
                "per_device_train_batch_size": recipe.training.per_device_train_batch_size,
                "world_size": self.ranks.world_size,
                "precision": recipe.training.precision,
                "seed": recipe.training.seed,
                "image_size": self.model.config.image_size,
                "metric_for_best_model": recipe.training.metric_for_best_model,
                "model_selection": recipe.training.model_selection,
                "trainer_args": dict(recipe.training.trainer_args),
            },
            "hardware": _hardware(),
            "wall_time_s": round(time.perf_counter() - started, 2),
            "backbone_weights": self.model.config.backbone_weights,
            "versions": _versions(),
        }
        check_finite_weights(self.model, f"the final model ({self.output_dir})")
        if self.ranks.is_main_process:
            self._write_outputs(metrics, stage_records)
        self.ranks.barrier()
        return TrainResult(output_dir=self.output_dir, metrics=metrics, model=self.model)

    def _log_splits(self, test_split: str | None) -> None:
        sizes = ", ".join(f"{split} {len(ds)}" for split, ds in self.data.splits.items())
        if self.recipe.data.streaming:
            rows = self._train_rows()
            sizes = f"train streamed ({'unknown number of' if rows is None else rows} rows), {sizes}"
        logger.info("Data %s: %s images, %d classes", self.recipe.data.dataset, sizes, len(self.id2label))
        if test_split:
            logger.info("Final scores are reported on the %r split; model selection uses 'validation'.", test_split)
        else:
            missing = (
                "No test split is set (data.test_split: null)"
                if self.recipe.data.test_split is None
                else f"The data has no {self.recipe.data.test_split!r} split"
            )
            logger.warning(
                "%s: final scores are on 'validation', the split that also selects the model, so they are "
                "optimistic. Hold out a test split for an unbiased score.",
                missing,
            )

    def _model_selection(self) -> ModelSelection | None:
        train_args = self.recipe.training
        if train_args.eval_strategy == "no":
            if train_args.model_selection == "best":
                logger.warning("training.eval_strategy='no': no evaluations to select from; the last model is kept.")
            return None
        selection = ModelSelection(
            self.output_dir / "stages" / BEST_MODEL_FILE,
            train_args.metric_for_best_model,
            write=self.ranks.is_main_process,
        )
        if self.resume and selection.restore() is not None:
            logger.info("Resuming with the best evaluation so far: %s", selection.best)
        return selection

    def _select_final_model(self, stage_records: list[dict[str, Any]]) -> dict[str, Any]:
        """Load the selected weights into `self.model`; describe the choice for metrics.json and the card."""
        metric = self.recipe.training.metric_for_best_model
        last = stage_records[-1]
        last_value = last["validation"].get(metric)
        if self.recipe.training.model_selection == "best" and self.selection is not None and self.selection.best:
            best = self.selection.best
            self.selection.load_into(self.model)
            if best.stage_index == last["index"]:
                reason = f"best validation {metric} of the last stage ({best.stage}, epoch {best.epoch})"
            else:
                later = [r["name"] for r in stage_records if r["index"] > best.stage_index]
                reason = (
                    f"stage {', '.join(later)} did not improve on stage {best.stage}'s best validation {metric}; "
                    f"the stage {best.stage} model (epoch {best.epoch}) was kept"
                )
            return {
                "stage": best.stage,
                "stage_index": best.stage_index,
                "epoch": best.epoch,
                "step": best.step,
                "metric": metric,
                "value": best.value,
                "policy": "best",
                "reason": reason,
                "from_best": True,
            }
        return {
            "stage": last["name"],
            "stage_index": last["index"],
            "epoch": last["epochs"],
            "step": last["global_steps"],
            "metric": metric,
            "value": last_value,
            "policy": "last",
            "reason": f"the model as the last stage ({last['name']}) ended (model_selection: last)",
            "from_best": False,
        }

    def _write_outputs(self, metrics: dict[str, Any], stage_records: list[dict[str, Any]]) -> None:
        from ..plots import plot_training_curves

        self._save_pretrained_atomic(self.model, self.output_dir)
        history = [{"stage": r["name"], "epochs": r["epochs"], "log_history": r["log_history"]} for r in stage_records]
        write_json_atomic(self.output_dir / HISTORY_FILE, history)
        write_json_atomic(self.output_dir / METRICS_FILE, metrics)
        plot_training_curves(history, self.output_dir / TRAINING_CURVES_FILE)
        from ..cards import render_model_card

        hub = self.recipe.hub
        render_model_card(self.output_dir, repo_id=hub.repo_id)
        if hub.push_to_hub:
            from ..hub import push_to_hub

            push_to_hub(self.output_dir, repo_id=hub.repo_id, private=hub.private, revision=hub.revision)
        logger.info("hftransfer: wrote outputs to %s", self.output_dir)


def _weights_warnings(model: TransferForImageClassification) -> list[str]:
    if model.config.backbone_weights not in (None, "random"):
        return []
    warnings = [
        "backbone_weights=random: the backbone starts from random weights, so this run is not transfer learning "
        "(a from-scratch baseline)."
    ]
    if model.config.backbone.startswith("vgg") and not model.config.backbone_uses_batchnorm:
        warnings.append(
            f"{model.config.backbone} has no BatchNorm: from random weights it rarely trains with fine-tuning "
            f"settings (it tends to predict one class); use {model.config.backbone}_bn, all layers trainable, "
            "and a head-sized learning rate for a from-scratch baseline."
        )
    return warnings


def train(recipe: Recipe, resume: bool = False, allow_recipe_changes: Sequence[str] = ()) -> TrainResult:
    """Run a recipe end to end (see [`StagedFineTuner`]); works the same under `accelerate launch`."""
    return StagedFineTuner(recipe, resume=resume, allow_recipe_changes=allow_recipe_changes).run()


# --- up-front checks ------------------------------------------------------------------------------------------------

# transformers' `report_to` integrations: the module whose presence makes each available, and what to install.
_INTEGRATION_PACKAGES = {
    "azure_ml": (("azureml",), "azureml-core"),
    "comet_ml": (("comet_ml",), "comet-ml"),
    "mlflow": (("mlflow",), "mlflow"),
    "neptune": (("neptune",), "neptune"),
    "tensorboard": (("tensorboard", "tensorboardX"), "tensorboard"),
    "trackio": (("trackio",), "trackio"),
    "wandb": (("wandb",), "wandb"),
    "codecarbon": (("codecarbon",), "codecarbon"),
    "clearml": (("clearml",), "clearml"),
    "dagshub": (("dagshub",), "dagshub"),
    "flyte": (("flytekit",), "flytekit"),
    "dvclive": (("dvclive",), "dvclive"),
    "swanlab": (("swanlab",), "swanlab"),
    "kubeflow": (("kubeflow",), "kubeflow"),
}


def check_report_to(report_to: Sequence[str] | str | None) -> None:
    """Every `training.report_to` integration is known to transformers and installed; else a [`RecipeError`]."""
    import importlib.util

    try:
        from transformers.integrations.integration_utils import INTEGRATION_TO_CALLBACK

        known = set(INTEGRATION_TO_CALLBACK)
    except ImportError:  # pragma: no cover - layout of another transformers version
        known = set(_INTEGRATION_PACKAGES)
    names = [report_to] if isinstance(report_to, str) else list(report_to or [])
    for name in names:
        if name in ("none", "all"):
            continue
        if name not in known:
            import difflib

            match = difflib.get_close_matches(name, sorted(known), n=1)
            hint = f" Did you mean {match[0]!r}?" if match else ""
            raise RecipeError(
                f"training.report_to: {name!r} is not a transformers integration.{hint} Expected 'none', 'all' or "
                f"some of {', '.join(sorted(known))}."
            )
        modules, package = _INTEGRATION_PACKAGES.get(name, ((name,), name))
        if not any(importlib.util.find_spec(module) is not None for module in modules):
            raise RecipeError(
                f"training.report_to: {name!r} needs the {package!r} package, which is not installed: "
                f"pip install {package}, or remove {name!r} from training.report_to. Nothing was run."
            )


TWO_CPU_RANKS = (
    "accelerate launch --multi_gpu --num_processes 2 --num_machines 1 --mixed_precision no --dynamo_backend no "
    "-m hftransfer train ..."
)


def _launcher_command_line() -> list[str]:
    """The parent process's arguments (`accelerate launch ...`) where the OS exposes them (Linux), else []."""
    try:
        raw = Path(f"/proc/{os.getppid()}/cmdline").read_bytes()
    except OSError:
        return []
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part]


def launch_world_size_warning(launcher: Sequence[str], world_size: int) -> str | None:
    """A warning when `accelerate launch` was asked for more processes than this run has ranks, else None."""
    launcher = list(launcher)
    if not any(Path(part).name == "accelerate" for part in launcher[:2]) or "launch" not in launcher[:3]:
        return None
    asked = None
    for position, part in enumerate(launcher):
        flag, _, value = part.partition("=")
        if flag in ("--num_processes", "--num-processes"):
            value = value or (launcher[position + 1] if position + 1 < len(launcher) else "")
            asked = int(value) if value.isdigit() else None
    if asked is None or asked <= world_size:
        return None
    flags = " ".join(part for part in launcher[1:] if part.startswith("--") and "=" not in part)
    return (
        f"accelerate launch asked for {asked} processes but this run has world size {world_size} (launcher flags: "
        f"{flags}): training runs in {world_size} process{'es' if world_size > 1 else ''}. On a machine without "
        f"GPUs, --cpu --num_processes N starts one process; {asked} CPU ranks (gloo) start with: "
        + TWO_CPU_RANKS.replace("2", str(asked), 1)
    )


# Architecture keys of `model:` that a model loaded with `model.init_from` brings with it.
_INIT_FROM_KEYS = (
    "backbone",
    "backbone_weights",
    "image_size",
    "head",
    "pooling",
    "hidden_sizes",
    "activation",
    "dropout",
    "fusion_stages",
)


def reconcile_init_from(recipe: Recipe) -> None:
    """`model.init_from` keeps the loaded model's architecture: recipe keys left at their defaults take the model's
    values (so recipe.yaml and the card record what trains); keys the recipe sets differently are a [`RecipeError`].
    """
    from ..configuration_hftransfer import TransferConfig
    from ..recipes import ModelArguments

    init_from = recipe.model.init_from
    try:
        config = TransferConfig.from_pretrained(init_from)
    except (OSError, ValueError) as err:
        raise RecipeError(f"model.init_from={init_from!r} is not a loadable hftransfer model: {err}") from None
    defaults = ModelArguments()

    def plain(value):
        return list(value) if isinstance(value, tuple) else value

    conflicts, adopted = [], []
    for key in _INIT_FROM_KEYS:
        wanted, loaded = plain(getattr(recipe.model, key)), plain(getattr(config, key, None))
        if wanted == loaded:
            continue
        if wanted == plain(getattr(defaults, key)):
            adopted.append(f"{key}={loaded!r}")
            setattr(recipe.model, key, loaded)
        else:
            conflicts.append(f"model.{key}={wanted!r} (the model has {loaded!r})")
    extra = len(recipe.data.extra_feature_columns)
    if extra != config.extra_features_dim:
        conflicts.append(
            f"data.extra_feature_columns gives {extra} extra features (the model takes {config.extra_features_dim})"
        )
    if conflicts:
        raise RecipeError(
            f"model.init_from={init_from!r} continues training that model with its own architecture, but the recipe "
            f"asks for {'; '.join(conflicts)}. Remove these keys (or set the model's values), or train a new model "
            "without model.init_from."
        )
    if adopted:
        logger.info("model.init_from=%r: the recipe takes the model's %s", init_from, ", ".join(adopted))


__all__ = ["StagedFineTuner", "TrainResult", "train"]
