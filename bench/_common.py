"""Shared plumbing of the benchmarks in `bench/`: environment, alternating repeats, figures, JSON results.

Every benchmark runs hftransfer and a peer in the same process (or, for Keras, the same run), alternating after a
warm-up, several repeats, and reports medians. A figure's `ratio` is always oriented so that > 1 means hftransfer is
better: `hftransfer / peer` for throughputs (images/s), `peer / hftransfer` for wall times (a speed-up). It is the
median of the per-repeat ratios (each repeat pairs the two sides measured back to back, which cancels most of the
drift of a shared, noisy machine); the ratio of the medians is recorded next to it.

Results go to `bench/results/<name>.json` with the machine, library versions, date and exact command.

Import this module before torch/transformers/datasets: `configure_environment()` sets the offline and logging
variables those libraries read at import time.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import gc
import json
import os
import platform
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
RESULTS_DIR = BENCH_DIR / "results"
SCHEMA_VERSION = 1

if str(REPO_ROOT) not in sys.path:  # `python bench/x.py` from anywhere, even without the editable install
    sys.path.insert(0, str(REPO_ROOT))


def configure_environment(threads: int | None = None) -> None:
    """Offline, quiet, deterministic-enough settings; call before importing torch/transformers/datasets."""
    defaults = {
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "HF_EVALUATE_OFFLINE": "1",
        "HF_UPDATE_DOWNLOAD_COUNTS": "0",
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "HF_HUB_DISABLE_PROGRESS_BARS": "1",
        "TRANSFORMERS_VERBOSITY": "error",
        "DATASETS_VERBOSITY": "error",
        "TQDM_DISABLE": "1",  # progress bars off on both sides alike: the benchmark prints its own lines
        "TOKENIZERS_PARALLELISM": "false",
        "PYTHONWARNINGS": "ignore",
    }
    for key, value in defaults.items():
        os.environ.setdefault(key, value)
    import warnings

    warnings.filterwarnings("ignore")
    if threads:
        os.environ.setdefault("OMP_NUM_THREADS", str(threads))


def set_torch_threads(threads: int | None) -> int:
    import torch

    if threads:
        torch.set_num_threads(threads)
    return torch.get_num_threads()


# --- what ran where ---------------------------------------------------------------------------------------------


def exact_command() -> str:
    """The command line as typed from the repo root: interpreter (relative when inside the repo) + argv."""
    python = Path(sys.executable)
    try:
        python_text = str(Path(os.path.relpath(python, Path.cwd())))
        if python_text.startswith(".."):
            python_text = str(python)
    except ValueError:
        python_text = str(python)
    return shlex.join([python_text, *sys.argv])


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _memory_gib() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    return None


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def load_average() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def machine_info() -> dict[str, Any]:
    """CPU, cores, memory, accelerator and torch threading of this run."""
    info: dict[str, Any] = {
        "platform": platform.platform(),
        "cpu": _cpu_model(),
        "cpu_cores_usable": usable_cores(),
        "memory_gib": _memory_gib(),
        "load_average_at_start": load_average(),
    }
    try:
        import torch

        info["torch_threads"] = torch.get_num_threads()
        if torch.cuda.is_available():
            info["accelerator"] = f"{torch.cuda.device_count()}x {torch.cuda.get_device_name(0)}"
        else:
            info["accelerator"] = None
    except ImportError:
        pass
    return info


def machine_label(info: Mapping[str, Any]) -> str:
    """Short machine description for tables: '2-core Intel Xeon ... CPU' or the GPU name."""
    if info.get("accelerator"):
        return str(info["accelerator"])
    return f"{info.get('cpu_cores_usable')}-core CPU ({info.get('cpu')})"


def _package_version(name: str) -> str | None:
    from importlib import metadata

    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def _git_state() -> dict[str, Any]:
    def git(*args: str) -> str | None:
        try:
            return subprocess.run(
                ["git", *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=10, check=True
            ).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return None

    status = git("status", "--porcelain", "--untracked-files=no")
    return {"commit": git("rev-parse", "HEAD"), "dirty": bool(status) if status is not None else None}


def library_versions(extra: Sequence[str] = ()) -> dict[str, Any]:
    names = ["hftransfer", "torch", "timm", "transformers", "accelerate", "datasets", "numpy", "pillow", *extra]
    versions: dict[str, Any] = {"python": platform.python_version()}
    for name in names:
        versions[name] = _package_version(name)
    versions["git"] = _git_state()
    return versions


# --- measuring --------------------------------------------------------------------------------------------------


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values))


def summarize(values: Sequence[float], digits: int = 4) -> dict[str, Any]:
    values = [float(v) for v in values]
    return {
        "median": round(median(values), digits),
        "min": round(min(values), digits),
        "max": round(max(values), digits),
        "samples": [round(v, digits) for v in values],
    }


class Timer:
    """`with Timer() as t: ...; t.seconds` (perf_counter)."""

    def __enter__(self) -> Timer:
        self.start = time.perf_counter()
        self.seconds = float("nan")
        return self

    def __exit__(self, *exc) -> None:
        self.seconds = time.perf_counter() - self.start


def run_alternating(
    sides: Mapping[str, Callable[[int], float]],
    repeats: int,
    warmup: Mapping[str, Callable[[], Any]] | None = None,
    log: Callable[[str], None] = print,
) -> dict[str, list[float]]:
    """Warm each side up once, then run `repeats` rounds; each round runs every side once, in an order that
    alternates from round to round (A B, B A, A B, ...) so neither side always gets the warmer/cooler slot.

    `sides[name](repeat_index)` returns the measured value of one run (seconds or images/s).
    """
    names = list(sides)
    if warmup:
        for name in names:
            if name in warmup:
                log(f"  warm-up: {name}")
                warmup[name]()
                gc.collect()
    samples: dict[str, list[float]] = {name: [] for name in names}
    for rep in range(repeats):
        order = names if rep % 2 == 0 else list(reversed(names))
        for name in order:
            value = float(sides[name](rep))
            samples[name].append(value)
            log(f"  repeat {rep + 1}/{repeats} {name}: {value:.4g}")
            gc.collect()
    return samples


@dataclass
class Figure:
    """One reported number pair: hftransfer vs a peer, with its ratio and goal."""

    name: str
    unit: str
    hftransfer: Sequence[float]
    peer: Sequence[float]
    peer_name: str
    higher_is_better: bool
    goal: float | None = None
    note: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def paired_ratios(self) -> list[float]:
        pairs = zip(self.hftransfer, self.peer)
        if self.higher_is_better:
            return [h / p for h, p in pairs]
        return [p / h for h, p in pairs]

    @property
    def ratio(self) -> float:
        return median(self.paired_ratios)

    @property
    def ratio_of_medians(self) -> float:
        h, p = median(self.hftransfer), median(self.peer)
        return h / p if self.higher_is_better else p / h

    @property
    def goal_met(self) -> bool | None:
        return None if self.goal is None else self.ratio >= self.goal

    def line(self) -> str:
        h, p = median(self.hftransfer), median(self.peer)
        text = (
            f"{self.name}: hftransfer {h:.4g} {self.unit} | {self.peer_name} {p:.4g} {self.unit} | "
            f"ratio {self.ratio:.3f}x ({'hftransfer / peer' if self.higher_is_better else 'peer / hftransfer'})"
        )
        if self.goal is not None:
            text += f" | goal >= {self.goal:g}x: {'MET' if self.goal_met else 'NOT MET'}"
        return text

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "unit": self.unit,
            "higher_is_better": self.higher_is_better,
            "hftransfer": summarize(self.hftransfer),
            "peer": summarize(self.peer),
            "peer_name": self.peer_name,
            "ratio": round(self.ratio, 4),
            "ratio_definition": "hftransfer / peer" if self.higher_is_better else "peer / hftransfer",
            "paired_ratios": [round(r, 4) for r in self.paired_ratios],
            "ratio_of_medians": round(self.ratio_of_medians, 4),
            "goal": None if self.goal is None else f">= {self.goal:g}x",
            "goal_met": self.goal_met,
            "note": self.note,
            **self.extra,
        }


def base_parser(description: str, *, repeats: int, threads: int | None = 2) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--repeats", type=int, default=repeats, help="Timed repeats per side (median reported).")
    parser.add_argument("--threads", type=int, default=threads, help="torch intra-op threads (0: torch default).")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument(
        "--output",
        type=Path,
        default=None,
        help="JSON result file (default: bench/results/<benchmark>.json).",
    )
    parser.add_argument("--no-write", action="store_true", help="Print only; do not write the JSON result.")
    return parser


def write_results(
    name: str,
    *,
    title: str,
    figures: Sequence[Figure],
    settings: Mapping[str, Any],
    machine: Mapping[str, Any],
    versions: Mapping[str, Any],
    extra: Mapping[str, Any] | None = None,
    output: Path | None = None,
    started: float | None = None,
) -> Path:
    """Write `bench/results/<name>.json` atomically (temp file + rename) and return its path."""
    machine = dict(machine)
    machine["load_average_at_end"] = load_average()
    payload = {
        "schema_version": SCHEMA_VERSION,
        "benchmark": name,
        "title": title,
        "date": _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat(),
        "command": exact_command(),
        "cwd": str(Path.cwd()),
        "machine": machine,
        "machine_label": machine_label(machine),
        "versions": dict(versions),
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in settings.items()},
        "figures": [figure.to_dict() for figure in figures],
        "goals_met": all(f.goal_met for f in figures if f.goal is not None),
        "wall_time_s": None if started is None else round(time.perf_counter() - started, 1),
        **(dict(extra) if extra else {}),
    }
    path = Path(output) if output else RESULTS_DIR / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(payload, indent=2, default=str) + "\n")
    os.replace(tmp, path)
    return path


def report(figures: Sequence[Figure]) -> None:
    print("\n== results (median of repeats; ratio > 1 means hftransfer is better) ==")
    for figure in figures:
        print(figure.line())


# --- one benchmark run ------------------------------------------------------------------------------------------


@dataclass
class BenchRun:
    """The set-up every benchmark's `main()` shares, made by [`start_run`]; [`BenchRun.finish`] is its teardown."""

    name: str
    title: str
    args: argparse.Namespace
    started: float
    threads: int
    machine: dict[str, Any]
    versions: dict[str, Any]
    work: Path | None = None

    def finish(
        self,
        figures: Sequence[Figure],
        *,
        settings: Mapping[str, Any] | None = None,
        extra: Mapping[str, Any] | None = None,
    ) -> int:
        """Remove the work folder, print the figures and (unless `--no-write`) write the JSON results; exit code 0.

        Args:
            figures (`Sequence[Figure]`): What the benchmark measured.
            settings (`Mapping`, *optional*): The settings to record; defaults to the parsed arguments.
            extra (`Mapping`, *optional*): Further top-level fields of the results file.
        """
        if self.work is not None:
            shutil.rmtree(self.work, ignore_errors=True)
        report(figures)
        if not self.args.no_write:
            path = write_results(
                self.name,
                title=self.title,
                figures=figures,
                settings=vars(self.args) if settings is None else settings,
                machine=self.machine,
                versions=self.versions,
                extra=extra,
                output=self.args.output,
                started=self.started,
            )
            print(f"wrote {path}")
        return 0


def start_run(
    name: str, title: str, args: argparse.Namespace, *, work_prefix: str | None = None, started: float | None = None
) -> BenchRun:
    """Set a benchmark run up from its parsed [`base_parser`] arguments: torch threads (`--threads`), the machine and
    library versions to record, and a temporary work folder (`work_prefix`) that [`BenchRun.finish`] removes.

    Prints `[name] threads=N work dir DIR`. Call [`configure_environment`] before importing torch, as always.
    """
    started = time.perf_counter() if started is None else started
    threads = set_torch_threads(args.threads)
    machine = machine_info()
    versions = library_versions()
    work = Path(tempfile.mkdtemp(prefix=work_prefix)) if work_prefix else None
    print(f"[{name}] threads={threads}" + (f" work dir {work}" if work is not None else ""))
    return BenchRun(name, title, args, started, threads, machine, versions, work)
