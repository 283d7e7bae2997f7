"""Turning image files into training tensors."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image, ImageOps

if TYPE_CHECKING:
    import torch


def load_rgb(path: Path) -> Image.Image:
    """Open ``path`` upright (EXIF orientation applied) as RGB; transparency becomes white."""
    with Image.open(path) as img:
        img = ImageOps.exif_transpose(img)
        if img.mode in ("RGBA", "LA") or (img.mode == "P" and "transparency" in img.info):
            rgba = img.convert("RGBA")
            background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
            return Image.alpha_composite(background, rgba).convert("RGB")
        return img.convert("RGB")


def resize_and_crop(img: Image.Image, size: int) -> Image.Image:
    """Scale so the short side is ``size``, then centre-crop to ``size`` x ``size``."""
    scale = size / min(img.width, img.height)
    width = max(size, round(img.width * scale))
    height = max(size, round(img.height * scale))
    if (width, height) != img.size:
        img = img.resize((width, height), Image.Resampling.LANCZOS)
    left = (width - size) // 2
    top = (height - size) // 2
    return img.crop((left, top, left + size, top + size))


def load_training_image(path: Path, size: int) -> torch.Tensor:
    """A ``(3, size, size)`` float tensor in [-1, 1]."""
    import torch

    img = resize_and_crop(load_rgb(path), size)
    array = np.asarray(img, dtype=np.float32) / 127.5 - 1.0
    return torch.from_numpy(array.transpose(2, 0, 1).copy())
