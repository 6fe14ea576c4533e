import numpy as np
import PIL.Image
import pytest
import torch
from transformers import AutoImageProcessor

from hftransfer import TransferConfig, TransferForImageClassification, TransferImageProcessor, convert_to_rgb_image


def test_exact_resize_rescale_normalize_values():
    processor = TransferImageProcessor(
        size={"height": 32, "width": 32}, image_mean=[0.5, 0.25, 0.0], image_std=[0.5, 0.25, 1.0]
    )
    image = PIL.Image.new("RGB", (50, 20), (255, 0, 51))
    pixel_values = processor(image, return_tensors="pt")["pixel_values"]
    assert pixel_values.shape == (1, 3, 32, 32) and pixel_values.dtype == torch.float32
    torch.testing.assert_close(pixel_values[0, :, 10, 10], torch.tensor([1.0, -1.0, 0.2]), atol=1e-4, rtol=0)


def test_shortest_edge_and_center_crop():
    config = TransferConfig(image_size=64)
    processor = TransferImageProcessor.from_transfer_config(config, resize_mode="crop", crop_pct=0.5)
    assert processor.size["shortest_edge"] == 128 and processor.output_size == (64, 64)
    # A wide image: left third red, middle green, right third blue -> the center crop only sees green.
    array = np.zeros((60, 180, 3), dtype=np.uint8)
    array[:, :60, 0], array[:, 60:120, 1], array[:, 120:, 2] = 255, 255, 255
    pixel_values = processor(PIL.Image.fromarray(array), return_tensors="pt", do_normalize=False)["pixel_values"]
    assert pixel_values.shape == (1, 3, 64, 64)
    assert pixel_values[0, 1].min() > 0.99 and pixel_values[0, 0].max() < 0.01 and pixel_values[0, 2].max() < 0.01


def test_from_transfer_config_copies_mean_std_and_size():
    config = TransferConfig(image_size=96, image_mean=[0.1, 0.2, 0.3], image_std=[0.4, 0.5, 0.6])
    processor = TransferImageProcessor.from_transfer_config(config)
    assert processor.output_size == (96, 96)
    assert list(processor.image_mean) == [0.1, 0.2, 0.3] and list(processor.image_std) == [0.4, 0.5, 0.6]
    with pytest.raises(ValueError, match="resize_mode='zoom' is invalid"):
        TransferImageProcessor.from_transfer_config(config, resize_mode="zoom")


def _palette_with_transparency() -> PIL.Image.Image:
    image = PIL.Image.new("P", (8, 8), 0)
    image.putpalette([10, 20, 30] + [200, 0, 0] * 255)
    image.info["transparency"] = 0
    return image


@pytest.mark.parametrize(
    ("image", "expected_rgb"),
    [
        (PIL.Image.new("L", (8, 8), 77), (77, 77, 77)),
        (PIL.Image.new("LA", (8, 8), (77, 0)), (255, 255, 255)),
        (PIL.Image.new("RGBA", (8, 8), (255, 0, 0, 0)), (255, 255, 255)),  # transparent -> white, not red/black
        (PIL.Image.new("RGBA", (8, 8), (255, 0, 0, 255)), (255, 0, 0)),
        (_palette_with_transparency(), (255, 255, 255)),
        (PIL.Image.new("CMYK", (8, 8), (0, 255, 255, 0)), (255, 0, 0)),
        (PIL.Image.fromarray(np.full((8, 8), 32768, dtype=np.uint16)), (128, 128, 128)),  # 16-bit mid-grey, not white
        (PIL.Image.new("1", (8, 8), 1), (255, 255, 255)),
    ],
)
def test_any_mode_becomes_the_rgb_a_user_expects(image, expected_rgb):
    converted = convert_to_rgb_image(image)
    assert converted.mode == "RGB"
    assert converted.getpixel((3, 3)) == expected_rgb


def test_batch_of_mixed_modes_and_sizes():
    processor = TransferImageProcessor(size={"height": 32, "width": 32})
    images = [
        PIL.Image.new("L", (28, 28)),
        PIL.Image.new("RGBA", (40, 30)),
        _palette_with_transparency(),
        PIL.Image.fromarray(np.zeros((10, 12), dtype=np.uint16)),
    ]
    assert processor(images, return_tensors="pt")["pixel_values"].shape == (4, 3, 32, 32)


def test_round_trip_and_auto_image_processor(tmp_path):
    config = TransferConfig(image_size=64, image_mean=[0.4, 0.4, 0.4], image_std=[0.2, 0.2, 0.2])
    processor = TransferImageProcessor.from_transfer_config(config, resize_mode="crop")
    processor.save_pretrained(tmp_path)
    TransferForImageClassification(TransferConfig(image_size=64, pooling="avg", hidden_sizes=[8])).save_pretrained(
        tmp_path
    )
    loaded = AutoImageProcessor.from_pretrained(tmp_path)
    assert type(loaded) is TransferImageProcessor
    image = PIL.Image.new("RGB", (70, 90), (10, 200, 30))
    torch.testing.assert_close(
        loaded(image, return_tensors="pt")["pixel_values"], processor(image, return_tensors="pt")["pixel_values"]
    )
    assert list(loaded.to_dict()["image_mean"]) == [0.4, 0.4, 0.4]
