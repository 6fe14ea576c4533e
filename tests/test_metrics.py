"""Metrics through the shipped `evaluate` module: values against scikit-learn, orientation, offline loading."""

import ast
import json
import socket
import time
from pathlib import Path

import numpy as np
import pytest
from sklearn import metrics as sk

from hftransfer import metrics as hm

ID2LABEL = {"0": "T-shirt/top", "1": "Trouser", "2": "Pullover", "3": "Dress", "4": "Ankle boot"}


@pytest.fixture(scope="module")
def random_predictions():
    rng = np.random.default_rng(1234)
    references = rng.integers(0, 5, size=300)
    # Mostly right, and class 3 is never predicted: its precision is 0/0 (sklearn zero_division=0 -> 0).
    predictions = np.where(rng.random(300) < 0.6, references, rng.integers(0, 5, size=300))
    predictions[predictions == 3] = 1
    assert 3 in references and 3 not in predictions
    return predictions, references


def test_matches_sklearn(random_predictions):
    predictions, references = random_predictions
    result = hm.compute_classification_metrics(predictions, references, ID2LABEL)
    assert result["accuracy"] == pytest.approx(sk.accuracy_score(references, predictions), abs=1e-12)
    for name, fn in (("f1", sk.f1_score), ("precision", sk.precision_score), ("recall", sk.recall_score)):
        expected = fn(references, predictions, average="macro", zero_division=0)
        assert result[name] == pytest.approx(expected, abs=1e-12), name
    expected_cm = sk.confusion_matrix(references, predictions, labels=list(range(5)))
    assert result["confusion_matrix"] == expected_cm.tolist()
    per_class = sk.recall_score(references, predictions, average=None, labels=list(range(5)), zero_division=0)
    assert list(result["per_class_accuracy"]) == list(ID2LABEL.values())
    assert list(result["per_class_accuracy"].values()) == pytest.approx(per_class.tolist(), abs=1e-12)
    assert result["per_class_accuracy"]["Dress"] == 0.0
    assert result["num_samples"] == 300
    json.dumps(result)  # JSON-serializable as is (metrics.json)


def test_modules_match_sklearn_options(random_predictions):
    predictions, references = random_predictions
    for name, fn in (("f1", sk.f1_score), ("precision", sk.precision_score), ("recall", sk.recall_score)):
        module = hm.load_metric(name)
        for average in ("weighted", "micro", None):
            got = module.compute(predictions=predictions, references=references, average=average)[name]
            expected = fn(references, predictions, average=average, zero_division=0)
            assert np.allclose(got, expected), (name, average)
        got = module.compute(predictions=predictions, references=references, labels=[0, 1, 2, 3, 4, 7])[name]
        expected = fn(references, predictions, labels=[0, 1, 2, 3, 4, 7], average="macro", zero_division=0)
        assert got == pytest.approx(expected)
    weights = np.linspace(0.1, 2.0, predictions.size)
    got = hm.load_metric("accuracy").compute(predictions=predictions, references=references, sample_weight=weights)
    assert got["accuracy"] == pytest.approx(sk.accuracy_score(references, predictions, sample_weight=weights))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_one_module_matches_sklearn_on_random_labels(seed):
    # 7 classes: class 5 never predicted, class 6 in neither predictions nor references (macro averages skip it).
    rng = np.random.default_rng(seed)
    references = rng.integers(0, 6, size=257)
    predictions = np.where(rng.random(257) < 0.5, references, rng.integers(0, 6, size=257))
    predictions[predictions == 5] = 0
    id2label = [f"class {i}" for i in range(7)]
    result = hm.compute_classification_metrics(predictions, references, id2label)
    assert result["accuracy"] == sk.accuracy_score(references, predictions)
    for name, fn in (("f1", sk.f1_score), ("precision", sk.precision_score), ("recall", sk.recall_score)):
        assert result[name] == pytest.approx(fn(references, predictions, average="macro", zero_division=0), abs=1e-15)
    assert result["confusion_matrix"] == sk.confusion_matrix(references, predictions, labels=range(7)).tolist()
    assert result["per_class_accuracy"]["class 5"] == 0.0 and result["per_class_accuracy"]["class 6"] is None
    # The module itself, with the options scikit-learn has: one pass returns every metric.
    module = hm.load_metric()
    weights = rng.random(257)
    for labels in (None, [0, 2, 5, 6, 9]):
        for average in ("macro", "weighted", "micro", None):
            got = module.compute(
                predictions=predictions, references=references, labels=labels, average=average, sample_weight=weights
            )
            for name, fn in (("f1", sk.f1_score), ("precision", sk.precision_score), ("recall", sk.recall_score)):
                expected = fn(
                    references, predictions, labels=labels, average=average, sample_weight=weights, zero_division=0
                )
                assert np.allclose(got[name], expected, rtol=1e-12), (name, labels, average)
        expected_cm = sk.confusion_matrix(references, predictions, labels=labels, sample_weight=weights)
        assert np.allclose(got["confusion_matrix"], expected_cm, rtol=1e-12)
    got = module.compute(predictions=predictions, references=references, sample_weight=weights)
    assert got["accuracy"] == pytest.approx(sk.accuracy_score(references, predictions, sample_weight=weights))
    binary = module.compute(predictions=[0, 1, 1, 0, 1], references=[0, 1, 0, 0, 1], average="binary")
    assert binary["precision"] == sk.precision_score([0, 1, 0, 0, 1], [0, 1, 1, 0, 1])


