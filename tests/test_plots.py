"""PNG plots: the confusion matrix and the staged training curves."""

import numpy as np
import pytest
from PIL import Image
from testing_common import FASHION_LABELS

from hftransfer.plots import plot_confusion_matrix, plot_training_curves, training_curve_series


def _check_png(path, min_side=300):
    assert path.is_file()
    with Image.open(path) as image:
        assert image.format == "PNG"
        assert min(image.size) >= min_side
        image.load()
    assert not list(path.parent.glob(f".{path.name}.*"))  # the temporary file was renamed away


def _stage_log(epochs, steps_per_epoch, evaluate=True):
    log, step = [], 0
    for epoch in range(epochs):
        for k in range(steps_per_epoch):
            step += 1
            log.append(
                {"epoch": epoch + (k + 1) / steps_per_epoch, "step": step, "loss": 1.0 / step, "grad_norm": 1.0}
            )
        if evaluate:
            log.append(
                {"epoch": epoch + 1.0, "step": step, "eval_loss": 0.9 / step, "eval_accuracy": 0.5, "eval_f1": 0.4}
            )
    log.append({"epoch": float(epochs), "step": step, "train_runtime": 1.0, "train_loss": 0.3, "total_flos": 0.0})
    return log


def test_confusion_matrix_png(tmp_path):
    rng = np.random.default_rng(0)
    counts = (np.eye(10) * 90 + rng.integers(0, 8, (10, 10))).astype(int)
    counts[4] = 0  # a class with no examples must not produce NaNs or crash
    path = tmp_path / "plots" / "confusion_matrix.png"
    figure = plot_confusion_matrix(counts.tolist(), FASHION_LABELS, path, title="Test split")
    _check_png(path, min_side=500)
    axes = figure.axes[0]
    assert [t.get_text() for t in axes.get_xticklabels()] == FASHION_LABELS
    texts = [t.get_text() for t in axes.texts]
    assert len(texts) == 100 and texts[0].startswith(str(counts[0, 0]))  # counts annotated, row 0 first
    assert axes.get_title() == "Test split"
    plot_confusion_matrix(counts, FASHION_LABELS, path, normalize=False)  # overwrite in place
    _check_png(path, min_side=500)


def test_confusion_matrix_bad_input(tmp_path):
    with pytest.raises(ValueError, match="square"):
        plot_confusion_matrix([[1, 2, 3]], ["a"], tmp_path / "x.png")
    with pytest.raises(ValueError, match="2 labels for a 3x3"):
        plot_confusion_matrix(np.eye(3), ["a", "b"], tmp_path / "x.png")
    assert not list(tmp_path.iterdir())


def test_training_curves(tmp_path):
    history = [
        {"stage": "frozen", "epochs": 3.0, "log_history": _stage_log(3, 4)},
        {"stage": "finetune", "epochs": 2.0, "log_history": _stage_log(2, 4)},
    ]
    series = training_curve_series(history)
    assert len(series.train_loss) == 20 and len(series.eval_loss) == 5 and len(series.eval_accuracy) == 5
    assert series.boundaries == [3.0]
    assert [x for x, _ in series.eval_accuracy] == [1.0, 2.0, 3.0, 4.0, 5.0]  # finetune offset by 3 epochs
    assert series.train_loss[12][0] == pytest.approx(3.25)

    path = tmp_path / "training_curves.png"
    figure = plot_training_curves(history, path)
    _check_png(path)
    loss_axes, accuracy_axes = figure.axes[:2]
    lines = {line.get_label(): line for axes in (loss_axes, accuracy_axes) for line in axes.get_lines()}
    assert len(lines["train loss"].get_xdata()) == 20
    assert len(lines["eval loss"].get_xdata()) == 5
    assert list(lines["eval accuracy"].get_xdata()) == [1.0, 2.0, 3.0, 4.0, 5.0]
    # The stage boundary is a vertical line at the cumulative epoch; stage names are written on both plots.
    vertical = [line for line in loss_axes.get_lines() if line.get_label().startswith("_")]
    assert [line.get_xdata()[0] for line in vertical] == [3.0]
    assert {"frozen", "finetune"} <= {t.get_text() for t in loss_axes.texts}


def test_training_curves_sparse_stages(tmp_path):
    # A stage without evaluation, a stage with a single logged point, and a stage record without "epochs".
    history = [
        {"stage": "frozen", "epochs": 1.0, "log_history": _stage_log(1, 3, evaluate=False)},
        {"stage": "probe", "epochs": 0.5, "log_history": [{"epoch": 0.5, "step": 1, "loss": 0.7}]},
        {"stage": "finetune", "log_history": _stage_log(2, 1)},
    ]
    series = training_curve_series(history)
    assert series.boundaries == [1.0, 1.5]
    assert series.eval_accuracy == [(2.5, 0.5), (3.5, 0.5)]
    plot_training_curves(history, tmp_path / "curves.png")
    _check_png(tmp_path / "curves.png")
    # Nothing logged at all still gives a (labelled, empty) picture.
    plot_training_curves([{"stage": "frozen", "epochs": 1.0, "log_history": []}], tmp_path / "empty.png")
    _check_png(tmp_path / "empty.png")
    plot_training_curves([], tmp_path / "none.png")
    _check_png(tmp_path / "none.png")
