"""Benchmark 5 -- GPU: VGG16 at 224 px, bf16 autocast, channels_last, eager and `torch.compile`: frozen-backbone
feature extraction images/s and full fine-tuning images/s, with model FLOP utilisation (MFU).

MFU counts 15.47 GMACs per forward image at 224 px (VGG16; scaled by (size/224)^2 at other sizes): 2 FLOPs per MAC,
a forward is 2 x 15.47 GFLOP, a training step (forward + backward) 3x the forward, 6 x 15.47 GFLOP per image; divided
by the accelerator's dense bf16 peak (H100/H200 SXM: 989 TFLOP/s; override with --peak-tflops). Goal: full fine-tuning
>= 40% MFU on an H200.

Self-contained: synthetic data made on the device, so only torch is required. The model is hftransfer's
`TransferForImageClassification` (VGG16 conv base + avg pool + Dense(1024) + Dense(--num-labels)) when hftransfer
imports, else the same network from timm, else a pure-torch copy. With `--peer` the same measurements run on a plain
timm VGG16 with the same head (hftransfer / timm ratio per figure).

    python bench/bench_gpu.py                 # on a GPU machine; ~3-4 minutes with compilation
    python bench/bench_gpu.py --smoke         # CPU smoke test: tiny sizes, fp32, eager only, nothing written
    python bench/bench_gpu.py --smoke --compile both   # the same through torch.compile (minutes of CPU compile)
"""

from __future__ import annotations

import time

import _common

NAME = "gpu"
TITLE = "GPU: VGG16 224px bf16 channels_last, eager vs torch.compile: feature extraction and full fine-tuning, MFU"
VGG16_GMACS_224 = 15.47
# Dense (no sparsity) bf16 tensor-core peaks, TFLOP/s.
PEAK_BF16_TFLOPS = {"H200": 989.4, "H100": 989.4, "GH200": 989.4, "A100": 312.0, "L40S": 362.1, "A10G": 70.0}


def parse_args():
    parser = _common.base_parser(__doc__.split("\n\n")[0], repeats=3, threads=None)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=128, help="Fine-tuning batch size.")
    parser.add_argument("--extract-batch-size", type=int, default=256, help="Feature-extraction batch size.")
    parser.add_argument("--steps", type=int, default=20, help="Timed steps per repeat.")
    parser.add_argument("--warmup-steps", type=int, default=5)
    parser.add_argument("--num-labels", type=int, default=10)
    parser.add_argument("--dtype", default="bf16", choices=["bf16", "fp16", "fp32"])
    parser.add_argument("--no-channels-last", action="store_true")
    parser.add_argument("--compile", default=None, choices=["both", "on", "off"], help="Default: both (--smoke: off).")
    parser.add_argument("--compile-mode", default="default", help="torch.compile mode, e.g. max-autotune.")
    parser.add_argument("--peer", action="store_true", help="Also measure a plain timm VGG16 with the same head.")
    parser.add_argument("--peak-tflops", type=float, default=None, help="Accelerator dense peak for --dtype.")
    parser.add_argument("--goal-mfu", type=float, default=0.40)
    parser.add_argument("--smoke", action="store_true", help="CPU smoke test: 32px, batch 4, 2 steps, fp32, no JSON.")
    return parser.parse_args()


