"""Preparing a dataset: every image resized into a separate, training-ready folder.

:func:`prepare_dataset` writes a *prepared* copy of a dataset; the originals are never
opened for writing. The kohya layout is kept: an image ``10_papercut style/cat.jpg`` with
its caption becomes ``OUT/10_papercut style/cat.png`` + ``cat.txt`` (the caption is the
dataset's caption text, written as UTF-8 whatever its original encoding, with the
dataset's caption extension).

Modes (:class:`PrepareMode`), for a target of ``W x H`` (``resolution`` square, or the
image's kohya bucket with ``buckets=True``):

* ``crop`` - scale to cover the target, cut the centre out: the trainer's own placement
  (:func:`lora_studio.core.buckets.place` with buckets, ``square_placement`` without),
  so a prepared image frames exactly what training on the original would, and training
  on the prepared folder at the same settings resizes nothing.
* ``pad`` - scale to fit inside the target, centred on a padding colour (letterbox).
* ``fill`` - stretch to the target (aspect ratio not kept).
* ``smart`` - scale to cover like ``crop``, but put the crop window where the image is
  most *salient* (see :func:`saliency_map`) instead of in the centre.

Smart crop. Saliency is a cheap, training-free measure computed with numpy on a copy no
bigger than 256 px: the sum of

* **edge energy** - gradient magnitude of the luminance (subjects have edges and detail;
  skies, walls and bokeh have few), and
* **colour distinctness** - each pixel's distance from the image's mean colour in an
  opponent colour space (luminance, red-green, yellow-blue), after Achanta et al.'s
  "frequency-tuned" saliency: a red coat on a grey street stands out, a blue sky that
  fills half the frame does not,

each term divided by its mean so neither dominates by units. The window with the largest
total is found with an integral image (every position in O(1)); windows within 1% of the
best count as ties and the one nearest the centre wins, so a uniform image is still
centre-cropped and an off-centre subject keeps some context around it.

Cache. Each output is recorded in ``OUT/.lora-studio-prepared.json`` with a key: the
SHA-256 of the source bytes together with every option that changes its pixels and
:data:`PREPARE_VERSION`. A second run re-uses an output whose key and file are unchanged.
Sources are hashed only when their size or modification time changed since the last run
(as git's index does), so a second run over an unchanged folder reads no image at all. An
output that was edited or deleted since is written again; outputs whose source went away
are removed. Writes are atomic, so a cancelled or crashed run leaves whole files only.

Speed. Work is spread over threads (Pillow releases the GIL while decoding, resizing and
encoding; ``benchmarks/bench_prepare.py`` compares threads with processes). JPEGs are
decoded with Pillow's ``draft()`` (libjpeg's DCT scaling by 1/2, 1/4 or 1/8) when the
image is downscaled at least twofold.
"""

from __future__ import annotations

import contextlib
import enum
import hashlib
import io
import json
import math
import os
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import (
    FIRST_COMPLETED,
    Executor,
    Future,
    ProcessPoolExecutor,
    ThreadPoolExecutor,
    wait,
)
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
from PIL import Image

from lora_studio.core.atomic import atomic_write_bytes, atomic_write_text, ensure_writable_dir
from lora_studio.core.buckets import Bucket, Placement, placement
from lora_studio.core.config import LoraConfig
from lora_studio.core.dataset import Dataset, ImageItem
from lora_studio.core.errors import DatasetError, OutputError
from lora_studio.core.imaging import (
    BLACK,
    UNUSABLE_SIDE,
    WHITE,
    Color,
    ImageHeader,
    header_of,
    resizable,
    to_rgb,
    undo_orientation,
)

#: Bump when the same source and options would give different output pixels, so every
#: cached output is made again.
PREPARE_VERSION = "1"
MANIFEST_NAME = ".lora-studio-prepared.json"
MANIFEST_FORMAT = 1
#: Images with a side under this are skipped, as the trainer skips them.
MIN_SIDE = UNUSABLE_SIDE
#: Largest side of the copy saliency is computed on.
SALIENCY_SIDE = 256
#: Windows scoring within this fraction of the best count as ties (nearest the centre wins).
SALIENCY_TIE = 0.01
#: Downscale factor from which JPEGs are decoded in draft mode.
DRAFT_FACTOR = 2
IMAGE_FORMATS = ("png", "jpg", "webp")
#: How often (seconds) the manifest is saved during a long run, so a crash loses little.
_SAVE_EVERY_S = 5.0

Size = tuple[int, int]
Box = tuple[int, int, int, int]
ExecutorKind = Literal["thread", "process"]


class PrepareMode(enum.StrEnum):
    """How an image is fitted to its target size."""

    CROP = "crop"
    PAD = "pad"
    FILL = "fill"
    SMART = "smart"

    @property
    def help(self) -> str:
        return _MODE_HELP[self]


_MODE_HELP = {
    PrepareMode.CROP: "scale to cover, cut out the centre (what the trainer does)",
    PrepareMode.PAD: "scale to fit, pad the rest with a colour (letterbox)",
    PrepareMode.FILL: "stretch to the target size (aspect ratio not kept)",
    PrepareMode.SMART: "scale to cover, cut out the most salient region",
}


