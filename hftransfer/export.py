"""Export a trained hftransfer classifier to ONNX and check the export against PyTorch.

```bash
hftransfer export outputs/quickstart --format onnx                 # writes outputs/quickstart/model.onnx
hftransfer export outputs/quickstart --format onnx --opset 18 --output deploy/classifier.onnx
```

```python
from hftransfer.export import export_onnx

result = export_onnx("outputs/quickstart")
print(result.path, result.max_abs_diff)
```

The graph takes `pixel_values` of shape `(batch_size, num_channels, image_size, image_size)`, prepared by the model's
image processor (`preprocessor_config.json`), and returns `logits` of shape `(batch_size, num_labels)`; the batch axis
is dynamic. A fusion model with `extra_features_dim > 0` takes a second input, `extra_features` of shape
`(batch_size, extra_features_dim)`. After writing, the export runs on sample images with onnxruntime when it is
installed (`pip install "hftransfer[export]"`), else with the `onnx` package's reference evaluator, and the largest
absolute difference from the PyTorch logits is reported; a difference above the tolerance is an error.
"""

from __future__ import annotations

import argparse
import logging
import os
import tempfile
import textwrap
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .constants import ONNX_FILE as DEFAULT_FILE_NAME
from .errors import ExportError

if TYPE_CHECKING:
    import numpy as np
    from transformers import PreTrainedModel

logger = logging.getLogger(__name__)

FORMATS = ("onnx",)
DEFAULT_OPSET = 17
DEFAULT_ATOL = 1e-4
# The graph is traced with one batch size and verified with another: a batch axis that was not dynamic fails.
_TRACE_BATCH_SIZE = 2
_VERIFY_BATCH_SIZE = 3


@dataclass
class ExportResult:
    r"""
    What [`export_onnx`] wrote and how it was checked.

    Args:
        path (`Path`): The `.onnx` file.
        opset (`int`): ONNX opset of the graph.
        input_names (`list[str]`): Graph inputs, in order (`pixel_values`, and `extra_features` for fusion models).
        input_shapes (`dict[str, list]`): Shape of each input, `"batch_size"` for the dynamic axis.
        output_names (`list[str]`): Graph outputs (`logits`).
        verified_with (`str` or `None`): `"onnxruntime"`, `"onnx.reference"`, or `None` when not verified.
        num_samples (`int`): Sample images the export was checked on.
        max_abs_diff (`float` or `None`): Largest absolute difference between ONNX and PyTorch logits.
        max_abs_logit (`float` or `None`): Largest absolute PyTorch logit (the scale of the difference).
        atol (`float`): Tolerance per unit of logit scale: the check is
            `max_abs_diff <= atol * max(1, max_abs_logit)`.
    """

    path: Path
    opset: int
    input_names: list[str]
    input_shapes: dict[str, list]
    output_names: list[str] = field(default_factory=lambda: ["logits"])
    verified_with: str | None = None
    num_samples: int = 0
    max_abs_diff: float | None = None
    max_abs_logit: float | None = None
    atol: float = DEFAULT_ATOL

    @property
    def tolerance(self) -> float | None:
        """The largest accepted `max_abs_diff`: `atol` scaled by the logits' magnitude (float32 rounding grows with
        it)."""
        return None if self.max_abs_logit is None else self.atol * max(1.0, self.max_abs_logit)


