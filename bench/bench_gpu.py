"""Benchmark 5 -- GPU: VGG16 at 224 px, bf16 autocast, channels_last, eager and `torch.compile`: frozen-backbone
feature extraction images/s and full fine-tuning images/s with model FLOP utilisation (MFU), the data pipeline's
images/s per CPU core, and (optionally) DDP / FSDP through `accelerate launch`.

How to run the GPU check: on the GPU machine, from the repository root, run `python bench/bench_gpu.py --quick`
(`--with-ddp` adds the `accelerate launch` FSDP / DDP checks, about 1 more minute). It needs no network: the model is
hftransfer's `TransferForImageClassification` built by the training code's `build_model_and_processor` (VGG16, the recipe's
default flatten + Dense(1024) head) with the offline Keras-ImageNet weights when this machine has them, else random
init (throughput does not depend on the values; the JSON says which). It writes `bench/results/gpu.json` after every
section, so a killed run still leaves what it measured, and prints one line per section. A hard time budget
(`--budget-s`, 330 s with `--quick`) skips the sections that no longer fit, with the reason recorded, and a
watchdog ends the run at the budget + 20 s whatever it is doing: the whole command takes under 6 minutes (about
30 s of it start-up and eager runs, most of the rest `torch.compile`). Every section runs in try/except: a failure
is recorded in the JSON (`sections[].error`) and the next section runs. A CPU smoke check of the same code (a few
seconds of work, tiny sizes, eager only, its own output file):

    python bench/bench_gpu.py --quick --device cpu --image-size 32 --steps 2 --batch-sizes 2 --output /tmp/gpu.json

What is measured:

- fine-tuning: the training step of a `trainable: all` stage: every parameter trainable (`apply_stage_trainable`),
  AdamW over hftransfer's parameter groups (`build_parameter_groups`; fused on CUDA), forward + loss under bf16
  autocast, backward, step, on a fixed synthetic batch already on the device, channels_last;
- feature extraction: `model.forward_features` (backbone + pooling, what a frozen stage caches) in eval mode under
  `inference_mode` and bf16 autocast;
- each for `--batch-sizes`, eager and `torch.compile(dynamic=False)`; images/s is the median of `--repeats` timed
  runs of `--steps` steps after `--warmup-steps` (compilation happens in the warm-up), `torch.cuda.synchronize`
  around each timed run;
- MFU = images/s x FLOPs per image / dense peak. FLOPs per image: 15.47 GMACs per forward at 224 px (VGG16; scaled by
  (size/224)^2), 2 FLOPs per MAC, a training step 3x the forward: fine-tuning 6 x 15.47 = 92.8 GFLOP/image, feature
  extraction 2 x 15.47 = 30.9 GFLOP/image. Peak: dense (no sparsity) bf16 tensor-core TFLOP/s looked up from the
  device name (H200 / H100 SXM: 989.4, NVIDIA's data sheet; `--peak-tflops` overrides). Goal: fine-tuning >= 40%
  MFU, i.e. >= 0.4 x 989.4e12 / 92.8e9 = 4,264 images/s on an H200 (the JSON states the threshold it used);
- data pipeline: `--data-images` real JPEG photos (crops of the sample photos shipped with matplotlib / scikit-learn,
  500x375 like an ImageNet image, re-encoded at quality 90; synthetic JPEGs when none are installed; or
  `--jpeg-dir`) decoded, resized and augmented to `--image-size` by hftransfer's own `build_transforms` (preset
  `--augmentation`, default `strong`, and `none`) in a `DataLoader` with ONE worker process (one core): images/s per
  core, and cores needed = fine-tuning images/s / images/s per core;
- `--with-ddp`: `accelerate launch --num_processes 1 --use_fsdp` (FSDP2, bf16) and, when there are >= 2 GPUs (or on
  CPU, with gloo), `accelerate launch --multi_gpu --num_processes 2` (DDP) of this script's worker mode, a few
  training steps each: whether it works and images/s. One GPU: DDP is recorded as skipped (2 processes sharing one
  GPU measure nothing useful).

    python bench/bench_gpu.py --quick                # the GPU check: < 6 minutes, writes bench/results/gpu.json
    python bench/bench_gpu.py --quick --with-ddp     # + FSDP (1 process) and DDP (2 GPUs) through accelerate launch
    python bench/bench_gpu.py                        # fuller: batch sizes 64-384, more steps, 20-minute budget
    python bench/bench_gpu.py --smoke                # CPU smoke test: tiny sizes, eager only, nothing written
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import math
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from pathlib import Path
from typing import Any

import _common

NAME = "gpu"
TITLE = (
    "GPU: VGG16 224px bf16 channels_last, eager vs torch.compile: feature extraction and full fine-tuning img/s, MFU; "
    "data pipeline img/s per core; DDP/FSDP via accelerate launch"
)
VGG16_GMACS_224 = 15.47
# Dense (no sparsity) bf16 tensor-core peaks in TFLOP/s, from NVIDIA's data sheets; the most specific name matches
# first (an "NVIDIA H200 NVL" is not an SXM H200).
PEAK_BF16_TFLOPS = {
    "H200 NVL": 835.5,
    "H200": 989.4,
    "GH200": 989.4,
    "H100 NVL": 835.5,
    "H100 PCIe": 756.0,
    "H100": 989.4,
    "B200": 2250.0,
    "A100": 312.0,
    "L40S": 362.1,
    "L4": 121.0,
    "A10G": 70.0,
}
HARD_LIMIT_GRACE_S = 20.0
# Rough minimum seconds a section needs (skipped, with the reason recorded, when less budget is left).
SECTION_COST_S = {"eager": 8.0, "compiled": 45.0, "data": 12.0, "distributed": 40.0, "peer": 10.0}


def parse_args(argv=None):
    parser = _common.base_parser(__doc__.split("\n\n")[0], repeats=3, threads=None)
    parser.add_argument("--quick", action="store_true", help="The GPU check: batch sizes 128,256, 330 s budget.")
    parser.add_argument("--smoke", action="store_true", help="CPU smoke test: 32 px, batch 2, 2 steps, no JSON.")
    parser.add_argument("--device", default="auto", help="auto (cuda when available), cuda, cuda:N or cpu.")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--batch-sizes", default=None, help="Comma-separated (default: 128,256; full: 64-384).")
    parser.add_argument("--steps", type=int, default=None, help="Timed steps per repeat (quick 10, full 20).")
    parser.add_argument("--warmup-steps", type=int, default=None, help="Untimed steps first (compilation).")
    parser.add_argument("--budget-s", type=float, default=None, help="Time budget (quick 330 s, full 1200 s).")
    parser.add_argument(
        "--hard-limit-s", type=float, default=None, help="The watchdog ends the run here (default: budget + 20 s)."
    )
    parser.add_argument("--num-labels", type=int, default=10)
    parser.add_argument("--pooling", default="flatten", help="Head pooling (the recipe default: flatten).")
    parser.add_argument(
        "--weights", default="auto", help="auto (keras-imagenet, else random), keras-imagenet, random."
    )
    parser.add_argument(
        "--dtype", default="auto", choices=["auto", "bf16", "fp16", "fp32"], help="auto: bf16 (CPU: fp32)."
    )
    parser.add_argument("--no-channels-last", action="store_true")
    parser.add_argument("--compile", default=None, choices=["both", "on", "off"], help="Default: both (CPU: off).")
    parser.add_argument("--compile-mode", default="default", help="torch.compile mode, e.g. max-autotune.")
    parser.add_argument("--peak-tflops", type=float, default=None, help="Accelerator dense peak for --dtype.")
    parser.add_argument("--goal-mfu", type=float, default=0.40)
    parser.add_argument("--peer", action="store_true", help="Also measure a plain timm VGG16 with the same head.")
    parser.add_argument("--no-data", action="store_true", help="Skip the data pipeline section.")
    parser.add_argument("--augmentation", default="strong", help="Augmentation preset of the data pipeline.")
    parser.add_argument("--data-images", type=int, default=None, help="JPEGs through the pipeline (quick 512).")
    parser.add_argument("--jpeg-dir", type=Path, default=None, help="Use these JPEGs instead of the sample photos.")
    parser.add_argument("--with-ddp", action="store_true", help="Also FSDP / DDP through accelerate launch.")
    parser.add_argument("--dist-batch-size", type=int, default=None, help="Per-process batch of --with-ddp.")
    parser.add_argument("--worker", default=None, choices=["ddp", "fsdp"], help=argparse_suppress())
    parser.add_argument("--worker-output", type=Path, default=None, help=argparse_suppress())
    args = parser.parse_args(argv)
    full = not (args.quick or args.smoke)
    if args.smoke:
        args.device = "cpu" if args.device == "auto" else args.device
        args.image_size = 32 if args.image_size == 224 else args.image_size
        args.batch_sizes = args.batch_sizes or "2"
        args.steps = args.steps or 2
        args.warmup_steps = 1 if args.warmup_steps is None else args.warmup_steps
        args.repeats = 1
        args.data_images = args.data_images or 32
        args.no_write = args.output is None
    args.batch_sizes = [int(b) for b in str(args.batch_sizes or ("64,128,256,384" if full else "128,256")).split(",")]
    args.steps = args.steps or (20 if full else 10)
    args.warmup_steps = (5 if full else 3) if args.warmup_steps is None else args.warmup_steps
    args.budget_s = args.budget_s or (1200.0 if full else 330.0)
    cpu = args.device == "cpu"  # a smoke check: a few batches through the data pipeline are enough
    args.data_images = args.data_images or (64 if cpu else 1024 if full else 512)
    args.dist_batch_size = args.dist_batch_size or max(args.batch_sizes)
    return args


def argparse_suppress():
    import argparse

    return argparse.SUPPRESS


# --- the results file -------------------------------------------------------------------------------------------


class Results:
    """The JSON being built: sections, throughput rows, data pipeline, distributed; written after every change.

    A lock (re-entrant: the SIGTERM handler runs on the main thread) guards every change and write, so that the
    watchdog thread can write a consistent file while the main thread is stuck in a compile.
    """

    def __init__(self, args, started: float):
        self.args = args
        self.started = started
        self.lock = threading.RLock()
        self.machine = _common.machine_info()
        self.versions = _common.library_versions()
        self.current: str | None = None
        self.data: dict[str, Any] = {
            "status": "running",
            "assumptions": {},
            "model": {},
            "sections": [],
            "throughput": [],
            "data_pipeline": {},
            "distributed": {},
            "summary": {},
        }

    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    def remaining(self) -> float:
        return self.args.budget_s - self.elapsed()

    def update(self, key: str, value: Any) -> None:
        with self.lock:
            self.data[key] = value

    def add_row(self, row: dict) -> None:
        with self.lock:
            self.data["throughput"].append(row)

    def add_section(self, record: dict) -> None:
        with self.lock:
            self.data["sections"].append(record)

    def summary(self) -> dict[str, Any]:
        """Best figures, the MFU goal and the cores needed, from what is measured so far."""
        d = self.data
        rows = [r for r in d["throughput"] if r.get("model") == "hftransfer"]
        out: dict[str, Any] = {}
        for task in ("finetune", "extract"):
            task_rows = [r for r in rows if r["task"] == task]
            if task_rows:
                best = max(task_rows, key=lambda r: r["img_s"])
                out[f"best_{task}"] = {k: best[k] for k in ("mode", "batch_size", "img_s", "mfu", "step_ms")}
                for mode in ("eager", "compiled"):
                    mode_rows = [r for r in task_rows if r["mode"] == mode]
                    if mode_rows:
                        out[f"best_{task}_{mode}_img_s"] = max(r["img_s"] for r in mode_rows)
        assumptions = d["assumptions"]
        goal_img_s = assumptions.get("goal_finetune_img_s")
        out["goal"] = f"full fine-tuning >= {self.args.goal_mfu:.0%} MFU" + (
            f" (>= {goal_img_s:,.0f} img/s at {assumptions.get('peak_tflops')} TFLOP/s)" if goal_img_s else ""
        )
        best_ft = out.get("best_finetune")
        out["goal_met"] = None if not best_ft or best_ft["mfu"] is None else best_ft["mfu"] >= self.args.goal_mfu
        per_core = d["data_pipeline"].get("img_s_per_core")
        if per_core and best_ft:
            out["data_img_s_per_core"] = per_core
            out["cores_needed_to_feed_finetune"] = round(best_ft["img_s"] / per_core, 2)
            if out.get("best_extract"):
                plain = d["data_pipeline"].get("img_s_per_core_no_augmentation") or per_core
                out["cores_needed_to_feed_extract"] = round(out["best_extract"]["img_s"] / plain, 2)
            out["cpu_cores_usable"] = self.machine.get("cpu_cores_usable")
            out["enough_cores"] = math.ceil(out["cores_needed_to_feed_finetune"]) <= (out["cpu_cores_usable"] or 0)
        return out

    def write(self, status: str | None = None) -> Path | None:
        with self.lock:
            if status:
                self.data["status"] = status
            self.data["summary"] = self.summary()
            self.data["current_section"] = self.current
            if self.args.no_write:
                return None
            extra = copy.deepcopy(self.data)
            extra["goals_met"] = extra["summary"].get("goal_met")
            return _common.write_results(
                NAME,
                title=TITLE,
                figures=[],
                settings={k: v for k, v in vars(self.args).items() if not k.startswith("worker")},
                machine=self.machine,
                versions=self.versions,
                extra=extra,
                output=self.args.output,
                started=self.started,
            )


def run_section(results: Results, name: str, kind: str, fn, *, estimate_s: float | None = None) -> Any:
    """Run one section: skip it when the budget is spent, record its outcome (ok / error / skipped), write the JSON
    and print one line. Returns what `fn` returned, or None."""
    estimate = SECTION_COST_S.get(kind, 10.0) if estimate_s is None else estimate_s
    record: dict[str, Any] = {"name": name, "kind": kind, "started_at_s": round(results.elapsed(), 1)}
    remaining = results.remaining()
    if remaining < estimate:
        record.update(status="skipped", reason=f"time budget: {remaining:.0f} s left < ~{estimate:.0f} s needed")
        results.add_section(record)
        results.write()
        print(f"[{NAME}] {name}: skipped ({record['reason']})", flush=True)
        return None
    results.current = name
    t0 = time.perf_counter()
    value = None
    try:
        value = fn()
        record["status"] = "ok"
        line = value.pop("_line", "") if isinstance(value, dict) else ""
    except SkipSection as skip:
        record.update(status="skipped", reason=str(skip))
        line = f"skipped ({skip})"
    except Exception as err:  # noqa: BLE001 - recorded, and the next section runs
        record.update(status="error", error=f"{type(err).__name__}: {err}"[:2000])
        record["traceback"] = traceback.format_exc()[-4000:]
        line = f"ERROR {record['error'][:300]}"
        value = None
        _empty_cuda_cache()
    record["seconds"] = round(time.perf_counter() - t0, 1)
    results.current = None
    if isinstance(value, dict):
        record.update({k: v for k, v in value.items() if k not in record})
    results.add_section(record)
    results.write()
    print(f"[{NAME}] {name}: {line} [{record['seconds']} s; {results.elapsed():.0f}/{results.args.budget_s:.0f} s]")
    sys.stdout.flush()
    return value


class SkipSection(Exception):
    """Raised by a section that does not apply here (recorded as skipped with this message)."""


def _empty_cuda_cache() -> None:
    with contextlib.suppress(Exception):
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def start_watchdog(results: Results, hard_limit_s: float) -> None:
    """End the process at the hard limit, writing the JSON first (a compile cannot be interrupted otherwise)."""

    def fire():
        acquired = results.lock.acquire(timeout=10)
        try:
            results.add_section(
                {
                    "name": results.current or "between sections",
                    "status": "error",
                    "error": f"hard time limit {hard_limit_s:.0f} s reached: process ended by the watchdog",
                }
            )
            results.write(status=f"aborted: hard time limit {hard_limit_s:.0f} s in {results.current}")
        except Exception as err:  # noqa: BLE001
            print(f"[{NAME}] watchdog could not write the JSON: {err}", file=sys.stderr)
        finally:
            if acquired:
                results.lock.release()
        print(f"[{NAME}] hard time limit {hard_limit_s:.0f} s reached in {results.current}: exiting", flush=True)
        os._exit(3)

    timer = threading.Timer(max(1.0, hard_limit_s - results.elapsed()), fire)
    timer.daemon = True
    timer.start()

    def on_term(signum, frame):
        results.write(status=f"aborted: signal {signum} in {results.current}")
        print(f"[{NAME}] signal {signum}: JSON written, exiting", flush=True)
        os._exit(128 + signum)

    with contextlib.suppress(ValueError):  # not the main thread
        signal.signal(signal.SIGTERM, on_term)


# --- model ------------------------------------------------------------------------------------------------------


def build_hftransfer_model(args, weights: str):
    """The model and processor exactly as a training run builds them (`build_model_and_processor` from a recipe)."""
    from hftransfer.building import build_model_and_processor
    from hftransfer.recipes import ModelArguments, Recipe

    recipe = Recipe(
        model=ModelArguments(
            backbone="vgg16", backbone_weights=weights, image_size=args.image_size, pooling=args.pooling
        )
    )
    return build_model_and_processor(recipe, {i: f"class_{i}" for i in range(args.num_labels)})


def build_model_with_fallback(args):
    """(model, processor, weights description): `--weights auto` tries keras-imagenet, then random init."""
    choice = args.weights
    if choice in ("auto", "keras-imagenet"):
        try:
            model, processor = build_hftransfer_model(args, "keras-imagenet")
            return model, processor, "keras-imagenet (offline Keras ImageNet VGG16 conv base, shipped by hftransfer)"
        except Exception as err:  # noqa: BLE001
            if choice != "auto":
                raise
            reason = f"{type(err).__name__}: {str(err)[:300]}"
        model, processor = build_hftransfer_model(args, "random")
        return model, processor, f"random init (keras-imagenet unavailable here: {reason}); throughput is the same"
    model, processor = build_hftransfer_model(args, choice)
    return model, processor, choice


class PlainVGG:
    """The peer: timm's VGG16 `features` + the same head (flatten/avg, Dense(1024), ReLU, Dense(num_labels))."""

    @staticmethod
    def build(args):
        import timm
        import torch.nn.functional as F
        from torch import nn

        features = timm.create_model("vgg16", pretrained=False).features
        side = args.image_size // 32
        in_features = 512 * side * side if args.pooling == "flatten" else 512

        class Plain(nn.Module):
            def __init__(self):
                super().__init__()
                self.features = features
                self.head = nn.Sequential(nn.Linear(in_features, 1024), nn.ReLU(), nn.Linear(1024, args.num_labels))

            def forward_features(self, x):
                x = self.features(x)
                return x.flatten(1) if args.pooling == "flatten" else x.mean((2, 3))

            def forward(self, pixel_values, labels):
                loss = F.cross_entropy(self.head(self.forward_features(pixel_values)), labels)
                return type("Out", (), {"loss": loss})()

        return Plain()


