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
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from transformers import AutoImageProcessor, TrainingArguments, set_seed

from ..image_processing_hftransfer import TransferImageProcessor
from ..modeling_hftransfer import TransferForImageClassification
from ..recipes import Recipe, StageArguments
from .feature_cache import load_or_compute_features
from .freezing import apply_stage_trainable, count_parameters
from .trainer import (
    RankChecksumCallback,
    StageCheckpointCallback,
    TransferTrainer,
    complete_checkpoints,
    write_json_atomic,
)

logger = logging.getLogger(__name__)

STAGE_COMPLETE = "stage_complete.json"

# `data.augmentation` presets, as `hftransfer.data.AugmentationConfig` keyword arguments; "none" is deterministic.
AUGMENTATION_PRESETS: dict[str, dict[str, Any] | None] = {
    "none": None,
    "light": {"crop_scale": (0.8, 1.0), "horizontal_flip": 0.5, "brightness": 0.1, "contrast": 0.1, "saturation": 0.0},
    "strong": {
        "crop_scale": (0.5, 1.0),
        "horizontal_flip": 0.5,
        "brightness": 0.3,
        "contrast": 0.3,
        "saturation": 0.3,
    },
}


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


def _build_model(
    recipe: Recipe, id2label: dict[int, str]
) -> tuple[TransferForImageClassification, TransferImageProcessor]:
    model_args = recipe.model
    label2id = {name: idx for idx, name in id2label.items()}
    if model_args.init_from:
        # Continue from a trained hftransfer model (local folder or Hub repo): its head must know these labels.
        model = TransferForImageClassification.from_pretrained(model_args.init_from)
        processor = AutoImageProcessor.from_pretrained(model_args.init_from)
        if {int(k): v for k, v in model.config.id2label.items()} != id2label:
            raise ValueError(
                f"model.init_from={model_args.init_from!r} predicts labels {model.config.id2label}, but the dataset "
                f"has {id2label}: fine-tune a new head instead (unset init_from) or use matching data."
            )
        return model, processor
    from ..weights import create_model

    config_kwargs = {
        "backbone": model_args.backbone,
        "image_size": model_args.image_size,
        "head": model_args.head,
        "pooling": model_args.pooling,
        "hidden_sizes": model_args.hidden_sizes,
        "activation": model_args.activation,
        "dropout": model_args.dropout,
        "fusion_stages": model_args.fusion_stages,
        "extra_features_dim": len(recipe.data.extra_feature_columns),
        "num_labels": len(id2label),
        "id2label": id2label,
        "label2id": label2id,
    }
    model = create_model(backbone_weights=model_args.backbone_weights, **config_kwargs)
    processor = TransferImageProcessor.from_transfer_config(model.config, resize_mode=model_args.resize_mode)
    return model, processor


def _training_arguments(
    recipe: Recipe, stage: StageArguments, stage_dir: Path, cached: bool, evaluation_only: bool = False
) -> TrainingArguments:
    train = recipe.training
    return TrainingArguments(
        output_dir=str(stage_dir),
        num_train_epochs=stage.epochs,
        max_steps=stage.max_steps,
        learning_rate=stage.learning_rate,
        lr_scheduler_type=stage.lr_scheduler_type,
        warmup_steps=stage.warmup_ratio,
        weight_decay=stage.weight_decay,
        optim=stage.optimizer,
        per_device_train_batch_size=train.per_device_train_batch_size,
        per_device_eval_batch_size=train.per_device_eval_batch_size,
        bf16=train.precision == "bf16",
        fp16=train.precision == "fp16",
        seed=train.seed,
        data_seed=train.seed,
        logging_steps=train.logging_steps,
        logging_first_step=True,
        eval_strategy="no" if evaluation_only else train.eval_strategy,
        save_strategy="no" if evaluation_only else train.save_strategy,
        save_steps=train.save_steps,
        save_total_limit=train.save_total_limit,
        report_to=train.report_to,
        # Cached features are in-memory tensors: worker processes would only add start-up cost.
        dataloader_num_workers=0 if cached else train.dataloader_num_workers,
        torch_compile=train.torch_compile,
        # On a machine without GPU, `use_cpu` is what makes accelerate set up multi-process CPU (gloo) DDP.
        use_cpu=train.use_cpu or not torch.cuda.is_available(),
        remove_unused_columns=False,
        label_names=["labels"],
        ddp_find_unused_parameters=False,
        dataloader_pin_memory=torch.cuda.is_available(),
        disable_tqdm=False,
    )


