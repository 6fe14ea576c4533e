"""SIGKILL during stage 2, then `--resume`: the run completes with the metrics (and the selected model) of an
uninterrupted run."""

import json
import signal
import subprocess
import sys
import time

import pytest
import yaml
from safetensors.torch import load_file

pytestmark = pytest.mark.slow


def _write_recipe(make_recipe, path, output_dir, cache_dir):
    recipe = make_recipe(
        output_dir,
        cache_dir,
        data={"max_train_samples": 96, "max_eval_samples": 32},
        stages=[
            {"name": "frozen", "epochs": 1, "learning_rate": 0.003, "trainable": "head"},
            {
                "name": "finetune",
                "max_steps": 12,
                "learning_rate": 0.001,
                "trainable": "last_k",
                "last_k_blocks": 1,
                "backbone_lr_scale": 0.1,
                "lr_scheduler_type": "linear",
            },
        ],
        training={
            "per_device_train_batch_size": 16,
            "save_strategy": "steps",
            "save_steps": 2,
            # Model selection on: evaluations every 2 steps (eval_steps follows logging_steps) pick the final model.
            "eval_strategy": "steps",
            "logging_steps": 2,
            "save_total_limit": 10,
        },
    )
    path.write_text(yaml.safe_dump(recipe))
    return path


def _train(recipe_path, *extra, wait=True):
    command = [sys.executable, "-m", "hftransfer", "train", str(recipe_path), *extra]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if wait:
        output, _ = process.communicate(timeout=900)
        assert process.returncode == 0, output[-4000:]
    return process


def test_sigkill_in_stage_two_then_resume_matches_an_uninterrupted_run(tmp_path, make_recipe, feature_cache_dir):
    reference = _write_recipe(make_recipe, tmp_path / "reference.yaml", tmp_path / "reference", feature_cache_dir)
    interrupted = _write_recipe(
        make_recipe, tmp_path / "interrupted.yaml", tmp_path / "interrupted", feature_cache_dir
    )
    _train(reference)

    process = _train(interrupted, wait=False)
    stage_two = tmp_path / "interrupted" / "stages" / "01-finetune"
    deadline = time.monotonic() + 600
    while not list(stage_two.glob("checkpoint-*/hftransfer_stage.json")):
        assert process.poll() is None, process.stdout.read()[-4000:]
        assert time.monotonic() < deadline, "stage 2 never wrote a checkpoint"
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL
    assert not (stage_two / "stage_complete.json").exists(), "the kill must land inside stage 2"
    assert not (tmp_path / "interrupted" / "metrics.json").exists()

    # Without --resume the interrupted run is protected, not overwritten.
    refused = subprocess.run(
        [sys.executable, "-m", "hftransfer", "train", str(interrupted)], capture_output=True, text=True, timeout=600
    )
    assert refused.returncode != 0 and "--resume" in refused.stderr

    _train(interrupted, "--resume")
    expected = json.loads((tmp_path / "reference" / "metrics.json").read_text())
    got = json.loads((tmp_path / "interrupted" / "metrics.json").read_text())
    for split in ("validation", "test"):
        assert abs(got["final"][split]["accuracy"] - expected["final"][split]["accuracy"]) * 100 <= 0.5
        assert got["final"][split]["loss"] == pytest.approx(expected["final"][split]["loss"], abs=5e-3)
    assert got["stages"][1]["global_steps"] == expected["stages"][1]["global_steps"] == 12
    # The resumed run selects the same evaluation (stage, step, value) as the uninterrupted one.
    assert got["selected"] == expected["selected"]

    # Every checkpoint left behind is complete and loadable; no temp files anywhere.
    for checkpoint in stage_two.glob("checkpoint-*"):
        if (checkpoint / "hftransfer_stage.json").exists():
            assert load_file(str(checkpoint / "model.safetensors"))
            assert (checkpoint / "optimizer.pt").exists() and (checkpoint / "trainer_state.json").exists()
    assert not list((tmp_path / "interrupted").rglob("*.tmp"))
    assert load_file(str(tmp_path / "interrupted" / "model.safetensors"))


# --- issue 10, item 2: --resume continues the recipe that ran, nothing else ------------------------------------------


def _files(folder):
    # Everything in the run folder but the lock file (which records the last process that held the lock).
    return {
        str(p.relative_to(folder)): (p.read_bytes(), p.stat().st_mtime_ns)
        for p in folder.rglob("*")
        if p.is_file() and p.name != ".hftransfer.lock"
    }


def test_resume_refuses_a_recipe_that_trains_differently_and_writes_nothing(
    tmp_path, make_recipe, feature_cache_dir, capsys
):
    from hftransfer.cli import main

    output_dir = tmp_path / "out"
    recipe = make_recipe(
        output_dir,
        feature_cache_dir,
        data={"max_train_samples": 32, "max_eval_samples": 32},
        stages=[{"name": "frozen", "epochs": 1, "learning_rate": 0.003, "trainable": "head"}],
    )
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    assert main(["train", str(path)]) == 0, capsys.readouterr().err[-3000:]
    capsys.readouterr()
    before = _files(output_dir)

    changed = [
        "--stages.frozen.learning_rate",
        "0.01",
        "--data.dataset",
        str(tmp_path / "other-images"),
        "--model.hidden_sizes",
        "[64]",
    ]
    code = main(["train", str(path), "--resume", *changed])
    err = capsys.readouterr().err
    assert code == 2, err[-3000:]
    message = next(line for line in err.splitlines() if line.startswith("error: "))
    assert "differs from the one that ran in " + str(output_dir) in message
    for expected in (
        "data.dataset: 'fashion-mnist-subset' -> ",
        "model.hidden_sizes: [32] -> [64]",
        "stages.frozen.learning_rate: 0.003 -> 0.01",
        "--allow-recipe-changes data.dataset,model.hidden_sizes,stages.frozen.learning_rate",
    ):
        assert expected in message, message
    assert _files(output_dir) == before, "a refused resume writes nothing (recipe.yaml included)"

    # Safe keys may change; others only when allowed explicitly. recipe.yaml then records the recipe that ran on.
    code = main(
        [
            "train",
            str(path),
            "--resume",
            "--training.logging_steps",
            "5",
            "--description",
            "resumed",
            "--stages.frozen.epochs",
            "1.0",
            "--training.seed",
            "7",
            "--allow-recipe-changes",
            "training.seed",
        ]
    )
    assert code == 0, capsys.readouterr().err[-3000:]
    ran = yaml.safe_load((output_dir / "recipe.yaml").read_text())
    assert ran["training"]["logging_steps"] == 5 and ran["training"]["seed"] == 7
    assert ran["description"] == "resumed"