def vgg16_features_torch():
    """VGG16 conv base, layer for layer as timm's `features` (so state dicts are interchangeable)."""
    from torch import nn

    layers, channels = [], 3
    for v in (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"):
        if v == "M":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
        else:
            layers += [nn.Conv2d(channels, v, kernel_size=3, padding=1), nn.ReLU(inplace=True)]
            channels = v
    return nn.Sequential(*layers)


def build_model(kind: str, image_size: int, num_labels: int):
    """(model, forward_features, description). The model's forward(pixel_values, labels) returns the loss."""
    import torch.nn.functional as F
    from torch import nn

    if kind == "hftransfer":
        try:
            from hftransfer import TransferConfig, TransferForImageClassification
        except Exception as err:  # noqa: BLE001 - any import problem: fall back to the same network
            print(
                f"[{NAME}] hftransfer not importable ({type(err).__name__}: {err}); using the same network from timm"
            )
        else:
            config = TransferConfig(image_size=image_size, pooling="avg", hidden_sizes=[1024], num_labels=num_labels)
            model = TransferForImageClassification(config)

            class Wrapped(nn.Module):
                def __init__(self):
                    super().__init__()
                    self.model = model

                def forward(self, pixel_values, labels):
                    return self.model(pixel_values=pixel_values, labels=labels).loss

            wrapped = Wrapped()
            return wrapped, model.forward_features, "hftransfer TransferForImageClassification(vgg16, avg, [1024])"
    try:
        import timm

        features = timm.create_model("vgg16", pretrained=False).features
        source = "timm vgg16 features"
    except Exception:  # noqa: BLE001
        features = vgg16_features_torch()
        source = "pure-torch VGG16 conv base"

    class Plain(nn.Module):
        def __init__(self):
            super().__init__()
            self.features = features
            self.head = nn.Sequential(nn.Linear(512, 1024), nn.ReLU(), nn.Linear(1024, num_labels))

        def forward_features(self, x):
            return self.features(x).mean((2, 3))

        def forward(self, pixel_values, labels):
            return F.cross_entropy(self.head(self.forward_features(pixel_values)), labels)

    plain = Plain()
    return plain, plain.forward_features, f"{source} + avg + Dense(1024) + Dense({num_labels})"


def main() -> int:
    args = parse_args()
    if args.smoke:
        args.image_size, args.batch_size, args.extract_batch_size = 32, 4, 8
        args.steps, args.warmup_steps, args.repeats, args.dtype = 2, 1, 1, "fp32"
        args.no_write = True
        args.compile = args.compile or "off"
    args.compile = args.compile or "both"
    _common.configure_environment()
    started = time.perf_counter()
    import torch

    _common.set_torch_threads(args.threads)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cpu" and not args.smoke:
        print(f"[{NAME}] no GPU here: run with --smoke for a CPU smoke test (bf16 on CPU is ~40x slower).")
        return 2
    torch.backends.cudnn.benchmark = True
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[args.dtype]
    autocast = dtype != torch.float32
    memory_format = torch.contiguous_format if args.no_channels_last else torch.channels_last
    gmacs = VGG16_GMACS_224 * (args.image_size / 224) ** 2
    machine = _common.machine_info()
    name = torch.cuda.get_device_name(0) if device.type == "cuda" else "CPU"
    peak = args.peak_tflops
    if peak is None:
        peak = next((v for k, v in PEAK_BF16_TFLOPS.items() if k in name), None)
        if peak is not None and args.dtype == "fp32":
            peak = None  # fp32 peaks are not tabled: pass --peak-tflops
    print(f"[{NAME}] device {name}; dtype {args.dtype}; {memory_format}; {gmacs:.2f} GMACs/img; peak {peak} TFLOP/s")

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    g = torch.Generator(device=device).manual_seed(args.seed)
    x_train = torch.randn(args.batch_size, 3, args.image_size, args.image_size, device=device, generator=g)
    x_train = x_train.contiguous(memory_format=memory_format)
    y_train = torch.randint(0, args.num_labels, (args.batch_size,), device=device, generator=g)
    x_extract = torch.randn(args.extract_batch_size, 3, args.image_size, args.image_size, device=device, generator=g)
    x_extract = x_extract.contiguous(memory_format=memory_format)

    def measure(kind: str, compiled: bool) -> dict:
        torch.manual_seed(args.seed)
        model, forward_features, description = build_model(kind, args.image_size, args.num_labels)
        model = model.to(device).to(memory_format=memory_format)
        extract = forward_features
        step_model = model
        compile_s = {}
        if compiled:
            extract = torch.compile(forward_features, mode=args.compile_mode)
            step_model = torch.compile(model, mode=args.compile_mode)

        # Frozen-backbone feature extraction: eval, inference_mode, autocast.
        model.eval()

        def extract_step():
            with torch.inference_mode(), torch.autocast(device.type, dtype=dtype, enabled=autocast):
                return extract(x_extract)

        t0 = time.perf_counter()
        for _ in range(args.warmup_steps):
            extract_step()
        sync()
        compile_s["extract_warmup_s"] = time.perf_counter() - t0
        extract_rates = []
        for _ in range(args.repeats):
            sync()
            t0 = time.perf_counter()
            for _ in range(args.steps):
                extract_step()
            sync()
            extract_rates.append(args.steps * args.extract_batch_size / (time.perf_counter() - t0))

        # Full fine-tuning: everything trainable, AdamW (fused on GPU), autocast forward + backward.
        model.train()
        for p in model.parameters():
            p.requires_grad_(True)
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=device.type == "cuda")

        def train_step():
            with torch.autocast(device.type, dtype=dtype, enabled=autocast):
                loss = step_model(x_train, y_train)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            return loss

        t0 = time.perf_counter()
        for _ in range(args.warmup_steps):
            train_step()
        sync()
        compile_s["train_warmup_s"] = time.perf_counter() - t0
        train_rates = []
        for _ in range(args.repeats):
            sync()
            t0 = time.perf_counter()
            for _ in range(args.steps):
                loss = train_step()
            sync()
            train_rates.append(args.steps * args.batch_size / (time.perf_counter() - t0))
        assert torch.isfinite(loss).item()
        peak_mem = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else None
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        return {
            "model": description,
            "compiled": compiled,
            "extract": extract_rates,
            "train": train_rates,
            "warmup_s": {k: round(v, 1) for k, v in compile_s.items()},
            "peak_memory_gib": None if peak_mem is None else round(peak_mem, 2),
        }

    def mfu(images_per_s: float, flops_per_mac_image: float) -> float | None:
        return None if not peak else images_per_s * flops_per_mac_image * gmacs * 1e9 / (peak * 1e12)

    variants = {"off": [False], "on": [True], "both": [False, True]}[args.compile]
    kinds = ["hftransfer"] + (["timm"] if args.peer else [])
    runs = []
    for compiled in variants:
        for kind in kinds:
            label = f"{kind} {'compiled' if compiled else 'eager'}"
            print(f"[{NAME}] measuring {label} ...", flush=True)
            run = measure(kind, compiled)
            torch._dynamo.reset()
            if device.type == "cuda":
                torch.cuda.empty_cache()
            run["label"] = label
            run["extract_mfu"] = mfu(_common.median(run["extract"]), 2)
            run["train_mfu"] = mfu(_common.median(run["train"]), 6)
            runs.append(run)
            text_mfu = lambda v: "n/a" if v is None else f"{v:.1%}"  # noqa: E731
            print(
                f"  {label}: feature extraction {_common.median(run['extract']):.1f} img/s "
                f"(MFU {text_mfu(run['extract_mfu'])}) | full fine-tuning {_common.median(run['train']):.1f} img/s "
                f"(MFU {text_mfu(run['train_mfu'])}) | warm-up {run['warmup_s']} | peak mem {run['peak_memory_gib']} GiB"
            )

    best_train = max(runs, key=lambda r: _common.median(r["train"]) if r["label"].startswith("hftransfer") else 0)
    goal_met = None if best_train["train_mfu"] is None else best_train["train_mfu"] >= args.goal_mfu
    best_mfu = "n/a" if best_train["train_mfu"] is None else f"{best_train['train_mfu']:.1%}"
    verdict = "n/a" if goal_met is None else ("MET" if goal_met else "NOT MET")
    print(
        f"\nfull fine-tuning best ({best_train['label']}): {_common.median(best_train['train']):.1f} img/s, "
        f"MFU {best_mfu} | goal >= {args.goal_mfu:.0%} MFU: {verdict}"
    )
    figures = []
    if args.peer:
        for compiled in variants:
            tag = "compiled" if compiled else "eager"
            ours = next(r for r in runs if r["label"] == f"hftransfer {tag}")
            theirs = next(r for r in runs if r["label"] == f"timm {tag}")
            for task, unit_name in (("extract", "feature extraction"), ("train", "full fine-tuning")):
                figures.append(
                    _common.Figure(
                        name=f"GPU {unit_name} ({tag}, {args.image_size}px, {args.dtype})",
                        unit="img/s",
                        hftransfer=ours[task],
                        peer=theirs[task],
                        peer_name="plain timm vgg16 + same head",
                        higher_is_better=True,
                    )
                )
        _common.report(figures)
    if not args.no_write:
        path = _common.write_results(
            NAME,
            title=TITLE,
            figures=figures,
            settings={**vars(args), "gmacs_per_image": gmacs, "peak_tflops": peak},
            machine=machine,
            versions=_common.library_versions(),
            extra={
                "runs": [
                    {
                        **r,
                        "extract": _common.summarize(r["extract"], 1),
                        "train": _common.summarize(r["train"], 1),
                    }
                    for r in runs
                ],
                "goal": f"full fine-tuning >= {args.goal_mfu:.0%} MFU",
                "goal_met": goal_met,
                "goals_met": goal_met,
            },
            output=args.output,
            started=started,
        )
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