# --- throughput ---------------------------------------------------------------------------------------------------


class Bench:
    """Device, precision, the model, and the measurement of one (model, task, mode, batch size) row."""

    def __init__(self, args, results: Results):
        import torch

        self.torch = torch
        self.args = args
        self.results = results
        if args.device == "auto":
            self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        else:
            self.device = torch.device(args.device)
        self.cuda = self.device.type == "cuda"
        if self.cuda and self.device.index is None:  # torch.cuda.set_device refuses an index-less device
            self.device = torch.device("cuda", torch.cuda.current_device())
        if args.dtype == "auto":  # bf16 autocast on CPU is tens of times slower than fp32: a smoke run uses fp32
            args.dtype = "bf16" if self.cuda else "fp32"
        if self.cuda:
            torch.cuda.set_device(self.device)
            torch.backends.cudnn.benchmark = True
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
        self.dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[args.dtype]
        self.autocast = self.dtype != torch.float32
        self.memory_format = torch.contiguous_format if args.no_channels_last else torch.channels_last
        self.gmacs = VGG16_GMACS_224 * (args.image_size / 224) ** 2
        self.device_name = torch.cuda.get_device_name(self.device) if self.cuda else f"CPU ({_common._cpu_model()})"
        self.peak, self.peak_source = self._peak()
        self.model = self.processor = None
        self.compiled: dict[str, Any] = {}

    def _peak(self) -> tuple[float | None, str]:
        if self.args.peak_tflops:
            return self.args.peak_tflops, "--peak-tflops"
        if not self.cuda:
            return None, "CPU: no tabled peak (pass --peak-tflops for an MFU)"
        if self.args.dtype == "fp32":
            return None, "fp32 peaks are not tabled: pass --peak-tflops"
        for key in sorted(PEAK_BF16_TFLOPS, key=len, reverse=True):
            if key in self.device_name:
                return PEAK_BF16_TFLOPS[key], f"table: {key!r} in {self.device_name!r}, dense bf16 (NVIDIA data sheet)"
        return None, f"{self.device_name!r} not in the table: pass --peak-tflops"

    def sync(self) -> None:
        if self.cuda:
            self.torch.cuda.synchronize(self.device)

    def flops_per_image(self, task: str) -> float:
        return (6.0 if task == "finetune" else 2.0) * self.gmacs * 1e9

    def mfu(self, img_s: float, task: str) -> float | None:
        return None if not self.peak else img_s * self.flops_per_image(task) / (self.peak * 1e12)

    def batch(self, batch_size: int):
        torch = self.torch
        g = torch.Generator(device=self.device).manual_seed(self.args.seed)
        size = self.args.image_size
        x = torch.randn(batch_size, 3, size, size, device=self.device, generator=g)
        y = torch.randint(0, self.args.num_labels, (batch_size,), device=self.device, generator=g)
        return x.contiguous(memory_format=self.memory_format), y

    def count_gmacs(self, model) -> float | None:
        """Forward MACs per image of the real model, counted by torch's FlopCounterMode (a cross-check of 15.47)."""
        torch = self.torch
        from torch.utils.flop_counter import FlopCounterMode

        x, _ = self.batch(1)
        model.eval()
        counter = FlopCounterMode(display=False)
        with torch.inference_mode(), counter:
            model.forward_features(x)
        return counter.get_total_flops() / 2 / 1e9

    def measure(self, label: str, model, task: str, mode: str, batch_size: int) -> dict[str, Any]:
        """One throughput row. `model`: an hftransfer model or the peer; mode: eager or compiled."""
        torch = self.torch
        args = self.args
        _empty_cuda_cache()  # the previous row's batch, optimizer state and activations are gone by now
        x, y = self.batch(batch_size)
        if self.cuda:
            torch.cuda.reset_peak_memory_stats(self.device)
        optimizer = None
        if task == "extract":
            model.eval()
            fn = model.forward_features
            if mode == "compiled":
                key = f"{label}.extract"
                if key not in self.compiled:
                    self.compiled[key] = torch.compile(fn, mode=args.compile_mode, dynamic=False)
                fn = self.compiled[key]

            def step():
                with torch.inference_mode(), torch.autocast(self.device.type, dtype=self.dtype, enabled=self.autocast):
                    return fn(x)

        else:
            model.train()
            if label == "hftransfer":
                from hftransfer.recipes import StageArguments
                from hftransfer.training.freezing import apply_stage_trainable, build_parameter_groups

                apply_stage_trainable(model, StageArguments(name="finetune", trainable="all"))
                groups = build_parameter_groups(model, 1e-4, backbone_lr_scale=0.1, weight_decay=0.0)
            else:
                for param in model.parameters():
                    param.requires_grad_(True)
                groups = [{"params": list(model.parameters())}]
            optimizer = torch.optim.AdamW(groups, lr=1e-4, fused=self.cuda)
            forward = model
            if mode == "compiled":
                key = f"{label}.train"
                if key not in self.compiled:
                    self.compiled[key] = torch.compile(model, mode=args.compile_mode, dynamic=False)
                forward = self.compiled[key]

            def step():
                with torch.autocast(self.device.type, dtype=self.dtype, enabled=self.autocast):
                    loss = forward(pixel_values=x, labels=y).loss
                loss.backward()
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                return loss

        t0 = time.perf_counter()
        out = None
        for _ in range(args.warmup_steps):
            out = step()
        self.sync()
        warmup_s = time.perf_counter() - t0
        rates, truncated = [], False
        for rep in range(args.repeats):
            if rep and self.results.remaining() < 0:
                truncated = True  # budget spent: keep the repeats measured so far
                break
            self.sync()
            t0 = time.perf_counter()
            for _ in range(args.steps):
                out = step()
            self.sync()
            rates.append(args.steps * batch_size / (time.perf_counter() - t0))
        finite = bool(torch.isfinite(out.float() if task == "finetune" else out.float().sum()).all().item())
        peak_mem = torch.cuda.max_memory_allocated(self.device) / 2**30 if self.cuda else None
        img_s = _common.median(rates)
        return {
            "model": label,
            "task": task,
            "mode": mode,
            "batch_size": batch_size,
            "img_s": round(img_s, 1),
            "mfu": None if self.mfu(img_s, task) is None else round(self.mfu(img_s, task), 4),
            "step_ms": round(1000 * batch_size / img_s, 2),
            "tflops": round(img_s * self.flops_per_image(task) / 1e12, 1),
            "samples_img_s": [round(r, 1) for r in rates],
            "warmup_s": round(warmup_s, 1),
            "peak_memory_gib": None if peak_mem is None else round(peak_mem, 2),
            "finite": finite,
            **({"truncated": "time budget"} if truncated else {}),
        }


