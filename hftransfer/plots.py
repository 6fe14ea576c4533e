"""Pictures of a training run: the confusion matrix and the training curves across stages.

Figures are built with `matplotlib.figure.Figure` and rendered by the Agg canvas directly: no pyplot, no global
backend switch, no display needed (servers, CI, DDP ranks). PNGs are written to a temporary name and renamed, so a
crash never leaves a truncated image where a model card links to it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.transforms import blended_transform_factory

from ._io import atomic_open

DPI = 110


def _save_png_atomic(figure: Figure, path: str | Path) -> Path:
    """Render `figure` to `path` as PNG via a temporary file in the same folder and `os.replace`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    FigureCanvasAgg(figure)  # attach the Agg canvas explicitly: PNG rendering needs no GUI backend
    with atomic_open(path, "wb") as handle:  # temporary file, fsync, umask mode (not mkstemp's 0600), rename
        figure.savefig(handle, format="png", dpi=DPI)
    return path


def plot_confusion_matrix(
    confusion_matrix: Sequence[Sequence[float]] | np.ndarray,
    labels: Sequence[str],
    path: str | Path,
    title: str | None = None,
    normalize: bool = True,
) -> Figure:
    """Draw a confusion matrix (rows = true class, columns = predicted class) and write it as a PNG.

    Args:
        confusion_matrix (`list[list[int]]` or `np.ndarray` of shape `(num_labels, num_labels)`):
            Counts, as returned by [`~hftransfer.metrics.compute_classification_metrics`].
        labels (`list[str]`):
            Class names, in the order of the rows/columns.
        path (`str` or `Path`):
            Where to write the PNG (written atomically).
        title (`str`, *optional*):
            Figure title. Defaults to "Confusion matrix (N examples)".
        normalize (`bool`, *optional*, defaults to `True`):
            Colour each cell by the fraction of its row (the true class), so that rare classes are as readable as
            frequent ones; the annotations stay raw counts (with the row percentage when normalized).

    Returns:
        `matplotlib.figure.Figure`: The figure that was saved.
    """
    counts = np.asarray(confusion_matrix, dtype=np.float64)
    if counts.ndim != 2 or counts.shape[0] != counts.shape[1]:
        raise ValueError(f"confusion_matrix must be square (num_labels x num_labels), got shape {counts.shape}.")
    labels = [str(label) for label in labels]
    if len(labels) != counts.shape[0]:
        raise ValueError(f"Got {len(labels)} labels for a {counts.shape[0]}x{counts.shape[0]} confusion matrix.")
    n = counts.shape[0]
    row_sums = counts.sum(axis=1, keepdims=True)
    if normalize:
        # A class with no examples has an all-zero row: colour it 0 instead of dividing by zero.
        values = np.divide(counts, row_sums, out=np.zeros_like(counts), where=row_sums > 0)
        vmax = 1.0
    else:
        values = counts
        vmax = max(float(counts.max()), 1.0)

    # Size grows with the number of classes; long names ("T-shirt/top") get room from rotated x labels.
    longest = max((len(label) for label in labels), default=1)
    side = max(4.5, 0.62 * n + 0.09 * longest + 2.0)
    figure = Figure(figsize=(side + 1.2, side), layout="constrained")
    axes = figure.add_subplot()
    image = axes.imshow(values, cmap="Blues", vmin=0.0, vmax=vmax, interpolation="nearest")
    colorbar = figure.colorbar(image, ax=axes, fraction=0.046, pad=0.04)
    colorbar.set_label("fraction of true class" if normalize else "examples")

    font_size = max(5.5, min(10.0, 95.0 / max(n, 1)))
    integral = bool(np.all(np.equal(np.mod(counts, 1), 0)))
    for i in range(n):
        for j in range(n):
            count = f"{int(counts[i, j])}" if integral else f"{counts[i, j]:.2f}"
            text = f"{count}\n{values[i, j]:.0%}" if normalize and row_sums[i, 0] > 0 and n <= 12 else count
            dark = values[i, j] > 0.55 * vmax
            axes.text(j, i, text, ha="center", va="center", fontsize=font_size, color="white" if dark else "black")
    axes.set_xticks(range(n), labels, rotation=45, ha="right", rotation_mode="anchor")
    axes.set_yticks(range(n), labels)
    axes.set_xlabel("Predicted label")
    axes.set_ylabel("True label")
    total = int(counts.sum()) if integral else counts.sum()
    axes.set_title(title if title is not None else f"Confusion matrix ({total} examples)")
    _save_png_atomic(figure, path)
    return figure


