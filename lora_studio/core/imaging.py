"""Reading images the way training sees them: sizes from headers, pixels as 8-bit sRGB.

Two jobs, shared by preprocessing and statistics (and usable by anything else in core):

* :func:`read_header` - width and height *as displayed* (EXIF rotation applied), format
  and mode, without decoding pixel data. For PNG that takes care: Pillow's
  ``PngImageFile.getexif()`` decodes the whole image when the EXIF chunk has not been seen
  yet, so the orientation of a PNG is only read when its header already carried it.
* :func:`to_rgb` - any decoded image to plain ``RGB``: alpha (and palette/tRNS
  transparency) flattened on a background colour (white unless told otherwise, never the
  black Pillow's ``convert("RGB")`` gives), 16-bit and 32-bit greyscale scaled down rather
  than clipped, CMYK and other colour spaces converted through their ICC profile when they
  carry one.
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

EXIF_ORIENTATION = 0x0112
#: Orientations that swap width and height (90 or 270 degrees, with or without a flip).
ROTATED_ORIENTATIONS = frozenset({5, 6, 7, 8})
#: The transpose that undoes each EXIF orientation (the table ``ImageOps.exif_transpose``
#: uses); 1 or unknown values need none.
_ORIENTATION_TRANSPOSE: dict[int, Image.Transpose] = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}

#: Images with a side under this many pixels cannot be trained on (or checked) at all.
UNUSABLE_SIDE = 8

Color = tuple[int, int, int]
WHITE: Color = (255, 255, 255)
BLACK: Color = (0, 0, 0)


@dataclass(frozen=True)
class ImageHeader:
    """What an image's header says.

    Attributes:
        width: width as displayed (after EXIF rotation).
        height: height as displayed.
        format: Pillow's format name (``PNG``, ``JPEG``, ...).
        mode: Pillow's mode of the stored pixels (``RGB``, ``RGBA``, ``CMYK``, ``I;16``...).
        orientation: the EXIF orientation (1 when there is none).
    """

    width: int
    height: int
    format: str
    mode: str
    orientation: int = 1

    @property
    def size(self) -> tuple[int, int]:
        return self.width, self.height

    @property
    def stored_size(self) -> tuple[int, int]:
        """Width and height of the pixels as stored in the file (before rotation)."""
        if self.orientation in ROTATED_ORIENTATIONS:
            return self.height, self.width
        return self.width, self.height


def orientation_of(img: Image.Image) -> int:
    """The EXIF orientation of an opened image, without decoding pixel data."""
    if img.format == "PNG" and "exif" not in img.info:
        return 1  # asking Pillow would decode the whole PNG to look for a late eXIf chunk
    try:
        value = img.getexif().get(EXIF_ORIENTATION, 1)
    except Exception:  # a broken EXIF block is no reason to reject the image
        return 1
    return value if isinstance(value, int) and 1 <= value <= 8 else 1


def header_of(img: Image.Image) -> ImageHeader:
    """The :class:`ImageHeader` of an image opened with ``Image.open``."""
    width, height = img.size
    orientation = orientation_of(img)
    if orientation in ROTATED_ORIENTATIONS:
        width, height = height, width
    return ImageHeader(width, height, img.format or "", img.mode, orientation)


def read_header(path: str | os.PathLike[str]) -> ImageHeader:
    """Read ``path``'s header (no pixel data is decoded).

    Raises:
        FileNotFoundError: the file is missing.
        PIL.UnidentifiedImageError, OSError, ValueError, ...: not a readable image; Pillow
            raises many types for broken headers, so callers catch ``Exception``.
    """
    with Image.open(Path(path)) as img:
        return header_of(img)


def read_size(path: Path) -> tuple[int, int] | str:
    """Width and height as displayed (EXIF rotation applied), from the header alone; or,
    as a string for the user, why the image cannot be used."""
    try:
        width, height = read_header(path).size
    except FileNotFoundError:
        return "The image file is missing."
    except UnidentifiedImageError:
        return "Not a readable image."
    except Exception as exc:  # PIL raises many types for a broken header
        return f"Not a readable image ({exc})."
    if width < UNUSABLE_SIDE or height < UNUSABLE_SIDE:
        return f"Too small to train on ({width}\u00d7{height})."
    return width, height


def undo_orientation(img: Image.Image, orientation: int) -> Image.Image:
    """``img`` turned upright for EXIF ``orientation`` (a cheap, exact transpose)."""
    method = _ORIENTATION_TRANSPOSE.get(orientation)
    return img.transpose(method) if method is not None else img


def has_alpha(img: Image.Image) -> bool:
    """Whether ``img`` has transparency: an alpha band or a ``transparency`` entry."""
    return img.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in img.info


def resizable(img: Image.Image) -> Image.Image:
    """``img`` in a mode Pillow resizes with any filter, converting only what must be.

    Palette images become ``RGB``/``RGBA`` (Pillow resizes palettes nearest-neighbour only),
    16/32-bit and float greyscale become 8-bit ``L``, bilevel becomes ``L``. ``RGBA`` and
    ``LA`` stay: Pillow resizes them premultiplied, so flattening after resizing is exact.
    CMYK and friends stay too and are converted by :func:`to_rgb` on the (smaller) result.
    """
    if img.mode.startswith(("I", "F")):
        return _wide_to_l(img)
    if img.mode == "1":
        return img.convert("L")
    if img.mode in ("P", "PA"):
        return img.convert("RGBA" if has_alpha(img) else "RGB")
    if img.mode in ("L", "RGB") and "transparency" in img.info:
        return img.convert("RGBA" if img.mode == "RGB" else "LA")
    if img.mode in ("RGBa", "La"):
        return img.convert("RGBA" if img.mode == "RGBa" else "LA")
    return img


def to_rgb(img: Image.Image, background: Color = WHITE) -> Image.Image:
    """``img`` as 8-bit ``RGB`` (see the module docstring for what is converted how).

    Orientation is left alone; the caller decides when to turn the image upright.
    """
    img = resizable(img)
    if has_alpha(img):
        rgba = img.convert("RGBA")
        base = Image.new("RGBA", rgba.size, (*background, 255))
        return Image.alpha_composite(base, rgba).convert("RGB")
    if img.mode != "L" and img.info.get("icc_profile"):
        converted = _icc_to_srgb(img)
        if converted is not None:
            return converted
    return img if img.mode == "RGB" else img.convert("RGB")


def open_upright_rgb(
    data: bytes | str | os.PathLike[str], background: Color = WHITE
) -> Image.Image:
    """Decode a whole image from bytes or a path: upright, ``RGB``, alpha flattened."""
    source = io.BytesIO(data) if isinstance(data, bytes) else Path(data)
    with Image.open(source) as img:
        img.load()
        rgb = to_rgb(img, background)
        orientation = img.getexif().get(EXIF_ORIENTATION, 1)
    return undo_orientation(rgb, orientation if isinstance(orientation, int) else 1)


def _wide_to_l(img: Image.Image) -> Image.Image:
    """16-bit / 32-bit integer or float greyscale to 8-bit ``L``, scaled (not clipped).

    ``I;16`` spans 0-65535. ``I`` usually holds 16-bit data too (older Pillow opened
    16-bit PNGs that way) and is scaled the same when it goes above 255. ``F`` in [0, 1]
    is taken as normalised, anything else as 0-255.
    """
    if img.mode.startswith("I;16"):
        array = np.asarray(img.convert("I"), dtype=np.float64)
        scaled = array / 257.0
    elif img.mode.startswith("I"):
        array = np.asarray(img, dtype=np.float64)
        scaled = array / 257.0 if array.size and array.max() > 255 else array
    else:  # F
        array = np.nan_to_num(np.asarray(img, dtype=np.float64))
        scaled = array * 255.0 if array.size and array.max() <= 1.0 else array
    return Image.fromarray(np.clip(np.rint(scaled), 0, 255).astype(np.uint8), "L")


def _icc_to_srgb(img: Image.Image) -> Image.Image | None:
    """Convert through the embedded ICC profile to sRGB.

    ``None`` (the caller falls back to Pillow's plain conversion) when the profile already
    is sRGB, cannot be read, or does not fit the image's mode.
    """
    try:
        from PIL import ImageCms
    except ImportError:  # Pillow built without littlecms
        return None
    try:
        source = ImageCms.ImageCmsProfile(io.BytesIO(img.info["icc_profile"]))
        if img.mode == "RGB" and "srgb" in ImageCms.getProfileDescription(source).lower():
            return None
        target = ImageCms.createProfile("sRGB")
        converted = ImageCms.profileToProfile(img, source, target, outputMode="RGB")
    except (ImageCms.PyCMSError, OSError, ValueError, TypeError):
        return None
    return converted if isinstance(converted, Image.Image) else None


def dhash(image: Image.Image | np.ndarray, size: int = 8) -> int:
    """Difference hash: ``size * size`` bits, each "is this pixel brighter than its right
    neighbour" on a ``(size + 1) x size`` thumbnail of the image's luma.

    An exact box filter, not ``reducing_gap``'s integer pre-reduction, which shifts cell
    borders enough to flip bits between a PNG and a JPEG of one picture decoded at 1/8
    scale. Re-encoding, resizing and small edits change few bits (see :func:`hamming`).
    """
    picture = image if isinstance(image, Image.Image) else Image.fromarray(np.asarray(image))
    small = picture.convert("L").resize((size + 1, size), Image.Resampling.BOX)
    pixels = np.asarray(small, dtype=np.int16)
    bits = (pixels[:, 1:] > pixels[:, :-1]).ravel()
    return int.from_bytes(np.packbits(bits).tobytes(), "big")


def hamming(a: int, b: int) -> int:
    """Bits that differ between two hashes."""
    return (a ^ b).bit_count()
