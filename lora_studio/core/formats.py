"""Which image files LoRA Studio reads.

Formats: PNG, JPEG, WebP, BMP and TIFF always; HEIC/HEIF and AVIF when a Pillow plugin
for them is registered (Pillow's own AVIF support when built with libavif; HEIC with the
optional ``pillow-heif`` package, registered here when it is installed). Nothing depends
on the optional plugins: without them those files are listed as unsupported, with the
package that would read them.

How pixels are converted to 8-bit RGB (alpha, 16-bit, CMYK) is
:mod:`lora_studio.core.imaging`'s job.
"""

from __future__ import annotations

import functools
import logging

from PIL import Image

log = logging.getLogger(__name__)

#: Read everywhere: PNG, JPEG, WebP, BMP, TIFF.
BASE_IMAGE_EXTENSIONS: frozenset[str] = frozenset(
    {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff"}
)
#: Read when a Pillow plugin for them is registered; the value says what provides it.
OPTIONAL_IMAGE_EXTENSIONS: dict[str, str] = {
    ".heic": "the pillow-heif package (pip install pillow-heif)",
    ".heif": "the pillow-heif package (pip install pillow-heif)",
    ".avif": "Pillow built with AVIF support (or pip install pillow-avif-plugin)",
}
#: Files that are images, but not ones LoRA Studio trains on: listed as unsupported
#: (with a hint) instead of being silently ignored.
OTHER_IMAGE_EXTENSIONS: dict[str, str] = {
    ".gif": "GIF",
    ".jxl": "JPEG XL",
    ".psd": "Photoshop",
    ".svg": "SVG",
    ".tga": "TGA",
    ".ico": "icon",
    ".jp2": "JPEG 2000",
    ".dng": "camera raw",
    ".cr2": "camera raw",
    ".cr3": "camera raw",
    ".nef": "camera raw",
    ".arw": "camera raw",
    ".orf": "camera raw",
    ".raf": "camera raw",
    ".rw2": "camera raw",
}
#: Pillow format names accepted as the content of an image file (MPO: the JPEG variant
#: many cameras write).
ACCEPTED_FORMATS: frozenset[str] = frozenset(
    {"PNG", "JPEG", "MPO", "WEBP", "BMP", "DIB", "TIFF", "HEIF", "AVIF"}
)


@functools.cache
def _register_optional_plugins() -> None:
    # pillow-heif only reads HEIC once its opener is registered; do that for the user
    # who installed it. Any failure just leaves HEIC unsupported.
    try:
        import pillow_heif  # type: ignore[import-not-found]  # noqa: PLC0415
    except ImportError:
        return
    try:
        pillow_heif.register_heif_opener()
    except Exception:  # a broken install must not stop the app; say so in the log
        log.warning("pillow-heif is installed but could not be registered", exc_info=True)


def image_extensions() -> frozenset[str]:
    """Extensions (lower case, with the dot) of the image files a dataset is made of:
    :data:`BASE_IMAGE_EXTENSIONS` plus those optional ones a registered plugin reads."""
    _register_optional_plugins()
    registered = Image.registered_extensions()
    optional = {ext for ext in OPTIONAL_IMAGE_EXTENSIONS if ext in registered}
    return BASE_IMAGE_EXTENSIONS | optional


def unsupported_reason(extension: str) -> str | None:
    """Why a file with ``extension`` is not read (``None``: it is read, or is no image)."""
    ext = extension.lower()
    if ext in image_extensions():
        return None
    if ext in OPTIONAL_IMAGE_EXTENSIONS:
        return (
            f"{ext[1:].upper()} images need {OPTIONAL_IMAGE_EXTENSIONS[ext]}, which is not "
            f"installed; or convert the file to PNG or JPEG."
        )
    kind = OTHER_IMAGE_EXTENSIONS.get(ext)
    if kind is not None:
        return f"{kind} files are not used for training; convert it to PNG or JPEG."
    return None
