"""Benchmark 4 -- the classic Keras recipe vs hftransfer's `keras-seed` recipe: training images/s of the frozen stage
and of full fine-tuning, on CPU at a CPU-feasible image size (32 px by default; the recipe's 224 px runs at ~1 img/s).

Both sides train the same model -- VGG16 `include_top=False` -> Flatten -> Dense(1024, relu) -> Dense(10) -- from the
same weights (hftransfer's `keras-imagenet` conv weights, transposed into the Keras model, and the same initial head
weights), on the same images with the same preprocessing, batch 32, fp32, Adam, no per-epoch validation:

1. frozen stage: `--frozen-epochs` epochs on `--frozen-images` images (the recipe: 10 epochs, Adam 1e-3);
2. full fine-tuning: everything trainable, Adam 1e-4, one pass over `--finetune-images` images.

- Keras (TensorFlow CPU from PyPI, in its own venv, see bench/README.md): `keras.applications.VGG16(weights=None)`
  with the weights set from hftransfer's; `base.trainable = False; model.fit(...)`, then `base.trainable = True`,
  recompile, `model.fit(...)`. The images are in memory as a NumPy array, already resized and normalised (the
  classic recipe's way). Timed: each `fit()` call (Keras' default `jit_compile="auto"`, tracing included). It runs in
  a subprocess of the Keras venv, one per repeat, alternating with the hftransfer run.
- hftransfer: `train(recipe)` with the shipped `keras-seed` recipe (image size, sample counts and evaluation
  overridden) plus a `trainable: all` stage. Timed: the frozen stage's feature caching + `trainer.train()`, and the
  fine-tuning stage's `trainer.train()`. The images are decoded from the dataset's PNGs on the fly.

Run from the repo root: `.venv/bin/python bench/bench_keras.py` (see `--help`; ~10 minutes on 2 CPU cores).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import _common

NAME = "keras"
TITLE = "Classic Keras recipe (TensorFlow CPU) vs hftransfer keras-seed recipe: training images/s"
DEFAULT_KERAS_PYTHON = _common.REPO_ROOT / ".venv-keras" / "bin" / "python"


def parse_args(argv=None):
    parser = _common.base_parser(__doc__.split("\n\n")[0], repeats=3)
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--frozen-images", type=int, default=256)
    parser.add_argument("--frozen-epochs", type=int, default=10)
    parser.add_argument("--finetune-images", type=int, default=256, help="A multiple of the batch size.")
    parser.add_argument("--finetune-learning-rate", type=float, default=1e-4)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--num-workers", type=int, default=2, help="hftransfer DataLoader workers.")
    parser.add_argument(
        "--keras-python",
        type=Path,
        default=Path(os.environ.get("HFTRANSFER_KERAS_PYTHON", DEFAULT_KERAS_PYTHON)),
        help="Python of the venv with tensorflow-cpu (env HFTRANSFER_KERAS_PYTHON).",
    )
    parser.add_argument("--goal", type=float, default=1.0)
    # Internal: run the Keras side (inside the Keras venv).
    parser.add_argument("--keras-worker", type=Path, default=None, help=argparse_suppress())
    parser.add_argument("--worker-frozen-epochs", type=int, default=None, help=argparse_suppress())
    parser.add_argument("--worker-finetune-images", type=int, default=None, help=argparse_suppress())
    return parser.parse_args(argv)


def argparse_suppress():
    import argparse

    return argparse.SUPPRESS


# --------------------------------------------------------------------------------------------------------------------
# Keras side (runs in the Keras venv: imports only numpy, tensorflow, keras)
# --------------------------------------------------------------------------------------------------------------------


def keras_worker(args) -> int:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import keras
    import numpy as np
    import tensorflow as tf

    data = np.load(args.keras_worker)
    x, y = data["x"], data["y"]
    epochs = args.worker_frozen_epochs or args.frozen_epochs
    n_frozen = min(args.frozen_images, len(x))
    n_finetune = args.worker_finetune_images or args.finetune_images
    keras.utils.set_random_seed(args.seed)

    base = keras.applications.VGG16(include_top=False, weights=None, input_shape=x.shape[1:])
    convs = [layer for layer in base.layers if isinstance(layer, keras.layers.Conv2D)]
    for i, layer in enumerate(convs):
        layer.set_weights([data[f"conv{i}_kernel"], data[f"conv{i}_bias"]])
    hidden = keras.layers.Dense(1024, activation="relu", name="dense_1024")
    classifier = keras.layers.Dense(int(data["num_labels"]), name="classifier")  # softmax lives in the loss
    outputs = classifier(hidden(keras.layers.Flatten()(base.output)))
    model = keras.Model(base.input, outputs)
    hidden.set_weights([data["dense0_kernel"], data["dense0_bias"]])
    classifier.set_weights([data["dense1_kernel"], data["dense1_bias"]])
    initial_logits = model.predict(x[:4], verbose=0)

    class EpochTimes(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            self.marks = [time.perf_counter()]

        def on_epoch_end(self, epoch, logs=None):
            self.marks.append(time.perf_counter())

    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    base.trainable = False
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss=loss)
    frozen_times = EpochTimes()
    t0 = time.perf_counter()
    model.fit(
        x[:n_frozen], y[:n_frozen], batch_size=args.batch_size, epochs=epochs, shuffle=True, verbose=0,
        callbacks=[frozen_times],
    )  # fmt: skip
    frozen_s = time.perf_counter() - t0

    class BatchTimes(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            self.marks = []

        def on_train_batch_end(self, batch, logs=None):
            self.marks.append(time.perf_counter())

    base.trainable = True
    model.compile(optimizer=keras.optimizers.Adam(args.finetune_learning_rate), loss=loss)
    finetune_times = BatchTimes()
    t0 = time.perf_counter()
    model.fit(
        x[:n_finetune], y[:n_finetune], batch_size=args.batch_size, epochs=1, shuffle=True, verbose=0,
        callbacks=[finetune_times],
    )  # fmt: skip
    finetune_s = time.perf_counter() - t0
    marks = finetune_times.marks

    epoch_s = np.diff(frozen_times.marks)
    result = {
        "frozen_s": frozen_s,
        "frozen_images": n_frozen * epochs,
        "frozen_steady_images_per_s": float(n_frozen / np.median(epoch_s[1:])) if len(epoch_s) > 1 else None,
        "finetune_s": finetune_s,
        "finetune_images": n_finetune,
        "finetune_first_step_s": marks[0] - t0,
        "finetune_steady_images_per_s": (len(marks) - 1) * args.batch_size / (marks[-1] - marks[0])
        if len(marks) > 1
        else None,
        "initial_logits": initial_logits.tolist(),
        "trainable_params_finetune": int(sum(np.prod(w.shape) for w in model.trainable_weights)),
        "total_params": int(model.count_params()),
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "numpy": np.__version__,
        "tf_intra_op_threads": tf.config.threading.get_intra_op_parallelism_threads(),
        "tf_inter_op_threads": tf.config.threading.get_inter_op_parallelism_threads(),
    }
    print("KERAS_RESULT " + json.dumps(result))
    return 0


# --------------------------------------------------------------------------------------------------------------------
# hftransfer side and the driver
# --------------------------------------------------------------------------------------------------------------------


def make_recipe(args, output_dir: Path, cache_dir: Path, frozen_epochs: int, finetune_steps: int):
    import yaml

    from hftransfer.recipes import recipe_from_dict, resolve_recipe_path

    data = yaml.safe_load(resolve_recipe_path("keras-seed").read_text())
    data["model"]["image_size"] = args.image_size
    data["data"].update({"max_train_samples": args.frozen_images, "max_eval_samples": 32, "test_split": None})
    frozen = dict(data["stages"][0])
    frozen["epochs"] = frozen_epochs
    finetune = {
        **{k: v for k, v in frozen.items() if k not in ("cache_features", "name", "epochs")},
        "name": "finetune",
        "trainable": "all",
        "max_steps": finetune_steps,
        "learning_rate": args.finetune_learning_rate,
        "backbone_lr_scale": 1.0,
    }
    data["stages"] = [frozen, finetune]
    data["training"].update(
        {
            "output_dir": str(output_dir),
            "feature_cache_dir": str(cache_dir),
            "per_device_train_batch_size": args.batch_size,
            "eval_strategy": "no",
            "save_strategy": "no",
            "logging_steps": 1000,
            "report_to": ["none"],
            "dataloader_num_workers": args.num_workers,
            "seed": args.seed,
        }
    )
    return recipe_from_dict(data)


def export_for_keras(path: Path, model, pixel_values, labels) -> None:
    """Preprocessed images (NHWC), labels, conv weights (Keras layout) and the initial head weights, as .npz."""
    import numpy as np

    arrays = {
        "x": pixel_values.permute(0, 2, 3, 1).contiguous().numpy().astype(np.float32),
        "y": labels.numpy().astype(np.int64),
        "num_labels": np.array(model.config.num_labels),
    }
    convs = [m for m in model.backbone.features if m.__class__.__name__ == "Conv2d"]
    for i, conv in enumerate(convs):
        arrays[f"conv{i}_kernel"] = (
            conv.weight.detach().permute(2, 3, 1, 0).numpy()
        )  # (out,in,kh,kw) -> (kh,kw,in,out)
        arrays[f"conv{i}_bias"] = conv.bias.detach().numpy()
    hidden, classifier = model.head.hidden[0], model.head.classifier
    channels = model.backbone.num_features
    side = model.config.image_size // 32
    # hftransfer flattens channels-first (c, h, w); Keras flattens channels-last (h, w, c): permute the rows.
    w = hidden.weight.detach().reshape(hidden.out_features, channels, side, side).permute(2, 3, 1, 0)
    arrays["dense0_kernel"] = w.reshape(side * side * channels, hidden.out_features).numpy()
    arrays["dense0_bias"] = hidden.bias.detach().numpy()
    arrays["dense1_kernel"] = classifier.weight.detach().t().contiguous().numpy()
    arrays["dense1_bias"] = classifier.bias.detach().numpy()
    np.savez(path, **arrays)


def run_keras(args, data_path: Path, frozen_epochs: int | None = None, finetune_images: int | None = None) -> dict:
    command = [str(args.keras_python), str(Path(__file__).resolve()), "--keras-worker", str(data_path)]
    command += ["--frozen-images", str(args.frozen_images), "--frozen-epochs", str(args.frozen_epochs)]
    command += ["--finetune-images", str(args.finetune_images), "--batch-size", str(args.batch_size)]
    command += ["--finetune-learning-rate", str(args.finetune_learning_rate), "--seed", str(args.seed)]
    if frozen_epochs:
        command += ["--worker-frozen-epochs", str(frozen_epochs)]
    if finetune_images:
        command += ["--worker-finetune-images", str(finetune_images)]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONPATH": ""}
    done = subprocess.run(command, capture_output=True, text=True, env=env, cwd=_common.REPO_ROOT)
    for line in done.stdout.splitlines():
        if line.startswith("KERAS_RESULT "):
            return json.loads(line[len("KERAS_RESULT ") :])
    raise RuntimeError(f"Keras worker failed (exit {done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-5000:]}")


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.keras_worker is not None:
        return keras_worker(args)
    _common.configure_environment()
    if not args.keras_python.is_file():
        print(
            f"Keras venv not found at {args.keras_python}. Create it (see bench/README.md):\n"
            "  python3 -m venv .venv-keras && .venv-keras/bin/pip install tensorflow-cpu==2.21.0",
            file=sys.stderr,
        )
        return 2
    if args.finetune_images % args.batch_size:
        raise SystemExit("--finetune-images must be a multiple of --batch-size")
    started = time.perf_counter()
    threads = _common.set_torch_threads(args.threads)
    import shutil
    import tempfile

    import torch
    from transformers import set_seed

    from hftransfer.building import build_model_and_processor, load_recipe_data
    from hftransfer.data import ImageClassificationCollator, build_transforms
    from hftransfer.training import StagedFineTuner

    machine = _common.machine_info()
    versions = _common.library_versions()
    work = Path(tempfile.mkdtemp(prefix="hftransfer-bench-keras-"))
    finetune_steps = args.finetune_images // args.batch_size
    print(f"[{NAME}] threads={threads} work dir {work}")

    probe_recipe = make_recipe(args, work / "probe", work / "probe-cache", args.frozen_epochs, finetune_steps)
    data, _ = load_recipe_data(probe_recipe)
    id2label = {int(k): v for k, v in data.id2label.items()}
    set_seed(args.seed)
    hf_init, processor = build_model_and_processor(probe_recipe, id2label)
    train_split = data.splits["train"]
    rows = train_split.with_transform(build_transforms(processor))
    batch = ImageClassificationCollator()([rows[i] for i in range(len(rows))])
    data_path = work / "keras_data.npz"
    export_for_keras(data_path, hf_init, batch["pixel_values"], batch["labels"])
    with torch.inference_mode():
        hf_logits = hf_init(pixel_values=batch["pixel_values"][:4]).logits
    print(
        f"[{NAME}] {len(train_split)} train images at {args.image_size}px; hftransfer model "
        f"{sum(p.numel() for p in hf_init.parameters()):,} parameters"
    )

    from transformers import TrainerCallback

    from hftransfer.training import staged

    class StepTimes(TrainerCallback):
        """Wall-clock time at the end of each optimizer step (measurement only; changes nothing)."""

        marks: list[float] = []

        def on_train_begin(self, args_, state, control, **kwargs):
            StepTimes.marks = []

        def on_step_end(self, args_, state, control, **kwargs):
            StepTimes.marks.append(time.perf_counter())

    class StepTimedTrainer(staged.TransferTrainer):
        def __init__(self, *a, callbacks=None, **kw):
            super().__init__(*a, callbacks=[*(callbacks or []), StepTimes()], **kw)

    staged.TransferTrainer = StepTimedTrainer  # the stages' trainers record step times (bench process only)

    class TimedFineTuner(StagedFineTuner):
        cache_seconds = 0.0

        def _datasets_for_stage(self, stage, use_cache, *rest, **kwargs):
            t0 = time.perf_counter()
            out = super()._datasets_for_stage(stage, use_cache, *rest, **kwargs)
            if stage.trainable == "head":
                TimedFineTuner.cache_seconds = time.perf_counter() - t0
            return out

    keras_runs: list[dict] = []
    hf_runs: list[dict] = []

    def run_hftransfer(frozen_epochs: int, steps: int) -> dict:
        run_dir = Path(tempfile.mkdtemp(dir=work, prefix="hf-"))
        recipe = make_recipe(args, run_dir / "out", run_dir / "cache", frozen_epochs, steps)
        result = TimedFineTuner(recipe).run()
        marks = StepTimes.marks  # of the last trainer that trained: the fine-tuning stage
        frozen, finetune = result.metrics["stages"]
        assert frozen["used_feature_cache"] and finetune["global_steps"] == steps
        shutil.rmtree(run_dir, ignore_errors=True)
        return {
            "frozen_s": TimedFineTuner.cache_seconds + frozen["wall_time_s"],
            "frozen_cache_s": TimedFineTuner.cache_seconds,
            "frozen_images": len(train_split) * frozen_epochs,
            "finetune_s": finetune["wall_time_s"],
            "finetune_images": steps * args.batch_size,
            "finetune_steady_images_per_s": (len(marks) - 1) * args.batch_size / (marks[-1] - marks[0])
            if len(marks) > 1
            else None,
            "total_parameters": finetune["total_parameters"],
        }

    # Both sides' rounds: one hftransfer run (both stages), one Keras run (both phases).
    def hf_round(rep: int) -> float:
        hf_runs.append(run_hftransfer(args.frozen_epochs, finetune_steps))
        return hf_runs[-1]["frozen_s"]

    def keras_round(rep: int) -> float:
        keras_runs.append(run_keras(args, data_path))
        return keras_runs[-1]["frozen_s"]

    def keras_warmup():
        result = run_keras(args, data_path, frozen_epochs=1, finetune_images=args.batch_size)
        diff = max(abs(a - b) for ra, rb in zip(result["initial_logits"], hf_logits.tolist()) for a, b in zip(ra, rb))
        print(f"[{NAME}] Keras vs hftransfer initial logits max |diff| = {diff:.2e}")
        print(f"[{NAME}] Keras model: {result['total_params']:,} parameters; TF {result['tensorflow']}")
        keras_round.check = (diff, result["total_params"])

    _common.run_alternating(
        {"hftransfer": hf_round, "keras": keras_round},
        repeats=args.repeats,
        warmup={"hftransfer": lambda: run_hftransfer(1, 1), "keras": keras_warmup},
    )
    shutil.rmtree(work, ignore_errors=True)

    def rates(runs, phase):
        return [r[f"{phase}_images"] / r[f"{phase}_s"] for r in runs]

    figures = [
        _common.Figure(
            name=f"keras-seed frozen stage ({args.frozen_epochs} epochs x {len(train_split)} imgs, {args.image_size}px)",
            unit="img/s",
            hftransfer=rates(hf_runs, "frozen"),
            peer=rates(keras_runs, "frozen"),
            peer_name=f"Keras {keras_runs[0]['keras']} / TF {keras_runs[0]['tensorflow']} fit()",
            higher_is_better=True,
            goal=args.goal,
            note="training images per second of the frozen stage (epochs x images / stage time)",
            extra={
                "hftransfer_cache_s": _common.summarize([r["frozen_cache_s"] for r in hf_runs]),
                "keras_steady_state_img_per_s": _common.summarize(
                    [r["frozen_steady_images_per_s"] for r in keras_runs if r["frozen_steady_images_per_s"]]
                ),
            },
        ),
        _common.Figure(
            name=f"keras-seed full fine-tuning ({args.finetune_images} imgs, {args.image_size}px)",
            unit="img/s",
            hftransfer=rates(hf_runs, "finetune"),
            peer=rates(keras_runs, "finetune"),
            peer_name=f"Keras {keras_runs[0]['keras']} / TF {keras_runs[0]['tensorflow']} fit()",
            higher_is_better=True,
            goal=args.goal,
            note="everything trainable; one pass; fit() / trainer.train() time, start-up included on both sides",
        ),
        _common.Figure(
            name=f"keras-seed full fine-tuning, steady state after the first step ({args.image_size}px)",
            unit="img/s",
            hftransfer=[r["finetune_steady_images_per_s"] for r in hf_runs],
            peer=[r["finetune_steady_images_per_s"] for r in keras_runs],
            peer_name=f"Keras {keras_runs[0]['keras']} / TF {keras_runs[0]['tensorflow']} fit()",
            higher_is_better=True,
            note="informational: steps 2..N only (Keras' first step includes its XLA compilation)",
        ),
    ]
    _common.report(figures)
    if not args.no_write:
        diff, keras_params = getattr(keras_round, "check", (None, None))
        path = _common.write_results(
            NAME,
            title=TITLE,
            figures=figures,
            settings={**vars(args), "train_images": len(train_split)},
            machine=machine,
            versions={
                **versions,
                "tensorflow-cpu": keras_runs[0]["tensorflow"],
                "keras": keras_runs[0]["keras"],
                "keras_venv_numpy": keras_runs[0]["numpy"],
            },
            extra={
                "keras_install": f"{args.keras_python.parent.parent.name}: pip install tensorflow-cpu=="
                f"{keras_runs[0]['tensorflow']} (keras {keras_runs[0]['keras']})",
                "keras_tf_threads": {
                    "intra_op": keras_runs[0]["tf_intra_op_threads"],
                    "inter_op": keras_runs[0]["tf_inter_op_threads"],
                },
                "parameters": {"hftransfer": hf_runs[0]["total_parameters"], "keras": keras_params},
                "initial_logits_max_abs_diff": diff,
                "runs": {
                    "hftransfer": hf_runs,
                    "keras": [{k: v for k, v in r.items() if k != "initial_logits"} for r in keras_runs],
                },
            },
            output=args.output,
            started=started,
        )
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
