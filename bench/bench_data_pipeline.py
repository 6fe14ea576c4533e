"""Is the data pipeline fast enough to keep training fed? Images/s of decoding + transforms vs the training step.

    python bench/bench_data_pipeline.py                       # embedded subset, 64 px, batch 32, default workers
    python bench/bench_data_pipeline.py --source fashion-mnist --output bench/results/data_pipeline_full.json

Measures, on the training split of `--source`, at `--image-size`:

1. the data pipeline alone: a `DataLoader` with the default number of workers
   (`hftransfer.data.default_num_workers()`), batch 32, shuffled, over the lazily transformed split (decode -> RGB
   -> processor, and decode -> RGB -> torchvision augmentation), collated; steady-state images/s after the first
   batch, and the time to the first batch (worker start-up);
2. the model's training step alone: `TransferForImageClassification(TransferConfig(image_size=64, pooling="avg",
   num_labels=10))`, AdamW, forward + backward + step on a fixed batch, (a) everything trainable, (b) backbone frozen
   without a feature cache (the frozen stage when augmentation forbids caching);
3. both together: the training loop fed by the DataLoader, to see the slowdown when they share the machine.

The ratio pipeline / training is the headline (goal >= 2x). Results go to `--output` as JSON, with the machine,
library versions, date and the exact command.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shlex
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from hftransfer.data import (
    AugmentationConfig,
    ImageClassificationCollator,
    build_transforms,
    default_num_workers,
    load_image_classification_dataset,
)

REPO = Path(__file__).resolve().parents[1]


def pipeline_rate(dataset, transform, batch_size: int, workers: int, max_batches: int) -> dict:
    """Steady-state images/s of the DataLoader, excluding the first batch (worker start-up), over `max_batches`."""
    loader = DataLoader(
        transform.apply(dataset),
        batch_size=batch_size,
        shuffle=True,
        num_workers=workers,
        collate_fn=ImageClassificationCollator(),
        generator=torch.Generator().manual_seed(0),
    )
    start = time.perf_counter()
    iterator = iter(loader)
    first = next(iterator)
    first_batch_s = time.perf_counter() - start
    images = 0
    steady_start = time.perf_counter()
    for batches, batch in enumerate(iterator, start=1):
        images += len(batch["labels"])
        if batches >= max_batches:
            break
    elapsed = time.perf_counter() - steady_start
    del iterator
    return {
        "images_per_s": images / elapsed,
        "images": images,
        "seconds": elapsed,
        "first_batch_s": first_batch_s,
        "pixel_values_shape": list(first["pixel_values"].shape),
    }


def make_model(image_size: int, num_labels: int, device: torch.device, frozen_backbone: bool):
    try:
        from hftransfer import TransferConfig, TransferForImageClassification

        model = TransferForImageClassification(
            TransferConfig(image_size=image_size, pooling="avg", num_labels=num_labels)
        )
        backbone, name = model.backbone, "hftransfer.TransferForImageClassification(vgg16, pooling=avg)"
    except ImportError:  # only while the modeling module is not there: timm's VGG16 as a stand-in
        import timm

        model = timm.create_model("vgg16", num_classes=num_labels)
        backbone, name = model.features, "timm vgg16 (stand-in)"
    if frozen_backbone:
        backbone.requires_grad_(False)
    model.to(device).train()
    return model, name


def loss_of(model, batch) -> torch.Tensor:
    output = model(pixel_values=batch["pixel_values"], labels=batch["labels"])
    if hasattr(output, "loss"):
        return output.loss
    return torch.nn.functional.cross_entropy(output, batch["labels"])


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def training_rate(model, batch, device: torch.device, steps: int, warmup: int) -> dict:
    """Images/s of forward + backward + optimizer step on one fixed batch (data already on the device)."""
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    batch = {k: v.to(device) for k, v in batch.items()}
    for step in range(warmup + steps):
        if step == warmup:
            sync(device)
            start = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        loss_of(model, batch).backward()
        optimizer.step()
    sync(device)
    elapsed = time.perf_counter() - start
    size = len(batch["labels"])
    return {"images_per_s": steps * size / elapsed, "steps": steps, "seconds": elapsed}


def fed_training_rate(model, dataset, transform, batch_size, workers, device, steps: int, warmup: int) -> dict:
    """Images/s of the same training step fed by the DataLoader (both sharing this machine)."""
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    loader = DataLoader(
        transform.apply(dataset),
        batch_size=batch_size,
        shuffle=True,
        num_workers=workers,
        collate_fn=ImageClassificationCollator(),
        pin_memory=device.type == "cuda",
        generator=torch.Generator().manual_seed(1),
        drop_last=True,
    )
    images = 0
    for step, batch in enumerate(loader):
        if step == warmup:
            sync(device)
            start = time.perf_counter()
        if step >= warmup:
            images += len(batch["labels"])
        batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
        optimizer.zero_grad(set_to_none=True)
        loss_of(model, batch).backward()
        optimizer.step()
        if step + 1 >= warmup + steps:
            break
    sync(device)
    elapsed = time.perf_counter() - start
    return {"images_per_s": images / elapsed, "steps": steps, "seconds": elapsed}


def machine_info(device: torch.device) -> dict:
    cpu = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info = {
        "platform": platform.platform(),
        "cpu": cpu,
        "cpu_cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "device": str(device),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    if hasattr(os, "getloadavg"):
        # Other work on the machine slows both sides; the load says how quiet the run was.
        info["load_average_1_5_15_min"] = [round(x, 2) for x in os.getloadavg()]
    return info


def versions() -> dict:
    import importlib.metadata as md

    names = ["torch", "torchvision", "timm", "transformers", "datasets", "pillow", "numpy", "pyarrow", "hftransfer"]
    found = {"python": platform.python_version()}
    for name in names:
        try:
            found[name] = md.version(name)
        except md.PackageNotFoundError:
            found[name] = None
    return found


def write_json(path: Path, payload: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", dir=path.parent, suffix=".tmp", delete=False) as tmp:
        json.dump(payload, tmp, indent=2)
        tmp.write("\n")
    os.chmod(tmp.name, 0o644)
    os.replace(tmp.name, path)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", default="fashion-mnist-subset")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--num-workers", type=int, default=default_num_workers())
    parser.add_argument("--pipeline-batches", type=int, default=100, help="steady-state batches per pipeline measure")
    parser.add_argument("--train-steps", type=int, default=10)
    parser.add_argument("--warmup-steps", type=int, default=2)
    parser.add_argument("--device", default="auto", help="auto (cuda if available), cpu or cuda")
    parser.add_argument("--skip-fed", action="store_true", help="skip the DataLoader-fed training measurement")
    parser.add_argument("--output", type=Path, default=REPO / "bench" / "results" / "data_pipeline.json")
    args = parser.parse_args(argv)
    device = torch.device(
        "cuda" if args.device == "auto" and torch.cuda.is_available() else args.device.replace("auto", "cpu")
    )

    from hftransfer.image_processing_hftransfer import TransferImageProcessor

    machine = machine_info(device)
    data = load_image_classification_dataset(args.source)
    train = data.splits["train"]
    processor = TransferImageProcessor(size={"height": args.image_size, "width": args.image_size})
    transforms = {
        "processor": build_transforms(processor),
        "augmentation": build_transforms(processor, AugmentationConfig()),
    }

    results: dict = {"pipeline": {}, "training": {}, "fed_training": {}}
    for name, transform in transforms.items():
        results["pipeline"][name] = pipeline_rate(
            train, transform, args.batch_size, args.num_workers, args.pipeline_batches
        )
        print(f"pipeline [{name}] {results['pipeline'][name]['images_per_s']:.0f} img/s", flush=True)

    batch = ImageClassificationCollator()([transforms["processor"].apply(train)[i] for i in range(args.batch_size)])
    for mode, frozen in (("full", False), ("frozen_backbone", True)):
        model, model_name = make_model(args.image_size, data.num_labels, device, frozen)
        results["training"][mode] = training_rate(model, batch, device, args.train_steps, args.warmup_steps)
        print(f"training [{mode}] {results['training'][mode]['images_per_s']:.1f} img/s", flush=True)
        if not args.skip_fed:
            results["fed_training"][mode] = fed_training_rate(
                model, train, transforms["augmentation"], args.batch_size, args.num_workers, device,
                args.train_steps, args.warmup_steps,
            )  # fmt: skip
            print(f"fed training [{mode}] {results['fed_training'][mode]['images_per_s']:.1f} img/s", flush=True)
        del model

    ratios = {
        f"{pipe}_vs_{mode}": results["pipeline"][pipe]["images_per_s"] / results["training"][mode]["images_per_s"]
        for pipe in results["pipeline"]
        for mode in results["training"]
    }
    slowdown = {
        mode: results["fed_training"][mode]["images_per_s"] / results["training"][mode]["images_per_s"]
        for mode in results["fed_training"]
    }
    command = "python " + shlex.join(
        [os.path.relpath(sys.argv[0], REPO), *(argv if argv is not None else sys.argv[1:])]
    )
    load_after = [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None
    payload = {
        "benchmark": "data pipeline images/s vs training images/s",
        "goal": "pipeline >= 2x the training step rate",
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": command,
        "settings": {
            "source": args.source,
            "source_description": data.source,
            "train_images": len(train),
            "image_size": args.image_size,
            "batch_size": args.batch_size,
            "num_workers": args.num_workers,
            "num_workers_is_default": args.num_workers == default_num_workers(),
            "augmentation": str(AugmentationConfig()),
            "model": model_name,
        },
        "machine": {**machine, "load_average_at_end": load_after},
        "versions": versions(),
        "results": results,
        "ratios": ratios,
        "fed_over_alone": slowdown,
        "headline_ratio": ratios["augmentation_vs_full"],
    }
    write_json(args.output, payload)
    print(json.dumps({"ratios": ratios, "fed_over_alone": slowdown}, indent=2))
    print(f"wrote {args.output}")
    return payload


if __name__ == "__main__":
    main()