def test_confusion_matrix_orientation_and_absent_class():
    # True class 0 (x3): predicted 0, 0, 1. True class 1 (x1): predicted 2. Class 2 never appears as a reference.
    result = hm.compute_classification_metrics([0, 0, 1, 2], [0, 0, 0, 1], ["a", "b", "c"])
    assert result["confusion_matrix"] == [[2, 1, 0], [0, 0, 1], [0, 0, 0]]  # rows = true, columns = predicted
    assert result["per_class_accuracy"] == {"a": pytest.approx(2 / 3), "b": 0.0, "c": None}
    assert hm.is_missing(result["per_class_accuracy"]["c"]) and hm.is_missing(float("nan"))
    assert result["accuracy"] == 0.5


def test_logits_and_ignored_labels():
    logits = np.array([[2.0, 0.1, 0.0], [0.0, 3.0, 1.0], [0.0, 0.0, 1.0], [1.0, 0.0, 0.0]])
    result = hm.compute_classification_metrics(logits, [0, 1, 1, -100], {0: "a", 1: "b", 2: "c"})
    assert result["num_samples"] == 3
    assert result["accuracy"] == pytest.approx(2 / 3)


@pytest.mark.parametrize(
    ("predictions", "references", "match"),
    [
        ([0, 1], [0], "same number of examples"),
        ([0, 5], [0, 1], r"predictions contain class ids \[5\]"),
        ([], [], "No examples"),
    ],
)
def test_bad_input(predictions, references, match):
    with pytest.raises(ValueError, match=match):
        hm.compute_classification_metrics(predictions, references, ["a", "b"])


def test_make_compute_metrics(random_predictions):
    from transformers import EvalPrediction

    predictions, references = random_predictions
    compute_metrics = hm.make_compute_metrics(ID2LABEL)
    logits = np.eye(5)[predictions] + 0.01
    out = compute_metrics(EvalPrediction(predictions=logits, label_ids=references))
    assert set(out) == {"accuracy", "f1", "precision", "recall"}
    assert all(isinstance(v, float) for v in out.values())
    assert out["f1"] == pytest.approx(sk.f1_score(references, predictions, average="macro", zero_division=0))
    # Extra model outputs (a tuple) are tolerated: the logits come first.
    assert compute_metrics(EvalPrediction(predictions=(logits, logits), label_ids=references)) == out


def test_modules_loaded_once(monkeypatch):
    import evaluate

    hm.load_metric.cache_clear()
    calls = []
    real_load = evaluate.load
    monkeypatch.setattr(evaluate, "load", lambda *a, **k: calls.append(a[0]) or real_load(*a, **k))
    compute_metrics = hm.make_compute_metrics(["a", "b"])
    for _ in range(3):
        compute_metrics(
            type("P", (), {"predictions": np.array([[1.0, 0.0], [0.0, 1.0]]), "label_ids": np.array([0, 0])})
        )
    assert calls == [hm.metric_module_path("classification")]  # one module gives every metric


def test_loads_offline_without_network(monkeypatch):
    """Local modules need neither HF_EVALUATE_OFFLINE nor a reachable endpoint: every socket is refused here."""
    import evaluate

    assert evaluate.config.HF_EVALUATE_OFFLINE  # set by tests/conftest.py
    monkeypatch.setattr(evaluate.config, "HF_EVALUATE_OFFLINE", False)  # and even without it
    attempts = []

    def refuse(*args, **kwargs):
        attempts.append(args)
        raise OSError("network disabled in this test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    hm.load_metric.cache_clear()
    start = time.perf_counter()
    for name in hm.SHIPPED_METRICS:
        hm.load_metric(name)
    elapsed = time.perf_counter() - start
    result = hm.compute_classification_metrics([0, 1], [0, 1], ["a", "b"])
    assert result["accuracy"] == 1.0
    assert attempts == []
    assert elapsed < 5.0, f"loading the local module took {elapsed:.2f} s"  # ~0.02 s when warm


def test_trainer_reports_eval_metrics(tmp_path):
    import torch
    from torch import nn
    from transformers import Trainer, TrainingArguments

    class Tiny(nn.Module):
        def __init__(self):
            super().__init__()
            self.linear = nn.Linear(4, 3)

        def forward(self, x, labels=None):
            logits = self.linear(x)
            return {"loss": nn.functional.cross_entropy(logits, labels), "logits": logits}

    torch.manual_seed(0)
    data = [{"x": torch.randn(4), "labels": i % 3} for i in range(24)]
    args = TrainingArguments(output_dir=str(tmp_path), per_device_eval_batch_size=8, report_to=[], use_cpu=True)
    model = Tiny()
    trainer = Trainer(
        model=model, args=args, eval_dataset=data, compute_metrics=hm.make_compute_metrics(["a", "b", "c"])
    )
    out = trainer.evaluate()
    with torch.no_grad():
        predictions = model.linear(torch.stack([d["x"] for d in data])).argmax(-1).numpy()
    references = [d["labels"] for d in data]
    assert out["eval_accuracy"] == pytest.approx(sk.accuracy_score(references, predictions))
    assert out["eval_f1"] == pytest.approx(sk.f1_score(references, predictions, average="macro", zero_division=0))
    assert {"eval_precision", "eval_recall", "eval_loss"} <= set(out)


def test_evaluate_is_imported_lazily():
    # `import evaluate` costs seconds: hftransfer.metrics may only import it inside functions (or for type checking).
    tree = ast.parse(Path(hm.__file__).read_text())
    top_level = [node for node in tree.body if isinstance(node, (ast.Import, ast.ImportFrom))]
    names = {alias.name for node in top_level if isinstance(node, ast.Import) for alias in node.names}
    names |= {node.module for node in top_level if isinstance(node, ast.ImportFrom)}
    assert not any(name and name.split(".")[0] == "evaluate" for name in names)