@dataclass(frozen=True)
class PrepareOptions:
    """Everything that decides a prepared image's pixels (and so its cache key).

    Attributes:
        resolution: square side, or the bucket area's side with ``buckets``.
        mode: how an image is fitted (see :class:`PrepareMode`).
        buckets: each image to its kohya aspect-ratio bucket instead of a square.
        min_bucket_side: smallest bucket side (as ``LoraConfig.min_bucket_side``).
        max_bucket_side: largest bucket side.
        bucket_no_upscale: small images get a bucket of their own size (not enlarged).
        background: colour transparent pixels are flattened on.
        pad_color: colour of the borders in ``pad`` mode.
        image_format: ``png`` (lossless, default), ``jpg`` or ``webp``.
        quality: JPEG/WebP quality.
    """

    resolution: int
    mode: PrepareMode = PrepareMode.CROP
    buckets: bool = False
    min_bucket_side: int = 256
    max_bucket_side: int = 2048
    bucket_no_upscale: bool = False
    background: Color = WHITE
    pad_color: Color = BLACK
    image_format: str = "png"
    quality: int = 95

    def __post_init__(self) -> None:
        if not 8 <= int(self.resolution) <= 8192:
            raise DatasetError(f"Resolution {self.resolution} is out of range (8-8192 px).")
        object.__setattr__(self, "mode", PrepareMode(self.mode))
        fmt = self.image_format.lower().lstrip(".")
        fmt = "jpg" if fmt == "jpeg" else fmt
        if fmt not in IMAGE_FORMATS:
            raise DatasetError(f"Unknown image format {self.image_format!r}; use png, jpg or webp.")
        object.__setattr__(self, "image_format", fmt)
        object.__setattr__(self, "background", _color(self.background))
        object.__setattr__(self, "pad_color", _color(self.pad_color))

    @classmethod
    def from_config(cls, config: LoraConfig, **overrides: Any) -> PrepareOptions:
        """Options that place images as training with ``config`` does."""
        values: dict[str, Any] = {
            "resolution": config.resolution,
            "buckets": config.enable_bucket,
            "min_bucket_side": config.min_bucket_side,
            "max_bucket_side": config.max_bucket_side,
            "bucket_no_upscale": config.bucket_no_upscale,
        }
        values.update(overrides)
        return cls(**values)

    @property
    def suffix(self) -> str:
        return "." + self.image_format

    def cache_fields(self) -> dict[str, Any]:
        """The options that matter for the output's pixels (irrelevant ones left out, so
        changing, say, the padding colour does not redo a cropped dataset)."""
        fields: dict[str, Any] = {
            "resolution": self.resolution,
            "mode": self.mode.value,
            "buckets": self.buckets,
            "background": list(self.background),
            "format": self.image_format,
        }
        if self.buckets:
            fields.update(
                min_bucket_side=self.min_bucket_side,
                max_bucket_side=self.max_bucket_side,
                bucket_no_upscale=self.bucket_no_upscale,
            )
        if self.mode is PrepareMode.PAD:
            fields["pad_color"] = list(self.pad_color)
        if self.image_format != "png":
            fields["quality"] = self.quality
        return fields

    def key(self, content_sha256: str) -> str:
        """The cache key of a source with this content under these options."""
        payload = {"version": PREPARE_VERSION, "sha256": content_sha256, **self.cache_fields()}
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()

    def placement(self, width: int, height: int) -> Placement:
        """The bucket (or square) of a ``width x height`` image and the trainer's crop."""
        return placement(
            width,
            height,
            resolution=self.resolution,
            bucketed=self.buckets,
            min_side=self.min_bucket_side,
            max_side=self.max_bucket_side,
            no_upscale=self.bucket_no_upscale,
        )


# ---- geometry --------------------------------------------------------------------------


@dataclass(frozen=True)
class Geometry:
    """How one image becomes its output, in displayed (upright) pixels.

    The image is resized to ``scaled``; then ``crop`` (a box in the scaled image) is cut
    out, or, in ``pad`` mode, the scaled image is pasted at ``paste`` on a ``target``
    canvas.
    """

    original: Size
    target: Size
    scaled: Size
    crop: Box | None = None
    paste: tuple[int, int] | None = None
    bucket: Bucket | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "original": list(self.original),
            "target": list(self.target),
            "bucket": str(self.bucket) if self.bucket else None,
            "scaled": list(self.scaled),
            "crop": list(self.crop) if self.crop else None,
            "paste": list(self.paste) if self.paste else None,
        }


