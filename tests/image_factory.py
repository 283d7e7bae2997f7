"""Real image files for the dataset, validation and conversion tests.

Every format and mode the validator knows about, made with Pillow (and by hand where Pillow
cannot write the file, e.g. a 48-bit PNG), plus broken ones. Pictures are smooth (scaled-up
noise), like photos, so perceptual hashes behave as they do on real images.
"""

from __future__ import annotations

import io
import os
import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

#: EXIF orientation 6: stored landscape, displayed rotated 90 degrees clockwise.
ROTATE_90 = 6


def picture(width: int, height: int, seed: int = 0, cells: int = 6) -> Image.Image:
    """A smooth RGB picture (``cells`` x ``cells`` random colours, bicubic scaled up)."""
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, (cells, cells, 3), dtype=np.uint8)
    return Image.fromarray(base).resize((width, height), Image.Resampling.BICUBIC)


def tile_folder(folder: Path, count: int, side: int = 48, captions: bool = False) -> Path:
    """``folder`` with ``count`` copies of one small PNG (``0000.png``, ...), each with a
    caption file when ``captions``: a big folder that is quick to make."""
    folder.mkdir(parents=True, exist_ok=True)
    tile = picture(side, side, 3)
    for n in range(count):
        tile.save(folder / f"{n:04}.png")
        if captions:
            (folder / f"{n:04}.txt").write_text(f"tile {n}, blue", "utf-8")
    return folder


def encoded(image: Image.Image, fmt: str, **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def png16_rgb(path: Path, value: tuple[int, int, int], size: tuple[int, int] = (32, 32)) -> Path:
    """A 48-bit RGB PNG of one colour (Pillow cannot write these; written by hand)."""
    width, height = size
    row = b"\x00" + struct.pack(">HHH", *value) * width
    raw = row * height

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data))
            + kind
            + data
            + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
        )

    header = struct.pack(">IIBBBBB", width, height, 16, 2, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(raw))
        + chunk(b"IEND", b"")
    )
    return path


def transparent_rgba(size: tuple[int, int] = (64, 64)) -> Image.Image:
    """Left half opaque red, right half fully transparent *black* (what a naive
    conversion shows)."""
    image = Image.new("RGBA", size, (0, 0, 0, 0))
    image.paste((255, 0, 0, 255), (0, 0, size[0] // 2, size[1]))
    return image


def gray16(size: tuple[int, int] = (64, 64), value: int = 32896) -> Image.Image:
    """16-bit greyscale (``I;16``) of one value (32896 = 128 * 257: mid grey)."""
    return Image.fromarray(np.full((size[1], size[0]), value, dtype=np.uint16))


def palette_with_transparency(size: tuple[int, int] = (64, 64)) -> Image.Image:
    """A ``P`` image whose index 0 (black) is transparent, left half green."""
    image = Image.new("P", size, 0)
    image.putpalette([0, 0, 0, 0, 200, 0] + [0, 0, 0] * 254)
    image.paste(1, (0, 0, size[0] // 2, size[1]))
    image.info["transparency"] = 0
    return image


def rotated_jpeg(path: Path, size: tuple[int, int] = (640, 480), seed: int = 7) -> Path:
    """A JPEG stored ``size`` with EXIF orientation 6 (displayed ``size`` swapped)."""
    image = picture(*size, seed=seed)
    exif = Image.Exif()
    exif[0x0112] = ROTATE_90
    image.save(path, format="JPEG", quality=90, exif=exif.tobytes())
    return path


def write_every_kind(folder: Path, side: int = 640) -> dict[str, Path]:
    """One good image of every format and mode the validator reports on; returns
    ``{kind: path}``. Every picture is different (no near-duplicates among them)."""
    folder.mkdir(parents=True, exist_ok=True)
    made: dict[str, Path] = {}

    def save(kind: str, name: str, image: Image.Image, fmt: str, **options: object) -> None:
        path = folder / name
        image.save(path, format=fmt, **options)
        made[kind] = path

    save("png", "plain.png", picture(side, side, 1), "PNG")
    save("jpeg", "photo.jpg", picture(side, side, 2), "JPEG", quality=90)
    save("webp", "web.webp", picture(side, side, 3), "WEBP", quality=90)
    save("bmp", "bitmap.bmp", picture(side, side, 4), "BMP")
    save("tiff", "scan.tif", picture(side, side, 5), "TIFF")
    rgba = picture(side, side, 6).convert("RGBA")
    rgba.putalpha(Image.linear_gradient("L").resize((side, side)))
    save("rgba", "cutout.png", rgba, "PNG")
    la = picture(side, side, 8).convert("LA")
    save("la", "grey alpha.png", la, "PNG")
    palette = picture(side, side, 9).convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    palette.info["transparency"] = 0
    save("palette", "palette.png", palette, "PNG", transparency=0)
    save("cmyk", "print.jpg", picture(side, side, 10).convert("CMYK"), "JPEG", quality=90)
    grey = np.asarray(picture(side, side, 11).convert("L"), dtype=np.uint16) * 257
    save("gray16", "sixteen.png", Image.fromarray(grey.astype(np.uint16)), "PNG")
    made["rotated"] = rotated_jpeg(folder / "phone.jpg", (side + 160, side), seed=12)
    return made


def write_broken(folder: Path, good: Path) -> dict[str, Path]:
    """Broken files with image extensions: truncated, empty, random bytes."""
    folder.mkdir(parents=True, exist_ok=True)
    data = good.read_bytes()
    made = {
        "truncated": folder / "cut off.jpg",
        "zero": folder / "empty.png",
        "random": folder / "noise.webp",
    }
    made["truncated"].write_bytes(data[: len(data) // 2])
    made["zero"].write_bytes(b"")
    made["random"].write_bytes(os.urandom(2048))
    return made