def row_line(row: dict) -> str:
    mfu = "n/a" if row["mfu"] is None else f"{row['mfu']:.1%}"
    mem = "" if row["peak_memory_gib"] is None else f", {row['peak_memory_gib']} GiB"
    return (
        f"{row['img_s']:,.1f} img/s (MFU {mfu}; {row['step_ms']} ms/step; warm-up {row['warmup_s']} s{mem}"
        f"{'' if row['finite'] else '; NON-FINITE OUTPUT'})"
    )


# --- data pipeline --------------------------------------------------------------------------------------------------


def sample_photos() -> list[Path]:
    """JPEG photos installed with matplotlib / scikit-learn (found without importing them)."""
    import importlib.util

    found = []
    for package, relative in (
        ("matplotlib", "mpl-data/sample_data/grace_hopper.jpg"),
        ("sklearn", "datasets/images/china.jpg"),
        ("sklearn", "datasets/images/flower.jpg"),
    ):
        with contextlib.suppress(ImportError, ValueError, AttributeError):
            spec = importlib.util.find_spec(package)
            for location in spec.submodule_search_locations or []:
                if (Path(location) / relative).is_file():
                    found.append(Path(location) / relative)
    return found


def make_jpegs(args, count: int) -> tuple[list[bytes], str]:
    """`count` distinct JPEGs of ImageNet-like size (500x375 or 375x500, quality 90) and a description."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(args.seed)
    if args.jpeg_dir:
        files = sorted(p for p in Path(args.jpeg_dir).rglob("*") if p.suffix.lower() in (".jpg", ".jpeg"))
        if not files:
            raise FileNotFoundError(f"no .jpg/.jpeg files under {args.jpeg_dir}")
        data = [files[i % len(files)].read_bytes() for i in range(count)]
        return data, f"{len(files)} JPEG files from {args.jpeg_dir} (as they are)"
    photos = []
    for path in sample_photos():
        with contextlib.suppress(Exception):
            photos.append(Image.open(path).convert("RGB"))
    if photos:
        source = "crops of real photos " + ", ".join(p.name for p in sample_photos())
    else:
        yy, xx = np.mgrid[0:750, 0:1000]
        smooth = np.stack([np.sin(xx / 37.0) * 60 + 128, np.cos(yy / 23.0) * 60 + 128, (xx + yy) % 256], -1)
        noise = rng.normal(0, 12, smooth.shape)
        photos = [Image.fromarray(np.clip(smooth + noise, 0, 255).astype("uint8"))]
        source = "synthetic JPEGs (no sample photos installed): gradients + noise"
    out = []
    for i in range(count):
        photo = photos[i % len(photos)]
        width, height = (500, 375) if i % 3 else (375, 500)
        scale = max(width / photo.width, height / photo.height, 1.0) * rng.uniform(1.0, 1.3)
        resized = photo.resize((math.ceil(photo.width * scale), math.ceil(photo.height * scale)))
        left = int(rng.integers(0, resized.width - width + 1))
        top = int(rng.integers(0, resized.height - height + 1))
        crop = resized.crop((left, top, left + width, top + height))
        if i % 2:
            crop = crop.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        buffer = io.BytesIO()
        crop.save(buffer, format="JPEG", quality=90)
        out.append(buffer.getvalue())
    return out, source + " (500x375 / 375x500, JPEG quality 90)"


def pipeline_rate(processor, jpegs: list[bytes], augmentation: str, batch_size: int = 32) -> dict[str, Any]:
    """Images/s of hftransfer's transform in a DataLoader with one worker process (steady state, first batch out)."""
    import torch
    from datasets import Dataset, Features, Value
    from datasets import Image as ImageFeature
    from torch.utils.data import DataLoader

    from hftransfer.data import ImageClassificationCollator, build_transforms

    dataset = Dataset.from_dict(
        {"image": [{"bytes": b, "path": None} for b in jpegs], "label": [i % 10 for i in range(len(jpegs))]},
        features=Features({"image": ImageFeature(decode=False), "label": Value("int64")}),
    )
    transform = build_transforms(processor, None if augmentation == "none" else augmentation)
    loader = DataLoader(
        transform.apply(dataset),
        batch_size=batch_size,
        shuffle=True,
        num_workers=1,
        collate_fn=ImageClassificationCollator(),
        generator=torch.Generator().manual_seed(0),
    )
    t0 = time.perf_counter()
    iterator = iter(loader)
    first = next(iterator)
    first_s = time.perf_counter() - t0
    t1 = time.perf_counter()
    images = 0
    for batch in iterator:
        images += len(batch["labels"])
    seconds = time.perf_counter() - t1
    if not images:
        raise ValueError(f"{len(jpegs)} images give one batch of {batch_size}: pass more --data-images")
    return {
        "augmentation": augmentation,
        "transform": repr(transform),
        "pixel_values_shape": list(first["pixel_values"].shape[1:]),
        "img_s_per_core": round(images / seconds, 1),
        "timed_images": images,
        "first_batch_s": round(first_s, 2),
    }


