"""Benchmark 3 -- prediction throughput: `hftransfer.inference.predict` and `pipeline("image-classification")` vs a
raw batched timm forward, images/s, decoding included on every side.

All sides classify the same PNG files on disk (Fashion-MNIST test images) with the same network -- the VGG16 conv base
with ImageNet weights (`keras-imagenet`) and the same head (avg pool -> Dense(256, relu) -> Dense(10)), identical
weights -- in fp32, with the same batch size, and return the top-k labels with their probabilities.

- hftransfer `predict`: the model is saved with `save_pretrained` and loaded the way `hftransfer predict` loads it
  (`load_model_and_processor(folder)`, once, untimed); timed is `predict(model, paths, top_k, batch_size)`.
- `pipeline("image-classification")` on the same loaded model and its image processor, `batch_size` set; timed is the
  call on the list of paths.
- peer: `timm.create_model("vgg16")` with `pre_logits`/`head` replaced by the same head and the same weights; a plain
  loop: PIL open -> RGB -> resize -> numpy -> normalise -> one forward per batch under `inference_mode` -> softmax ->
  top-k -> label names.

Goal: each hftransfer path >= 0.9x the raw loop.

Run from the repo root: `.venv/bin/python bench/bench_predict.py` (see `--help`; ~3 minutes on 2 CPU cores).
"""

from __future__ import annotations

import time

import _common

_common.configure_environment()


NAME = "predict"
TITLE = "Prediction throughput: hftransfer predict / pipeline vs raw batched timm forward (decoding included)"


def parse_args():
    parser = _common.base_parser(__doc__.split("\n\n")[0], repeats=7)
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--images", type=int, default=768, help="PNG files classified per run.")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--top-k", type=int, default=1)
    parser.add_argument("--hidden-size", type=int, default=256)
    parser.add_argument("--skip-pipeline", action="store_true", help="Measure only hftransfer predict vs raw timm.")
    parser.add_argument("--goal", type=float, default=0.9)
    return parser.parse_args()


def build_timm_peer(hf_model):
    import timm
    from timm.layers import SelectAdaptivePool2d
    from torch import nn

    head_state = hf_model.head.state_dict()

    class Head(nn.Module):
        def __init__(self):
            super().__init__()
            self.pool = SelectAdaptivePool2d(pool_type="avg", flatten=True)
            hidden = hf_model.head.hidden[0]
            self.hidden = nn.Sequential(nn.Linear(hidden.in_features, hidden.out_features), nn.ReLU())
            self.classifier = nn.Linear(hf_model.head.classifier.in_features, hf_model.head.classifier.out_features)

        def forward(self, x, pre_logits: bool = False):
            x = self.hidden(self.pool(x))
            return x if pre_logits else self.classifier(x)

    model = timm.create_model("vgg16", pretrained=False, num_classes=hf_model.config.num_labels)
    model.features.load_state_dict(hf_model.backbone.features.state_dict(), strict=True)
    model.pre_logits = nn.Identity()
    model.head = Head()
    model.head.load_state_dict(head_state, strict=True)  # keys hidden.0.*, classifier.*
    return model.eval()