def plan_geometry(width: int, height: int, options: PrepareOptions) -> Geometry:
    """The geometry of a ``width x height`` (upright) image under ``options``.

    In ``smart`` mode the crop is the centre one; :func:`smart_crop_box` moves it once
    the pixels are known.
    """
    placement = options.placement(width, height)
    target = (placement.bucket.width, placement.bucket.height)
    bucket = placement.bucket if options.buckets else None
    tw, th = target
    if options.mode is PrepareMode.FILL:
        return Geometry((width, height), target, target, (0, 0, tw, th), bucket=bucket)
    if options.mode is PrepareMode.PAD:
        scale = min(tw / width, th / height)
        sw = min(tw, max(1, round(width * scale)))
        sh = min(th, max(1, round(height * scale)))
        return Geometry(
            (width, height), target, (sw, sh), paste=((tw - sw) // 2, (th - sh) // 2), bucket=bucket
        )
    left, top = placement.crop_left, placement.crop_top
    return Geometry(
        (width, height), target, placement.scaled, (left, top, left + tw, top + th), bucket=bucket
    )


# ---- smart crop ------------------------------------------------------------------------


def saliency_map(rgb: np.ndarray) -> np.ndarray:
    """Per-pixel saliency of an ``(h, w, 3)`` RGB array: edge energy plus colour
    distinctness, each normalised to mean 1 (see the module docstring)."""
    pixels = rgb.astype(np.float32) / 255.0
    r, g, b = pixels[..., 0], pixels[..., 1], pixels[..., 2]
    lum = 0.299 * r + 0.587 * g + 0.114 * b
    gx = np.zeros_like(lum)
    gy = np.zeros_like(lum)
    gx[:, 1:-1] = lum[:, 2:] - lum[:, :-2]
    gy[1:-1, :] = lum[2:, :] - lum[:-2, :]
    edges = np.sqrt(gx * gx + gy * gy)
    opponent = np.stack([lum, r - g, 0.5 * (r + g) - b], axis=-1)
    distinct = np.sqrt(((opponent - opponent.mean(axis=(0, 1))) ** 2).sum(axis=-1))
    total = np.zeros_like(lum)
    for term in (edges, distinct):
        mean = float(term.mean())
        if mean > 1e-6:
            total += term / mean
    return total


def best_window(saliency: np.ndarray, width: int, height: int) -> tuple[int, int]:
    """``(left, top)`` of the ``width x height`` window with the most saliency.

    Windows within :data:`SALIENCY_TIE` of the best are ties; the one nearest the centre
    is chosen (so a featureless image gives the centre window).
    """
    rows, cols = saliency.shape
    width, height = min(width, cols), min(height, rows)
    integral = np.zeros((rows + 1, cols + 1), dtype=np.float64)
    integral[1:, 1:] = saliency.cumsum(axis=0).cumsum(axis=1)
    sums = (
        integral[height:, width:]
        - integral[:-height, width:]
        - integral[height:, :-width]
        + integral[:-height, :-width]
    )
    best = float(sums.max())
    if best <= 0:
        return (cols - width) // 2, (rows - height) // 2
    tops, lefts = np.nonzero(sums >= best * (1.0 - SALIENCY_TIE))
    centre_left, centre_top = (cols - width) / 2, (rows - height) / 2
    distance = (lefts - centre_left) ** 2 + (tops - centre_top) ** 2
    pick = int(np.argmin(distance))
    return int(lefts[pick]), int(tops[pick])


def smart_crop_box(image: Image.Image, size: Size) -> Box:
    """The ``size`` box of ``image`` (RGB) that keeps its most salient region."""
    tw, th = size
    sw, sh = image.size
    if sw <= tw and sh <= th:
        return (0, 0, tw, th)
    factor = max(1.0, max(sw, sh) / SALIENCY_SIDE)
    small = image
    if factor > 1.0:
        small_size = (max(1, round(sw / factor)), max(1, round(sh / factor)))
        small = image.resize(small_size, Image.Resampling.BILINEAR, reducing_gap=2.0)
    fx, fy = small.width / sw, small.height / sh
    win_w = max(1, min(small.width, round(tw * fx)))
    win_h = max(1, min(small.height, round(th * fy)))
    left, top = best_window(saliency_map(np.asarray(small)), win_w, win_h)
    left = _snap(round(left / fx), (sw - tw) // 2, sw - tw, factor)
    top = _snap(round(top / fy), (sh - th) // 2, sh - th, factor)
    return (left, top, left + tw, top + th)


def _snap(offset: int, centre: int, limit: int, factor: float) -> int:
    """Clamp ``offset`` to ``[0, limit]``; within a low-res pixel of the centre it *is* the
    centre (then smart crop equals centre crop exactly)."""
    if abs(offset - centre) <= math.ceil(factor):
        return centre
    return min(max(0, offset), limit)


# ---- one image -------------------------------------------------------------------------


def render(
    img: Image.Image, header: ImageHeader, options: PrepareOptions
) -> tuple[Image.Image, Geometry]:
    """Resize, crop or pad an opened (not yet loaded) image into its prepared form.

    ``header`` is ``header_of(img)``, read before anything was decoded. JPEGs that shrink
    at least :data:`DRAFT_FACTOR`-fold decode at reduced size. The image is resized in its
    stored orientation and turned upright afterwards: cheaper, and the draft box stays
    valid.
    """
    geometry = plan_geometry(header.width, header.height, options)
    rotated = header.orientation in (5, 6, 7, 8)
    stored_scaled = geometry.scaled[::-1] if rotated else geometry.scaled
    box: tuple[float, float, float, float] | None = None
    sw, sh = header.stored_size
    if (
        img.format == "JPEG"
        and sw >= DRAFT_FACTOR * stored_scaled[0]
        and sh >= DRAFT_FACTOR * stored_scaled[1]
    ):
        drafted = img.draft(None, stored_scaled)
        if drafted is not None:
            box = drafted[1]
    img.load()
    if img.format == "PNG" and header.orientation == 1 and "exif" in img.info:
        # An eXIf chunk after the pixel data is only seen now (no draft was made for PNG).
        header = header_of(img)
        if header.orientation != 1:
            return render(img, header, options)
    work = resizable(img)
    if work.size != stored_scaled or box is not None:
        work = work.resize(stored_scaled, Image.Resampling.LANCZOS, box=box, reducing_gap=3.0)
    work = undo_orientation(to_rgb(work, options.background), header.orientation)
    if geometry.paste is not None:
        canvas = Image.new("RGB", geometry.target, options.pad_color)
        canvas.paste(work, geometry.paste)
        return canvas, geometry
    crop = geometry.crop
    assert crop is not None
    if options.mode is PrepareMode.SMART:
        crop = smart_crop_box(work, geometry.target)
        geometry = Geometry(
            geometry.original, geometry.target, geometry.scaled, crop, bucket=geometry.bucket
        )
    if crop != (0, 0, *work.size):
        work = work.crop(crop)
    return work, geometry


def encode(img: Image.Image, options: PrepareOptions) -> bytes:
    """The prepared image as file bytes (no EXIF: it is upright already)."""
    buffer = io.BytesIO()
    if options.image_format == "png":
        # Level 1: 1.7-2.7x faster to write than the default 6 (measured on 512 px photos
        # and the sample dataset), files 10-20% larger: a fair trade for a derived folder.
        img.save(buffer, format="PNG", compress_level=1)
    elif options.image_format == "jpg":
        img.save(buffer, format="JPEG", quality=options.quality, subsampling=0)
    else:
        img.save(buffer, format="WEBP", quality=options.quality, method=4)
    return buffer.getvalue()


# ---- results ---------------------------------------------------------------------------


class FileStatus(enum.StrEnum):
    PREPARED = "prepared"
    UNCHANGED = "unchanged"
    FAILED = "failed"
    PENDING = "pending"  # not reached before the run was cancelled


@dataclass(frozen=True)
class PreparedFile:
    """What happened to one source image.

    Attributes:
        source: the image's name relative to the dataset root.
        output: the prepared image's path relative to the output folder.
        status: prepared, unchanged (cached), failed, or pending (cancelled before it).
        geometry: how it was fitted (``None`` for unchanged, failed or pending files).
        error: why it failed, for the user.
    """

    source: str
    output: str
    status: FileStatus
    geometry: Geometry | None = None
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "output": self.output,
            "status": self.status.value,
            "geometry": self.geometry.to_dict() if self.geometry else None,
            "error": self.error,
        }


@dataclass(frozen=True)
class PrepareProgress:
    """A progress report of :func:`prepare_dataset` (sent after every image)."""

    done: int
    total: int
    prepared: int
    unchanged: int
    failed: int
    current: str = ""

    @property
    def fraction(self) -> float:
        return self.done / self.total if self.total else 1.0


@dataclass
class PrepareResult:
    """The outcome of :func:`prepare_dataset`."""

    out_dir: Path
    options: PrepareOptions
    files: list[PreparedFile] = field(default_factory=list)
    removed: int = 0
    captions_written: int = 0
    cancelled: bool = False
    elapsed_s: float = 0.0

    def _count(self, status: FileStatus) -> int:
        return sum(1 for f in self.files if f.status is status)

    @property
    def total(self) -> int:
        return len(self.files)

    @property
    def prepared(self) -> int:
        return self._count(FileStatus.PREPARED)

    @property
    def unchanged(self) -> int:
        return self._count(FileStatus.UNCHANGED)

    @property
    def failed(self) -> list[PreparedFile]:
        return [f for f in self.files if f.status is FileStatus.FAILED]

    @property
    def ok(self) -> bool:
        """Every image is prepared (now or before) and the run was not cancelled."""
        return not self.cancelled and not self.failed

    def summary(self) -> str:
        """``12 prepared, 3 unchanged, 1 failed``."""
        parts = [f"{self.prepared} prepared", f"{self.unchanged} unchanged"]
        if self.failed:
            parts.append(f"{len(self.failed)} failed")
        if self.removed:
            parts.append(f"{self.removed} removed")
        if self.cancelled:
            parts.append(f"cancelled with {self._count(FileStatus.PENDING)} left")
        return ", ".join(parts)

    def to_dict(self) -> dict[str, Any]:
        return {
            "out_dir": str(self.out_dir),
            "options": {**asdict(self.options), "mode": self.options.mode.value},
            "total": self.total,
            "prepared": self.prepared,
            "unchanged": self.unchanged,
            "failed": len(self.failed),
            "removed": self.removed,
            "captions_written": self.captions_written,
            "cancelled": self.cancelled,
            "elapsed_s": round(self.elapsed_s, 3),
            "summary": self.summary(),
            "files": [f.to_dict() for f in self.files],
        }


# ---- the worker ------------------------------------------------------------------------


@dataclass(frozen=True)
class _Task:
    """One image for a worker; plain data so it also crosses a process boundary."""

    source: str
    output: str | None  # absolute; ``None`` = only plan, write nothing
    options: PrepareOptions
    known_sha256: str | None = None  # from the manifest, when the source's stat matched
    cached_key: str | None = None  # the manifest's key for this output
    cached_output_ok: bool = False  # the output file is as the manifest recorded it


@dataclass(frozen=True)
class _Outcome:
    status: FileStatus
    geometry: Geometry | None = None
    sha256: str | None = None
    key: str | None = None
    error: str | None = None
    out_stat: tuple[int, int] | None = None  # (bytes, mtime_ns) of the written output


def _process(task: _Task) -> _Outcome:
    """Prepare (or plan) one image. Never raises for a bad image: it reports it."""
    try:
        return _process_unsafe(task)
    except FileNotFoundError:
        return _Outcome(FileStatus.FAILED, error="The image file is missing.")
    except Image.DecompressionBombError:
        return _Outcome(
            FileStatus.FAILED, error="The image is too large to decode safely (pixel limit)."
        )
    except MemoryError:
        return _Outcome(FileStatus.FAILED, error="Not enough memory to decode the image.")
    except Exception as exc:  # Pillow raises many types for broken files
        return _Outcome(FileStatus.FAILED, error=_reason(exc))


def _process_unsafe(task: _Task) -> _Outcome:
    options = task.options
    if task.output is None:  # plan only: header, plus pixels for smart crop
        with Image.open(task.source) as img:
            header = _checked_header(img)
            if options.mode is not PrepareMode.SMART:
                return _Outcome(
                    FileStatus.PENDING, plan_geometry(header.width, header.height, options)
                )
            _, geometry = render(img, header, options)
        return _Outcome(FileStatus.PENDING, geometry)
    data = Path(task.source).read_bytes()
    sha = task.known_sha256 or hashlib.sha256(data).hexdigest()
    key = options.key(sha)
    if key == task.cached_key and task.cached_output_ok:
        return _Outcome(FileStatus.UNCHANGED, sha256=sha, key=key)
    with Image.open(io.BytesIO(data)) as img:
        header = _checked_header(img)
        prepared, geometry = render(img, header, options)
    target = Path(task.output)
    target.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(target, encode(prepared, options))
    stat = target.stat()
    return _Outcome(
        FileStatus.PREPARED, geometry, sha, key, out_stat=(stat.st_size, stat.st_mtime_ns)
    )


def _checked_header(img: Image.Image) -> ImageHeader:
    header = header_of(img)
    if header.width < MIN_SIDE or header.height < MIN_SIDE:
        raise _TooSmall(f"The image is too small ({header.width}x{header.height}).")
    return header


class _TooSmall(ValueError):
    pass


def _reason(exc: BaseException) -> str:
    if isinstance(exc, _TooSmall):
        return str(exc)
    if type(exc).__name__ == "UnidentifiedImageError":
        return "Not a readable image (the file is corrupt or not an image)."
    text = str(exc).strip() or type(exc).__name__
    return f"The image cannot be decoded ({text})."


# ---- the manifest ----------------------------------------------------------------------


@dataclass
class _Entry:
    """One output in the manifest."""

    source: str
    source_size: int
    source_mtime_ns: int
    sha256: str
    key: str
    out_size: int
    out_mtime_ns: int
    caption: str | None = None  # the caption file written beside it, relative

    def source_matches(self, stat: os.stat_result) -> bool:
        return (stat.st_size, stat.st_mtime_ns) == (self.source_size, self.source_mtime_ns)


def _load_manifest(out_dir: Path) -> dict[str, _Entry] | None:
    """The outputs a previous run recorded; ``None`` when there is no manifest."""
    path = out_dir / MANIFEST_NAME
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return {}  # unreadable: everything is made again, nothing is removed
    entries: dict[str, _Entry] = {}
    if not isinstance(data, dict) or data.get("format") != MANIFEST_FORMAT:
        return entries
    for name, raw in (data.get("files") or {}).items():
        with contextlib.suppress(TypeError, ValueError):
            entries[str(name)] = _Entry(**raw)
    return entries


def _save_manifest(out_dir: Path, entries: dict[str, _Entry], options: PrepareOptions) -> None:
    data = {
        "format": MANIFEST_FORMAT,
        "prepare_version": PREPARE_VERSION,
        "options": options.cache_fields(),
        "files": {name: asdict(entry) for name, entry in sorted(entries.items())},
    }
    text = json.dumps(data, indent=1, ensure_ascii=False)
    path = out_dir / MANIFEST_NAME
    with contextlib.suppress(OSError):
        if path.read_text(encoding="utf-8") == text:
            return  # an unchanged folder stays untouched, manifest included
    atomic_write_text(path, text)


# ---- the whole dataset -----------------------------------------------------------------


def output_names(dataset: Dataset, suffix: str) -> list[str]:
    """Each image's output path relative to the output folder (posix), kohya layout kept.

    Two sources that would land on the same name (``cat.jpg`` and ``cat.png``) are told
    apart by their extension: the second becomes ``cat_png.png``.
    """
    used: set[str] = set()
    names: list[str] = []
    for item in dataset.images:
        rel = Path(dataset.relative_name(item))
        parent = rel.parent.as_posix()
        prefix = "" if parent == "." else parent + "/"
        candidate = f"{prefix}{rel.stem}{suffix}"
        n = 1
        while candidate.lower() in used:
            extra = rel.suffix.lstrip(".").lower() + ("" if n == 1 else f"_{n}")
            candidate = f"{prefix}{rel.stem}_{extra}{suffix}"
            n += 1
        used.add(candidate.lower())
        names.append(candidate)
    return names


def _as_dataset(dataset: Dataset | str | os.PathLike[str]) -> Dataset:
    return dataset if isinstance(dataset, Dataset) else Dataset.from_directory(dataset)


def _options(
    resolution: int | None,
    mode: PrepareMode | str,
    buckets: bool,
    config: LoraConfig | None,
    **extra: Any,
) -> PrepareOptions:
    if resolution is None:
        if config is None:
            raise DatasetError("Give a resolution (or a config to take it from).")
        resolution = config.resolution
    if config is not None:
        return PrepareOptions.from_config(
            config, resolution=resolution, mode=PrepareMode(mode), buckets=buckets, **extra
        )
    return PrepareOptions(resolution=resolution, mode=PrepareMode(mode), buckets=buckets, **extra)


def _check_out_dir(root: Path, out_dir: Path) -> None:
    src, out = root.resolve(), out_dir.resolve()
    if src == out or src in out.parents:
        raise OutputError(
            f"The prepared folder {out_dir} is inside the dataset {root}; choose a folder "
            f"outside it (the originals are never changed, and the prepared copies would "
            f"show up as part of the dataset)."
        )
    if out in src.parents:
        raise OutputError(
            f"The dataset {root} is inside the prepared folder {out_dir}; choose another folder."
        )


def _default_workers() -> int:
    return max(1, os.cpu_count() or 1)


def _make_executor(kind: ExecutorKind, workers: int) -> Executor:
    if kind == "process":
        return ProcessPoolExecutor(max_workers=workers)
    return ThreadPoolExecutor(max_workers=workers, thread_name_prefix="prepare")


def _run_tasks(
    tasks: Sequence[_Task],
    workers: int,
    executor_kind: ExecutorKind,
    should_stop: Callable[[], bool] | None,
) -> Iterator[tuple[int, _Outcome]]:
    """Yield ``(index, outcome)`` as tasks finish; at most ``2 x workers`` in flight, so a
    stop request is honoured within about one image per worker."""
    stop = should_stop or (lambda: False)
    if workers <= 1 or len(tasks) <= 1:
        for index, task in enumerate(tasks):
            if stop():
                return
            yield index, _process(task)
        return
    with _make_executor(executor_kind, workers) as pool:
        pending: dict[Future[_Outcome], int] = {}
        upcoming = iter(enumerate(tasks))
        stopped = False
        try:
            while True:
                while not stopped and len(pending) < 2 * workers:
                    if stop():
                        stopped = True
                        break
                    nxt = next(upcoming, None)
                    if nxt is None:
                        break
                    pending[pool.submit(_process, nxt[1])] = nxt[0]
                if not pending:
                    return
                done, _ = wait(pending, return_when=FIRST_COMPLETED)
                for future in done:
                    yield pending.pop(future), future.result()
        finally:
            for future in pending:
                future.cancel()


def prepare_dataset(
    dataset: Dataset | str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    *,
    resolution: int | None,
    mode: PrepareMode | str = PrepareMode.CROP,
    buckets: bool = False,
    config: LoraConfig | None = None,
    workers: int | None = None,
    progress: Callable[[PrepareProgress], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    background: Color | str = WHITE,
    pad_color: Color | str = BLACK,
    image_format: str = "png",
    quality: int = 95,
    executor: ExecutorKind = "thread",
) -> PrepareResult:
    """Write a prepared copy of ``dataset`` into ``out_dir`` (see the module docstring).

    Args:
        dataset: a :class:`Dataset` or a dataset folder.
        out_dir: the prepared folder; created if needed. It must be outside the dataset,
            and either empty or a folder this function prepared before.
        resolution: square side or bucket resolution (``None``: ``config.resolution``).
        mode: ``crop``, ``pad``, ``fill`` or ``smart``.
        buckets: fit each image to its kohya bucket instead of a square.
        config: bucket settings (min/max side, no upscaling) are taken from it.
        workers: parallel workers (default: one per CPU core; 1 runs in this thread).
        progress: called on this thread after every image.
        should_stop: polled before each image is started; when it returns true, the
            images in progress finish, nothing new starts, and the result says
            ``cancelled``. Everything written is whole and recorded, so the next run
            continues where this one stopped.
        background: colour transparency is flattened on (name, ``#rrggbb`` or RGB).
        pad_color: border colour in ``pad`` mode.
        image_format: ``png``, ``jpg`` or ``webp``.
        quality: JPEG/WebP quality.
        executor: ``thread`` (default) or ``process`` workers.

    Raises:
        DatasetError: the dataset cannot be opened or an option is invalid.
        OutputError: the output folder is inside the dataset, cannot be written, or holds
            files this function did not write.
    """
    started = time.perf_counter()
    data = _as_dataset(dataset)
    options = _options(
        resolution,
        mode,
        buckets,
        config,
        background=background,
        pad_color=pad_color,
        image_format=image_format,
        quality=quality,
    )
    out = Path(out_dir).expanduser()
    _check_out_dir(data.root, out)
    manifest = _load_manifest(out) if out.is_dir() else None
    if manifest is None and out.is_dir() and any(out.iterdir()):
        raise OutputError(
            f"The prepared folder {out} is not empty and was not made by `dataset prepare`; "
            f"choose an empty or new folder so nothing in it is overwritten."
        )
    ensure_writable_dir(out)
    previous: dict[str, _Entry] = dict(manifest or {})
    names = output_names(data, options.suffix)
    # The dataset's own sidecar extension (.txt unless it was opened with another).
    caption_extension = str(getattr(data, "caption_extension", None) or ".txt")

    files: list[PreparedFile | None] = [None] * len(names)
    entries: dict[str, _Entry] = {}
    tasks: list[_Task] = []
    task_items: list[int] = []
    source_stats: dict[int, os.stat_result] = {}
    counts = {FileStatus.PREPARED: 0, FileStatus.UNCHANGED: 0, FileStatus.FAILED: 0}
    result = PrepareResult(out, options)

    def report(index: int) -> None:
        if progress is None:
            return
        progress(
            PrepareProgress(
                done=sum(counts.values()),
                total=len(names),
                prepared=counts[FileStatus.PREPARED],
                unchanged=counts[FileStatus.UNCHANGED],
                failed=counts[FileStatus.FAILED],
                current=data.relative_name(data.images[index]),
            )
        )

    def finish(index: int, outcome: _Outcome) -> None:
        item, name = data.images[index], names[index]
        source = data.relative_name(item)
        if outcome.status is FileStatus.FAILED:
            files[index] = PreparedFile(source, name, FileStatus.FAILED, error=outcome.error)
        else:
            stat = source_stats[index]
            old = previous.get(name)
            if outcome.out_stat is not None:
                out_size, out_mtime = outcome.out_stat
            else:
                assert old is not None
                out_size, out_mtime = old.out_size, old.out_mtime_ns
            caption, written = _sync_caption(
                out, name, item, old.caption if old else None, caption_extension
            )
            result.captions_written += written
            assert outcome.sha256 is not None and outcome.key is not None
            entries[name] = _Entry(
                source=str(item.path),
                source_size=stat.st_size,
                source_mtime_ns=stat.st_mtime_ns,
                sha256=outcome.sha256,
                key=outcome.key,
                out_size=out_size,
                out_mtime_ns=out_mtime,
                caption=caption,
            )
            files[index] = PreparedFile(source, name, outcome.status, outcome.geometry)
        counts[outcome.status] += 1
        report(index)

    for index, (item, name) in enumerate(zip(data.images, names, strict=True)):
        try:
            stat = item.path.stat()
        except OSError as exc:
            reason = (
                "The image file is missing."
                if isinstance(exc, FileNotFoundError)
                else f"The image file cannot be read ({exc.strerror or exc})."
            )
            finish(index, _Outcome(FileStatus.FAILED, error=reason))
            continue
        source_stats[index] = stat
        old = previous.get(name)
        known_sha = old.sha256 if old and old.source_matches(stat) else None
        output_ok = bool(old and _output_matches(out / name, old))
        if (
            known_sha is not None
            and old is not None
            and output_ok
            and options.key(known_sha) == old.key
        ):
            finish(index, _Outcome(FileStatus.UNCHANGED, sha256=known_sha, key=old.key))
            continue
        tasks.append(
            _Task(
                source=str(item.path),
                output=str(out / name),
                options=options,
                known_sha256=known_sha,
                cached_key=old.key if old else None,
                cached_output_ok=output_ok,
            )
        )
        task_items.append(index)

    n_workers = max(1, min(workers or _default_workers(), len(tasks) or 1))
    last_save = time.monotonic()
    try:
        for task_index, outcome in _run_tasks(tasks, n_workers, executor, should_stop):
            finish(task_items[task_index], outcome)
            if time.monotonic() - last_save > _SAVE_EVERY_S:
                _save_manifest(out, {**previous, **entries}, options)
                last_save = time.monotonic()
    except BaseException:
        # Ctrl+C or a bug: record what was written, so nothing is made twice next time.
        with contextlib.suppress(Exception):
            _save_manifest(out, {**previous, **entries}, options)
        raise

    result.cancelled = any(f is None for f in files)
    if result.cancelled:
        # Outputs of images not reached stay recorded (they may still be current).
        kept = {**previous, **entries}
        for index, name in enumerate(names):
            if files[index] is None:
                files[index] = PreparedFile(
                    data.relative_name(data.images[index]), name, FileStatus.PENDING
                )
    else:
        kept = entries
        result.removed = _remove_stale(out, previous, entries)
    _save_manifest(out, kept, options)
    result.files = [f for f in files if f is not None]
    result.elapsed_s = time.perf_counter() - started
    return result


def _output_matches(path: Path, entry: _Entry) -> bool:
    try:
        stat = path.stat()
    except OSError:
        return False
    return (stat.st_size, stat.st_mtime_ns) == (entry.out_size, entry.out_mtime_ns)


def _sync_caption(
    out: Path, name: str, item: ImageItem, previous_caption: str | None, extension: str
) -> tuple[str | None, int]:
    """Write (only when it differs) or remove the caption beside output ``name``.

    Returns the caption's relative name (``None`` without one) and 1 when a file was
    written.
    """
    rel = Path(name).with_suffix(extension).as_posix()
    target = out / rel
    text = (item.caption or "").strip()
    if not text:
        if previous_caption is not None:
            with contextlib.suppress(FileNotFoundError):
                (out / previous_caption).unlink()
        return None, 0
    wanted = (text + "\n").encode("utf-8")
    try:
        if target.read_bytes() == wanted:
            return rel, 0
    except OSError:
        pass
    target.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(target, wanted)
    return rel, 1


def _remove_stale(out: Path, previous: dict[str, _Entry], current: dict[str, _Entry]) -> int:
    """Delete outputs (and their captions) a previous run wrote that no source makes now;
    returns how many images were removed."""
    in_use = set(current) | {e.caption for e in current.values() if e.caption}
    removed = 0
    for name, entry in previous.items():
        if name in current:
            continue
        for rel in (name, entry.caption):
            if rel and rel not in in_use:
                with contextlib.suppress(FileNotFoundError, IsADirectoryError):
                    (out / rel).unlink()
                    removed += rel == name
        _prune_empty_dirs(out, (out / name).parent)
    return removed


def _prune_empty_dirs(root: Path, folder: Path) -> None:
    while folder != root and root in folder.parents:
        try:
            folder.rmdir()
        except OSError:
            return
        folder = folder.parent


# ---- preview ---------------------------------------------------------------------------


@dataclass(frozen=True)
class PlannedImage:
    """One image of :func:`preview_assignments`: where it would go and how it is fitted.

    Attributes:
        source: the image's name relative to the dataset root.
        output: the output name it would get.
        geometry: target (bucket) size, scaled size, crop box or padding; ``None`` when
            the image cannot be used.
        problem: why the image cannot be used.
    """

    source: str
    output: str
    geometry: Geometry | None
    problem: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "output": self.output,
            "geometry": self.geometry.to_dict() if self.geometry else None,
            "problem": self.problem,
        }


def preview_assignments(
    dataset: Dataset | str | os.PathLike[str],
    *,
    resolution: int | None,
    mode: PrepareMode | str = PrepareMode.CROP,
    buckets: bool = True,
    config: LoraConfig | None = None,
    workers: int | None = None,
    should_stop: Callable[[], bool] | None = None,
    image_format: str = "png",
) -> list[PlannedImage]:
    """Each image's bucket (or square) and crop under these options; nothing is written.

    Only headers are read, except in ``smart`` mode, where the crop depends on the pixels
    (images are decoded, in parallel). Stops early, with what it has, when ``should_stop``
    returns true.
    """
    data = _as_dataset(dataset)
    options = _options(resolution, mode, buckets, config, image_format=image_format)
    names = output_names(data, options.suffix)
    tasks = [_Task(str(item.path), None, options) for item in data.images]
    n_workers = 1 if options.mode is not PrepareMode.SMART else (workers or _default_workers())
    planned: dict[int, PlannedImage] = {}
    for index, outcome in _run_tasks(tasks, n_workers, "thread", should_stop):
        planned[index] = PlannedImage(
            data.relative_name(data.images[index]), names[index], outcome.geometry, outcome.error
        )
    return [planned[i] for i in sorted(planned)]


def bucket_counts(plans: Iterable[PlannedImage]) -> list[tuple[str, int]]:
    """How many images each target size holds (``"640x384"``), the fullest first."""
    counts: dict[str, int] = {}
    for plan in plans:
        if plan.geometry is not None:
            label = "{}x{}".format(*plan.geometry.target)
            counts[label] = counts.get(label, 0) + 1
    return sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))


def _color(value: Color | str | Sequence[int]) -> Color:
    if isinstance(value, str) and "," in value:
        try:
            value = [int(v) for v in value.split(",")]
        except ValueError:
            raise DatasetError(f"A colour needs three numbers, not {value!r}.") from None
    if isinstance(value, str):
        from PIL import ImageColor

        try:
            rgb = ImageColor.getrgb(value)
        except ValueError:
            raise DatasetError(
                f"Unknown colour {value!r}; use a name (white), #rrggbb or r,g,b."
            ) from None
        return (int(rgb[0]), int(rgb[1]), int(rgb[2]))
    parts = tuple(int(v) for v in value)
    if len(parts) != 3 or not all(0 <= v <= 255 for v in parts):
        raise DatasetError(f"A colour needs three values from 0 to 255, not {value!r}.")
    return (parts[0], parts[1], parts[2])
