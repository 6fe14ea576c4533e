"""The `hftransfer` command line, as a user sees it: subprocess runs of `python -m hftransfer ...` (started together,
so that their interpreter start-ups overlap) and in-process `main([...])` calls for the remaining cases."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import PIL.Image
import pyarrow.parquet as pq
import pytest
import torch
import yaml
from testing_common import FASHION_PARQUET, save_tiny_model

from hftransfer.cli import main, recipe_keys_help
from hftransfer.errors import HfTransferError, TrainingError
from hftransfer.inference import evaluate_model, predict
from hftransfer.recipes import SECTIONS, RecipeError, StageArguments

CLASSES = ("Trouser", "Bag", "Sneaker")
FASHION_IDS = {"Trouser": 1, "Sneaker": 7, "Bag": 8}
SUBPROCESS_TIMEOUT_S = 240


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> SimpleNamespace:
    """A tiny saved model, real Fashion-MNIST PNGs (a folder of 9 + a labelled train/test folder) and a bad file."""
    root = tmp_path_factory.mktemp("cli")
    torch.manual_seed(0)
    # initializer_range: the default 0.01 gives near-uniform probabilities, ranking would be meaningless.
    model_dir = save_tiny_model(root / "model", CLASSES, initializer_range=0.3)

    rows = pq.read_table(FASHION_PARQUET, columns=["image", "label", "split"]).to_pylist()
    counts: dict[tuple[str, str], int] = {}
    for row in rows:
        for name, label in FASHION_IDS.items():
            if row["label"] != label:
                continue
            key = (row["split"], name)
            index = counts.get(key, 0)
            if index >= 4:
                continue
            counts[key] = index + 1
            labelled = root / "labelled" / row["split"] / name / f"{index}.png"
            labelled.parent.mkdir(parents=True, exist_ok=True)
            labelled.write_bytes(row["image"]["bytes"])
            if row["split"] == "test" and index < 3:
                image = root / "images" / name.lower() / f"{index}.png"
                image.parent.mkdir(parents=True, exist_ok=True)
                image.write_bytes(row["image"]["bytes"])
    rgb = root / "images" / "photo.jpg"
    PIL.Image.fromarray(np.random.default_rng(0).integers(0, 256, (48, 40, 3), dtype=np.uint8)).save(rgb)
    broken = root / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n" + b"truncated")
    return SimpleNamespace(
        root=root, model=model_dir, images=root / "images", labelled=root / "labelled", broken=broken
    )


class CliRuns:
    """`python -m hftransfer ARGS` processes, all started at once; `runs[name]` waits for one and returns it."""

    def __init__(self, commands: dict[str, list[str]], cwd: Path):
        env = {**os.environ, "PYTHONWARNINGS": "ignore"}
        env.pop("HFTRANSFER_DEBUG", None)
        self._processes = {
            name: subprocess.Popen(
                [sys.executable, "-m", "hftransfer", *map(str, args)],
                cwd=cwd,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for name, args in commands.items()
        }
        self._done: dict[str, subprocess.CompletedProcess] = {}

    def __getitem__(self, name: str) -> subprocess.CompletedProcess:
        if name not in self._done:
            process = self._processes[name]
            stdout, stderr = process.communicate(timeout=SUBPROCESS_TIMEOUT_S)
            self._done[name] = subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)
        return self._done[name]

    def close(self) -> None:
        for process in self._processes.values():
            if process.poll() is None:
                process.kill()
                process.communicate()


@pytest.fixture(scope="module")
def runs(workspace):
    w = workspace
    cli = CliRuns(
        {
            "help": ["--help"],
            "train_help": ["train", "--help"],
            "mistyped_key": ["train", "quickstart", "--model.imag_size", "64"],
            "predict": ["predict", w.model, w.images, "--top-k", "2", "--batch-size", "4"],
            "evaluate": ["evaluate", w.model, "--data", w.labelled, "--json", "--output-dir", w.root / "eval-sub"],
        },
        cwd=w.root,
    )
    yield cli
    cli.close()


def assert_clean_failure(result: subprocess.CompletedProcess, code: int) -> str:
    assert result.returncode == code, result.stderr
    assert "Traceback" not in result.stderr
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert lines[-1].startswith("error: ")
    return lines[-1]


# --- subprocess runs ------------------------------------------------------------------------------------------------


def test_help_lists_commands(runs):
    result = runs["help"]
    assert result.returncode == 0, result.stderr
    for command in ("train", "evaluate", "predict", "push", "card", "weights"):
        assert f"    {command} " in result.stdout
    assert result.stdout.startswith("usage: hftransfer ")


def test_train_help_documents_every_recipe_key(runs):
    result = runs["train_help"]
    assert result.returncode == 0, result.stderr
    text = result.stdout
    for section, cls in SECTIONS.items():
        for field in dataclasses.fields(cls):
            if not field.metadata.get("passthrough"):  # the TrainingArguments pass-through is listed on its own
                assert f"--{section}.{field.name} " in text, field.name
    for field in dataclasses.fields(StageArguments):
        if not field.metadata.get("passthrough"):
            assert f"--stages.<index|name>.{field.name} " in text, field.name
    assert "--model.image_size INT (default 224): Square input resolution" in text
    assert "--model.hidden_sizes LIST[INT] (default [1024])" in text
    assert "--stages.<index|name>.learning_rate FLOAT (default 0.001)" in text
    for recipe in ("quickstart", "keras-seed", "vgg16-finetune", "fusion", "resnet50-finetune"):
        assert recipe in text
    assert "--resume" in text


def test_mistyped_recipe_key_exits_2_with_suggestion(runs):
    line = assert_clean_failure(runs["mistyped_key"], 2)
    assert "model.imag_size" in line and "Did you mean 'image_size'?" in line


def _parse_tsv(stdout: str) -> dict[str, list[tuple[str, float]]]:
    rows: dict[str, list[tuple[str, float]]] = {}
    for line in stdout.strip().splitlines():
        path, label, score = line.split("\t")
        rows.setdefault(path, []).append((label, float(score)))
    return rows


def test_predict_prints_top_k_equal_to_in_process(runs, workspace):
    result = runs["predict"]
    assert result.returncode == 0, result.stderr
    rows = _parse_tsv(result.stdout)
    expected = predict(workspace.model, [workspace.images], top_k=2)
    assert list(rows) == [r["path"] for r in expected]  # every image, in sorted path order
    assert len(rows) == 10
    for want in expected:
        got = rows[want["path"]]
        assert [label for label, _ in got] == [p["label"] for p in want["predictions"]]
        assert [score for _, score in got] == pytest.approx([p["score"] for p in want["predictions"]], abs=2e-6)
        assert all(label in CLASSES for label, _ in got)
        assert all(0.0 <= score <= 1.0 for _, score in got)
        assert got[0][1] >= got[1][1]  # best first


def test_evaluate_json_and_files(runs, workspace):
    result = runs["evaluate"]
    assert result.returncode == 0, result.stderr
    metrics = json.loads(result.stdout)
    expected = evaluate_model(workspace.model, workspace.labelled, split="test")
    assert metrics["confusion_matrix"] == expected["confusion_matrix"]
    assert metrics["num_samples"] == 12
    for key in ("accuracy", "f1", "precision", "recall", "loss"):
        assert metrics[key] == pytest.approx(expected[key], abs=1e-5)
    out = workspace.root / "eval-sub"
    assert json.loads((out / "metrics.json").read_text()) == metrics
    assert (out / "confusion_matrix.png").read_bytes().startswith(b"\x89PNG")
    assert f"wrote {out / 'metrics.json'}" in result.stderr


# --- in-process runs ------------------------------------------------------------------------------------------------


def test_predict_json(workspace, capsys):
    inputs = [workspace.images / "bag", workspace.images / "photo.jpg"]
    assert (
        main(["predict", str(workspace.model), *map(str, inputs), "--json", "--top-k", "3", "--batch-size", "2"]) == 0
    )
    got = json.loads(capsys.readouterr().out)
    expected = predict(workspace.model, inputs, top_k=3)
    assert [r["path"] for r in got] == [r["path"] for r in expected]
    assert len(got) == 4 and got[-1]["path"].endswith("photo.jpg")
    for got_one, want in zip(got, expected):
        scores = [p["score"] for p in got_one["predictions"]]
        assert scores == sorted(scores, reverse=True) and sum(scores) == pytest.approx(1.0, abs=1e-5)
        assert [p["label"] for p in got_one["predictions"]] == [p["label"] for p in want["predictions"]]
        assert scores == pytest.approx([p["score"] for p in want["predictions"]], abs=1e-5)


def test_predict_bad_image_is_one_clear_line(workspace, capsys):
    assert main(["predict", str(workspace.model), str(workspace.images / "photo.jpg"), str(workspace.broken)]) == 1
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1 and err.startswith("error: cannot read image ")
    assert str(workspace.broken) in err and "--skip-bad" in err


def test_predict_skip_bad_reports_and_continues(workspace, capsys, caplog):
    argv = ["predict", str(workspace.model), str(workspace.images / "photo.jpg"), str(workspace.broken), "--skip-bad"]
    with caplog.at_level("WARNING", logger="hftransfer"):
        assert main(argv) == 0
    out, err = capsys.readouterr()
    assert out.startswith(f"{workspace.images / 'photo.jpg'}\t") and out.count("\n") == 1
    assert "1 images predicted, 1 skipped" in err
    assert str(workspace.broken) in caplog.text and "Skipped 1 bad image(s)" in caplog.text


def test_evaluate_text_output_and_default_dir(workspace, capsys):
    assert main(["evaluate", str(workspace.model), "--data", str(workspace.labelled), "--batch-size", "5"]) == 0
    out, _ = capsys.readouterr()
    metrics = json.loads((workspace.model / "eval-test" / "metrics.json").read_text())
    assert f"accuracy   {metrics['accuracy']:.4f}" in out
    assert f"f1         {metrics['f1']:.4f} (macro)" in out
    for name in CLASSES:
        assert f"  {name}" in out
    assert "(4 images)" in out
    assert (workspace.model / "eval-test" / "confusion_matrix.png").is_file()


def test_missing_model_is_one_clear_line(workspace, capsys):
    missing = workspace.root / "no-such-model"
    assert main(["predict", str(missing), str(workspace.images)]) == 1
    _, err = capsys.readouterr()
    assert err.strip() == f"error: Model folder {missing} does not exist (and it is not a Hub repo id)."


def test_train_overrides_anywhere_and_print_recipe(capsys):
    argv = ["train", "--training.output_dir=runs/q1", "quickstart", "--print-recipe", "--stages.finetune.epochs", "2"]
    assert main([*argv, "--model.hidden_sizes", "[64, 32]", "--stages.0.learning_rate", "1e-2"]) == 0
    recipe = yaml.safe_load(capsys.readouterr().out)
    assert recipe["training"]["output_dir"] == "runs/q1"
    assert recipe["stages"][1]["epochs"] == 2.0
    assert recipe["stages"][0]["learning_rate"] == 0.01
    assert recipe["model"]["hidden_sizes"] == [64, 32]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (
            ["train", "quickstart", "--resum"],
            "Unknown option '--resum' for 'hftransfer train'. Did you mean '--resume'?",
        ),
        (["train", "quikstart"], "is neither a file nor a shipped recipe"),
        (["train", "quickstart", "--stages.nope.epochs", "1"], "no stage 'nope'"),
        (["train", "quickstart", "--model.image_size", "big"], "model.image_size='big' is invalid: expected int."),
        (["train", "quickstart", "--modle.image_size", "32"], "Did you mean 'model'?"),
    ],
)
def test_train_recipe_errors_exit_2(argv, message, capsys):
    assert main(argv) == 2
    out, err = capsys.readouterr()
    assert out == "" and message in err and err.count("\n") == 1


def test_train_calls_training_with_recipe_and_resume(monkeypatch, tmp_path, capsys):
    import hftransfer.training

    calls = []

    def fake_train(recipe, resume=False, allow_recipe_changes=()):
        calls.append((recipe, resume))
        return SimpleNamespace(output_dir=tmp_path, metrics={"final": {"test": {"accuracy": 0.75, "loss": 0.5}}})

    monkeypatch.setattr(hftransfer.training, "train", fake_train)
    assert main(["train", "quickstart", "--resume", "--training.output_dir", str(tmp_path)]) == 0
    [(recipe, resume)] = calls
    assert resume is True and recipe.name == "quickstart" and recipe.training.output_dir == str(tmp_path)
    assert capsys.readouterr().out == f"Trained quickstart: {tmp_path} (accuracy 0.7500, loss 0.5000)\n"


def test_card_and_push_delegate(monkeypatch, tmp_path, capsys):
    import hftransfer.cards

    seen = {}
    monkeypatch.setattr(
        hftransfer.cards, "render_model_card", lambda d, repo_id=None, write=True: seen.update(card=(d, repo_id))
    )
    assert main(["card", str(tmp_path), "--repo-id", "me/model"]) == 0
    assert seen["card"] == (str(tmp_path), "me/model")
    assert capsys.readouterr().out == f"{tmp_path / 'README.md'}\n"

    import hftransfer.hub as hub

    monkeypatch.setattr(hub, "push_to_hub", lambda *a, **k: seen.update(push=(a, k)) or "https://hub.example/me/model")
    assert main(["push", str(tmp_path), "--repo-id", "me/model", "--private", "--revision", "dev"]) == 0
    assert seen["push"] == ((str(tmp_path), "me/model"), {"private": True, "revision": "dev", "token": None})
    assert capsys.readouterr().out == "https://hub.example/me/model\n"
    assert main(["push", str(tmp_path), "--repo-id", "me/model", "--commit-message", "v2", "--token", "hf_x"]) == 0
    assert seen["push"][1] == {"private": False, "revision": None, "token": "hf_x", "commit_message": "v2"}
    assert main(["push", str(tmp_path / "missing"), "--repo-id", "me/model"]) == 1
    assert f"Output folder {tmp_path / 'missing'} does not exist." in capsys.readouterr().err


def test_weights_delegates_its_arguments(monkeypatch, capsys):
    import hftransfer.weights

    with pytest.raises(SystemExit) as exit_info:
        main(["weights", "--help"])
    assert exit_info.value.code == 0
    assert "usage: hftransfer weights" in capsys.readouterr().out
    seen = []
    monkeypatch.setattr(hftransfer.weights, "main_weights", lambda argv: seen.append(list(argv)) or 0)
    assert main(["weights", "--source", "model.h5", "--json"]) == 0
    assert seen == [["--source", "model.h5", "--json"]]


def test_recipe_keys_help_is_generated_from_metadata():
    text = recipe_keys_help()
    assert "  --data.max_train_samples INT (default null): Truncate train (quick experiments)." in text
    assert "--stages.<index|name>.trainable STR (default head):" in text


def test_every_command_is_a_module_with_register_and_run():
    import importlib

    from hftransfer.cli import build_parser
    from hftransfer.commands import COMMANDS

    subparsers = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    assert list(subparsers.choices) == list(COMMANDS)
    for command in COMMANDS:
        module = importlib.import_module(f"hftransfer.commands.{command}")
        assert callable(module.register) and callable(module.run)
        assert subparsers.choices[command].get_default("func") is module.run


@pytest.mark.parametrize(
    ("error", "code", "line"),
    [
        (HfTransferError("ours, explained"), 1, "error: ours, explained"),
        (TrainingError("the run stopped"), 1, "error: the run stopped"),
        (FileNotFoundError("no such folder"), 1, "error: no such folder"),
        (ValueError("from elsewhere"), 1, "error: from elsewhere (ValueError; --debug shows the traceback)"),
        (RuntimeError(""), 1, "error: RuntimeError (RuntimeError; --debug shows the traceback)"),
        (RecipeError("bad key"), 2, "error: bad key"),
    ],
)
def test_errors_map_to_one_line_and_exit_code(monkeypatch, capsys, error, code, line):
    import hftransfer.cards

    def fail(*args, **kwargs):
        raise error

    monkeypatch.setattr(hftransfer.cards, "render_model_card", fail)
    monkeypatch.delenv("HFTRANSFER_DEBUG", raising=False)
    assert main(["card", "somewhere"]) == code
    assert capsys.readouterr().err == line + "\n"
    with pytest.raises(type(error)):
        main(["card", "somewhere", "--debug"])
