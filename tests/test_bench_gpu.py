"""`bench/bench_gpu.py`'s CPU smoke run: the same code as the GPU check, tiny sizes, its own output file."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.slow


def positive(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0


def test_cpu_smoke_run_writes_every_section(tmp_path):
    output = tmp_path / "gpu.json"
    command = [
        sys.executable,
        str(REPO / "bench" / "bench_gpu.py"),
        "--quick",
        "--device",
        "cpu",
        "--image-size",
        "32",
        "--steps",
        "1",
        "--repeats",
        "1",
        "--warmup-steps",
        "1",
        "--batch-sizes",
        "2",
        "--data-images",
        "48",
        "--threads",
        "1",
        "--output",
        str(output),
    ]
    completed = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    result = json.loads(output.read_text())

    assert result["benchmark"] == "gpu"
    assert result["status"] == "complete"
    assert all(section["status"] == "ok" for section in result["sections"]), result["sections"]
    # One progress line per section.
    assert sum(line.startswith("[gpu] ") for line in completed.stdout.splitlines()) >= len(result["sections"])

    assumptions = result["assumptions"]
    assert assumptions["gmacs_per_image_forward"] == pytest.approx(15.47 * (32 / 224) ** 2, rel=1e-3)
    assert assumptions["flops_per_image_finetune"] == pytest.approx(3 * assumptions["flops_per_image_extract"])
    assert assumptions["peak_tflops"] is None  # CPU: no tabled peak, so no MFU

    model = result["model"]
    assert model["class"] == "TransferForImageClassification"
    assert model["backbone"] == "vgg16" and model["weights"]
    assert positive(model["parameters"]) and positive(model["counted_gmacs_forward_per_image"])

    rows = {(row["task"], row["mode"]): row for row in result["throughput"]}
    assert set(rows) == {("finetune", "eager"), ("extract", "eager")}  # compile is off by default on CPU
    for row in rows.values():
        assert row["model"] == "hftransfer" and row["batch_size"] == 2 and row["finite"]
        assert positive(row["img_s"]) and positive(row["step_ms"]) and row["mfu"] is None

    pipeline = result["data_pipeline"]
    assert positive(pipeline["img_s_per_core"]) and positive(pipeline["img_s_per_core_no_augmentation"])
    assert pipeline["workers"] == 1 and pipeline["augmentation"] == "strong"
    assert {run["augmentation"] for run in pipeline["runs"]} == {"strong", "none"}
    assert all(run["pixel_values_shape"] == [3, 32, 32] for run in pipeline["runs"])

    summary = result["summary"]
    assert positive(summary["best_finetune"]["img_s"]) and positive(summary["best_extract"]["img_s"])
    assert positive(summary["cores_needed_to_feed_finetune"]) and positive(summary["cores_needed_to_feed_extract"])
    assert summary["goal_met"] is None
    assert result["distributed"]["status"] == "skipped"


def test_budget_skips_sections_and_records_why(tmp_path):
    output = tmp_path / "gpu.json"
    command = [sys.executable, str(REPO / "bench" / "bench_gpu.py"), "--smoke", "--budget-s", "1"]
    command += ["--hard-limit-s", "600", "--threads", "1", "--output", str(output)]
    completed = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    result = json.loads(output.read_text())
    sections = {section["name"]: section for section in result["sections"]}
    assert sections["setup: build model"]["status"] == "ok"  # always runs
    skipped = [s for s in result["sections"] if s["status"] == "skipped"]
    assert skipped and all("time budget" in s["reason"] for s in skipped)
    assert result["throughput"] == []