def _logits_module(model: PreTrainedModel, with_extra_features: bool):
    """The traced module: positional inputs in, logits out (no ModelOutput, no optional arguments)."""
    import torch

    class LogitsModule(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model

        def forward(self, pixel_values, *extra):
            kwargs = {"extra_features": extra[0]} if with_extra_features else {}
            return self.model(pixel_values=pixel_values, return_dict=True, **kwargs).logits

    return LogitsModule().eval()


def _load_model(model: str | os.PathLike | PreTrainedModel) -> tuple[PreTrainedModel, Any, str]:
    from transformers import AutoImageProcessor, AutoModelForImageClassification

    import hftransfer  # noqa: F401  (registers the Auto classes)

    from .image_processing_hftransfer import TransferImageProcessor

    if not isinstance(model, (str, os.PathLike)):
        processor = TransferImageProcessor.from_transfer_config(model.config)
        return model, processor, getattr(model.config, "_name_or_path", "") or "the model"
    source = Path(model).expanduser()
    if not source.is_dir():
        raise ExportError(f"{source} is not a folder; expected a saved model folder (e.g. a training output_dir).")
    if not (source / "config.json").is_file():
        raise ExportError(
            f"{source} is not a saved model: it has no config.json (expected a folder written by save_pretrained)."
        )
    try:
        loaded = AutoModelForImageClassification.from_pretrained(source)
    except (OSError, ValueError) as err:
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ExportError(f"Could not load the model saved in {source}: {reason}") from err
    try:
        processor = AutoImageProcessor.from_pretrained(source)
    except (OSError, ValueError):
        if getattr(loaded.config, "model_type", None) != "hftransfer":
            raise ExportError(f"{source} has no preprocessor_config.json: cannot prepare sample images.") from None
        processor = TransferImageProcessor.from_transfer_config(loaded.config)
    return loaded, processor, str(source)


def _input_size(model: PreTrainedModel, processor: Any) -> tuple[int, int, int]:
    config = model.config
    channels = int(getattr(config, "num_channels", 3))
    size = getattr(config, "image_size", None)
    if size is None:
        height, width = processor.output_size
        return channels, int(height), int(width)
    return channels, int(size), int(size)


def _sample_inputs(model, processor, batch_size: int, seed: int) -> list[np.ndarray]:
    """Random RGB images through the model's own processor (realistic value ranges), and extra features."""
    import numpy as np
    import PIL.Image

    rng = np.random.default_rng(seed)
    channels, height, width = _input_size(model, processor)
    images = [
        PIL.Image.fromarray(rng.integers(0, 256, size=(height + 8 * i, width + 5 * i, 3), dtype=np.uint8))
        for i in range(batch_size)
    ]
    pixel_values = processor(images=images, return_tensors="np")["pixel_values"].astype(np.float32)
    if pixel_values.shape[1:] != (channels, height, width):
        raise ExportError(
            f"The image processor gives pixel_values of shape {pixel_values.shape[1:]}, but the model expects "
            f"({channels}, {height}, {width}) (config.num_channels, config.image_size): fix preprocessor_config.json."
        )
    inputs = [pixel_values]
    extra_dim = int(getattr(model.config, "extra_features_dim", 0) or 0)
    if extra_dim:
        inputs.append(rng.standard_normal((batch_size, extra_dim)).astype(np.float32))
    return inputs


def _run_onnx(path: Path, names: list[str], inputs: list[np.ndarray]) -> tuple[np.ndarray, str]:
    feeds = dict(zip(names, inputs))
    try:
        import onnxruntime
    except ImportError:
        onnxruntime = None
    if onnxruntime is not None:
        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        return session.run(["logits"], feeds)[0], "onnxruntime"
    import onnx
    from onnx.reference import ReferenceEvaluator

    evaluator = ReferenceEvaluator(onnx.load(str(path)))
    return evaluator.run(["logits"], feeds)[0], "onnx.reference"


def export_onnx(
    model: str | os.PathLike | PreTrainedModel,
    output: str | os.PathLike | None = None,
    opset: int = DEFAULT_OPSET,
    *,
    verify: bool = True,
    atol: float = DEFAULT_ATOL,
    num_samples: int = _VERIFY_BATCH_SIZE,
    seed: int = 0,
) -> ExportResult:
    r"""
    Export an image classifier to an ONNX file with a dynamic batch axis, and check it against PyTorch.

    Args:
        model (`str`, `os.PathLike` or `PreTrainedModel`):
            A saved model folder (e.g. a training run's `output_dir`) or a loaded model.
        output (`str` or `os.PathLike`, *optional*):
            Where to write the `.onnx` file. Defaults to `MODEL/model.onnx` for a folder; required for a model
            object. Written atomically: an existing file is replaced only by a complete export.
        opset (`int`, *optional*, defaults to 17):
            ONNX opset version (at least 13).
        verify (`bool`, *optional*, defaults to `True`):
            Run the export on `num_samples` sample images (a batch size other than the traced one, which proves the
            batch axis dynamic) with onnxruntime, or the `onnx` reference evaluator when onnxruntime is not
            installed, and compare with the PyTorch logits.
        atol (`float`, *optional*, defaults to 1e-4):
            Largest accepted absolute difference between ONNX and PyTorch logits, per unit of logit magnitude: the
            check is `max_abs_diff <= atol * max(1, max |PyTorch logit|)`.
        num_samples (`int`, *optional*, defaults to 3):
            Sample images for the check (random pixels through the model's image processor).
        seed (`int`, *optional*, defaults to 0):
            Seed of the sample images.

    Returns:
        [`ExportResult`]: the file, its inputs, and the check's runtime and maximum absolute difference.

    Raises:
        [`ExportError`]: for a folder that holds no model, a bad opset, or an export that disagrees with PyTorch.
    """
    import numpy as np
    import torch

    if not isinstance(opset, int) or isinstance(opset, bool) or opset < 13:
        raise ExportError(f"opset={opset!r} is invalid: expected an integer >= 13.")
    if not isinstance(num_samples, int) or num_samples < 1:
        raise ExportError(f"num_samples={num_samples!r} is invalid: expected a positive integer.")
    model, processor, source = _load_model(model)
    if output is None:
        if not isinstance(source, str) or not Path(source).is_dir():
            raise ExportError("Pass `output=` (the .onnx file to write) when exporting a model object.")
        output = Path(source) / DEFAULT_FILE_NAME
    path = Path(output).expanduser().resolve()
    if path.is_dir():
        raise ExportError(f"--output {path} is a folder; expected the path of the .onnx file to write.")
    path.parent.mkdir(parents=True, exist_ok=True)

    model = model.to("cpu", dtype=torch.float32).eval()
    extra_dim = int(getattr(model.config, "extra_features_dim", 0) or 0)
    names = ["pixel_values"] + (["extra_features"] if extra_dim else [])
    channels, height, width = _input_size(model, processor)
    shapes = {"pixel_values": ["batch_size", channels, height, width]}
    trace_inputs = [torch.zeros(_TRACE_BATCH_SIZE, channels, height, width)]
    if extra_dim:
        shapes["extra_features"] = ["batch_size", extra_dim]
        trace_inputs.append(torch.zeros(_TRACE_BATCH_SIZE, extra_dim))
    dynamic_axes = {name: {0: "batch_size"} for name in [*names, "logits"]}

    module = _logits_module(model, with_extra_features=bool(extra_dim))
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        import warnings

        with warnings.catch_warnings(), torch.no_grad():
            # The TorchScript-based exporter needs no extra package (the torch.export-based one needs onnxscript).
            warnings.simplefilter("ignore", category=DeprecationWarning)
            warnings.simplefilter("ignore", category=torch.jit.TracerWarning)
            torch.onnx.export(
                module,
                tuple(trace_inputs),
                str(tmp),
                input_names=names,
                output_names=["logits"],
                dynamic_axes=dynamic_axes,
                opset_version=opset,
                do_constant_folding=True,
                dynamo=False,
            )
        import onnx

        onnx.checker.check_model(str(tmp))
        result = ExportResult(path=path, opset=opset, input_names=names, input_shapes=shapes, atol=atol)
        if verify:
            inputs = _sample_inputs(model, processor, num_samples, seed)
            with torch.no_grad():
                expected = module(*(torch.from_numpy(x) for x in inputs)).numpy()
            actual, runtime = _run_onnx(tmp, names, inputs)
            if actual.shape != expected.shape:
                raise ExportError(
                    f"The ONNX graph returned logits of shape {actual.shape}, expected {expected.shape}."
                )
            result.verified_with, result.num_samples = runtime, num_samples
            result.max_abs_diff = float(np.max(np.abs(actual.astype(np.float64) - expected.astype(np.float64))))
            result.max_abs_logit = float(np.max(np.abs(expected)))
            if not result.max_abs_diff <= result.tolerance:
                raise ExportError(
                    f"The ONNX export of {source} disagrees with PyTorch: max abs difference of the logits "
                    f"{result.max_abs_diff:.3g} > tolerance {result.tolerance:.3g} (logits up to "
                    f"{result.max_abs_logit:.3g}; {runtime}, {num_samples} sample images). Nothing was written."
                )
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp's 0600 would make the file private
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return result


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# --- CLI: `hftransfer export ...` -------------------------------------------------------------------------------------


def add_export_subcommand(subparsers: argparse._SubParsersAction, **parser_kwargs: Any) -> argparse.ArgumentParser:
    """Register `hftransfer export` on the main CLI's subparsers; parsed args carry `func=run_export_command`.

    Args:
        subparsers (`argparse._SubParsersAction`): The main parser's subcommands.
        parser_kwargs: Passed to `add_parser` (formatter, parents, ...).
    """
    parser = subparsers.add_parser(
        "export",
        help="export a trained model to ONNX (dynamic batch) and check it against PyTorch",
        description=textwrap.fill(
            "Export a saved model folder to ONNX: inputs pixel_values (batch_size, C, H, W) [and extra_features for "
            "fusion models], output logits (batch_size, num_labels), dynamic batch axis. The export is run on "
            "sample images with onnxruntime (pip install 'hftransfer[export]') or else the onnx reference "
            "evaluator, and the max abs difference from PyTorch is printed.",
            width=100,
        ),
        **parser_kwargs,
    )
    parser.add_argument("output_dir", metavar="OUTPUT_DIR", help="saved model folder (e.g. a training output_dir)")
    parser.add_argument("--format", default="onnx", choices=FORMATS, help="export format (default: onnx)")
    parser.add_argument(
        "--opset", type=int, default=DEFAULT_OPSET, metavar="N", help=f"ONNX opset (default: {DEFAULT_OPSET})"
    )
    parser.add_argument(
        "--output", default=None, metavar="PATH", help=f"file to write (default: OUTPUT_DIR/{DEFAULT_FILE_NAME})"
    )
    parser.add_argument(
        "--atol",
        type=float,
        default=DEFAULT_ATOL,
        metavar="X",
        help=f"accepted max abs difference from PyTorch per unit of logit magnitude (default: {DEFAULT_ATOL:g})",
    )
    parser.add_argument("--no-verify", action="store_true", help="skip the check against PyTorch")
    parser.set_defaults(func=run_export_command)
    return parser


def run_export_command(args: argparse.Namespace) -> int:
    """Execute parsed `hftransfer export` arguments; returns the process exit code.

    Args:
        args (`argparse.Namespace`): From the parser made by [`add_export_subcommand`].
    """
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()
    result = export_onnx(args.output_dir, args.output, args.opset, verify=not args.no_verify, atol=args.atol)
    size_mb = result.path.stat().st_size / 2**20
    inputs = ", ".join(
        f"{name}[{', '.join(str(d) for d in result.input_shapes[name])}]" for name in result.input_names
    )
    print(f"wrote {result.path} ({size_mb:.1f} MiB, ONNX opset {result.opset}; inputs {inputs}; output logits)")
    if result.verified_with is None:
        print("not verified (--no-verify)")
    else:
        print(
            f"verified with {result.verified_with} on {result.num_samples} sample images: max abs difference "
            f"{result.max_abs_diff:.3g} (logits up to {result.max_abs_logit:.3g}; tolerance {result.tolerance:.3g})"
        )
    return 0


__all__ = ["ExportError", "ExportResult", "add_export_subcommand", "export_onnx", "run_export_command"]
