"""Single-label classification metrics in one pass: an offline `evaluate` module shipped with hftransfer.

Load it with `evaluate.load(hftransfer.metrics.metric_module_path("classification"))`: a local path, so no Hub access
(the canonical `evaluate.load("accuracy")`, `"f1"`, ... download their scripts from the Hub). One confusion matrix
(NumPy, no scikit-learn) gives accuracy, precision, recall and F1; results match `sklearn.metrics`'
`accuracy_score`, `precision_score`, `recall_score`, `f1_score` (with `zero_division`) and `confusion_matrix`.
"""

import datasets
import evaluate
import numpy as np

_DESCRIPTION = """
Accuracy, precision, recall, F1 and the confusion matrix of single-label predictions, from one confusion matrix.
Accuracy is the fraction of examples predicted right. Precision is the fraction of the predictions of a class that
are right (TP / (TP + FP)), recall the fraction of the examples of a class that are found (TP / (TP + FN)), F1 their
harmonic mean (2TP / (2TP + FP + FN)); each is computed per class and then averaged. The default `average="macro"`
gives every class the same weight, whatever its frequency.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list[int]`): Predicted class ids.
    references (`list[int]`): True class ids.
    labels (`list[int]`, *optional*): Classes to score and average over, and the rows/columns of the confusion
        matrix. Defaults to the sorted union of the classes present in `references` and `predictions`
        (scikit-learn's convention).
    average (`str`, *optional*, defaults to `"macro"`): `"macro"` (unweighted mean over classes), `"weighted"` (mean
        weighted by each class's support), `"micro"` (global counts), `"binary"` (the score of `pos_label` only) or
        `None` (one score per class, in the order of `labels`). Applies to precision, recall and F1.
    pos_label (`int`, *optional*, defaults to 1): The positive class for `average="binary"`.
    zero_division (`float`, *optional*, defaults to 0.0): Value used where a score is 0/0 (a class neither predicted
        nor present), as scikit-learn's `zero_division`.
    sample_weight (`list[float]`, *optional*): Per-example weights.
Returns:
    accuracy (`float`): The fraction of (weighted) examples predicted right, over all examples.
    precision, recall, f1 (`float` or `list[float]`): The scores, in [0, 1].
    confusion_matrix (`np.ndarray`): Rows = true class, columns = predicted class, in the order of `labels`
        (integer counts, or float sums of weights with `sample_weight`).
Examples:
    >>> classification = evaluate.load("hftransfer/metric_modules/classification")
    >>> results = classification.compute(predictions=[0, 1, 1, 2], references=[0, 1, 2, 2])
    >>> results["accuracy"], results["f1"]
    (0.75, 0.7777777777777777)
"""

_CITATION = """
@article{scikit-learn,
  title={Scikit-learn: Machine Learning in {P}ython},
  author={Pedregosa, F. and Varoquaux, G. and Gramfort, A. and Michel, V. and Thirion, B. and Grisel, O. and
          Blondel, M. and Prettenhofer, P. and Weiss, R. and Dubourg, V. and Vanderplas, J. and Passos, A. and
          Cournapeau, D. and Brucher, M. and Perrot, M. and Duchesnay, E.},
  journal={Journal of Machine Learning Research},
  volume={12},
  pages={2825--2830},
  year={2011}
}
"""

AVERAGES = ("macro", "weighted", "micro", "binary", None)


def confusion_matrix(y_true, y_pred, labels, weight=None):
    """Rows = true, columns = predicted, over `labels` (every id in `y_true`/`y_pred` must be one of them)."""
    sorter = np.argsort(labels, kind="stable")
    rows = sorter[np.searchsorted(labels, y_true, sorter=sorter)]
    cols = sorter[np.searchsorted(labels, y_pred, sorter=sorter)]
    size = len(labels)
    counts = np.bincount(rows * size + cols, weights=weight, minlength=size * size)
    return counts.reshape(size, size)


def _divide(numerator, denominator, zero_division):
    out = np.full(np.shape(numerator), float(zero_division), dtype=np.float64)
    np.divide(numerator, denominator, out=out, where=np.asarray(denominator) != 0)
    return out


def _average(per_class, numerator, denominator, labels, support, average, pos_label, zero_division):
    if average is None:
        return [float(v) for v in per_class]
    if average == "micro":
        return float(_divide(numerator.sum(), denominator.sum(), zero_division))
    if average == "binary":
        if len(labels) > 2 or pos_label not in labels:
            raise ValueError(
                f"average='binary' needs at most 2 classes including pos_label={pos_label}, got {labels}."
            )
        return float(per_class[list(labels).index(pos_label)])
    if len(per_class) == 0:
        return float(zero_division)
    if average == "weighted":
        return float(_divide((per_class * support).sum(), support.sum(), zero_division))
    return float(per_class.mean())


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class Classification(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {"predictions": datasets.Value("int64"), "references": datasets.Value("int64")}
            ),
            format="numpy",
            reference_urls=["https://scikit-learn.org/stable/modules/classes.html#classification-metrics"],
        )

    def _compute(
        self, predictions, references, labels=None, average="macro", pos_label=1, zero_division=0.0, sample_weight=None
    ):
        if average not in AVERAGES:
            raise ValueError(f"average={average!r} is not supported: expected one of {AVERAGES}.")
        y_pred = np.asarray(predictions, dtype=np.int64).ravel()
        y_true = np.asarray(references, dtype=np.int64).ravel()
        if y_pred.shape != y_true.shape:
            raise ValueError(f"predictions ({y_pred.size}) and references ({y_true.size}) must have the same length.")
        weight = None if sample_weight is None else np.asarray(sample_weight, dtype=np.float64).ravel()
        if weight is not None and weight.shape != y_true.shape:
            raise ValueError(f"sample_weight ({weight.size}) must have one weight per example ({y_true.size}).")
        present = np.union1d(y_true, y_pred)
        labels = present if labels is None else np.asarray(labels, dtype=np.int64).ravel()
        # As scikit-learn: count over `labels` plus the classes outside them (their examples still count as
        # predictions of / misses of a class in `labels`, and for the accuracy), then keep the `labels` part.
        extended = np.concatenate([labels, np.setdiff1d(present, labels)])
        full = confusion_matrix(y_true, y_pred, extended, weight)
        n = len(labels)
        matrix = full[:n, :n]
        tp = np.diag(full)[:n].astype(np.float64)
        predicted = full.sum(axis=0)[:n].astype(np.float64)
        support = full.sum(axis=1)[:n].astype(np.float64)
        total = float(full.sum())
        results = {"accuracy": float(np.trace(full)) / total if total else 0.0}
        # precision = TP / predicted (a class never predicted is 0/0 -> zero_division); recall = TP / support;
        # F1 = 2TP / (predicted + support): scikit-learn's formula, no 0/0 through precision.
        for name, numerator, denominator in (
            ("precision", tp, predicted),
            ("recall", tp, support),
            ("f1", 2 * tp, predicted + support),
        ):
            per_class = _divide(numerator, denominator, zero_division)
            results[name] = _average(
                per_class, numerator, denominator, labels, support, average, pos_label, zero_division
            )
        results["confusion_matrix"] = matrix
        return results