# --- distributed (accelerate launch) --------------------------------------------------------------------------------


def worker_main(args) -> int:
    """Runs under `accelerate launch`: a few training steps of the real model wrapped by accelerate (DDP or FSDP)."""
    _common.configure_environment()
    import torch
    from accelerate import Accelerator

    from hftransfer.recipes import StageArguments
    from hftransfer.training.freezing import apply_stage_trainable, build_parameter_groups

    accelerator = Accelerator(cpu=not torch.cuda.is_available())  # CPU: gloo ranks (MULTI_CPU)
    model, _, weights = build_model_with_fallback(args)
    apply_stage_trainable(model, StageArguments(name="finetune", trainable="all"))
    # FSDP2 shards only contiguous parameters ("FSDP does not support non-contiguous parameters yet"): under FSDP the
    # weights stay contiguous and only the inputs are channels_last; DDP gets channels_last weights as well.
    params_channels_last = not args.no_channels_last and args.worker != "fsdp"
    if params_channels_last:
        model = model.to(memory_format=torch.channels_last)
    # transformers' default `adamw_torch` (not fused): what a recipe's stage uses unless it sets `optimizer`.
    optimizer = torch.optim.AdamW(build_parameter_groups(model, 1e-4, 0.1, 0.0), lr=1e-4)
    model, optimizer = accelerator.prepare(model, optimizer)
    device = accelerator.device
    g = torch.Generator(device=device).manual_seed(args.seed + accelerator.process_index)
    size, batch = args.image_size, args.dist_batch_size
    x = torch.randn(batch, 3, size, size, device=device, generator=g)
    x = x.contiguous(memory_format=torch.contiguous_format if args.no_channels_last else torch.channels_last)
    y = torch.randint(0, args.num_labels, (batch,), device=device, generator=g)

    def step():
        with accelerator.autocast():
            loss = model(pixel_values=x, labels=y).loss
        accelerator.backward(loss)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    t0 = time.perf_counter()
    for _ in range(max(1, args.warmup_steps)):
        step()
    sync()
    warmup_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    for _ in range(args.steps):
        loss = step()
    sync()
    seconds = time.perf_counter() - t0
    report = {
        "rank": accelerator.process_index,
        "world_size": accelerator.num_processes,
        "distributed_type": str(accelerator.distributed_type),
        "mixed_precision": accelerator.mixed_precision,
        "device": str(device),
        "wrapped_as": type(model).__name__,
        "channels_last": "inputs and weights"
        if params_channels_last
        else ("inputs only" if not args.no_channels_last else "no"),
        "weights": weights,
        "batch_size_per_process": batch,
        "img_s": round(args.steps * batch / seconds, 1),
        "warmup_s": round(warmup_s, 1),
        "loss_finite": bool(torch.isfinite(loss.detach().float()).item()),
    }
    if args.worker_output:
        path = Path(f"{args.worker_output}.rank{accelerator.process_index}.json")
        path.write_text(json.dumps(report))
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return 0


