"""Peak memory of a head-only stage at two cache sizes: hftransfer's memory-mapped, streamed feature cache vs the
in-memory cache it replaced (features accumulated in RAM, concatenated, saved, and trained on from tensors).

Both sides get the same synthetic features (VGG16 at 64 px with `pooling: flatten`: 2,048 floats per image), the
same `TransferForImageClassification` head (Dense(1024) -> Dense(10)) and the same `TransferTrainer` run
(`--steps` steps of `--batch-size` shuffled rows). Each measurement runs in a fresh process, which samples its
anonymous resident memory (`RssAnon`: what the process itself holds; file pages of a mapping are page cache, which
the kernel can drop) and reads its peak resident set (`VmHWM`, file pages included) from `/proc/self/status`.

The figure's ratio is `peer / hftransfer` peak anonymous memory at each size (> 1: hftransfer needs less); the
point is the growth from the small to the large cache, which the JSON records per side.

Run from the repo root: `.venv/bin/python bench/bench_feature_cache_rss.py` (~3 minutes on 2 CPU cores; needs
~2 GB of free disk and ~4 GB of RAM at the default 200k rows).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import threading
import time

import _common

_common.configure_environment()

from pathlib import Path  # noqa: E402

NAME = "feature_cache_rss"
TITLE = "Head-only stage peak memory: memory-mapped feature cache vs in-memory cache"
FEATURE_DIM = 2048  # VGG16 at 64 px, pooling: flatten (512 x 2 x 2)


def parse_args(argv=None):
    parser = _common.base_parser(__doc__.split("\n\n")[0], repeats=1)
    parser.add_argument("--sizes", type=int, nargs=2, default=[20_000, 200_000], help="Rows of the two caches.")
    parser.add_argument("--steps", type=int, default=200, help="Training steps of the head-only stage.")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--worker", choices=["hftransfer", "peer"], help=argparse.SUPPRESS)
    parser.add_argument("--rows", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


class _MemorySampler:
    """Peak `RssAnon` of this process, sampled every 10 ms in a thread."""

    def __init__(self):
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    @staticmethod
    def status(field: str) -> int:
        with open("/proc/self/status") as handle:
            for line in handle:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
        return 0

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, self.status("RssAnon"))
            time.sleep(0.01)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.status("RssAnon"))


def _batches(rows: int, batch: int = 4096):
    import torch

    generator = torch.Generator().manual_seed(0)
    for first in range(0, rows, batch):
        count = min(batch, rows - first)
        yield torch.randn(count, FEATURE_DIM, generator=generator), torch.arange(first, first + count) % 10, None


def _train_head(dataset, collator, args, work: Path) -> float:
    import torch
    from transformers import TrainingArguments

    from hftransfer import TransferConfig, TransferForImageClassification
    from hftransfer.training import TransferTrainer

    torch.manual_seed(0)
    model = TransferForImageClassification(
        TransferConfig(image_size=64, pooling="flatten", hidden_sizes=[1024], num_labels=10)
    )
    model.freeze_backbone()
    training_args = TrainingArguments(
        output_dir=str(work / "trainer"),
        max_steps=args.steps,
        per_device_train_batch_size=args.batch_size,
        learning_rate=1e-3,
        save_strategy="no",
        eval_strategy="no",
        report_to=["none"],
        logging_steps=10_000,
        dataloader_num_workers=0,
        remove_unused_columns=False,
        label_names=["labels"],
        use_cpu=True,
        disable_tqdm=True,
    )
    trainer = TransferTrainer(model=model, args=training_args, train_dataset=dataset, data_collator=collator)
    return float(trainer.train().training_loss)


def worker(args) -> dict:
    """One side at one size, in this (fresh) process."""
    import torch

    _common.set_torch_threads(args.threads)
    work = args.work
    work.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    with _MemorySampler() as memory:
        if args.worker == "hftransfer":
            from hftransfer.training.feature_cache import (
                collate_cached_features,
                open_cache_entry,
                publish_index,
                write_shard,
            )

            entry = work / "entry"
            entry.mkdir()
            sidecar = write_shard(entry / "shard-00000-of-00001.safetensors", args.rows, _batches(args.rows))
            publish_index(entry, "synthetic", None, "float32", args.rows, [sidecar])
            dataset = open_cache_entry(entry, args.rows, num_labels=10)
            loss = _train_head(dataset, collate_cached_features, args, work)
        else:
            from safetensors.torch import save_file

            # The cache as it was: every batch kept in RAM, concatenated, saved, then trained on from the tensors.
            chunks = {"pooled_features": [], "labels": []}
            for features, labels, _ in _batches(args.rows):
                chunks["pooled_features"].append(features)
                chunks["labels"].append(labels)
            tensors = {name: torch.cat(parts).contiguous() for name, parts in chunks.items()}
            del chunks
            save_file(tensors, str(work / "cache.safetensors"))

            class InMemory(torch.utils.data.Dataset):
                def __len__(self):
                    return len(tensors["labels"])

                def __getitem__(self, index):
                    return {name: values[index] for name, values in tensors.items()}

            loss = _train_head(InMemory(), None, args, work)
    return {
        "rows": args.rows,
        "peak_rss_anon_bytes": memory.peak,
        "peak_rss_bytes": _MemorySampler.status("VmHWM"),
        "cache_bytes": args.rows * FEATURE_DIM * 4,
        "seconds": round(time.perf_counter() - started, 2),
        "training_loss": loss,
    }


def run_worker(side: str, rows: int, run, args) -> dict:
    work = Path(run.work) / f"{side}-{rows}"
    command = [sys.executable, __file__, "--worker", side, "--rows", str(rows), "--work", str(work)]
    command += ["--steps", str(args.steps), "--batch-size", str(args.batch_size), "--threads", str(args.threads)]
    completed = subprocess.run(command, capture_output=True, text=True, check=False)
    if completed.returncode != 0:
        raise RuntimeError(f"{side} worker at {rows} rows failed:\n{completed.stderr[-3000:]}")
    result = json.loads(completed.stdout.strip().splitlines()[-1])
    subprocess.run(["rm", "-rf", str(work)], check=False)
    print(
        f"[{NAME}] {side:10s} {rows:>7,} rows: peak RssAnon {result['peak_rss_anon_bytes'] / 2**20:,.0f} MiB, "
        f"peak RSS {result['peak_rss_bytes'] / 2**20:,.0f} MiB, {result['seconds']} s"
    )
    return result


def main() -> int:
    args = parse_args()
    if args.worker:
        print(json.dumps(worker(args)))
        return 0
    run = _common.start_run(NAME, TITLE, args, work_prefix="hftransfer-bench-rss-")
    results: dict[str, dict[int, list[dict]]] = {"hftransfer": {}, "peer": {}}
    for _ in range(args.repeats):
        for rows in args.sizes:
            for side in ("hftransfer", "peer"):  # alternating, each in a fresh process
                results[side].setdefault(rows, []).append(run_worker(side, rows, run, args))
    figures = []
    for rows in args.sizes:
        figures.append(
            _common.Figure(
                name=f"head-only stage peak anonymous memory, {rows:,} cached rows ({rows * FEATURE_DIM * 4 / 1e6:,.0f} MB)",
                unit="MiB",
                hftransfer=[r["peak_rss_anon_bytes"] / 2**20 for r in results["hftransfer"][rows]],
                peer=[r["peak_rss_anon_bytes"] / 2**20 for r in results["peer"][rows]],
                peer_name="in-memory cache (before)",
                higher_is_better=False,
                note="RssAnon sampled every 10 ms; VmHWM (file pages included) in `runs`.",
            )
        )
    small, large = args.sizes
    growth = {
        side: round(
            _common.median([r["peak_rss_anon_bytes"] for r in results[side][large]])
            / _common.median([r["peak_rss_anon_bytes"] for r in results[side][small]]),
            3,
        )
        for side in results
    }
    print(f"[{NAME}] peak anonymous memory growth from {small:,} to {large:,} rows: {growth}")
    return run.finish(
        figures,
        extra={
            "growth_small_to_large": growth,
            "runs": {side: {str(k): v for k, v in sizes.items()} for side, sizes in results.items()},
        },
    )


if __name__ == "__main__":
    raise SystemExit(main())