@dataclass
class TrainingCurveSeries:
    """The points of [`plot_training_curves`], on a cumulative epoch axis across stages.

    Attributes:
        train_loss / eval_loss / eval_accuracy (`list[tuple[float, float]]`): `(cumulative epoch, value)` points.
        stages (`list[tuple[str, float, float]]`): `(stage name, start epoch, end epoch)` per stage.
    """

    train_loss: list[tuple[float, float]] = field(default_factory=list)
    eval_loss: list[tuple[float, float]] = field(default_factory=list)
    eval_accuracy: list[tuple[float, float]] = field(default_factory=list)
    stages: list[tuple[str, float, float]] = field(default_factory=list)

    @property
    def boundaries(self) -> list[float]:
        """Cumulative epochs where a stage after the first begins."""
        return [start for _, start, _ in self.stages[1:]]


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def training_curve_series(history: Sequence[Mapping[str, Any]]) -> TrainingCurveSeries:
    """Extract the train/eval loss and eval accuracy points of a staged run, offset to a cumulative epoch axis.

    Args:
        history (`list[dict]`):
            The content of `output_dir/history.json`: one record per stage, in order, `{"stage": name, "epochs":
            float, "log_history": Trainer.state.log_history}`. Each stage's epochs restart near 0, so a stage is
            offset by the sum of the previous stages' `epochs` (or, when missing, the last epoch it logged).
    """
    if isinstance(history, Mapping):
        raise TypeError("history must be a list of stage records ({'stage', 'epochs', 'log_history'}), got a dict.")
    series = TrainingCurveSeries()
    offset = 0.0
    for index, record in enumerate(history):
        name = str(record.get("stage") or f"stage {index + 1}")
        log_history = record.get("log_history") or []
        logged_epochs = [entry["epoch"] for entry in log_history if _finite(entry.get("epoch"))]
        epochs = record.get("epochs")
        length = float(epochs) if _finite(epochs) and epochs > 0 else max(logged_epochs, default=0.0)
        for entry in log_history:
            if not _finite(entry.get("epoch")):
                continue
            x = offset + float(entry["epoch"])
            if _finite(entry.get("loss")) and "eval_loss" not in entry:  # train logging (not the final summary)
                series.train_loss.append((x, float(entry["loss"])))
            if _finite(entry.get("eval_loss")):
                series.eval_loss.append((x, float(entry["eval_loss"])))
            if _finite(entry.get("eval_accuracy")):
                series.eval_accuracy.append((x, float(entry["eval_accuracy"])))
        series.stages.append((name, offset, offset + length))
        offset += length
    return series


def _plot_series(axes, points: list[tuple[float, float]], label: str, **style) -> None:
    if not points:
        return
    xs, ys = zip(*points)
    # A marker keeps a single point (one eval in a stage, one logging step) visible.
    axes.plot(xs, ys, label=label, marker="o", markersize=3.5 if len(points) > 1 else 6, **style)


def plot_training_curves(history: Sequence[Mapping[str, Any]], path: str | Path) -> Figure:
    """Plot loss (train and eval) and eval accuracy per cumulative epoch, with stage boundaries, and write a PNG.

    Args:
        history (`list[dict]`):
            Stage records as written to `output_dir/history.json` (see [`training_curve_series`]).
        path (`str` or `Path`):
            Where to write the PNG (written atomically).

    Returns:
        `matplotlib.figure.Figure`: The saved figure; `figure.axes[0]` is the loss plot, `figure.axes[1]` accuracy.
        Each line's label is `"train loss"`, `"eval loss"` or `"eval accuracy"`.
    """
    series = training_curve_series(history)
    figure = Figure(figsize=(11, 4.2), layout="constrained")
    loss_axes, accuracy_axes = figure.subplots(1, 2)
    _plot_series(loss_axes, series.train_loss, "train loss", color="tab:blue", linewidth=1.2)
    _plot_series(loss_axes, series.eval_loss, "eval loss", color="tab:orange", linewidth=1.6)
    _plot_series(accuracy_axes, series.eval_accuracy, "eval accuracy", color="tab:green", linewidth=1.6)
    loss_axes.set_title("Loss", pad=16)  # room for the stage names
    loss_axes.set_ylabel("loss")
    accuracy_axes.set_title("Evaluation accuracy", pad=16)
    accuracy_axes.set_ylabel("accuracy")
    if not series.eval_accuracy:
        accuracy_axes.text(
            0.5, 0.5, "no evaluation logged", ha="center", va="center", transform=accuracy_axes.transAxes
        )
    end = max((stop for _, _, stop in series.stages), default=1.0)
    for axes in (loss_axes, accuracy_axes):
        axes.set_xlabel("epoch (cumulative over stages)")
        axes.set_xlim(0.0, max(end, 1e-6) * 1.02)
        axes.grid(alpha=0.3)
        # Stage names centred above their span, boundaries as dashed vertical lines.
        label_transform = blended_transform_factory(axes.transData, axes.transAxes)
        for i, (name, start, stop) in enumerate(series.stages):
            if i > 0:
                axes.axvline(start, color="0.35", linestyle="--", linewidth=1.0)
            axes.text((start + stop) / 2, 1.0, name, transform=label_transform, ha="center", va="bottom", fontsize=8)
        if any(not line.get_label().startswith("_") for line in axes.get_lines()):
            axes.legend(loc="best", fontsize=8)
    if not series.train_loss and not series.eval_loss:
        loss_axes.text(0.5, 0.5, "no loss logged", ha="center", va="center", transform=loss_axes.transAxes)
    _save_png_atomic(figure, path)
    return figure


__all__ = ["TrainingCurveSeries", "plot_confusion_matrix", "plot_training_curves", "training_curve_series"]