def launch_worker(args, bench: Bench, kind: str, timeout_s: float) -> dict[str, Any]:
    """`accelerate launch` this script in worker mode; the ranks' reports and the launch command."""
    processes = 1 if kind == "fsdp" else 2
    mixed = "no" if args.dtype == "fp32" else args.dtype
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--num_machines", "1", "--num_processes"]
    launch += [str(processes), "--mixed_precision", mixed, "--dynamo_backend", "no", "--main_process_port", "0"]
    if kind == "fsdp":
        launch += ["--use_fsdp", "--fsdp_version", "2", "--fsdp_auto_wrap_policy", "SIZE_BASED_WRAP"]
        launch += ["--fsdp_min_num_params", "1000000", "--fsdp_reshard_after_forward", "true"]
    else:
        launch += ["--multi_gpu"]  # `--cpu --num_processes 2` would start ONE process (see README, Distributed)
    with tempfile.TemporaryDirectory(prefix="bench_gpu_") as tmp:
        report_base = Path(tmp) / kind
        script = [str(Path(__file__).resolve()), "--worker", kind, "--worker-output", str(report_base)]
        script += ["--image-size", str(args.image_size), "--dist-batch-size", str(args.dist_batch_size)]
        script += ["--steps", str(args.steps), "--warmup-steps", str(args.warmup_steps), "--weights", args.weights]
        script += ["--dtype", args.dtype, "--pooling", args.pooling, "--num-labels", str(args.num_labels)]
        script += ["--no-channels-last"] if args.no_channels_last else []
        env = dict(os.environ)
        if not bench.cuda:
            env.update(CUDA_VISIBLE_DEVICES="", OMP_NUM_THREADS="1")
        command = launch + script
        t0 = time.perf_counter()
        completed = subprocess.run(command, capture_output=True, text=True, env=env, timeout=timeout_s)
        seconds = time.perf_counter() - t0
        ranks = sorted(
            (json.loads(p.read_text()) for p in Path(tmp).glob(f"{kind}.rank*.json")), key=lambda r: r["rank"]
        )
    result = {
        "command": " ".join(command[1:]).replace(str(Path(__file__).resolve()), "bench/bench_gpu.py"),
        "returncode": completed.returncode,
        "seconds": round(seconds, 1),
        "ranks": ranks,
    }
    if completed.returncode != 0 or len(ranks) != processes:
        result["log_tail"] = (completed.stdout[-1500:] + "\n" + completed.stderr[-3000:]).strip()
        last = completed.stderr.strip().splitlines()[-1][:500] if completed.stderr.strip() else ""
        result["error"] = (
            f"accelerate launch ({kind}) exited {completed.returncode} with {len(ranks)}/{processes} rank reports: "
            f"{last}"
        )
        return result
    if kind == "fsdp" and not any("FSDP" in r["distributed_type"] for r in ranks):
        if bench.cuda:
            result["error"] = f"accelerate did not apply FSDP: distributed_type {ranks[0]['distributed_type']}"
            return result
        result["note"] = "CPU: accelerate applies FSDP only on accelerators; this ran as 1-process gloo DDP"
    result["img_s_total"] = round(sum(r["img_s"] for r in ranks), 1)
    per_gpu = bench.mfu(result["img_s_total"] / processes, "finetune")
    result["mfu_per_gpu"] = None if per_gpu is None else round(per_gpu, 4)
    return result


