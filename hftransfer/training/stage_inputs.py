"""What a stage trains on: images through the whole model, cached pooled features, or a cached frozen prefix.

`plan_stage` decides, and says why in the log; `stage_datasets` builds the datasets the stage's Trainer gets.

- A head-only stage with deterministic transforms (and no mixup) trains on cached pooled features.
- A `last_k` stage with deterministic transforms can train its last k blocks and the head on the cached output of
  the frozen blocks (`cache_frozen_prefix`). It pays when the frozen blocks are a large part of a forward pass and
  the stage runs more than about one epoch (the cache pass costs about one epoch of those blocks, in inference
  mode); it costs disk (an activation map per image, not a vector). `auto` weighs both; `always` / `never` decide.
"""

from __future__ import annotations

import logging
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..constants import features_cache_dir
from ..data import build_transforms
from ..recipes import Recipe, RecipeError, StageArguments, stage_augmentation
from .feature_cache import (
    STORAGE_DTYPES,
    collate_cached_features,
    frozen_weights_digest,
    load_or_compute_features,
)

logger = logging.getLogger(__name__)

# `auto` caches a frozen prefix when it is at least this share of a forward pass's multiply-adds...
MIN_PREFIX_FLOP_SHARE = 0.25
# ...the stage trains for at least this many epochs (1 epoch: the cache pass replaces the only prefix pass)...
MIN_PREFIX_EPOCHS = 1.5
# ...and the activations take at most this share of the free disk space of the cache directory.
MAX_PREFIX_DISK_SHARE = 0.5


@dataclass
class StagePlan:
    """How a stage gets its inputs.

    Args:
        augmentation: The stage's augmentation (name or mapping).
        train_transform: The training transform it implies.
        use_feature_cache (`bool`): Train the head on cached pooled features.
        prefix_stage (`int`, *optional*): Train on the cached output of this (last frozen) backbone stage.
        prefix_decision (`dict`): Why the frozen-prefix cache was or was not used (bytes, FLOP share, epochs).
        shared_prefix_stage (`int`, *optional*): For a stage on cached pooled features: the next stage that trains
            the backbone will train on the cached output of this backbone stage, so this stage computes that cache
            and derives its pooled features from it (one pass of the frozen blocks over the data, not two).
    """

    augmentation: Any
    train_transform: Any
    use_feature_cache: bool = False
    prefix_stage: int | None = None
    prefix_decision: dict[str, Any] = field(default_factory=dict)
    shared_prefix_stage: int | None = None

    @property
    def cached(self) -> bool:
        return self.use_feature_cache or self.prefix_stage is not None


def _stage_macs(backbone, image_size: int) -> list[int]:
    """Multiply-adds of each backbone stage for one image (VGG's convolutions; the rest is negligible)."""
    macs, size = [], image_size
    for start, end in backbone.stage_slices:
        total = 0
        for layer in backbone.features[start:end]:
            if isinstance(layer, nn.Conv2d):
                kh, kw = layer.kernel_size
                total += layer.in_channels * layer.out_channels * kh * kw * size * size // layer.groups
            elif isinstance(layer, nn.MaxPool2d):
                size //= 2
        macs.append(total)
    return macs


def _effective_epochs(stage: StageArguments, recipe: Recipe, train_rows: int, world_size: int) -> float:
    if stage.max_steps > 0:
        return stage.max_steps * recipe.training.per_device_train_batch_size * world_size / max(train_rows, 1)
    return float(stage.epochs)