def main() -> int:
    args = parse_args()
    started = time.perf_counter()
    import numpy as np
    import PIL.Image
    import torch
    from datasets import Image
    from transformers import pipeline

    from hftransfer.data import FASHION_MNIST_CLASSES, load_image_classification_dataset
    from hftransfer.image_processing_hftransfer import TransferImageProcessor
    from hftransfer.inference import load_model_and_processor, predict
    from hftransfer.weights import create_model

    bench = _common.start_run(NAME, TITLE, args, work_prefix="hftransfer-bench-predict-", started=started)
    work = bench.work

    # Images on disk: the embedded Fashion-MNIST test PNGs, written as files.
    test = load_image_classification_dataset("fashion-mnist-subset").splits["test"]
    test = test.cast_column("image", Image(decode=False)).select(range(min(args.images, len(test))))
    image_dir = work / "images"
    image_dir.mkdir()
    paths = []
    for index, row in enumerate(test):
        path = image_dir / f"{index:05d}.png"
        path.write_bytes(row["image"]["bytes"])
        paths.append(path)

    # One model, saved the way training saves it, loaded the way `hftransfer predict` loads it.
    torch.manual_seed(args.seed)
    id2label = dict(enumerate(FASHION_MNIST_CLASSES))
    hf_model = create_model(
        "keras-imagenet",
        num_labels=len(id2label),
        id2label=id2label,
        label2id={v: k for k, v in id2label.items()},
        image_size=args.image_size,
        pooling="avg",
        hidden_sizes=[args.hidden_size],
    )
    model_dir = work / "model"
    hf_model.save_pretrained(model_dir)
    TransferImageProcessor.from_transfer_config(hf_model.config).save_pretrained(model_dir)
    loaded, processor = load_model_and_processor(model_dir, device="cpu")
    peer = build_timm_peer(hf_model)
    labels = [id2label[i] for i in range(len(id2label))]
    mean = torch.tensor(processor.image_mean).view(1, 3, 1, 1)
    std = torch.tensor(processor.image_std).view(1, 3, 1, 1)
    size = args.image_size
    print(
        f"[{NAME}] {len(paths)} PNG files ({size}px model input), batch {args.batch_size}; hftransfer model memory "
        f"format: {'channels_last' if loaded.backbone.features[0].weight.is_contiguous(memory_format=torch.channels_last) and not loaded.backbone.features[0].weight.is_contiguous() else 'contiguous'}"
    )

    def raw_timm(image_paths) -> list[dict]:
        results = []
        with torch.inference_mode():
            for start in range(0, len(image_paths), args.batch_size):
                chunk = image_paths[start : start + args.batch_size]
                arrays = [
                    np.asarray(PIL.Image.open(p).convert("RGB").resize((size, size), PIL.Image.BILINEAR))
                    for p in chunk
                ]
                x = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float().div_(255.0)
                x = (x - mean) / std
                probabilities = peer(x).softmax(-1)
                scores, ids = probabilities.topk(args.top_k, dim=-1)
                for path, row_scores, row_ids in zip(chunk, scores.tolist(), ids.tolist()):
                    results.append(
                        {
                            "path": str(path),
                            "predictions": [{"label": labels[i], "score": s} for i, s in zip(row_ids, row_scores)],
                        }
                    )
        return results

    def hf_predict(image_paths) -> list[dict]:
        return predict(loaded, image_paths, top_k=args.top_k, batch_size=args.batch_size, processor=processor)

    pipe = None
    if not args.skip_pipeline:
        pipe = pipeline("image-classification", model=loaded, image_processor=processor, device="cpu")

    def hf_pipeline(image_paths) -> list:
        return pipe([str(p) for p in image_paths], batch_size=args.batch_size, top_k=args.top_k)

    # Agreement check: same top-1 labels (resizing differs slightly between PIL and the processor).
    probe = paths[: min(64, len(paths))]
    ours = [r["predictions"][0]["label"] for r in hf_predict(probe)]
    theirs = [r["predictions"][0]["label"] for r in raw_timm(probe)]
    agreement = float(np.mean([a == b for a, b in zip(ours, theirs)]))
    print(f"[{NAME}] top-1 agreement hftransfer predict vs raw timm on {len(probe)} images: {agreement:.1%}")

    def timed(fn):
        def run(rep: int) -> float:
            t0 = time.perf_counter()
            out = fn(paths)
            seconds = time.perf_counter() - t0
            assert len(out) == len(paths)
            return len(paths) / seconds

        return run

    sides = {"hftransfer_predict": timed(hf_predict), "raw_timm": timed(raw_timm)}
    warm = {"hftransfer_predict": lambda: hf_predict(paths[:128]), "raw_timm": lambda: raw_timm(paths[:128])}
    if pipe is not None:
        sides["pipeline"] = timed(hf_pipeline)
        warm["pipeline"] = lambda: hf_pipeline(paths[:128])
    samples = _common.run_alternating(sides, repeats=args.repeats, warmup=warm)

    figures = [
        _common.Figure(
            name=f"prediction throughput, hftransfer predict ({size}px, batch {args.batch_size})",
            unit="img/s",
            hftransfer=samples["hftransfer_predict"],
            peer=samples["raw_timm"],
            peer_name="raw batched timm forward",
            higher_is_better=True,
            goal=args.goal,
            note="decode + preprocess + forward + softmax/top-k on both sides; PNG files on disk",
        )
    ]
    if pipe is not None:
        figures.append(
            _common.Figure(
                name=f"prediction throughput, pipeline('image-classification') ({size}px, batch {args.batch_size})",
                unit="img/s",
                hftransfer=samples["pipeline"],
                peer=samples["raw_timm"],
                peer_name="raw batched timm forward",
                higher_is_better=True,
                goal=args.goal,
                note="transformers pipeline on the hftransfer model (Auto classes) vs the same raw loop",
            )
        )
    return bench.finish(figures, extra={"top1_agreement_predict_vs_raw": agreement})


if __name__ == "__main__":
    raise SystemExit(main())
