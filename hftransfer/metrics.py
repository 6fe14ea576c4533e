"""Classification metrics through the `evaluate` library, offline.

`evaluate.load("accuracy")` fetches the metric script from the Hub (and, unless `HF_EVALUATE_OFFLINE=1`, blocks on an
unreachable endpoint). hftransfer ships its own evaluate module, `hftransfer/metric_modules/classification/
classification.py`, which computes accuracy, precision, recall, F1 and the confusion matrix in one pass, and loads it
by local path, which needs no network and takes ~0.02 s. `import evaluate` itself costs seconds (it imports
transformers' pipelines), so it happens on the first metric load, never at `import hftransfer`.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import evaluate
    from transformers import EvalPrediction

METRIC_MODULES_DIR = Path(__file__).resolve().parent / "metric_modules"
METRIC_MODULE = "classification"
SHIPPED_METRICS = (METRIC_MODULE,)
# The per-metric names of earlier versions: they load the classification module, whose results include their key
# (`load_metric("f1").compute(...)["f1"]`).
_METRIC_ALIASES = ("accuracy", "f1", "precision", "recall", "confusion_matrix")
# The scalar metrics reported to the Trainer (which prefixes them with `eval_`) and to the model card.
SCALAR_METRICS = ("accuracy", "f1", "precision", "recall")
IGNORE_INDEX = -100  # transformers' convention for labels that take no part in the loss or the metrics


def metric_module_path(name: str = METRIC_MODULE) -> str:
    """Absolute path of the shipped evaluate metric module, for `evaluate.load(path)`.

    Args:
        name (`str`, *optional*, defaults to `"classification"`):
            `classification`, or one of the older names `accuracy`, `f1`, `precision`, `recall`,
            `confusion_matrix` (the same module: its results hold every one of them).
    """
    if name not in SHIPPED_METRICS and name not in _METRIC_ALIASES:
        raise ValueError(
            f"Unknown hftransfer metric {name!r}: expected one of {', '.join(SHIPPED_METRICS + _METRIC_ALIASES)}."
        )
    path = METRIC_MODULES_DIR / METRIC_MODULE
    if not (path / f"{METRIC_MODULE}.py").is_file():
        # An absolute path that does not exist would make evaluate fall back to... nothing useful; say what's wrong.
        raise FileNotFoundError(
            f"The evaluate module {path / f'{METRIC_MODULE}.py'} is missing from the hftransfer install."
        )
    return str(path)


@functools.cache
def load_metric(name: str = METRIC_MODULE) -> evaluate.EvaluationModule:
    """Load (once per process) the shipped metric module with `evaluate.load`, by local path: no network.

    `keep_in_memory=True`: no Arrow cache files or file locks under `HF_METRICS_CACHE`, so every rank of a distributed
    run can compute on its own copy of the gathered predictions (the Trainer gathers them before `compute_metrics`).

    Args:
        name (`str`, *optional*, defaults to `"classification"`): As for [`metric_module_path`].
    """
    path = metric_module_path(name)
    import evaluate  # lazy: importing evaluate takes seconds

    return evaluate.load(path, keep_in_memory=True)


def _normalize_id2label(id2label: Mapping[int | str, str] | Sequence[str]) -> dict[int, str]:
    """`{int id: name}` sorted by id, from a config-style mapping (JSON keys are strings) or a list of names."""
    if isinstance(id2label, Mapping):
        try:
            items = {int(k): str(v) for k, v in id2label.items()}
        except (TypeError, ValueError):
            raise ValueError(f"id2label keys must be integer class ids, got {list(id2label)!r}.") from None
    else:
        items = {i: str(v) for i, v in enumerate(id2label)}
    if not items:
        raise ValueError("id2label is empty: expected one name per class id.")
    return dict(sorted(items.items()))


def _as_class_ids(predictions: Any, references: Any, known_ids: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """Validated 1-D integer arrays; logits (2-D predictions) are reduced with argmax, ignored labels are dropped."""
    predictions = np.asarray(predictions)
    references = np.asarray(references).reshape(-1)
    if predictions.ndim == 2 and predictions.shape[0] == references.shape[0] and predictions.shape[1] > 1:
        predictions = predictions.argmax(axis=-1)
    predictions = predictions.reshape(-1)
    if predictions.shape != references.shape:
        raise ValueError(
            f"predictions and references must have the same number of examples, got {predictions.shape[0]} "
            f"predictions and {references.shape[0]} references."
        )
    for name, values in (("predictions", predictions), ("references", references)):
        if values.size and not np.issubdtype(values.dtype, np.integer) and not np.all(np.mod(values, 1) == 0):
            raise ValueError(f"{name} must be integer class ids (or logits of shape (n, num_labels)).")
    predictions, references = predictions.astype(np.int64), references.astype(np.int64)
    keep = references != IGNORE_INDEX
    predictions, references = predictions[keep], references[keep]
    if references.size == 0:
        raise ValueError("No examples to score: predictions/references are empty (or all labels are -100).")
    known = set(known_ids)
    for name, values in (("predictions", predictions), ("references", references)):
        unknown = sorted(set(np.unique(values).tolist()) - known)
        if unknown:
            raise ValueError(f"{name} contain class ids {unknown} that are not in id2label (ids {sorted(known)}).")
    return predictions, references


def _compute(predictions: np.ndarray, references: np.ndarray) -> dict[str, Any]:
    # Macro averages over the classes present in references or predictions, with 0 where a score is 0/0: exactly
    # scikit-learn's `average="macro", zero_division=0`. The confusion matrix is over those classes, sorted.
    return load_metric().compute(predictions=predictions, references=references, average="macro", zero_division=0.0)


def _scalars(results: Mapping[str, Any]) -> dict[str, float]:
    return {name: float(results[name]) for name in SCALAR_METRICS}


def compute_classification_metrics(
    predictions: Any, references: Any, id2label: Mapping[int | str, str] | Sequence[str]
) -> dict[str, Any]:
    """Accuracy, macro F1/precision/recall, per-class accuracy and the confusion matrix of single-label predictions.

    Args:
        predictions (array-like):
            Predicted class ids of shape `(n,)`, or logits of shape `(n, num_labels)` (reduced with argmax).
        references (array-like):
            True class ids of shape `(n,)`. Examples labelled -100 are ignored.
        id2label (`dict[int | str, str]` or `list[str]`):
            Class names by id (a config's `id2label`, string keys accepted). It orders the confusion matrix and
            names the per-class accuracies.

    Returns:
        `dict`: `accuracy`, `f1`, `precision`, `recall` (macro averages, floats), `per_class_accuracy`
        (`{label name: float}`, the fraction of that class's examples predicted right, i.e. its recall; `None` for a
        class absent from the references), `confusion_matrix` (list of lists of ints, rows = true class, columns =
        predicted class, ordered by class id) and `num_samples`. All values are JSON-serializable.
    """
    id2label = _normalize_id2label(id2label)
    ids = list(id2label)
    predictions, references = _as_class_ids(predictions, references, ids)
    computed = _compute(predictions, references)
    results: dict[str, Any] = _scalars(computed)
    # The module's matrix covers the classes present (sorted ids); place it in the matrix of every id.
    present = np.searchsorted(np.asarray(ids), np.union1d(references, predictions))
    matrix = np.zeros((len(ids), len(ids)), dtype=np.int64)
    matrix[np.ix_(present, present)] = np.asarray(computed["confusion_matrix"], dtype=np.int64)
    support = matrix.sum(axis=1)
    results["per_class_accuracy"] = {
        name: (float(matrix[i, i] / support[i]) if support[i] else None) for i, name in enumerate(id2label.values())
    }
    results["confusion_matrix"] = matrix.tolist()
    results["num_samples"] = int(references.size)
    return results


def make_compute_metrics(
    id2label: Mapping[int | str, str] | Sequence[str],
) -> Callable[[EvalPrediction], dict[str, float]]:
    """A `compute_metrics` function for `transformers.Trainer`: scalar accuracy and macro F1/precision/recall.

    The evaluate module is loaded here, once (and cached for the process), not at every evaluation. The Trainer
    prefixes the keys with `eval_` (`eval_accuracy`, `eval_f1`, ...). Not meant for `batch_eval_metrics=True`.

    Args:
        id2label (`dict[int | str, str]` or `list[str]`): Class names by id; predictions outside it are an error.
    """
    ids = list(_normalize_id2label(id2label))
    load_metric()

    def compute_metrics(eval_prediction: EvalPrediction) -> dict[str, float]:
        logits = eval_prediction.predictions
        if isinstance(logits, (tuple, list)) and not np.isscalar(logits[0]):
            logits = logits[0]  # models returning extra outputs: logits come first
        predictions, references = _as_class_ids(logits, eval_prediction.label_ids, ids)
        return _scalars(_compute(predictions, references))

    return compute_metrics


# A model "collapsed" when one class takes at least this share of its predictions (and clearly more than the true
# share of the most common class), or when its accuracy is within CHANCE_MARGIN of always guessing the majority class.
COLLAPSE_SHARE = 0.9
CHANCE_MARGIN = 0.02


def training_warnings(metrics: Mapping[str, Any], id2label: Mapping[int | str, str], where: str) -> list[str]:
    """Warnings for a model that did not learn: one class predicted for (nearly) every image, or chance accuracy.

    Args:
        metrics (`dict`): Output of [`compute_classification_metrics`] on a validation split.
        id2label (`dict`): Class names by id, in the confusion matrix's order.
        where (`str`): What was evaluated, for the message ("the final model", "stage frozen").

    Returns:
        `list[str]`: Human-readable warnings, empty when the model looks healthy.
    """
    names = list(_normalize_id2label(id2label).values())
    matrix = np.asarray(metrics.get("confusion_matrix") or [], dtype=np.int64)
    total = int(matrix.sum()) if matrix.size else 0
    if total == 0 or len(names) < 2:
        return []
    predicted = matrix.sum(axis=0) / total
    true_share = matrix.sum(axis=1) / total
    warnings = []
    top = int(predicted.argmax())
    if predicted[top] >= COLLAPSE_SHARE and predicted[top] > true_share.max() + 0.1:
        warnings.append(
            f"Training failed: {where} predicts {names[top]!r} for {predicted[top]:.0%} of the {total} validation "
            f"images (that class is {true_share[top]:.0%} of them)."
        )
    chance = max(1.0 / len(names), float(true_share.max()))
    accuracy = float(metrics.get("accuracy", np.nan))
    if accuracy <= chance + CHANCE_MARGIN:
        warnings.append(
            f"Training failed: {where} has validation accuracy {accuracy:.3f}, at chance level (always predicting the "
            f"most common class scores {chance:.3f})."
        )
    return warnings


def is_missing(value: Any) -> bool:
    """`True` for a per-class accuracy of a class with no examples (`None`, or NaN after a round trip)."""
    return value is None or (isinstance(value, float) and math.isnan(value))


__all__ = [
    "SCALAR_METRICS",
    "compute_classification_metrics",
    "is_missing",
    "training_warnings",
    "load_metric",
    "make_compute_metrics",
    "metric_module_path",
]
