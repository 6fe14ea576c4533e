"""Image file checks and decoding whose errors name the offending file (DESIGN.md invariant 6)."""

from __future__ import annotations

import io
import logging
import os
import struct
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import PIL.Image
import PIL.ImageOps

from ..errors import BadImageError, DataError

logger = logging.getLogger("hftransfer.data")

CHECK_LEVELS = ("fast", "full", "none")
ON_BAD_IMAGE = ("error", "skip")
# How many bad file names a log line or an error message lists before it says "and N more".
MAX_LISTED = 10
# Exceptions PIL raises for unreadable, corrupt or truncated data.
_DECODE_ERRORS = (
    OSError,
    SyntaxError,
    ValueError,
    EOFError,
    struct.error,
    IndexError,
    PIL.Image.DecompressionBombError,
)


@dataclass(frozen=True)
class BadImage:
    """An image that failed a check: its name (a path, or a row description for in-memory bytes) and the reason."""

    name: str
    reason: str
    split: str | None = None

    def __str__(self) -> str:
        where = f"[{self.split}] " if self.split else ""
        return f"{where}{self.name} ({self.reason})"


def format_bad_images(bad_images: Sequence[BadImage], limit: int = MAX_LISTED) -> str:
    """`a.png (reason), b.jpg (reason) and 3 more`, capped so that messages stay readable."""
    listed = ", ".join(str(bad) for bad in bad_images[:limit])
    if len(bad_images) > limit:
        listed += f" and {len(bad_images) - limit} more"
    return listed


def log_skipped(bad_images: Sequence[BadImage], where: str) -> None:
    """Log skipped images: always a count, and the first `MAX_LISTED` names, never a silent drop."""
    if bad_images:
        logger.warning(
            "Skipped %d bad image(s) in %s (on_bad_image='skip'): %s",
            len(bad_images),
            where,
            format_bad_images(bad_images),
        )


def image_problem(source: str | bytes, level: str = "fast") -> str | None:
    """Check one image file (a path) or encoded image (bytes) without keeping it in memory.

    Args:
        source (`str` or `bytes`):
            Path of an image file, or the encoded bytes of one.
        level (`str`, *optional*, defaults to `"fast"`):
            `"fast"`: open the header and run PIL's `verify()` (PNG: every chunk's CRC, so truncation is caught); a
            JPEG without its end-of-image marker is then fully decoded to decide. `"full"`: decode every image.

    Returns:
        `None` when the image is readable, otherwise a short reason (e.g. `"empty file (0 bytes)"`).
    """
    try:
        # Paths are opened here rather than by PIL so that a missing file reads as such, not as a decode error.
        stream = open(source, "rb") if isinstance(source, str) else io.BytesIO(source)  # noqa: SIM115
    except FileNotFoundError:
        return "file does not exist"
    except OSError as err:
        return f"cannot be read: {err.strerror or err}"
    with stream:
        size = stream.seek(0, os.SEEK_END)
        stream.seek(0)
        if size == 0:
            return "empty file (0 bytes)"
        try:
            with PIL.Image.open(stream) as image:
                image_format = image.format
                if level == "full":
                    image.load()
                    return None
                image.verify()
        except PIL.UnidentifiedImageError:
            return "not an image (PIL cannot identify the format)"
        except _DECODE_ERRORS as err:
            return f"corrupt or truncated: {err}"
        if image_format == "JPEG":
            # verify() does not read JPEG scan data; a missing end-of-image marker near the end means the file was
            # probably cut short. Decoding settles it, and only suspicious files pay that cost.
            stream.seek(max(0, size - 1024))
            if b"\xff\xd9" not in stream.read():
                stream.seek(0)
                try:
                    with PIL.Image.open(stream) as image:
                        image.load()
                except _DECODE_ERRORS as err:
                    return f"truncated JPEG: {err}"
    return None


def find_bad_images(
    items: Iterable[tuple[str, str | bytes]], level: str = "fast", split: str | None = None
) -> list[tuple[int, BadImage]]:
    """Check many images, in a few threads (file reads overlap), and return the bad ones with their positions.

    Args:
        items (iterable of `(name, source)`):
            The name used in messages, and the path or bytes to check.
        level (`str`, *optional*, defaults to `"fast"`): See [`image_problem`].
        split (`str`, *optional*): Split name recorded on each [`BadImage`].

    Returns:
        `list[tuple[int, BadImage]]`: position in `items` and description of each bad image, in input order.
    """
    if level == "none":
        return []
    items = list(items)
    workers = min(8, os.cpu_count() or 1)
    if len(items) < 64 or workers == 1:
        problems = [image_problem(source, level) for _, source in items]
    else:
        with ThreadPoolExecutor(workers) as pool:
            problems = list(pool.map(lambda item: image_problem(item[1], level), items, chunksize=32))
    return [
        (position, BadImage(name, problem, split))
        for position, ((name, _), problem) in enumerate(zip(items, problems))
        if problem is not None
    ]


def decode_image(value: PIL.Image.Image | dict | str | bytes) -> PIL.Image.Image:
    """Decode one value of a `datasets.Image` column, raising [`BadImageError`] that names the file on failure.

    Args:
        value (`PIL.Image.Image`, `dict`, `str` or `bytes`):
            An already decoded image (returned as is), a `{"bytes": ..., "path": ...}` dict as stored by
            `datasets.Image(decode=False)`, a path, or encoded bytes.

    Returns:
        `PIL.Image.Image`: the loaded image, rotated according to its EXIF orientation (as `datasets` does).
    """
    if isinstance(value, PIL.Image.Image):
        return value
    if isinstance(value, dict):
        path, data = value.get("path"), value.get("bytes")
    elif isinstance(value, str):
        path, data = value, None
    elif isinstance(value, (bytes, bytearray, memoryview)):
        path, data = None, bytes(value)
    else:
        raise DataError(f"Expected an image (PIL image, path, bytes or {{'bytes', 'path'}} dict), got {type(value)}.")
    name = path or f"<{len(data or b'')} bytes of image data>"
    if data is None and path is None:
        raise BadImageError([BadImage(name, "neither bytes nor a path")])
    try:
        image = PIL.Image.open(io.BytesIO(data) if data is not None else path)
        image.load()
    except FileNotFoundError:
        raise BadImageError([BadImage(name, "file does not exist")]) from None
    except PIL.UnidentifiedImageError:
        raise BadImageError([BadImage(name, "not an image (PIL cannot identify the format)")]) from None
    except _DECODE_ERRORS as err:
        raise BadImageError([BadImage(name, f"corrupt or truncated: {err}")]) from err
    if image.getexif().get(PIL.Image.ExifTags.Base.Orientation) is not None:
        image = PIL.ImageOps.exif_transpose(image)
    return image