# --- main -----------------------------------------------------------------------------------------------------------


def main(argv=None) -> int:
    started = time.perf_counter()
    args = parse_args(argv)
    if args.worker:
        return worker_main(args)
    _common.configure_environment()
    import torch

    _common.set_torch_threads(args.threads)
    results = Results(args, started)
    start_watchdog(results, args.hard_limit_s or args.budget_s + HARD_LIMIT_GRACE_S)
    try:
        bench = Bench(args, results)
    except Exception as err:  # noqa: BLE001 - e.g. a CUDA initialisation error: say so in the JSON
        results.add_section(
            {"name": "device set-up", "status": "error", "error": f"{type(err).__name__}: {err}"[:2000]}
        )
        results.data["sections"][-1]["traceback"] = traceback.format_exc()[-4000:]
        results.write(status="failed: device set-up")
        print(f"[{NAME}] device set-up: ERROR {type(err).__name__}: {err}", flush=True)
        return 1
    if args.compile is None:
        args.compile = "both" if bench.cuda else "off"
    modes = {"off": ["eager"], "on": ["compiled"], "both": ["eager", "compiled"]}[args.compile]
    print(
        f"[{NAME}] {bench.device_name}; {args.dtype}; {'contiguous' if args.no_channels_last else 'channels_last'}; "
        f"{args.image_size}px; {bench.gmacs:.2f} GMACs/img; peak {bench.peak} TFLOP/s; batch sizes "
        f"{args.batch_sizes}; budget {args.budget_s:.0f} s; compile {args.compile}",
        flush=True,
    )
    goal_img_s = None if not bench.peak else args.goal_mfu * bench.peak * 1e12 / bench.flops_per_image("finetune")
    results.update(
        "assumptions",
        {
            "device": bench.device_name,
            "device_count": torch.cuda.device_count() if bench.cuda else 0,
            "peak_tflops": bench.peak,
            "peak_source": bench.peak_source,
            "peak_kind": f"dense (no sparsity) {args.dtype} tensor-core peak",
            "gmacs_per_image_forward": round(bench.gmacs, 4),
            "gmacs_reference": f"VGG16 {VGG16_GMACS_224} GMACs at 224 px, scaled by (image_size/224)^2",
            "flops_per_image_finetune": bench.flops_per_image("finetune"),
            "flops_per_image_extract": bench.flops_per_image("extract"),
            "mfu_definition": (
                "img/s x FLOPs per image / peak; FLOPs per image = 2 x GMACs x 1e9 (forward) for feature extraction, "
                "3 x that (forward + backward) for fine-tuning"
            ),
            "goal_mfu": args.goal_mfu,
            "goal_finetune_img_s": None if goal_img_s is None else round(goal_img_s, 1),
            "dtype": args.dtype,
            "channels_last": not args.no_channels_last,
            "input": "synthetic batch already on the device (data loading measured separately, data_pipeline)",
            "timing": f"median of {args.repeats} x {args.steps} steps after {args.warmup_steps} warm-up steps, "
            "device synchronised around each timed run",
        },
    )
    results.write()

    def setup():
        model, processor, weights = build_model_with_fallback(args)
        bench.model = model.to(bench.device).to(memory_format=bench.memory_format)
        bench.processor = processor
        info = {
            "class": type(model).__name__,
            "built_by": "hftransfer.building.build_model_and_processor (the training path), recipe model defaults",
            "backbone": model.config.backbone,
            "pooling": model.config.pooling,
            "hidden_sizes": list(model.config.hidden_sizes),
            "num_labels": model.config.num_labels,
            "image_size": model.config.image_size,
            "parameters": sum(p.numel() for p in model.parameters()),
            "weights": weights,
        }
        with contextlib.suppress(Exception):
            info["counted_gmacs_forward_per_image"] = round(bench.count_gmacs(bench.model), 3)
        results.update("model", info)
        return {"_line": f"{info['class']} {info['parameters'] / 1e6:.1f}M params; weights {weights[:60]}"}

    run_section(results, "setup: build model", "eager", setup, estimate_s=-math.inf)  # always runs
    if bench.model is None:
        results.write(status="failed: no model")
        print(f"[{NAME}] no model: stopping")
        return 1

    def throughput(model, label: str, task: str, mode: str, batch_size: int):
        def section():
            row = bench.measure(label, model, task, mode, batch_size)
            results.add_row(row)
            return {"_line": row_line(row), "img_s": row["img_s"], "mfu": row["mfu"]}

        name = f"{label} {mode} {'fine-tuning' if task == 'finetune' else 'feature extraction'} batch {batch_size}"
        run_section(results, name, mode, section)

    def after_mode(mode: str):
        if mode == "compiled":
            with contextlib.suppress(Exception):
                torch._dynamo.reset()
        _empty_cuda_cache()

    def data_pipeline():
        jpegs, source = make_jpegs(args, args.data_images)
        runs = {}
        for augmentation in dict.fromkeys([args.augmentation, "none"]):
            runs[augmentation] = pipeline_rate(bench.processor, jpegs, augmentation)
        main_run = runs[args.augmentation]
        info = {
            "images": source,
            "mean_jpeg_kib": round(sum(map(len, jpegs)) / len(jpegs) / 1024, 1),
            "count": len(jpegs),
            "output_size": args.image_size,
            "pipeline": "hftransfer build_transforms (decode -> RGB -> resize/augment -> normalise) via "
            "ImageTransform.apply on a datasets.Dataset, DataLoader(num_workers=1, batch 32), collated",
            "workers": 1,
            "augmentation": args.augmentation,
            "img_s_per_core": main_run["img_s_per_core"],
            "img_s_per_core_no_augmentation": runs["none"]["img_s_per_core"],
            "runs": list(runs.values()),
            "hftransfer_default_workers": None,
        }
        with contextlib.suppress(Exception):
            from hftransfer.data import default_num_workers

            info["hftransfer_default_workers"] = default_num_workers()
        results.update("data_pipeline", info)
        summary = results.summary()
        need = summary.get("cores_needed_to_feed_finetune")
        return {
            "_line": f"{main_run['img_s_per_core']:.1f} img/s per core ({args.augmentation}), "
            f"{runs['none']['img_s_per_core']:.1f} (none); cores needed for fine-tuning so far: {need}"
        }

    # Order: cheap eager figures first, then the data pipeline, then compilation (largest batch first: the goal).
    for mode in modes:
        sizes = args.batch_sizes if mode == "eager" else sorted(args.batch_sizes, reverse=True)
        if mode == "compiled":
            throughput(bench.model, "hftransfer", "finetune", mode, sizes[0])
            throughput(bench.model, "hftransfer", "extract", mode, sizes[0])
            rest = sizes[1:]
        else:
            rest = sizes
        for task in ("finetune", "extract"):
            for batch_size in rest:
                throughput(bench.model, "hftransfer", task, mode, batch_size)
        after_mode(mode)
        if mode == "eager" and not args.no_data:
            run_section(results, f"data pipeline ({args.augmentation} + none, 1 worker)", "data", data_pipeline)
    if args.no_data:
        results.add_section({"name": "data pipeline", "status": "skipped", "reason": "--no-data"})

    if args.peer:
        peer_model = None

        def build_peer():
            nonlocal peer_model
            torch.manual_seed(args.seed)
            peer_model = PlainVGG.build(args).to(bench.device).to(memory_format=bench.memory_format)
            return {"_line": "plain timm vgg16 features + the same head"}

        run_section(results, "peer: build plain timm VGG16", "peer", build_peer)
        if peer_model is not None:
            for mode in modes:
                for task in ("finetune", "extract"):
                    throughput(peer_model, "timm", task, mode, max(args.batch_sizes))
                after_mode(mode)

    if args.with_ddp:
        bench.model = None  # free the device for the launched processes
        bench.compiled.clear()
        with contextlib.suppress(Exception):
            torch._dynamo.reset()
        _empty_cuda_cache()
        distributed: dict[str, Any] = {}
        results.update("distributed", distributed)
        for kind in ("fsdp", "ddp"):

            def section(kind=kind):
                if kind == "ddp" and bench.cuda and torch.cuda.device_count() < 2:
                    raise SkipSection(
                        f"{torch.cuda.device_count()} GPU: 2-process DDP needs 2 GPUs (2 processes sharing one GPU "
                        "measure nothing useful)"
                    )
                timeout = max(10.0, min(180.0, results.remaining() + HARD_LIMIT_GRACE_S - 5))
                try:
                    result = launch_worker(args, bench, kind, timeout)
                except subprocess.TimeoutExpired as err:
                    raise RuntimeError(f"accelerate launch ({kind}) timed out after {err.timeout:.0f} s") from None
                with results.lock:
                    distributed[kind] = result
                if "error" in result:
                    raise RuntimeError(result["error"])
                return {"_line": f"OK, {result['img_s_total']:,.1f} img/s over {len(result['ranks'])} process(es)"}

            value = run_section(results, f"accelerate launch {kind}", "distributed", section)
            if value is None:
                with results.lock:
                    last = results.data["sections"][-1]
                    distributed.setdefault(kind, {k: last[k] for k in ("status", "reason", "error") if k in last})
        results.write()
    else:
        results.update("distributed", {"status": "skipped", "reason": "not requested (--with-ddp)"})

    summary = results.summary()
    best_ft = summary.get("best_finetune")
    errors = [s["name"] for s in results.data["sections"] if s["status"] == "error"]
    status = "complete" if not errors else f"complete with {len(errors)} error(s)"
    path = results.write(status=status)
    if best_ft:
        mfu = "n/a" if best_ft["mfu"] is None else f"{best_ft['mfu']:.1%}"
        verdict = {None: "n/a", True: "MET", False: "NOT MET"}[summary["goal_met"]]
        print(
            f"\nfull fine-tuning best: {best_ft['img_s']:,.1f} img/s ({best_ft['mode']}, batch "
            f"{best_ft['batch_size']}), MFU {mfu} | {summary['goal']}: {verdict} | cores needed to feed it: "
            f"{summary.get('cores_needed_to_feed_finetune')} of {summary.get('cpu_cores_usable')}"
        )
    print(f"[{NAME}] {status} in {results.elapsed():.0f} s" + (f"; wrote {path}" if path else "; nothing written"))
    return 0 if not errors else 1


if __name__ == "__main__":
    raise SystemExit(main())
