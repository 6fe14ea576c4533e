"""Accuracy for single-label classification: an offline `evaluate` module shipped with hftransfer.

Load it with `evaluate.load(hftransfer.metrics.metric_module_path("accuracy"))`: a local path, so no Hub access (the
canonical `evaluate.load("accuracy")` downloads its script from the Hub). numpy only, no scikit-learn; results match
`sklearn.metrics.accuracy_score`.
"""

import datasets
import evaluate
import numpy as np

_DESCRIPTION = """
Accuracy is the fraction of correct predictions: (TP + TN) / (TP + TN + FP + FN), i.e. the number of examples
whose predicted class equals the true class, divided by the number of examples.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list[int]`): Predicted class ids.
    references (`list[int]`): True class ids.
    normalize (`bool`, *optional*, defaults to `True`): Return the fraction of correct predictions; `False` returns
        their (weighted) count.
    sample_weight (`list[float]`, *optional*): Per-example weights.
Returns:
    accuracy (`float`): The accuracy, in [0, 1] (or a count when `normalize=False`).
Examples:
    >>> accuracy = evaluate.load("hftransfer/metric_modules/accuracy")
    >>> accuracy.compute(predictions=[0, 1, 1, 2], references=[0, 1, 2, 2])
    {'accuracy': 0.75}
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


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class Accuracy(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {"predictions": datasets.Value("int64"), "references": datasets.Value("int64")}
            ),
            format="numpy",
            reference_urls=["https://scikit-learn.org/stable/modules/generated/sklearn.metrics.accuracy_score.html"],
        )

    def _compute(self, predictions, references, normalize=True, sample_weight=None):
        y_pred = np.asarray(predictions, dtype=np.int64).ravel()
        y_true = np.asarray(references, dtype=np.int64).ravel()
        if y_pred.shape != y_true.shape:
            raise ValueError(f"predictions ({y_pred.size}) and references ({y_true.size}) must have the same length.")
        weight = np.ones(y_true.size) if sample_weight is None else np.asarray(sample_weight, dtype=np.float64).ravel()
        if weight.shape != y_true.shape:
            raise ValueError(f"sample_weight ({weight.size}) must have one weight per example ({y_true.size}).")
        correct = float(weight[y_pred == y_true].sum())
        if not normalize:
            return {"accuracy": correct}
        return {"accuracy": correct / float(weight.sum()) if weight.sum() else 0.0}
