"""Staged fine-tuning with the transformers Trainer: freeze plans, cached frozen features, stage-aware resume."""

from .feature_cache import CachedFeatureDataset, feature_cache_key, load_or_compute_features
from .freezing import apply_stage_trainable, build_parameter_groups
from .staged import StagedFineTuner, TrainResult, train
from .trainer import TransferTrainer

__all__ = [
    "CachedFeatureDataset",
    "StagedFineTuner",
    "TrainResult",
    "TransferTrainer",
    "apply_stage_trainable",
    "build_parameter_groups",
    "feature_cache_key",
    "load_or_compute_features",
    "train",
]
