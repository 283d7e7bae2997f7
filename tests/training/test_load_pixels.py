"""``load_pixels`` converts every mode as the validator promises: transparency on white
(or a chosen colour), 16-bit scaled not clipped, CMYK to RGB, EXIF rotation applied."""

from __future__ import annotations

from pathlib import Path

from image_factory import (
    gray16,
    palette_with_transparency,
    png16_rgb,
    rotated_jpeg,
    transparent_rgba,
)
from PIL import Image

from lora_studio.core.buckets import square_placement
from lora_studio.core.imaging import read_header
from lora_studio.training.data import load_pixels


def _pixels(path: Path, side: int = 64, **kwargs):
    width, height = read_header(path).size
    return load_pixels(path, square_placement(width, height, side), **kwargs)


def _rgb(tensor, x: int, y: int) -> tuple[int, int, int]:
    """A pixel of a [-1, 1] tensor as 0-255 RGB."""
    values = ((tensor[:, y, x] + 1.0) * 127.5).round().int().tolist()
    return tuple(values)


def test_transparent_pixels_train_as_white_not_black(tmp_path: Path) -> None:
    path = tmp_path / "cutout.png"
    transparent_rgba().save(path)
    pixels = _pixels(path)
    assert _rgb(pixels, 8, 32) == (255, 0, 0)
    assert _rgb(pixels, 56, 32) == (255, 255, 255)
    grey = _pixels(path, background=(128, 128, 128))
    assert _rgb(grey, 56, 32) == (128, 128, 128)


def test_grey_with_alpha_is_flattened(tmp_path: Path) -> None:
    path = tmp_path / "la.png"
    transparent_rgba().convert("LA").save(path)
    assert _rgb(_pixels(path), 56, 32) == (255, 255, 255)


def test_palette_with_a_transparent_index(tmp_path: Path) -> None:
    path = tmp_path / "palette.png"
    palette_with_transparency().save(path, transparency=0)
    pixels = _pixels(path)
    assert _rgb(pixels, 8, 32) == (0, 200, 0)
    assert _rgb(pixels, 56, 32) == (255, 255, 255)


def test_16_bit_grey_is_scaled_not_clipped(tmp_path: Path) -> None:
    path = tmp_path / "grey16.png"
    gray16(value=128 * 257).save(path)
    assert Image.open(path).mode == "I;16"
    assert _rgb(_pixels(path), 32, 32) == (128, 128, 128)
    deep = png16_rgb(tmp_path / "deep.png", (65535, 32896, 0), size=(64, 64))
    assert _rgb(_pixels(deep), 32, 32) == (255, 128, 0)


def test_cmyk_becomes_rgb(tmp_path: Path) -> None:
    path = tmp_path / "print.jpg"
    Image.new("RGB", (64, 64), (200, 40, 40)).convert("CMYK").save(path, quality=95)
    red, green, blue = _rgb(_pixels(path), 32, 32)
    assert red > 170 and green < 80 and blue < 80


def test_exif_rotation_is_applied(tmp_path: Path) -> None:
    path = rotated_jpeg(tmp_path / "phone.jpg", (96, 64))
    assert read_header(path).size == (64, 96)
    width, height = read_header(path).size
    pixels = load_pixels(path, square_placement(width, height, 64))
    assert tuple(pixels.shape) == (3, 64, 64)
