"""Benchmark 2 -- unfrozen training throughput: hftransfer's Trainer path vs a hand-written timm + torch loop.

Both sides train the whole VGG16 (conv base unfrozen) plus the same head (avg pool -> Dense(256, relu) -> Dense(10)),
from the same ImageNet weights (`keras-imagenet`) and the same head init, on the same images through the same
transform, collator and number of DataLoader workers, with the same batch size, fp32, AdamW (lr 1e-4, no weight
decay), constant LR and gradient clipping at 1.0 (the Trainer's default), for the same number of steps.

- hftransfer: the product path, `hftransfer.training.train(recipe)` with one `trainable: all` stage of
  `--steps` steps; timed is the stage's `trainer.train()` (Trainer + accelerate set-up, DataLoader start-up, the steps).
- peer: a plain loop on `timm.create_model("vgg16")` with `pre_logits`/`head` replaced by the same head; timed is
  DataLoader + optimizer creation and the same steps.

Figures: training images/s in steady state (end of step 1 to end of step N, timed by a Trainer callback on the
hftransfer side and in the loop on the peer side), and images/s with start-up included (the whole `trainer.train()`
vs DataLoader + optimizer creation + loop). Goal: hftransfer >= 0.95x the hand-written loop.

Run from the repo root: `.venv/bin/python bench/bench_unfrozen_throughput.py` (see `--help`; ~7 minutes on 2 idle CPU cores).
"""

from __future__ import annotations

import time

import _common

_common.configure_environment()

import copy  # noqa: E402
import shutil  # noqa: E402
import tempfile  # noqa: E402
from pathlib import Path  # noqa: E402

NAME = "unfrozen_throughput"
TITLE = "Unfrozen training throughput: hftransfer Trainer path vs hand-written timm + torch loop"


def parse_args():
    parser = _common.base_parser(__doc__.split("\n\n")[0], repeats=7)
    parser.add_argument("--dataset", default="fashion-mnist-subset")
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=40, help="Optimizer steps per run.")
    parser.add_argument("--warmup-steps", type=int, default=3, help="Steps of the untimed warm-up run per side.")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--learning-rate", type=float, default=1e-4)
    parser.add_argument("--hidden-size", type=int, default=256)
    parser.add_argument("--num-workers", type=int, default=2, help="DataLoader workers (recipe default: 2).")
    parser.add_argument("--channels-last", action="store_true", help="channels_last on both sides.")
    parser.add_argument(
        "--interleaved-steps",
        type=int,
        default=40,
        help="Steps of the extra step-interleaved run (0: skip).",
    )
    parser.add_argument("--goal", type=float, default=0.95)
    return parser.parse_args()


def make_recipe(args, output_dir: Path, steps: int):
    from hftransfer.recipes import recipe_from_dict

    return recipe_from_dict(
        {
            "name": "bench-unfrozen-throughput",
            "model": {
                "backbone": "vgg16",
                "backbone_weights": "keras-imagenet",
                "image_size": args.image_size,
                "pooling": "avg",
                "hidden_sizes": [args.hidden_size],
            },
            "data": {
                "dataset": args.dataset,
                "max_train_samples": args.steps * args.batch_size,
                "max_eval_samples": args.batch_size,
                "test_split": None,
            },
            "stages": [
                {
                    "name": "full",
                    "max_steps": steps,
                    "learning_rate": args.learning_rate,
                    "trainable": "all",
                    "backbone_lr_scale": 1.0,
                }
            ],
            "training": {
                "output_dir": str(output_dir),
                "per_device_train_batch_size": args.batch_size,
                "per_device_eval_batch_size": args.batch_size,
                "precision": "no",
                "seed": args.seed,
                "logging_steps": 1000,
                "eval_strategy": "no",
                "save_strategy": "no",
                "report_to": ["none"],
                "dataloader_num_workers": args.num_workers,
                "channels_last": args.channels_last,
            },
        }
    )


