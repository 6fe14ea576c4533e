"""Fixtures of the data-layer tests: small image files of every kind, good and bad, written to temporary folders."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import PIL.Image
import pytest


class ImageFactory:
    """Writes small test images (and broken ones) and returns their paths."""

    @staticmethod
    def array(mode: str = "RGB", size: tuple[int, int] = (12, 10), seed: int = 0) -> np.ndarray:
        rng = np.random.default_rng(seed)
        width, height = size
        shape = (height, width, 3) if mode == "RGB" else (height, width)
        return rng.integers(0, 256, shape, dtype=np.uint8)

    def image(self, mode: str = "RGB", size: tuple[int, int] = (12, 10), seed: int = 0) -> PIL.Image.Image:
        if mode in ("RGB", "L"):
            return PIL.Image.fromarray(self.array(mode, size, seed), mode)
        if mode == "CMYK":
            return PIL.Image.new("CMYK", size, (0, 255, 255, 0))  # pure red in print colours
        if mode == "I;16":
            return PIL.Image.fromarray(np.full(size[::-1], 65535, dtype=np.uint16))  # 16-bit white
        if mode == "P":
            image = PIL.Image.new("P", size, 0)
            image.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)  # index 0: black (made transparent), 1: red
            return image
        if mode == "RGBA":
            return PIL.Image.new("RGBA", size, (0, 0, 255, 0))  # fully transparent blue
        raise ValueError(mode)

    def write(self, path: Path, mode: str = "RGB", size: tuple[int, int] = (12, 10), seed: int = 0) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        image = self.image(mode, size, seed)
        if mode == "P":
            image.save(path, transparency=0)
        else:
            image.save(path)
        return path

    def encoded(self, fmt: str = "PNG", mode: str = "RGB", size: tuple[int, int] = (12, 10), seed: int = 0) -> bytes:
        buffer = io.BytesIO()
        self.image(mode, size, seed).save(buffer, format=fmt)
        return buffer.getvalue()

    def truncated(self, path: Path, fmt: str = "PNG") -> Path:
        # Large enough noise that half the file is really missing scan data, not just trailing metadata.
        data = self.encoded(fmt, size=(64, 64), seed=1)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data[: len(data) // 2])
        return path

    def corrupt(self, path: Path) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(np.random.default_rng(2).integers(0, 256, 300, dtype=np.uint8).tobytes())
        return path

    def class_folder(self, root: Path, counts: dict[str, int], size: tuple[int, int] = (12, 10)) -> Path:
        """`root/<class>/<class>_<i>.png` for each class and count; seeds differ per file."""
        seed = 0
        for name, count in counts.items():
            for index in range(count):
                seed += 1
                self.write(root / name / f"{name}_{index}.png", size=size, seed=seed)
        return root


@pytest.fixture(scope="session")
def images() -> ImageFactory:
    return ImageFactory()


@pytest.fixture(scope="session")
def processor():
    from hftransfer.image_processing_hftransfer import TransferImageProcessor

    return TransferImageProcessor(size={"height": 32, "width": 32})


@pytest.fixture(scope="session")
def subset():
    """The embedded Fashion-MNIST subset, loaded once."""
    from hftransfer.data import load_image_classification_dataset

    return load_image_classification_dataset("fashion-mnist-subset")