class _Ranks:
    """Who is who in a (possibly) multi-process run, from the launcher's environment and torch.distributed.

    Not accelerate's `PartialState`: every `TrainingArguments` resets and rebuilds that shared state, so a reference
    held across stages cannot be trusted.
    """

    @property
    def rank(self) -> int:
        return dist.get_rank() if dist.is_available() and dist.is_initialized() else int(os.environ.get("RANK", "0"))

    @property
    def world_size(self) -> int:
        if dist.is_available() and dist.is_initialized():
            return dist.get_world_size()
        return int(os.environ.get("WORLD_SIZE", "1"))

    @property
    def is_main_process(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if dist.is_available() and dist.is_initialized():
            dist.barrier()

    @contextlib.contextmanager
    def main_process_first(self):
        """The main process runs the block first (e.g. writes a cache); the others then run it (and read it)."""
        if not self.is_main_process:
            self.barrier()
        yield
        if self.is_main_process:
            self.barrier()


class StagedFineTuner:
    """Runs a [`Recipe`]: data, model, then each stage with its own freeze plan, optimizer and Trainer.

    Args:
        recipe ([`Recipe`]): What to train and how.
        resume (`bool`, *optional*, defaults to `False`):
            Continue an interrupted run in the same `output_dir`: finished stages are skipped (their final weights
            reloaded) and the current stage resumes from its latest complete checkpoint, with optimizer, scheduler
            and RNG state.
    """

    def __init__(self, recipe: Recipe, resume: bool = False):
        self.recipe = recipe
        self.resume = resume
        self.ranks = _Ranks()
        self.output_dir = Path(recipe.training.output_dir)

    # --- data -------------------------------------------------------------------------------------------------
    def _load_data(self):
        from ..data import load_image_classification_dataset

        data_args = self.recipe.data
        data = load_image_classification_dataset(
            data_args.dataset,
            image_column=data_args.image_column,
            label_column=data_args.label_column,
            validation_split=data_args.validation_split,
            seed=self.recipe.training.seed,
            on_bad_image=data_args.on_bad_image,
            extra_feature_columns=tuple(data_args.extra_feature_columns),
        )
        splits = data.splits
        for split, limit in (("train", data_args.max_train_samples), ("validation", data_args.max_eval_samples)):
            if limit is not None and len(splits[split]) > limit:
                splits[split] = splits[split].shuffle(seed=self.recipe.training.seed).select(range(limit))
        test_split = data_args.test_split if data_args.test_split in splits else None
        if (
            test_split
            and data_args.max_eval_samples is not None
            and len(splits[test_split]) > data_args.max_eval_samples
        ):
            splits[test_split] = splits[test_split].select(range(data_args.max_eval_samples))
        return data, test_split

    # --- one stage --------------------------------------------------------------------------------------------
    def _datasets_for_stage(self, stage: StageArguments, use_cache: bool, device: torch.device):
        if not use_cache:
            return (
                self.data.splits["train"].with_transform(self.train_transform),
                self.data.splits["validation"].with_transform(self.eval_transform),
                self.collator,
            )
        cached = {}
        for split in ("train", "validation"):
            with self.ranks.main_process_first():
                dataset, path, computed = load_or_compute_features(
                    self.model,
                    self.processor,
                    self.data.splits[split].with_transform(self.eval_transform),
                    self.data.splits[split]._fingerprint,
                    self.collator,
                    batch_size=self.recipe.training.per_device_eval_batch_size,
                    num_workers=self.recipe.training.dataloader_num_workers,
                    device=device,
                    cache_dir=self.recipe.training.feature_cache_dir,
                    description=f"[{stage.name}] caching {split} backbone features",
                )
            logger.info(
                "Stage %s: %s features %s %s", stage.name, split, "computed into" if computed else "loaded from", path
            )
            cached[split] = dataset
        return cached["train"], cached["validation"], None

    def _run_stage(self, index: int, stage: StageArguments) -> dict[str, Any]:
        stage_dir = _stage_dir(self.output_dir, index, stage)
        apply_stage_trainable(self.model, stage)
        use_cache = stage.trainable == "head" and stage.cache_features and self.train_transform.deterministic
        if stage.trainable == "head" and stage.cache_features and not use_cache:
            logger.warning(
                "Stage %s: not caching backbone features because data.augmentation=%r makes the training transforms "
                "random; the frozen backbone is recomputed every epoch.",
                stage.name,
                self.recipe.data.augmentation,
            )
        # Building the arguments sets up the process group (multi-process runs) that the cache step synchronises on.
        args = _training_arguments(self.recipe, stage, stage_dir, cached=use_cache)
        train_dataset, eval_dataset, collator = self._datasets_for_stage(stage, use_cache, args.device)
        if self.recipe.training.channels_last:
            self.model.to(memory_format=torch.channels_last)
        callbacks = [StageCheckpointCallback(index, stage.name)]
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
        )
        checkpoints = complete_checkpoints(stage_dir) if self.resume else []
        if checkpoints:
            logger.info("Stage %s: resuming from %s", stage.name, checkpoints[-1])
        started = time.perf_counter()
        trainer.train(resume_from_checkpoint=str(checkpoints[-1]) if checkpoints else None)
        wall_time = time.perf_counter() - started
        validation = self._evaluate(
            trainer, eval_dataset, f"confusion_matrix_{stage.name}.png", f"{stage.name}: validation"
        )
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
            "lr_scheduler_type": stage.lr_scheduler_type,
            "warmup_ratio": stage.warmup_ratio,
            "optimizer": stage.optimizer,
            "weight_decay": stage.weight_decay,
            "used_feature_cache": use_cache,
            "wall_time_s": round(wall_time, 2),
            "validation": validation,
            "log_history": trainer.state.log_history,
        }
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
            model.save_pretrained(tmp)
            if with_processor:
                self.processor.save_pretrained(tmp)
            for item in Path(tmp).iterdir():
                os.replace(item, target / item.name)

    def _check_output_dir(self) -> None:
        stages_dir = self.output_dir / "stages"
        if not self.resume and stages_dir.is_dir() and any(stages_dir.iterdir()):
            raise FileExistsError(
                f"{self.output_dir} already holds a training run. Pass --resume to continue it, or choose another "
                f"training.output_dir (nothing was overwritten)."
            )

    # --- the run ----------------------------------------------------------------------------------------------
    def run(self) -> TrainResult:
        recipe = self.recipe
        self._check_output_dir()
        set_seed(recipe.training.seed)
        started = time.perf_counter()
        from ..data import ImageClassificationCollator, build_transforms

        self.data, test_split = self._load_data()
        self.id2label = {int(k): v for k, v in self.data.id2label.items()}
        # Head initialisation is seeded too, so a resumed or repeated run starts from the same weights.
        set_seed(recipe.training.seed)
        self.model, self.processor = _build_model(recipe, self.id2label)
        self.eval_transform = build_transforms(self.processor)
        self.train_transform = build_transforms(
            self.processor, augmentation=AUGMENTATION_PRESETS[recipe.data.augmentation]
        )
        self.collator = ImageClassificationCollator(extra_feature_columns=tuple(recipe.data.extra_feature_columns))
        if self.ranks.is_main_process:
            self.output_dir.mkdir(parents=True, exist_ok=True)
            (self.output_dir / "recipe.yaml").write_text(recipe.to_yaml())

        stage_records = []
        for index, stage in enumerate(recipe.stages):
            stage_dir = _stage_dir(self.output_dir, index, stage)
            done = stage_dir / STAGE_COMPLETE
            if self.resume and done.is_file() and (stage_dir / "final" / "model.safetensors").is_file():
                logger.info("Stage %s already complete: loading its final weights", stage.name)
                from safetensors.torch import load_file

                self.model.load_state_dict(load_file(str(stage_dir / "final" / "model.safetensors")))
                stage_records.append(json.loads(done.read_text()))
                continue
            set_seed(recipe.training.seed + index)
            stage_records.append(self._run_stage(index, stage))

        # Final evaluation on validation and test, with the model as it ends the last stage.
        final_trainer = TransferTrainer(
            model=self.model,
            args=_training_arguments(
                recipe, recipe.stages[-1], self.output_dir / "stages", cached=False, evaluation_only=True
            ),
            data_collator=self.collator,
        )
        final = {"validation": stage_records[-1]["validation"]}
        if test_split:
            test_dataset = self.data.splits[test_split].with_transform(self.eval_transform)
            final[test_split] = self._evaluate(
                final_trainer, test_dataset, "confusion_matrix.png", f"{test_split} split"
            )
        elif self.ranks.is_main_process:
            last_matrix = self.output_dir / f"confusion_matrix_{recipe.stages[-1].name}.png"
            shutil.copyfile(last_matrix, self.output_dir / "confusion_matrix.png")

        metrics = {
            "recipe_name": recipe.name,
            "dataset": {
                "name": str(recipe.data.dataset),
                "description": str(self.data.source),
                "hub_id": getattr(self.data, "hub_id", None),
                **{f"num_{split}": len(ds) for split, ds in self.data.splits.items()},
            },
            "id2label": {str(k): v for k, v in self.id2label.items()},
            "final": final,
            "stages": [{k: v for k, v in r.items() if k != "log_history"} for r in stage_records],
            "training": {
                "per_device_train_batch_size": recipe.training.per_device_train_batch_size,
                "world_size": self.ranks.world_size,
                "precision": recipe.training.precision,
                "seed": recipe.training.seed,
                "image_size": self.model.config.image_size,
            },
            "hardware": _hardware(),
            "wall_time_s": round(time.perf_counter() - started, 2),
            "backbone_weights": self.model.config.backbone_weights,
            "versions": _versions(),
        }
        if self.ranks.is_main_process:
            self._write_outputs(metrics, stage_records)
        self.ranks.barrier()
        return TrainResult(output_dir=self.output_dir, metrics=metrics, model=self.model)

    def _write_outputs(self, metrics: dict[str, Any], stage_records: list[dict[str, Any]]) -> None:
        from ..plots import plot_training_curves

        self._save_pretrained_atomic(self.model, self.output_dir)
        history = [{"stage": r["name"], "epochs": r["epochs"], "log_history": r["log_history"]} for r in stage_records]
        write_json_atomic(self.output_dir / "history.json", history)
        write_json_atomic(self.output_dir / "metrics.json", metrics)
        plot_training_curves(history, self.output_dir / "training_curves.png")
        from ..cards import render_model_card

        hub = self.recipe.hub
        render_model_card(self.output_dir, repo_id=hub.repo_id)
        if hub.push_to_hub:
            from ..hub import push_to_hub

            push_to_hub(self.output_dir, repo_id=hub.repo_id, private=hub.private, revision=hub.revision)
        logger.info("hftransfer: wrote outputs to %s", self.output_dir)


def train(recipe: Recipe, resume: bool = False) -> TrainResult:
    """Run a recipe end to end (see [`StagedFineTuner`]); works the same under `accelerate launch`."""
    return StagedFineTuner(recipe, resume=resume).run()


__all__ = ["StagedFineTuner", "TrainResult", "train"]