def prefix_cache_decision(
    recipe: Recipe, stage: StageArguments, model, train_transform, rows: int, train_rows: int, world_size: int
) -> dict[str, Any]:
    """Whether a `last_k` stage trains on a cached frozen prefix, with the numbers behind the decision."""
    backbone = model.backbone
    decision: dict[str, Any] = {"mode": stage.cache_frozen_prefix, "used": False}
    if stage.trainable != "last_k":
        return decision
    num_stages = backbone.num_stages
    prefix_stage = num_stages - stage.last_k_blocks - 1
    reasons = []
    if stage.cache_frozen_prefix == "never":
        reasons.append("cache_frozen_prefix is 'never'")
    if prefix_stage < 0:
        reasons.append("no backbone stage is frozen")
    if not train_transform.deterministic:
        reasons.append("its training transforms are random (augmentation)")
    if stage.mixup_alpha > 0 or stage.cutmix_alpha > 0:
        reasons.append("mixup/cutmix mix images")
    if recipe.data.streaming:
        reasons.append("the train split is streamed")
    if not backbone.can_forward_from_stage:
        reasons.append(f"backbone {model.config.backbone!r} cannot resume from an intermediate stage")
    if prefix_stage >= 0 and min(model.pooler.stages) <= prefix_stage:
        reasons.append("the fusion head pools a frozen stage")
    if reasons and stage.cache_frozen_prefix == "always":
        raise RecipeError(
            f"stages.{stage.name}.cache_frozen_prefix is 'always' but this stage cannot use a frozen-prefix cache: "
            f"{'; '.join(reasons)}."
        )
    if not reasons:
        macs = _stage_macs(backbone, model.config.image_size)
        spatial = model.config.image_size // backbone.stage_reductions[prefix_stage]
        item = torch.empty((), dtype=STORAGE_DTYPES[recipe.training.feature_cache_dtype]).element_size()
        bytes_per_image = backbone.stage_channels[prefix_stage] * spatial * spatial * item
        cache_dir = Path(recipe.training.feature_cache_dir or features_cache_dir())
        probe = next((p for p in (cache_dir, *cache_dir.parents) if p.exists()), Path("/"))
        free = shutil.disk_usage(probe).free
        decision.update(
            prefix_stage=prefix_stage,
            flop_share=round(sum(macs[: prefix_stage + 1]) / max(sum(macs), 1), 3),
            bytes_per_image=bytes_per_image,
            bytes=bytes_per_image * rows,
            free_disk_bytes=free,
            epochs=round(_effective_epochs(stage, recipe, train_rows, world_size), 2),
        )
        if stage.cache_frozen_prefix == "auto":
            if decision["flop_share"] < MIN_PREFIX_FLOP_SHARE:
                reasons.append(f"the frozen blocks are only {decision['flop_share']:.0%} of a forward pass")
            if decision["epochs"] < MIN_PREFIX_EPOCHS:
                reasons.append(f"the stage runs {decision['epochs']:g} epochs (the cache pass would save nothing)")
            if decision["bytes"] > MAX_PREFIX_DISK_SHARE * free:
                reasons.append(
                    f"the activations need {_human(decision['bytes'])}, more than half of the "
                    f"{_human(free)} free under {probe}"
                )
    decision["used"] = not reasons
    decision["reason"] = "; ".join(reasons) if reasons else None
    return decision


def _human(size: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} TiB"