def build_timm_peer(hf_model, num_labels: int):
    """timm VGG16 with hftransfer's conv weights and the same head (same initial weights)."""
    import timm
    from timm.layers import SelectAdaptivePool2d
    from torch import nn

    class Head(nn.Module):
        def __init__(self):
            super().__init__()
            self.pool = SelectAdaptivePool2d(pool_type="avg", flatten=True)
            self.mlp = copy.deepcopy(hf_model.head)

        def forward(self, x, pre_logits: bool = False):
            return self.mlp(self.pool(x), pre_logits=pre_logits)

    model = timm.create_model("vgg16", pretrained=False, num_classes=num_labels)
    model.features.load_state_dict(hf_model.backbone.features.state_dict(), strict=True)
    model.pre_logits = nn.Identity()
    model.head = Head()
    return model


def main() -> int:
    args = parse_args()
    started = time.perf_counter()
    import torch
    import torch.nn.functional as F
    from torch.utils.data import DataLoader
    from transformers import set_seed

    from hftransfer.building import build_model_and_processor, load_recipe_data
    from hftransfer.data import ImageClassificationCollator, build_transforms
    from hftransfer.training import StagedFineTuner

    bench = _common.start_run(NAME, TITLE, args, work_prefix="hftransfer-bench-unfrozen-", started=started)
    work = bench.work

    probe_recipe = make_recipe(args, work / "probe", args.steps)
    data, _ = load_recipe_data(probe_recipe)
    id2label = {int(k): v for k, v in data.id2label.items()}
    set_seed(args.seed)
    hf_init, processor = build_model_and_processor(probe_recipe, id2label)
    transform = build_transforms(processor)
    collator = ImageClassificationCollator()
    train_split = data.splits["train"]
    print(f"[{NAME}] {len(train_split)} train images, batch {args.batch_size}, {args.steps} steps per run")

    peer_check = build_timm_peer(hf_init, len(id2label)).eval()
    sample = collator([train_split.with_transform(transform)[i] for i in range(4)])
    with torch.inference_mode():
        diff = (hf_init(pixel_values=sample["pixel_values"]).logits - peer_check(sample["pixel_values"])).abs().max()
    print(f"[{NAME}] peer vs hftransfer initial logits max |diff| = {diff.item():.2e}")
    assert diff.item() < 1e-4, "peer and hftransfer models differ"
    del peer_check

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

    staged.TransferTrainer = StepTimedTrainer  # the stage's trainer records step times (bench process only)
    end_to_end: dict[str, list[float]] = {"hftransfer": [], "peer": []}

    def steady(marks: list[float]) -> float:
        """Images/s from the end of step 1 to the end of the last step (start-up and first step excluded)."""
        return (len(marks) - 1) * args.batch_size / (marks[-1] - marks[0])

    def run_hftransfer(steps: int, record: bool = True) -> float:
        run_dir = Path(tempfile.mkdtemp(dir=work, prefix="hf-"))
        result = StagedFineTuner(make_recipe(args, run_dir / "out", steps)).run()
        stage = result.metrics["stages"][0]
        assert stage["global_steps"] == steps == len(StepTimes.marks), stage["global_steps"]
        shutil.rmtree(run_dir, ignore_errors=True)
        if record:
            end_to_end["hftransfer"].append(steps * args.batch_size / stage["wall_time_s"])
        return steady(StepTimes.marks)

    def run_peer(steps: int, record: bool = True) -> float:
        set_seed(args.seed)
        model = build_timm_peer(hf_init, len(id2label))
        if args.channels_last:
            model = model.to(memory_format=torch.channels_last)
        model.train()
        t0 = time.perf_counter()
        loader = DataLoader(
            train_split.with_transform(transform),
            batch_size=args.batch_size,
            shuffle=True,
            collate_fn=collator,
            num_workers=args.num_workers,
            pin_memory=torch.cuda.is_available(),
        )
        optimizer = torch.optim.AdamW(model.parameters(), lr=args.learning_rate, weight_decay=0.0)
        done, marks = 0, []
        while done < steps:
            for batch in loader:
                pixel_values = batch["pixel_values"]
                if args.channels_last:
                    pixel_values = pixel_values.contiguous(memory_format=torch.channels_last)
                loss = F.cross_entropy(model(pixel_values), batch["labels"])
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                marks.append(time.perf_counter())
                done += 1
                if done == steps:
                    break
        loss.item()
        seconds = time.perf_counter() - t0
        if record:
            end_to_end["peer"].append(steps * args.batch_size / seconds)
        return steady(marks)

    samples = _common.run_alternating(
        {"hftransfer": lambda rep: run_hftransfer(args.steps), "peer": lambda rep: run_peer(args.steps)},
        repeats=args.repeats,
        warmup={
            "hftransfer": lambda: run_hftransfer(args.warmup_steps, record=False),
            "peer": lambda: run_peer(args.warmup_steps, record=False),
        },
    )

    # Step-interleaved run: the two loops take turns step by step in this process (a Trainer callback runs one peer
    # step after each hftransfer step), so both see the same machine load at the same moments.
    interleaved: dict[str, list[float]] = {"hftransfer": [], "peer": []}
    if args.interleaved_steps:
        set_seed(args.seed)
        peer_model = build_timm_peer(hf_init, len(id2label)).train()
        peer_optimizer = torch.optim.AdamW(peer_model.parameters(), lr=args.learning_rate, weight_decay=0.0)
        peer_loader = DataLoader(
            train_split.with_transform(transform),
            batch_size=args.batch_size,
            shuffle=True,
            collate_fn=collator,
            num_workers=args.num_workers,
        )

        def peer_batches():
            while True:
                yield from peer_loader

        peer_iter = peer_batches()

        class Interleave(TrainerCallback):
            last = None

            def on_step_end(self, args_, state, control, **kwargs):
                now = time.perf_counter()
                if Interleave.last is not None:  # skip step 1 (start-up) of both sides
                    interleaved["hftransfer"].append(args.batch_size / (now - Interleave.last))
                batch = next(peer_iter)
                t0 = time.perf_counter()
                loss = F.cross_entropy(peer_model(batch["pixel_values"]), batch["labels"])
                loss.backward()
                torch.nn.utils.clip_grad_norm_(peer_model.parameters(), 1.0)
                peer_optimizer.step()
                peer_optimizer.zero_grad(set_to_none=True)
                if Interleave.last is not None:
                    interleaved["peer"].append(args.batch_size / (time.perf_counter() - t0))
                Interleave.last = time.perf_counter()

        class InterleavedTrainer(StepTimedTrainer):
            def __init__(self, *a, callbacks=None, **kw):
                super().__init__(*a, callbacks=[*(callbacks or []), Interleave()], **kw)

        staged.TransferTrainer = InterleavedTrainer
        print(f"  step-interleaved run: {args.interleaved_steps} steps each")
        run_hftransfer(args.interleaved_steps, record=False)
        staged.TransferTrainer = StepTimedTrainer

    figures = [
        _common.Figure(
            name=f"unfrozen training throughput, steady state ({args.image_size}px, batch {args.batch_size}, "
            f"steps 2-{args.steps})",
            unit="img/s",
            hftransfer=samples["hftransfer"],
            peer=samples["peer"],
            peer_name="hand-written timm+torch loop",
            higher_is_better=True,
            goal=args.goal,
            note="end of step 1 to end of the last step on both sides (per-step framework cost)",
        ),
        _common.Figure(
            name=f"unfrozen training throughput, start-up included ({args.steps} steps)",
            unit="img/s",
            hftransfer=end_to_end["hftransfer"],
            peer=end_to_end["peer"],
            peer_name="hand-written timm+torch loop",
            higher_is_better=True,
            goal=args.goal,
            note="hftransfer: the stage's trainer.train() (Trainer/accelerate set-up included); peer: DataLoader + "
            "optimizer creation and the loop. A fixed cost: its share shrinks as the run gets longer.",
        ),
    ]
    if interleaved["hftransfer"]:
        figures.append(
            _common.Figure(
                name=f"unfrozen training throughput, step-interleaved ({len(interleaved['hftransfer'])} step pairs)",
                unit="img/s",
                hftransfer=interleaved["hftransfer"],
                peer=interleaved["peer"],
                peer_name="hand-written timm+torch loop",
                higher_is_better=True,
                goal=args.goal,
                note="one run where the loops alternate step by step in one process: each hftransfer step (Trainer "
                "loop, data wait included) is paired with the next peer step (data already prefetched); samples "
                "are per-step images/s",
            )
        )
    return bench.finish(figures, settings={**vars(args), "train_images": len(train_split)})


if __name__ == "__main__":
    raise SystemExit(main())
