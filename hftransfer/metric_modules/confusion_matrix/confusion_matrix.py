"""Confusion matrix for single-label classification: an offline `evaluate` module shipped with hftransfer.

Load it with `evaluate.load(hftransfer.metrics.metric_module_path("confusion_matrix"))`: a local path, so no Hub
access. numpy only, no scikit-learn; results match `sklearn.metrics.confusion_matrix`.
"""

import datasets
import evaluate
import numpy as np

_DESCRIPTION = """
The confusion matrix counts, for each true class (row) and each predicted class (column), the examples of that
true class that were given that prediction. Its diagonal holds the correct predictions.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list[int]`): Predicted class ids.
    references (`list[int]`): True class ids.
    labels (`list[int]`, *optional*): Classes indexing the rows and columns, in this order. Defaults to the sorted
        union of the classes present in `references` and `predictions`; pass `range(num_labels)` to get every class,
        present or not. Examples whose true or predicted class is not in `labels` are not counted.
    sample_weight (`list[float]`, *optional*): Per-example weights.
Returns:
    confusion_matrix (`numpy.ndarray` of shape `(len(labels), len(labels))`): Row `i`, column `j` counts the examples
        of true class `labels[i]` predicted as `labels[j]` (integers without `sample_weight`).
Examples:
    >>> confusion_matrix = evaluate.load("hftransfer/metric_modules/confusion_matrix")
    >>> confusion_matrix.compute(predictions=[0, 1, 1, 2], references=[0, 1, 2, 2], labels=[0, 1, 2])
    {'confusion_matrix': array([[1, 0, 0],
           [0, 1, 0],
           [0, 1, 1]])}
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
class ConfusionMatrix(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {"predictions": datasets.Value("int64"), "references": datasets.Value("int64")}
            ),
            format="numpy",
            reference_urls=["https://scikit-learn.org/stable/modules/generated/sklearn.metrics.confusion_matrix.html"],
        )

    def _compute(self, predictions, references, labels=None, sample_weight=None):
        y_pred = np.asarray(predictions, dtype=np.int64).ravel()
        y_true = np.asarray(references, dtype=np.int64).ravel()
        if y_pred.shape != y_true.shape:
            raise ValueError(f"predictions ({y_pred.size}) and references ({y_true.size}) must have the same length.")
        labels = np.union1d(y_true, y_pred) if labels is None else np.asarray(labels, dtype=np.int64).ravel()
        weighted = sample_weight is not None
        weight = np.asarray(sample_weight, dtype=np.float64).ravel() if weighted else np.ones(y_true.size, np.int64)
        if weight.shape != y_true.shape:
            raise ValueError(f"sample_weight ({weight.size}) must have one weight per example ({y_true.size}).")
        # Map class ids to row/column positions; ids outside `labels` are dropped, as scikit-learn does.
        position = {int(label): i for i, label in enumerate(labels)}
        rows = np.array([position.get(int(v), -1) for v in y_true], dtype=np.int64)
        cols = np.array([position.get(int(v), -1) for v in y_pred], dtype=np.int64)
        keep = (rows >= 0) & (cols >= 0)
        matrix = np.zeros((len(labels), len(labels)), dtype=np.float64 if weighted else np.int64)
        np.add.at(matrix, (rows[keep], cols[keep]), weight[keep])
        return {"confusion_matrix": matrix}