def plan_stage(
    recipe: Recipe,
    stage: StageArguments,
    model,
    processor,
    rows: int,
    train_rows: int,
    world_size: int,
    later_stages: tuple[StageArguments, ...] = (),
):
    """The stage's training transform and which cache (if any) it trains on; the reasons go to the log.

    `later_stages` (the recipe's stages after this one) let a head-only stage on cached features compute the
    frozen-prefix cache that the next backbone-training stage will use, in the same pass (`shared_prefix_stage`).
    """
    augmentation = stage_augmentation(recipe, stage)
    train_transform = build_transforms(processor, augmentation=augmentation)
    mixes = stage.mixup_alpha > 0 or stage.cutmix_alpha > 0
    plan = StagePlan(augmentation, train_transform)
    plan.use_feature_cache = (
        stage.trainable == "head" and stage.cache_features and train_transform.deterministic and not mixes
    )
    if stage.trainable == "head" and stage.cache_features and not plan.use_feature_cache:
        reason = (
            "mixup/cutmix mix images"
            if mixes
            else f"{'data' if stage.augmentation is None else 'stage'}.augmentation={augmentation!r} makes its "
            "training transforms random"
        )
        logger.warning(
            "Stage %s: not caching backbone features because %s; the frozen backbone is recomputed every epoch.",
            stage.name,
            reason,
        )
    if plan.use_feature_cache:
        plan.shared_prefix_stage = _next_prefix_stage(
            recipe, later_stages, model, processor, rows, train_rows, world_size
        )
        if plan.shared_prefix_stage is not None:
            logger.info(
                "Stage %s: computing the frozen prefix (backbone stages 0-%d) that a later stage trains on, and its "
                "pooled features from it: one pass of the frozen blocks over the data for both stages.",
                stage.name,
                plan.shared_prefix_stage,
            )
    decision = prefix_cache_decision(recipe, stage, model, train_transform, rows, train_rows, world_size)
    plan.prefix_decision = decision
    if decision["used"]:
        plan.prefix_stage = decision["prefix_stage"]
        logger.info(
            "Stage %s: caching the frozen prefix (backbone stages 0-%d, %.0f%% of a forward pass) once instead of "
            "recomputing it for %g epochs: %s per image, %s in all.",
            stage.name,
            decision["prefix_stage"],
            100 * decision["flop_share"],
            decision["epochs"],
            _human(decision["bytes_per_image"]),
            _human(decision["bytes"]),
        )
    elif stage.trainable == "last_k" and stage.cache_frozen_prefix != "never":
        logger.info("Stage %s: not caching the frozen prefix because %s.", stage.name, decision["reason"])
    return plan


def _next_prefix_stage(recipe: Recipe, later_stages, model, processor, rows: int, train_rows: int, world_size: int):
    """The prefix stage the next backbone-training stage will cache, when this stage can compute it for it.

    Head-only stages leave the backbone as it is, so the frozen prefix of the first later stage that trains the
    backbone is the one this stage sees. Only float32 storage (pooled features from a rounded prefix would differ
    from the ones computed from pixels under the same cache key) and no extra feature columns (part of the key).
    """
    following = next((s for s in later_stages if s.trainable != "head"), None)
    if following is None or recipe.training.feature_cache_dtype != "float32" or recipe.data.extra_feature_columns:
        return None
    transform = build_transforms(processor, augmentation=stage_augmentation(recipe, following))
    decision = prefix_cache_decision(recipe, following, model, transform, rows, train_rows, world_size)
    return decision["prefix_stage"] if decision["used"] else None


class StreamedSplit(torch.utils.data.IterableDataset):
    """A streamed split (`datasets.IterableDataset` of raw rows) with an image transform applied row by row.

    What a stage's Trainer or the feature pass reads under `data.streaming: true`. `set_epoch` reaches the stream's
    shuffle buffer (a new order each epoch); `shard` gives one rank's share (`datasets.distributed.split_dataset_by_node`).

    Args:
        stream (`datasets.IterableDataset`): Rows `{"image", "label"[, extra columns]}`.
        transform: A `data.transforms.ImageTransform` (takes and returns a batch mapping).
    """

    def __init__(self, stream, transform):
        super().__init__()
        self.stream, self.transform = stream, transform

    def set_epoch(self, epoch: int) -> None:
        if hasattr(self.stream, "set_epoch"):
            self.stream.set_epoch(epoch)

    def shard(self, rank: int, world_size: int) -> StreamedSplit:
        from datasets.distributed import split_dataset_by_node

        return StreamedSplit(split_dataset_by_node(self.stream, rank=rank, world_size=world_size), self.transform)

    def __iter__(self):
        for row in self.stream:
            batch = self.transform({name: [value] for name, value in row.items()})
            yield {name: values[0] for name, values in batch.items()}


def feature_pass_workers(configured: int, device: torch.device) -> int:
    """DataLoader workers for the one-time feature pass: on CPU, only the cores the compute threads leave free
    (a worker competing with the backbone's threads slows the pass down: ~10% on 2 cores, bench/README.md)."""
    if device.type != "cpu":
        return configured
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return min(configured, max(0, cores - torch.get_num_threads()))


