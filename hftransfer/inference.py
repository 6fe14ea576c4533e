"""Prediction and evaluation with a trained hftransfer model (or any `AutoModelForImageClassification` model).

```python
from hftransfer.inference import evaluate_model, predict

predict("outputs/quickstart", ["shoe.png", "photos/"], top_k=3)
# [{"path": "shoe.png", "predictions": [{"label": "Sneaker", "score": 0.91}, ...]}, ...]
evaluate_model("outputs/quickstart", "fashion-mnist-subset", split="test", output_dir="outputs/quickstart/eval-test")
```

The hot path is decode -> image processor (one call per batch) -> one batched forward under `torch.inference_mode()`.
Decoding and preprocessing of batch i+1 run in a background thread while batch i is in the forward pass, so a GPU is
not left waiting on PIL.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import PIL.Image
import torch
from safetensors import SafetensorError

from ._io import write_json_atomic
from .constants import CONFUSION_MATRIX_FILE, METRICS_FILE
from .errors import InferenceError
from .image_processing_hftransfer import TransferImageProcessor, convert_to_rgb_image

if TYPE_CHECKING:
    from transformers import PreTrainedModel

    from .data import ImageClassificationData

logger = logging.getLogger(__name__)

# Extensions collected when a directory is given; a file named explicitly is always tried, whatever its extension.
IMAGE_EXTENSIONS = frozenset(
    {".png", ".jpg", ".jpeg", ".jfif", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm", ".pnm"}
)
# A Hub repo id ("user/name" or "name"); anything else that does not exist locally is a missing local path.
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


# --- loading --------------------------------------------------------------------------------------------------------


def _default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


# `dtype` values accepted like `pipeline(dtype=...)`: "auto" keeps the checkpoint's dtype (config.json's `dtype`).
DTYPES = ("auto", "float32", "float16", "bfloat16")


def resolve_device(device: int | str | torch.device | None) -> torch.device | None:
    """`device` the way `pipeline` reads it: an index (`-1` = CPU, `0` = the first accelerator, also as the string
    `"0"`), a name (`"cpu"`, `"cuda:1"`, `"mps"`) or a `torch.device`; `None` stays `None` (the caller's default).

    Args:
        device (`int`, `str`, `torch.device` or `None`): The requested device.
    """
    if device is None or isinstance(device, torch.device):
        return device
    if isinstance(device, str) and device.strip().lstrip("-").isdigit():
        device = int(device)
    if isinstance(device, bool) or not isinstance(device, (int, str)):
        raise InferenceError(f"device={device!r} is invalid: expected an index, a name such as 'cuda:0', or None.")
    if isinstance(device, int):
        if device < 0:
            return torch.device("cpu")
        if torch.cuda.is_available():
            return torch.device(f"cuda:{device}")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device(f"mps:{device}")
        raise InferenceError(f"device={device} asks for an accelerator, but none is available: use -1 or 'cpu'.")
    try:
        return torch.device(device)
    except RuntimeError as err:
        raise InferenceError(f"device={device!r} is invalid: {err}") from None


def resolve_dtype(dtype: str | torch.dtype | None) -> str | torch.dtype | None:
    """`dtype` the way `pipeline` reads it: `"auto"` (the checkpoint's dtype), `"float32"`, `"float16"`,
    `"bfloat16"` or a floating-point `torch.dtype`; `None` keeps the default (the checkpoint's dtype).

    Args:
        dtype (`str`, `torch.dtype` or `None`): The requested dtype.
    """
    if dtype is None or dtype == "auto":
        return dtype
    if isinstance(dtype, str):
        resolved = getattr(torch, dtype, None) if dtype in DTYPES else None
        if resolved is None:
            raise InferenceError(f"dtype={dtype!r} is invalid: expected one of {', '.join(DTYPES)} or a torch.dtype.")
        dtype = resolved
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise InferenceError(f"dtype={dtype!r} is invalid: expected a floating-point torch.dtype or one of {DTYPES}.")
    return dtype


def load_model_and_processor(
    model: str | os.PathLike | PreTrainedModel,
    processor: TransferImageProcessor | None = None,
    device: int | str | torch.device | None = None,
    channels_last: bool | None = None,
    dtype: str | torch.dtype | None = None,
) -> tuple[PreTrainedModel, Any]:
    """Load a saved model and its image processor for inference (eval mode, on `device`).

    Args:
        model (`str`, `os.PathLike` or `PreTrainedModel`):
            A folder written by `save_pretrained` (e.g. a training run's `output_dir`), a Hub repo id, or a model
            already loaded (used as is, on its own device unless `device` is given).
        processor (image processor, *optional*):
            Defaults to the processor saved with the model (`AutoImageProcessor`), else one built from the config.
        device (`int`, `str` or `torch.device`, *optional*):
            As for `pipeline`: `"cpu"`, `"cuda:1"`, `"mps"`, an index (`0` = first GPU, `-1` = CPU) or a
            `torch.device`. Defaults to CUDA when available, else CPU (for a model given as an object: its current
            device).
        channels_last (`bool`, *optional*):
            Convert the model to the channels-last memory format (faster convolutions on GPU and, for inference, on
            CPU). Defaults to `True` for a model loaded here and to the model's own format for a model object.

        dtype (`str` or `torch.dtype`, *optional*):
            As for `pipeline`: `"auto"` (the dtype the checkpoint was saved in), `"float32"`, `"float16"`,
            `"bfloat16"` or a `torch.dtype`. Defaults to the checkpoint's dtype, like `"auto"` (float32 for the
            models hftransfer trains; a model object keeps its own). Half precision is for GPUs: on CPU it is much
            slower (bfloat16 ~40x on the development machine).

    Returns:
        `(model, processor)`.
    """
    from transformers import AutoImageProcessor, AutoModelForImageClassification

    import hftransfer  # noqa: F401  (registers the Auto classes: no remote code needed for hftransfer models)

    device, dtype = resolve_device(device), resolve_dtype(dtype)

    if isinstance(model, (str, os.PathLike)):
        source = os.fspath(model)
        path = Path(source).expanduser()
        if path.is_dir():
            if not (path / "config.json").is_file():
                raise InferenceError(
                    f"{source} is not a saved model: it has no config.json (expected a folder "
                    "written by save_pretrained, e.g. a training run's output_dir)."
                )
            source = str(path)
        elif path.exists():
            raise InferenceError(f"{source} is a file; expected a model folder (with config.json) or a Hub repo id.")
        elif not _REPO_ID.match(source):
            raise InferenceError(f"Model folder {source} does not exist (and it is not a Hub repo id).")
        try:
            loaded = AutoModelForImageClassification.from_pretrained(
                source, **({} if dtype is None else {"dtype": dtype})
            )
        except SafetensorError as err:
            # A truncated or damaged checkpoint (an interrupted copy, a full disk): name the file, not the Rust error.
            damaged = _unreadable_safetensors(path) if path.is_dir() else []
            what = ", ".join(map(str, damaged)) if damaged else f"a safetensors file of {source}"
            raise InferenceError(
                f"Could not load the model saved in {source}: {what} is truncated or corrupt ({err}). Copy or save "
                "the model again (a training run's output_dir gets model.safetensors at the end of the run)."
            ) from err
        except (OSError, ValueError) as err:
            reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            if path.is_dir():
                raise InferenceError(f"Could not load the model saved in {source}: {reason}") from err
            raise InferenceError(
                f"Model {source!r} is not a local folder and could not be loaded from the Hub: {reason}"
            ) from err
        if processor is None:
            try:
                processor = AutoImageProcessor.from_pretrained(source)
            except (OSError, ValueError):
                processor = None
        channels_last = True if channels_last is None else channels_last
        model = loaded.to(device or _default_device())
    else:
        if device is not None:
            model = model.to(device)
        if isinstance(dtype, torch.dtype):
            model = model.to(dtype)
    if _model_dtype(model) != torch.float32 and _model_device(model).type == "cpu":
        logger.warning(f"Running a {_model_dtype(model)} model on CPU: float32 is usually much faster there.")
    if processor is None:
        config = model.config
        if getattr(config, "model_type", None) != "hftransfer":
            raise InferenceError(
                f"No image processor was saved with {getattr(config, '_name_or_path', 'the model')} "
                "and it is not an hftransfer model: pass `processor=`."
            )
        logger.warning("No preprocessor_config.json with the model: using the processor its config implies.")
        processor = TransferImageProcessor.from_transfer_config(config)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    model.eval()
    return model, processor


def _unreadable_safetensors(folder: Path) -> list[Path]:
    """The `*.safetensors` files of a model folder whose header or data cannot be read (truncated, corrupt)."""
    from safetensors import safe_open

    bad = []
    for file in sorted(folder.glob("*.safetensors")):
        try:
            with safe_open(str(file), framework="pt") as reader:
                reader.keys()
        except (SafetensorError, OSError):
            bad.append(file)
    return bad


def _input_memory_format(model: torch.nn.Module) -> torch.memory_format:
    # Feed inputs in the layout of the first conv's weights, so the first layer does not convert every batch.
    for module in model.modules():
        if isinstance(module, torch.nn.Conv2d):
            if module.weight.is_contiguous(memory_format=torch.channels_last) and not module.weight.is_contiguous():
                return torch.channels_last
            break
    return torch.contiguous_format


def _model_device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


def _model_dtype(model: torch.nn.Module) -> torch.dtype:
    return next(model.parameters()).dtype


def _prefetched(items: Sequence[Any], batch_size: int, prepare: Callable[[Sequence[Any]], Any]) -> Iterator[Any]:
    """`prepare(batch)` for consecutive batches of `items`, the next one computed in a thread meanwhile.

    PIL decoding and the processor's tensor ops release the GIL, so they overlap the model's forward pass.
    """
    batches = [items[start : start + batch_size] for start in range(0, len(items), batch_size)]
    if not batches:
        return
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="hftransfer-prefetch") as pool:
        pending = pool.submit(prepare, batches[0])
        for batch in batches[1:]:
            ready = pending.result()
            pending = pool.submit(prepare, batch)
            yield ready
        yield pending.result()


def _check_batch_size(batch_size: int) -> None:
    if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
        raise InferenceError(f"batch_size={batch_size!r} is invalid: expected a positive integer.")


def _extra_features_dim(model: PreTrainedModel) -> int:
    return int(getattr(model.config, "extra_features_dim", 0) or 0)


# --- prediction -----------------------------------------------------------------------------------------------------


def collect_image_paths(inputs: str | os.PathLike | Iterable[str | os.PathLike]) -> list[Path]:
    """Expand files and directories into a list of image files.

    Files are kept as given (whatever their extension: a non-image is reported when decoded). Directories are walked
    recursively and contribute their files with an image extension (`IMAGE_EXTENSIONS`, case-insensitive), in sorted
    order; hidden files and folders are skipped.

    Args:
        inputs (`str`, `os.PathLike` or an iterable of them): Files and/or directories.

    Raises:
        [`InferenceError`]: a path does not exist, or a directory holds no image.
    """
    if isinstance(inputs, (str, os.PathLike)):
        inputs = [inputs]
    paths: list[Path] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            found = sorted(
                p
                for p in path.rglob("*")
                if p.suffix.lower() in IMAGE_EXTENSIONS
                and p.is_file()
                and not any(part.startswith(".") for part in p.relative_to(path).parts)
            )
            if not found:
                raise InferenceError(
                    f"Directory {path} contains no images (looked recursively for {', '.join(sorted(IMAGE_EXTENSIONS))})."
                )
            paths.extend(found)
        elif path.exists():
            paths.append(path)
        else:
            raise InferenceError(f"{path} does not exist (expected an image file or a folder of images).")
    return paths


def _load_image(item: str | os.PathLike | PIL.Image.Image) -> PIL.Image.Image:
    from .data.images import decode_image  # names the file in its BadImageError; applies EXIF orientation

    if isinstance(item, PIL.Image.Image):
        return convert_to_rgb_image(item)
    return convert_to_rgb_image(decode_image(os.fspath(item)))


TTA_CHOICES = ("flip", "flip-crops")
TTA_CROP = 0.875  # corner and centre crops keep 87.5% of each side, then are resized back to the input size


def tta_views(pixel_values: torch.Tensor, tta: str | None) -> list[torch.Tensor]:
    """The test-time augmentation views of a batch: the batch itself, its horizontal flip, and for `flip-crops` the
    four corner crops and the centre crop (each resized back to the input size, so flatten-pooled models accept it).

    Args:
        pixel_values (`torch.Tensor`): Prepared images, shape `(batch, channels, height, width)`.
        tta (`str`, *optional*): `None` (no TTA), `"flip"` or `"flip-crops"`.
    """
    if tta is None:
        return [pixel_values]
    if tta not in TTA_CHOICES:
        raise ValueError(f"tta={tta!r} is invalid: expected one of {TTA_CHOICES} or None.")
    views = [pixel_values, torch.flip(pixel_values, dims=[-1])]
    if tta == "flip-crops":
        height, width = pixel_values.shape[-2:]
        crop_h, crop_w = max(1, round(height * TTA_CROP)), max(1, round(width * TTA_CROP))
        offsets = [(0, 0), (0, width - crop_w), (height - crop_h, 0), (height - crop_h, width - crop_w)]
        offsets.append(((height - crop_h) // 2, (width - crop_w) // 2))
        for top, left in offsets:
            crop = pixel_values[..., top : top + crop_h, left : left + crop_w]
            views.append(
                torch.nn.functional.interpolate(crop, size=(height, width), mode="bilinear", align_corners=False)
            )
    return views


def _probabilities(model, pixel_values: torch.Tensor, kwargs: dict, multi_label: bool, tta: str | None):
    """Class probabilities (float32) of a batch, averaged over the test-time augmentation views."""
    total = None
    views = tta_views(pixel_values, tta)
    for view in views:
        logits = model(pixel_values=view.contiguous(memory_format=_input_memory_format(model)), **kwargs).logits
        probabilities = logits.float().sigmoid() if multi_label else logits.float().softmax(dim=-1)
        total = probabilities if total is None else total + probabilities
    return total / len(views)


def predict(
    model: str | os.PathLike | PreTrainedModel,
    image_paths: str | os.PathLike | PIL.Image.Image | Sequence[str | os.PathLike | PIL.Image.Image],
    top_k: int = 1,
    batch_size: int = 32,
    processor: Any | None = None,
    *,
    on_bad_image: str = "error",
    extra_features: Sequence[Sequence[float]] | np.ndarray | torch.Tensor | None = None,
    device: int | str | torch.device | None = None,
    num_workers: int | None = None,
    dtype: str | torch.dtype | None = None,
    tta: str | None = None,
) -> list[dict[str, Any]]:
    """Classify images in batches and return the `top_k` labels of each with their probabilities.

    Args:
        model (`str`, `os.PathLike` or `PreTrainedModel`):
            A saved model folder, a Hub repo id, or a loaded model (see [`load_model_and_processor`]).
        image_paths (path, PIL image, or a sequence of them):
            Image files, directories (walked recursively for image files, see [`collect_image_paths`]) or PIL
            images (reported with `"path": None`).
        top_k (`int`, *optional*, defaults to 1):
            Labels returned per image, most probable first (capped at the number of labels).
        batch_size (`int`, *optional*, defaults to 32):
            Images per forward pass. Results do not depend on it.
        processor (image processor, *optional*):
            Defaults to the processor saved with the model.
        on_bad_image (`str`, *optional*, defaults to `"error"`):
            `"error"`: an unreadable or corrupt file raises [`~hftransfer.data.BadImageError`] naming it.
            `"skip"`: its result has `"predictions": []` and an `"error"` message, and the others are predicted.
        extra_features (array-like of shape `(num_images, extra_features_dim)`, *optional*):
            Per-image extra features for a fusion model trained with `data.extra_feature_columns`, in the order of
            the images (after directory expansion).
        device (`int`, `str` or `torch.device`, *optional*):
            As for `pipeline` (`"cuda:1"`, `0`, `-1`, ...); defaults to CUDA when available, else CPU (for a model
            object: its own device).
        num_workers (`int`, *optional*):
            Threads decoding images (while the previous batch is in the forward pass). Defaults to the number of
            CPU cores, at most 8.
        dtype (`str` or `torch.dtype`, *optional*):
            As for `pipeline`: `"auto"`, `"float32"`, `"float16"`, `"bfloat16"`; defaults to the checkpoint's dtype
            (for a model object: its own). Scores are computed in float32 from the logits.
        tta (`str`, *optional*):
            Test-time augmentation: `"flip"` (the image and its mirror) or `"flip-crops"` (also the four corner
            crops and the centre crop); the probabilities of the views are averaged. `None`: one view.

    Returns:
        `list[dict]`: one `{"path": str | None, "predictions": [{"label": str, "score": float}, ...]}` per image, in
        input order. Scores are softmax probabilities (sigmoid for multi-label models).
    """
    if not isinstance(top_k, int) or isinstance(top_k, bool) or top_k < 1:
        raise InferenceError(f"top_k={top_k!r} is invalid: expected a positive integer.")
    _check_batch_size(batch_size)
    if on_bad_image not in ("error", "skip"):
        raise InferenceError(f"on_bad_image={on_bad_image!r} is invalid: expected 'error' or 'skip'.")
    if isinstance(image_paths, (str, os.PathLike, PIL.Image.Image)):
        image_paths = [image_paths]
    items: list[Path | PIL.Image.Image] = []
    for item in image_paths:
        items.extend([item] if isinstance(item, PIL.Image.Image) else collect_image_paths(item))

    model, processor = load_model_and_processor(model, processor, device, dtype=dtype)
    extra = _check_extra_features(model, extra_features, len(items))
    id2label = {int(k): str(v) for k, v in model.config.id2label.items()}
    k = min(top_k, len(id2label))
    multi_label = getattr(model.config, "problem_type", None) == "multi_label_classification"
    device, memory_format = _model_device(model), _input_memory_format(model)
    input_dtype = _model_dtype(model)

    from .data.images import BadImageError, log_skipped

    def load(item: Any) -> PIL.Image.Image | BadImageError:
        try:
            return _load_image(item)
        except BadImageError as err:
            return err

    def prepare(batch: Sequence[tuple[int, Any]]) -> tuple[list[int], torch.Tensor | None, dict[int, tuple]]:
        indices, images, errors = [], [], {}
        # PIL decodes without the GIL: a few threads keep a GPU fed; results come back in input order.
        for (index, _), image in zip(batch, decode_pool.map(load, [item for _, item in batch])):
            if isinstance(image, BadImageError):
                if on_bad_image == "error":
                    raise image
                errors[index] = image.bad_images
            else:
                images.append(image)
                indices.append(index)
        pixel_values = processor(images=images, return_tensors="pt")["pixel_values"] if images else None
        if pixel_values is not None and device.type == "cuda":
            pixel_values = pixel_values.pin_memory()  # lets the host-to-device copy run asynchronously
        return indices, pixel_values, errors

    results: list[dict[str, Any]] = [
        {"path": None if isinstance(item, PIL.Image.Image) else str(item), "predictions": []} for item in items
    ]
    skipped: list = []
    workers = num_workers if num_workers is not None else min(8, os.cpu_count() or 1)
    with (
        ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="hftransfer-decode") as decode_pool,
        torch.inference_mode(),
    ):
        for indices, pixel_values, errors in _prefetched(list(enumerate(items)), batch_size, prepare):
            for index, bad_images in errors.items():
                results[index]["error"] = "; ".join(str(bad) for bad in bad_images)
                skipped.extend(bad_images)
            if pixel_values is None:
                continue
            pixel_values = pixel_values.to(device, input_dtype, non_blocking=True).contiguous(
                memory_format=memory_format
            )
            kwargs = {"extra_features": extra[indices].to(device)} if extra is not None else {}
            probabilities = _probabilities(model, pixel_values, kwargs, multi_label, tta)
            scores, label_ids = probabilities.topk(k, dim=-1)
            for index, row_scores, row_ids in zip(indices, scores.tolist(), label_ids.tolist()):
                results[index]["predictions"] = [
                    {"label": id2label[label_id], "score": score} for label_id, score in zip(row_ids, row_scores)
                ]
    log_skipped(skipped, "the images to predict")  # a count and the names: never a silent drop
    return results


def _check_extra_features(model: PreTrainedModel, extra_features: Any, num_images: int) -> torch.Tensor | None:
    dim = _extra_features_dim(model)
    if not dim:
        if extra_features is not None:
            raise InferenceError("extra_features were given but this model takes none (config.extra_features_dim=0).")
        return None
    if extra_features is None:
        raise InferenceError(
            f"This model's fusion head needs {dim} extra features per image (config.extra_features_dim); pass "
            "`extra_features` of shape (num_images, extra_features_dim) in the order of the images."
        )
    extra = torch.as_tensor(np.asarray(extra_features, dtype=np.float32))
    if extra.shape != (num_images, dim):
        raise InferenceError(f"extra_features has shape {tuple(extra.shape)}, expected ({num_images}, {dim}).")
    return extra


# --- evaluation -----------------------------------------------------------------------------------------------------


def _saved_extra_feature_columns(model_source: Any) -> tuple[str, ...]:
    # A training run saves its recipe next to the model: its data.extra_feature_columns feed a fusion head.
    if not isinstance(model_source, (str, os.PathLike)):
        return ()
    recipe = Path(model_source) / "recipe.yaml"
    if not recipe.is_file():
        return ()
    import yaml

    data = yaml.safe_load(recipe.read_text(encoding="utf-8")) or {}
    return tuple((data.get("data") or {}).get("extra_feature_columns") or ())


def _label_mapping(dataset_id2label: Mapping[int, str], model_id2label: Mapping[int, str], source: str) -> np.ndarray:
    """Dataset label id -> model label id, matched by name; an error names the labels the model does not know."""
    model_label2id = {name: index for index, name in model_id2label.items()}
    unknown = [name for _, name in sorted(dataset_id2label.items()) if name not in model_label2id]
    if unknown:
        model_names = [model_id2label[i] for i in sorted(model_id2label)]
        raise InferenceError(
            f"The labels of {source} do not match the model's: {unknown} are not in the model's config.id2label "
            f"{model_names}. Evaluate on data with the classes the model was trained on."
        )
    mapping = np.full(max(dataset_id2label) + 1, -1, dtype=np.int64)
    for index, name in dataset_id2label.items():
        mapping[index] = model_label2id[name]
    return mapping


def evaluate_model(
    model: str | os.PathLike | PreTrainedModel,
    data: str | os.PathLike | ImageClassificationData,
    split: str = "test",
    batch_size: int = 64,
    output_dir: str | os.PathLike | None = None,
    processor: Any | None = None,
    *,
    image_column: str | None = None,
    label_column: str | None = None,
    extra_feature_columns: Sequence[str] | None = None,
    max_samples: int | None = None,
    device: int | str | torch.device | None = None,
    dtype: str | torch.dtype | None = None,
    tta: str | None = None,
) -> dict[str, Any]:
    """Evaluate a classifier on one split of a dataset: loss, accuracy, macro F1/precision/recall, per-class
    accuracy and the confusion matrix.

    Args:
        model (`str`, `os.PathLike` or `PreTrainedModel`):
            A saved model folder, a Hub repo id, or a loaded model.
        data (`str`, `os.PathLike` or [`~hftransfer.data.ImageClassificationData`]):
            Any source [`~hftransfer.data.load_image_classification_dataset`] accepts (`"fashion-mnist-subset"`, an
            image folder, a CSV/parquet file, a Hub dataset), or data it already loaded.
        split (`str`, *optional*, defaults to `"test"`):
            Split to evaluate (`train`, `validation` or `test`).
        batch_size (`int`, *optional*, defaults to 64):
            Images per forward pass.
        output_dir (`str` or `os.PathLike`, *optional*):
            When given, `metrics.json` and `confusion_matrix.png` are written there (atomically).
        processor (image processor, *optional*):
            Defaults to the processor saved with the model.
        image_column (`str`, *optional*), label_column (`str`, *optional*):
            Columns of a table source (detected when unset).
        extra_feature_columns (`Sequence[str]`, *optional*):
            Numeric columns for a fusion model's `extra_features`; defaults to the ones in the `recipe.yaml` saved
            with the model.
        max_samples (`int`, *optional*):
            Evaluate only the first `max_samples` examples of the split.
        device (`int`, `str` or `torch.device`, *optional*):
            As for `pipeline` (`"cuda:1"`, `0`, `-1`, ...); defaults to CUDA when available, else CPU.
        dtype (`str` or `torch.dtype`, *optional*):
            As for `pipeline`: `"auto"`, `"float32"`, `"float16"`, `"bfloat16"`; defaults to the checkpoint's dtype.
        tta (`str`, *optional*):
            Test-time augmentation as in [`predict`]: predictions and loss come from the averaged probabilities, and
            `metrics["tta"]` says which was used.
            The loss and metrics are computed from float32 logits either way.

    Returns:
        `dict`: the keys of [`~hftransfer.metrics.compute_classification_metrics`] (`accuracy`, `f1`, `precision`,
        `recall`, `per_class_accuracy`, `confusion_matrix`, `num_samples`) plus `loss` (mean cross-entropy), `split`
        and `dataset`. The confusion matrix and per-class accuracies are over the model's labels, in id order.
    """
    from .data import ImageClassificationData, build_transforms, load_image_classification_dataset
    from .metrics import compute_classification_metrics

    _check_batch_size(batch_size)
    model_source = model
    model, processor = load_model_and_processor(model, processor, device, dtype=dtype)
    problem_type = getattr(model.config, "problem_type", None)
    if problem_type not in (None, "single_label_classification"):
        raise InferenceError(
            f"evaluate_model scores single-label classifiers; this model's problem_type is {problem_type!r}."
        )
    needs_extra = _extra_features_dim(model) > 0
    if extra_feature_columns is None:
        extra_feature_columns = _saved_extra_feature_columns(model_source) if needs_extra else ()
    extra_feature_columns = tuple(extra_feature_columns)
    if needs_extra and not extra_feature_columns:
        raise InferenceError(
            f"This model's fusion head needs {_extra_features_dim(model)} extra features per image: pass "
            "extra_feature_columns (the numeric dataset columns it was trained with)."
        )

    if not isinstance(data, ImageClassificationData):
        data = load_image_classification_dataset(
            data, image_column=image_column, label_column=label_column, extra_feature_columns=extra_feature_columns
        )
    if split not in data.splits:
        raise InferenceError(f"{data.source} has no {split!r} split; its splits are {list(data.splits)}.")
    model_id2label = {int(k): str(v) for k, v in model.config.id2label.items()}
    mapping = _label_mapping(data.id2label, model_id2label, data.source)
    dataset = data.splits[split]
    if max_samples is not None:
        dataset = dataset.select(range(min(max_samples, len(dataset))))
    if len(dataset) == 0:
        raise InferenceError(f"The {split!r} split of {data.source} is empty.")
    dataset = build_transforms(processor).apply(dataset)  # the same preprocessing as evaluation during training

    def prepare(rows: range) -> dict[str, Any]:
        return dataset[rows.start : rows.stop]

    device, memory_format = _model_device(model), _input_memory_format(model)
    input_dtype = _model_dtype(model)
    loss_sum, predictions, references = 0.0, [], []
    with torch.inference_mode():
        for batch in _prefetched(range(len(dataset)), batch_size, prepare):
            labels = torch.as_tensor(mapping[np.asarray(batch["label"], dtype=np.int64)])
            kwargs = {}
            if needs_extra:
                columns = [
                    np.asarray(batch[c], dtype=np.float32).reshape(len(labels), -1) for c in extra_feature_columns
                ]
                kwargs["extra_features"] = torch.as_tensor(np.concatenate(columns, axis=1)).to(device)
            pixel_values = (
                batch["pixel_values"]
                .to(device, input_dtype, non_blocking=True)
                .contiguous(memory_format=memory_format)
            )
            probabilities = _probabilities(model, pixel_values, kwargs, False, tta).cpu()
            # The loss of the averaged probabilities (exactly cross-entropy of the logits without TTA).
            loss_sum += float(
                torch.nn.functional.nll_loss(probabilities.clamp_min(1e-12).log(), labels, reduction="sum")
            )
            predictions.append(probabilities.argmax(dim=-1).numpy())
            references.append(labels.numpy())
    predictions, references = np.concatenate(predictions), np.concatenate(references)
    metrics = compute_classification_metrics(predictions, references, model_id2label)
    metrics["loss"] = loss_sum / len(references)
    metrics["split"] = split
    metrics["dataset"] = data.source
    metrics["tta"] = tta

    if output_dir is not None:
        from .plots import plot_confusion_matrix

        output_dir = Path(output_dir)
        output_dir.mkdir(parents=True, exist_ok=True)
        write_json_atomic(output_dir / METRICS_FILE, metrics)  # temp file, fsync, umask mode, rename
        labels = [model_id2label[i] for i in sorted(model_id2label)]
        title = f"Confusion matrix, {split} ({len(references)} examples, accuracy {metrics['accuracy']:.3f})"
        plot_confusion_matrix(metrics["confusion_matrix"], labels, output_dir / CONFUSION_MATRIX_FILE, title=title)
    return metrics


__all__ = [
    "CONFUSION_MATRIX_FILE",
    "IMAGE_EXTENSIONS",
    "METRICS_FILE",
    "TTA_CHOICES",
    "InferenceError",
    "collect_image_paths",
    "evaluate_model",
    "load_model_and_processor",
    "predict",
    "tta_views",
]
