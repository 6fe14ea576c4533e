"""F1 score for single-label classification: an offline `evaluate` module shipped with hftransfer.

Load it with `evaluate.load(hftransfer.metrics.metric_module_path("f1"))`: a local path, so no Hub access (the
canonical `evaluate.load("f1")` downloads its script from the Hub). numpy only, no scikit-learn; results match
`sklearn.metrics.f1_score(..., zero_division=0)`.
"""

import datasets
import evaluate
import numpy as np

_DESCRIPTION = """
F1 is the harmonic mean of precision and recall: F1 = 2 * TP / (2 * TP + FP + FN), computed per class and then
averaged. The default `average="macro"` gives every class the same weight, whatever its frequency.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list[int]`): Predicted class ids.
    references (`list[int]`): True class ids.
    labels (`list[int]`, *optional*): Classes to score and average over. Defaults to the sorted union of the classes
        present in `references` and `predictions` (scikit-learn's convention).
    average (`str`, *optional*, defaults to `"macro"`): `"macro"` (unweighted mean over classes), `"weighted"` (mean
        weighted by each class's support), `"micro"` (global counts), `"binary"` (the score of `pos_label` only) or
        `None` (one score per class, in the order of `labels`).
    pos_label (`int`, *optional*, defaults to 1): The positive class for `average="binary"`.
    zero_division (`float`, *optional*, defaults to 0.0): Value used where a score is 0/0 (a class neither predicted
        nor present), as scikit-learn's `zero_division`.
    sample_weight (`list[float]`, *optional*): Per-example weights.
Returns:
    f1 (`float` or `list[float]`): The F1 score(s), in [0, 1].
Examples:
    >>> f1 = evaluate.load("hftransfer/metric_modules/f1")
    >>> f1.compute(predictions=[0, 1, 1, 2], references=[0, 1, 2, 2])
    {'f1': 0.7777777777777777}
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


def _class_counts(predictions, references, labels, sample_weight):
    """Weighted true positives, predicted counts and true counts (support) per class of `labels`."""
    y_pred = np.asarray(predictions, dtype=np.int64).ravel()
    y_true = np.asarray(references, dtype=np.int64).ravel()
    if y_pred.shape != y_true.shape:
        raise ValueError(f"predictions ({y_pred.size}) and references ({y_true.size}) must have the same length.")
    labels = np.union1d(y_true, y_pred) if labels is None else np.asarray(labels, dtype=np.int64).ravel()
    weight = np.ones(y_true.size) if sample_weight is None else np.asarray(sample_weight, dtype=np.float64).ravel()
    if weight.shape != y_true.shape:
        raise ValueError(f"sample_weight ({weight.size}) must have one weight per example ({y_true.size}).")
    correct = y_pred == y_true
    tp = np.array([weight[correct & (y_true == label)].sum() for label in labels], dtype=np.float64)
    predicted = np.array([weight[y_pred == label].sum() for label in labels], dtype=np.float64)
    support = np.array([weight[y_true == label].sum() for label in labels], dtype=np.float64)
    return labels, tp, predicted, support


def _divide(numerator, denominator, zero_division):
    out = np.full(np.shape(numerator), float(zero_division), dtype=np.float64)
    np.divide(numerator, denominator, out=out, where=np.asarray(denominator) != 0)
    return out


def _average(per_class, numerator, denominator, labels, support, average, pos_label, zero_division):
    if average not in AVERAGES:
        raise ValueError(f"average={average!r} is not supported: expected one of {AVERAGES}.")
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
class F1(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {"predictions": datasets.Value("int64"), "references": datasets.Value("int64")}
            ),
            format="numpy",
            reference_urls=["https://scikit-learn.org/stable/modules/generated/sklearn.metrics.f1_score.html"],
        )

    def _compute(
        self, predictions, references, labels=None, average="macro", pos_label=1, zero_division=0.0, sample_weight=None
    ):
        labels, tp, predicted, support = _class_counts(predictions, references, labels, sample_weight)
        # 2TP / (2TP + FP + FN) = 2TP / (predicted + support): scikit-learn's formula, no 0/0 through precision.
        per_class = _divide(2 * tp, predicted + support, zero_division)
        value = _average(per_class, 2 * tp, predicted + support, labels, support, average, pos_label, zero_division)
        return {"f1": value}