def stage_datasets(tuner, stage: StageArguments, plan: StagePlan, device: torch.device):
    """`(train, validation, collator)` for the stage's Trainer, plus the caches' report for `metrics.json`."""
    splits = tuner.data.splits
    recipe = tuner.recipe
    streamed = recipe.data.streaming
    if not plan.cached:
        if streamed:
            stream = tuner.data.train.shuffle(
                seed=recipe.training.seed, buffer_size=recipe.data.streaming_shuffle_buffer
            )
            train = StreamedSplit(stream, plan.train_transform)
        else:
            train = splits["train"].with_transform(plan.train_transform)
        validation = splits["validation"].with_transform(tuner.eval_transform)
        return train, validation, tuner.collator, None
    what = "features" if plan.prefix_stage is None else "frozen-prefix activations"
    cached, report = {}, {"kind": "pooled" if plan.prefix_stage is None else "prefix", "splits": {}}
    weights_digest = frozen_weights_digest(tuner.model, plan.prefix_stage)  # once for both splits
    shared = plan.shared_prefix_stage
    if shared is not None:
        report["shared_prefix"] = {"stage": shared, "splits": {}}
        shared_digest = frozen_weights_digest(tuner.model, shared)
    common = {
        "batch_size": recipe.training.per_device_eval_batch_size,
        "num_workers": feature_pass_workers(recipe.training.dataloader_num_workers, device),
        "device": device,
        "cache_dir": recipe.training.feature_cache_dir,
        "dtype": recipe.training.feature_cache_dtype,
        "ranks": tuner.ranks,
    }
    for split in ("train", "validation"):
        if split == "train" and streamed:  # read once, in stream order: the cache fixes the rows the head trains on
            rows = StreamedSplit(tuner.data.train, tuner.eval_transform)
        else:
            rows = splits[split].with_transform(tuner.eval_transform)
        collator, from_stage = tuner.collator, None
        if shared is not None:  # the later stage's prefix first; the pooled features then cost only the last blocks
            rows, prefix_path, computed = load_or_compute_features(
                tuner.model,
                tuner.processor,
                rows,
                tuner.split_fingerprint(split),
                tuner.collator,
                description=f"[{stage.name}] caching {split} frozen-prefix activations",
                prefix_stage=shared,
                weights_digest=shared_digest,
                **common,
            )
            logger.info(
                "Stage %s: %s frozen-prefix activations %s %s",
                stage.name,
                split,
                "computed into" if computed else "loaded from",
                prefix_path,
            )
            report["shared_prefix"]["splits"][split] = dict(rows.info)
            collator, from_stage = collate_cached_features, shared
        dataset, path, computed = load_or_compute_features(
            tuner.model,
            tuner.processor,
            rows,
            tuner.split_fingerprint(split),
            collator,
            description=f"[{stage.name}] caching {split} {'backbone ' if plan.prefix_stage is None else ''}{what}",
            prefix_stage=plan.prefix_stage,
            weights_digest=weights_digest,
            from_prefix_stage=from_stage,
            **common,
        )
        logger.info(
            "Stage %s: %s %s %s %s", stage.name, split, what, "computed into" if computed else "loaded from", path
        )
        cached[split] = dataset
        report["splits"][split] = dict(dataset.info)
    parts = report["splits"].values()
    report.update(
        rows=sum(p["rows"] for p in parts),
        rows_computed_per_rank=[sum(r) for r in zip(*(p["rows_computed_per_rank"] for p in parts))],
        bytes=sum(p["bytes"] or 0 for p in parts),
        seconds=round(sum(p["seconds"] for p in parts), 3),
        dtype=recipe.training.feature_cache_dtype,
    )
    return cached["train"], cached["validation"], collate_cached_features, report


__all__ = ["StagePlan", "plan_stage", "prefix_cache_decision", "stage_datasets"]
