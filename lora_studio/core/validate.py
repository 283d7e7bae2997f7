"""Validate a dataset before training: one report entry per file, never stopping on a bad one.

:func:`validate_dataset` checks every image of a :class:`~lora_studio.core.dataset.Dataset`
(and every file indexing left out) and returns a :class:`ValidationReport` with one
:class:`FileReport` per file; each lists its :class:`Issue` values (path, severity, a stable
``code``, a message for the user). What is checked, by code:

=========================  ========  =================================================
code                       severity  meaning
=========================  ========  =================================================
``missing_file``           error     the image is gone (deleted since indexing)
``zero_byte``              error     the file is empty
``corrupt``                error     not an image, or its data cannot be decoded
``truncated``              error     the image data ends early (an interrupted copy)
``unsupported_format``     error     an image format LoRA Studio does not train on, or
                                     HEIC/AVIF without their Pillow plugin
``too_many_pixels``        error     over the decompression-bomb limit (``max_pixels``)
``unusable_size``          error     a side under 8 pixels: training skips it
``too_small``              warning   the short side is under the family's minimum
``extreme_aspect_ratio``   warning   longer than 4:1 either way: mostly cropped away
``duplicate``              warning   the same bytes as an earlier file
``near_duplicate``         warning   looks the same as an earlier image (dHash)
``missing_caption``        warning   no caption file / no caption in metadata.jsonl
``empty_caption``          warning   a caption that is empty
``caption_not_utf8``       warning   read with a fallback encoding; saving writes UTF-8
``caption_unreadable``     warning   the caption file cannot be read
``exif_rotated``           info      EXIF orientation: trained upright
``cmyk_converted``         info      CMYK: converted to RGB (through its ICC profile)
``high_bit_depth``         info      16/32-bit samples: scaled to 8 bits
``palette_converted``      info      palette image: converted to RGB
``alpha_flattened``        info      transparency: flattened onto white
``extension_mismatch``     info      e.g. a JPEG named ``.png``: read as what it is
``caption_conflict``       info      metadata.jsonl and a sidecar disagree; the first wins
=========================  ========  =================================================

plus what indexing noted (``metadata_bad_rows``, ``metadata_not_utf8``, ``folder_unreadable``,
...). The info entries say how an image is converted (see :func:`lora_studio.core.imaging.to_rgb`);
they are not problems.

Images are checked in parallel on a thread pool (Pillow and hashlib release the GIL while
they work). ``progress(done, total)`` is called from the calling thread after each file;
``should_stop()`` is polled as well, and a stopped run returns what it has, marked
``cancelled``.
"""

from __future__ import annotations

import enum
import functools
import hashlib
import io
import os
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from lora_studio.core.background import check_images, map_chunks
from lora_studio.core.config import ModelFamily
from lora_studio.core.dataset import Dataset, ImageItem
from lora_studio.core.formats import ACCEPTED_FORMATS, unsupported_reason
from lora_studio.core.imaging import (
    ROTATED_ORIENTATIONS,
    UNUSABLE_SIDE,
    WHITE,
    Color,
    hamming,
    has_alpha,
    orientation_of,
    to_rgb,
    undo_orientation,
)
from lora_studio.core.imaging import dhash as luma_dhash


class Severity(enum.StrEnum):
    """How bad an issue is: errors keep an image out of training."""

    ERROR = "error"
    WARNING = "warning"
    INFO = "info"

    @property
    def rank(self) -> int:
        return _RANK[self]


_RANK = {Severity.ERROR: 2, Severity.WARNING: 1, Severity.INFO: 0}

#: The short side under which an image is reported as too small, per family: SD 1.5 trains
#: at 512; the 1024-pixel families use buckets of about 1024x1024 *pixels*, so a 4:3 photo
#: with a 768 short side still fills one with little upscaling.
MIN_SIDE: dict[ModelFamily, int] = {
    ModelFamily.SD15: 512,
    ModelFamily.SDXL: 768,
    ModelFamily.SD3: 768,
    ModelFamily.FLUX: 768,
}
#: Used without a family: the smallest family minimum.
DEFAULT_MIN_SIDE = min(MIN_SIDE.values())
#: The trainer skips images with a side under this.
#: Longer side / shorter side above which an image is "extreme".
MAX_ASPECT_RATIO = 4.0
#: dHash bits (of 64) that may differ for two images to count as near-duplicates.
NEAR_DUPLICATE_DISTANCE = 6

#: Codes that depend only on the caption (a caption edit can fix them).
CAPTION_CODES = frozenset(
    {"missing_caption", "empty_caption", "caption_not_utf8", "caption_unreadable"}
)
#: Codes that make an image unusable for training.
UNREADABLE_CODES = frozenset(
    {
        "missing_file",
        "zero_byte",
        "corrupt",
        "truncated",
        "unsupported_format",
        "too_many_pixels",
        "unusable_size",
    }
)

ProgressCallback = Callable[[int, int], None]
StopCallback = Callable[[], bool]


@dataclass(frozen=True)
class Issue:
    """One finding about one file."""

    path: Path
    severity: Severity
    code: str
    message: str

    def to_dict(self) -> dict[str, str]:
        return {"severity": str(self.severity), "code": self.code, "message": self.message}


@dataclass
class FileReport:
    """Everything found about one file (no issues: the file is fine)."""

    path: Path
    issues: list[Issue] = field(default_factory=list)
    width: int | None = None  # as displayed (EXIF rotation applied)
    height: int | None = None
    format: str | None = None
    mode: str | None = None

    @property
    def severity(self) -> Severity | None:
        """The worst severity among the issues, ``None`` without any."""
        worst = self.worst
        return worst.severity if worst is not None else None

    @property
    def worst(self) -> Issue | None:
        """The most severe issue (the first of equals), ``None`` without any."""
        best: Issue | None = None
        for issue in self.issues:
            if best is None or issue.severity.rank > best.severity.rank:
                best = issue
        return best

    @property
    def is_problem(self) -> bool:
        """It has an error or a warning (info entries are not problems)."""
        return any(i.severity is not Severity.INFO for i in self.issues)

    @property
    def unreadable(self) -> bool:
        """Training cannot use this image."""
        return any(i.code in UNREADABLE_CODES for i in self.issues)

    def add(self, severity: Severity, code: str, message: str) -> None:
        self.issues.append(Issue(self.path, severity, code, message))

    def to_dict(self, root: Path | None = None) -> dict[str, Any]:
        worst = self.worst
        return {
            "path": _display(self.path, root),
            "severity": str(worst.severity) if worst else None,
            "code": worst.code if worst else None,
            "message": worst.message if worst else None,
            "width": self.width,
            "height": self.height,
            "format": self.format,
            "mode": self.mode,
            "issues": [issue.to_dict() for issue in self.issues],
        }


@dataclass
class ValidationReport:
    """The result of :func:`validate_dataset`: one :class:`FileReport` per file."""

    root: Path
    files: list[FileReport]
    min_side: int
    max_pixels: int | None
    family: ModelFamily | None = None
    checked_pixels: bool = True
    cancelled: bool = False

    def issues(self, severity: Severity | None = None) -> list[Issue]:
        """Every issue (of ``severity``, if given), in file order."""
        return [
            issue
            for report in self.files
            for issue in report.issues
            if severity is None or issue.severity is severity
        ]

    def counts(self) -> dict[Severity, int]:
        """Issues per severity."""
        counts = dict.fromkeys(Severity, 0)
        for issue in self.issues():
            counts[issue.severity] += 1
        return counts

    def files_with(self, severity: Severity) -> list[FileReport]:
        """Files whose worst issue is ``severity``."""
        return [report for report in self.files if report.severity is severity]

    def by_path(self) -> dict[Path, FileReport]:
        return {report.path: report for report in self.files}

    @property
    def has_errors(self) -> bool:
        return any(issue.severity is Severity.ERROR for issue in self.issues())

    @property
    def problem_files(self) -> int:
        """Files with an error or a warning."""
        return sum(1 for report in self.files if report.is_problem)

    def unreadable(self) -> dict[Path, str]:
        """Images training cannot use, and why (the first such issue's message)."""
        found: dict[Path, str] = {}
        for report in self.files:
            for issue in report.issues:
                if issue.code in UNREADABLE_CODES:
                    found[report.path] = issue.message
                    break
        return found

    def summary(self) -> str:
        """One line: ``12 files: 1 error, 3 warnings, 2 notes``."""
        counts = self.counts()
        parts = [
            _plural(counts[Severity.ERROR], "error"),
            _plural(counts[Severity.WARNING], "warning"),
            _plural(counts[Severity.INFO], "note"),
        ]
        text = f"{_plural(len(self.files), 'file')} checked: " + ", ".join(parts)
        if self.cancelled:
            text += " (stopped before the end)"
        return text

    def to_dict(self) -> dict[str, Any]:
        counts = self.counts()
        return {
            "root": str(self.root),
            "family": str(self.family) if self.family else None,
            "min_side": self.min_side,
            "max_pixels": self.max_pixels,
            "checked_pixels": self.checked_pixels,
            "cancelled": self.cancelled,
            "summary": {
                "files": len(self.files),
                "problem_files": self.problem_files,
                "errors": counts[Severity.ERROR],
                "warnings": counts[Severity.WARNING],
                "info": counts[Severity.INFO],
            },
            "files": [report.to_dict(self.root) for report in self.files],
        }


def min_side_for(family: ModelFamily | str | None) -> int:
    """The short side under which images are reported as too small for ``family``."""
    if family is None:
        return DEFAULT_MIN_SIDE
    return MIN_SIDE[ModelFamily(family)]


def caption_issues(item: ImageItem, caption: str | None = None) -> list[Issue]:
    """The caption's issues; ``caption`` (e.g. an edit not saved yet) replaces the item's."""
    text = item.caption if caption is None else caption
    issues: list[Issue] = []
    if text and text.strip() and not item.caption_error and item.caption_encoding == "utf-8":
        return issues  # the common case, asked for every image when a folder opens
    # The sidecar's name without making its Path (asked for 2,000 uncaptioned images of a
    # 10,000-image folder as it opens).
    source = (
        item.metadata.file.name
        if item.metadata is not None
        else item.path.stem + item.caption_extension
    )
    if item.caption_error and caption is None:
        issues.append(Issue(item.path, Severity.WARNING, "caption_unreadable", item.caption_error))
    elif text is None:
        where = f"no row in {source}" if item.metadata is not None else f"no caption file {source}"
        issues.append(
            Issue(
                item.path,
                Severity.WARNING,
                "missing_caption",
                f"No caption ({where}); the image trains with the trigger word only.",
            )
        )
    elif not text.strip():
        issues.append(
            Issue(
                item.path,
                Severity.WARNING,
                "empty_caption",
                "The caption is empty; the image trains with the trigger word only.",
            )
        )
    if caption is None and item.caption_encoding != "utf-8":
        issues.append(
            Issue(
                item.path,
                Severity.WARNING,
                "caption_not_utf8",
                f"{source} is not UTF-8; it was read as {item.caption_encoding}. Saving the "
                f"caption writes UTF-8 and keeps the original as {source}.orig.",
            )
        )
    return issues


def validate_dataset(
    dataset: Dataset,
    *,
    family: ModelFamily | str | None = None,
    min_side: int | None = None,
    max_pixels: int | None = None,
    check_pixels: bool = True,
    progress: ProgressCallback | None = None,
    should_stop: StopCallback | None = None,
    near_duplicate_distance: int = NEAR_DUPLICATE_DISTANCE,
    background: Color = WHITE,
    workers: int | None = None,
    in_process: bool = False,
) -> ValidationReport:
    """Check every file of ``dataset``; see the module docstring for what is checked.

    Args:
        dataset: the dataset (its images and the files indexing left out).
        family: the model family whose minimum side applies (:data:`MIN_SIDE`).
        min_side: the minimum short side, overriding the family's.
        max_pixels: images with more pixels are flagged and not decoded; defaults to
            Pillow's ``Image.MAX_IMAGE_PIXELS`` (a limit of ``None`` there: no limit).
        check_pixels: decode every image (finds truncated data, near-duplicates);
            ``False`` reads headers only.
        progress: ``progress(done, total)`` after each image (in the calling thread).
        should_stop: polled between images; when it returns ``True`` the run stops.
        near_duplicate_distance: dHash bits that may differ between near-duplicates.
        background: the colour transparency is flattened onto (for the hash).
        workers: threads decoding images (default: one per CPU core).
        in_process: decode in the low-priority helper process of
            :mod:`lora_studio.core.background` instead of on threads of this one (the
            window does this for big folders: no GIL shared with its GUI thread).
    """
    fam = ModelFamily(family) if family is not None else None
    side = int(min_side) if min_side is not None else min_side_for(fam)
    limit = max_pixels if max_pixels is not None else Image.MAX_IMAGE_PIXELS
    reports: dict[Path, FileReport] = {}
    for item in dataset.images:
        reports.setdefault(item.path, FileReport(item.path))
    order = list(reports)
    for note in dataset.notes:
        report = reports.get(note.path)
        if report is None:
            report = reports[note.path] = FileReport(note.path)
            order.append(note.path)
        report.add(Severity(note.severity), note.code, note.message)

    facts = _check_all(
        order_images=[item.path for item in dataset.images],
        limit=limit,
        min_side=side,
        check_pixels=check_pixels,
        background=background,
        progress=progress,
        should_stop=should_stop,
        workers=workers,
        in_process=in_process,
    )
    cancelled = len(facts) < len({item.path for item in dataset.images})
    for path, fact in facts.items():
        report = reports[path]
        report.issues[:0] = fact.issues  # image issues first, then indexing notes
        report.width, report.height = fact.width, fact.height
        report.format, report.mode = fact.format, fact.mode
    _mark_duplicates(dataset, facts, reports, near_duplicate_distance)
    for item in dataset.images:
        report = reports[item.path]
        if not report.unreadable:  # no caption advice for a file that cannot train
            report.issues.extend(caption_issues(item))
    for report in reports.values():
        report.issues = _deduplicated(report.issues)
    return ValidationReport(
        root=dataset.root,
        files=[reports[path] for path in order],
        min_side=side,
        max_pixels=limit,
        family=fam,
        checked_pixels=check_pixels,
        cancelled=cancelled,
    )


# ---- one image ---------------------------------------------------------------------------


@dataclass
class ImageFacts:
    """What :func:`check_image_file` found about one image (the hashes find duplicates)."""

    issues: list[Issue]
    width: int | None = None
    height: int | None = None
    format: str | None = None
    mode: str | None = None
    sha256: str | None = None
    dhash: int | None = None


def _check_all(
    *,
    order_images: list[Path],
    limit: int | None,
    min_side: int,
    check_pixels: bool,
    background: Color,
    progress: ProgressCallback | None,
    should_stop: StopCallback | None,
    workers: int | None,
    in_process: bool = False,
) -> dict[Path, ImageFacts]:
    paths = list(dict.fromkeys(order_images))
    total = len(paths)
    results: dict[Path, ImageFacts] = {}
    if not paths:
        return results
    if in_process:
        options = {
            "max_pixels": limit,
            "min_side": min_side,
            "check_pixels": check_pixels,
            "background": background,
        }

        def done(part: Sequence[Path], facts: list[ImageFacts]) -> None:
            results.update(zip(part, facts, strict=True))
            if progress is not None:
                progress(len(results), total)

        map_chunks(
            functools.partial(check_images, options=options),
            paths,
            should_stop=should_stop,
            done=done,
        )
        return results
    threads = max(1, min(workers or os.cpu_count() or 1, total, 32))
    stop = threading.Event()

    def job(path: Path) -> ImageFacts:
        if stop.is_set():
            return ImageFacts([])
        return check_image_file(
            path,
            max_pixels=limit,
            min_side=min_side,
            check_pixels=check_pixels,
            background=background,
        )

    with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="validate") as pool:
        # A bounded window of work in flight keeps memory flat and stopping prompt.
        pending: dict[Future[ImageFacts], Path] = {}
        queue = iter(paths)
        done_count = 0

        def refill() -> None:
            while len(pending) < threads * 4:
                path = next(queue, None)
                if path is None:
                    return
                pending[pool.submit(job, path)] = path

        refill()
        while pending:
            if should_stop is not None and should_stop():
                stop.set()
                for future in pending:
                    future.cancel()
                break
            finished, _ = wait(list(pending), timeout=0.1, return_when=FIRST_COMPLETED)
            for future in finished:
                path = pending.pop(future)
                results[path] = future.result()
                done_count += 1
                if progress is not None:
                    progress(done_count, total)
            refill()
    return results


def check_image_file(
    path: Path,
    *,
    max_pixels: int | None = None,
    min_side: int = DEFAULT_MIN_SIDE,
    check_pixels: bool = True,
    background: Color = WHITE,
) -> ImageFacts:
    """Every image check of one file (see the module docstring). Never raises for a bad
    file: whatever is wrong becomes an issue."""
    try:
        return _check_image_file(path, max_pixels, min_side, check_pixels, background)
    except MemoryError:
        return ImageFacts([Issue(path, Severity.ERROR, "too_many_pixels", _TOO_BIG_TO_DECODE)])
    except Exception as exc:  # a decoder bug on a hostile file must not stop the run
        return ImageFacts(
            [
                Issue(
                    path,
                    Severity.ERROR,
                    "corrupt",
                    f"The image cannot be read ({type(exc).__name__}: {exc}).",
                )
            ]
        )


_TOO_BIG_TO_DECODE = "The image is too large to decode in the memory available."


def _check_image_file(
    path: Path,
    limit: int | None,
    min_side: int,
    check_pixels: bool,
    background: Color,
) -> ImageFacts:
    facts = ImageFacts([])

    def add(severity: Severity, code: str, message: str) -> ImageFacts:
        facts.issues.append(Issue(path, severity, code, message))
        return facts

    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return add(Severity.ERROR, "missing_file", "The image file is missing.")
    except IsADirectoryError:
        return add(Severity.ERROR, "corrupt", "This is a folder, not an image file.")
    except OSError as exc:
        return add(Severity.ERROR, "corrupt", f"The file cannot be read ({exc.strerror or exc}).")
    if not data:
        return add(Severity.ERROR, "zero_byte", "The file is empty (0 bytes).")
    facts.sha256 = hashlib.sha256(data).hexdigest()
    try:
        image = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as exc:
        return add(Severity.ERROR, "too_many_pixels", _bomb_message(str(exc)))
    except UnidentifiedImageError as exc:
        reason = unsupported_reason(path.suffix) or _plugin_missing(str(exc))
        if reason:
            return add(Severity.ERROR, "unsupported_format", reason)
        return add(
            Severity.ERROR,
            "corrupt",
            "Not a readable image: the file is damaged, or not an image at all.",
        )
    except Exception as exc:  # Pillow raises many types for a broken header
        return add(Severity.ERROR, "corrupt", f"The image header is damaged ({exc}).")
    with image:
        fmt = image.format or ""
        facts.format, facts.mode = fmt or None, image.mode
        width, height = image.size
        orientation = orientation_of(image)
        if orientation in ROTATED_ORIENTATIONS:
            width, height = height, width
        facts.width, facts.height = width, height
        if fmt and fmt not in ACCEPTED_FORMATS:
            add(
                Severity.ERROR,
                "unsupported_format",
                f"This is a {fmt} image; LoRA Studio trains on PNG, JPEG, WebP, BMP and "
                f"TIFF. Convert it to PNG or JPEG.",
            )
            return facts
        if limit is not None and width * height > limit:
            return add(
                Severity.ERROR,
                "too_many_pixels",
                f"{width}\u00d7{height} is {_pixels_text(width * height)}, over the limit of "
                f"{_pixels_text(limit)} for decoding safely; downscale it (or raise the limit "
                f"if you trust the file).",
            )
        _check_extension(path, fmt, add)
        _note_conversions(image, background, add)
        if not check_pixels:
            _check_geometry(width, height, min_side, add)
            _note_rotation(orientation, add)
            return facts
        try:
            if fmt in ("JPEG", "MPO"):
                # DCT scaling still reads the whole stream, so truncation is still found.
                image.draft(image.mode, (128, 128))
            image.load()
        except Image.DecompressionBombError as exc:
            return add(Severity.ERROR, "too_many_pixels", _bomb_message(str(exc)))
        except MemoryError:
            return add(Severity.ERROR, "too_many_pixels", _TOO_BIG_TO_DECODE)
        except Exception as exc:  # OSError, SyntaxError, ValueError, struct.error, ...
            text = str(exc)
            if "truncated" in text.lower() or isinstance(exc, EOFError):
                return add(
                    Severity.ERROR,
                    "truncated",
                    "The image data ends early (an interrupted download or copy?).",
                )
            return add(Severity.ERROR, "corrupt", f"The image data cannot be decoded ({text}).")
        # A PNG's eXIf chunk may come after the pixels: only now is it known.
        late = orientation_of(image)
        if late != orientation and orientation == 1 and late in ROTATED_ORIENTATIONS:
            facts.width, facts.height = height, width
        _check_geometry(facts.width or width, facts.height or height, min_side, add)
        _note_rotation(late, add)
        facts.dhash = dhash(image, background=background, orientation=late)
    return facts


def _note_rotation(orientation: int, add: Callable[..., Any]) -> None:
    if orientation != 1:
        add(
            Severity.INFO,
            "exif_rotated",
            f"Rotated by its EXIF orientation ({orientation}); it trains upright, as it is "
            f"displayed.",
        )


def _check_extension(path: Path, fmt: str, add: Callable[..., Any]) -> None:
    expected = {
        ".png": {"PNG"},
        ".jpg": {"JPEG", "MPO"},
        ".jpeg": {"JPEG", "MPO"},
        ".webp": {"WEBP"},
        ".bmp": {"BMP", "DIB"},
        ".tif": {"TIFF"},
        ".tiff": {"TIFF"},
        ".heic": {"HEIF"},
        ".heif": {"HEIF"},
        ".avif": {"AVIF"},
    }.get(path.suffix.lower())
    if expected and fmt and fmt not in expected:
        add(
            Severity.INFO,
            "extension_mismatch",
            f"Named {path.suffix} but it is a {fmt} image; it is read as {fmt}.",
        )


def _check_geometry(width: int, height: int, min_side: int, add: Callable[..., Any]) -> None:
    short, long = min(width, height), max(width, height)
    if short < UNUSABLE_SIDE:
        add(
            Severity.ERROR,
            "unusable_size",
            f"{width}\u00d7{height} is too small to train on (training skips images with a "
            f"side under {UNUSABLE_SIDE} pixels).",
        )
        return
    if short < min_side:
        add(
            Severity.WARNING,
            "too_small",
            f"{width}\u00d7{height}: the short side is under {min_side} pixels, so it is "
            f"upscaled and trains blurry. Use a larger original if you have one.",
        )
    if long / short > MAX_ASPECT_RATIO:
        add(
            Severity.WARNING,
            "extreme_aspect_ratio",
            f"{width}\u00d7{height} is {long / short:.1f}:1; most of it is cropped away in "
            f"training. Crop it into parts or pad it.",
        )


def _note_conversions(image: Image.Image, background: Color, add: Callable[..., Any]) -> None:
    mode = image.mode
    if mode == "CMYK":
        how = "through its ICC profile" if image.info.get("icc_profile") else ""
        add(
            Severity.INFO,
            "cmyk_converted",
            f"A CMYK image: converted to RGB{' ' + how if how else ''} for training.",
        )
    if mode.startswith(("I", "F")) or _sixteen_bit_source(image):
        bits = 32 if mode in ("I", "F") else 16
        add(
            Severity.INFO,
            "high_bit_depth",
            f"{bits}-bit samples: scaled to 8 bits for training.",
        )
    if mode in ("P", "PA"):
        add(Severity.INFO, "palette_converted", "A palette image: converted to RGB for training.")
    if has_alpha(image):
        colour = "white" if tuple(background) == WHITE else f"rgb{tuple(background)}"
        add(
            Severity.INFO,
            "alpha_flattened",
            f"Has transparency: transparent areas train as {colour}.",
        )


def _sixteen_bit_source(image: Image.Image) -> bool:
    # Pillow reads 48/64-bit RGB(A) PNG and TIFF as 8-bit "RGB"/"RGBA" (keeping the high
    # byte, which is right); only the raw mode of the file tells it was 16-bit.
    for tile in getattr(image, "tile", None) or []:
        args = tile[3] if len(tile) > 3 else None
        raw = args if isinstance(args, str) else (args[0] if isinstance(args, tuple) else None)
        if isinstance(raw, str) and ";16" in raw:
            return True
    return False


def _bomb_message(text: str) -> str:
    return (
        f"Over the decompression-bomb limit: {text.rstrip('.')}. Downscale it, or raise the "
        f"limit if you trust the file."
    )


def _plugin_missing(text: str) -> str | None:
    # Pillow names a known format whose codec is missing ("AVIF support not installed").
    if "support not installed" in text:
        return f"{text[0].upper()}{text[1:]}; convert it to PNG or JPEG."
    return None


# ---- hashes and duplicates ---------------------------------------------------------------


def dhash(
    image: Image.Image,
    *,
    background: Color = WHITE,
    orientation: int | None = None,
    size: int = 8,
) -> int:
    """The difference hash of ``image``: ``size*size`` bits, each whether a pixel of the
    greyscale image shrunk to ``(size+1) x size`` is brighter than its right neighbour.

    The image is turned upright (its EXIF ``orientation`` unless given) and transparency
    flattened, so the hash is of what training sees. Re-encoding, resizing and small edits
    change few bits.
    """
    turn = orientation_of(image) if orientation is None else orientation
    return luma_dhash(undo_orientation(to_rgb(image, background), turn), size)


def near_duplicate_groups(hashes: list[int], max_distance: int) -> list[list[int]]:
    """Indices of ``hashes`` grouped by likeness: each group is a first image (its leader)
    and the later ones within ``max_distance`` bits of it; groups of one are left out.

    Leader clustering: every hash is compared with the leaders so far (vectorised), never
    with every other hash, so memory stays linear even when thousands of images are alike
    (frames of one video), and 10,000 hashes take well under a second.
    """
    leaders = np.zeros(len(hashes), dtype=np.uint64)
    leader_index: list[int] = []
    groups: dict[int, list[int]] = {}
    for index, value in enumerate(hashes):
        count = len(leader_index)
        if count:
            distances = np.bitwise_count(leaders[:count] ^ np.uint64(value))
            nearest = int(np.argmin(distances))
            if int(distances[nearest]) <= max_distance:
                groups[leader_index[nearest]].append(index)
                continue
        leaders[count] = value
        leader_index.append(index)
        groups[index] = [index]
    return [members for members in groups.values() if len(members) > 1]


def _mark_duplicates(
    dataset: Dataset,
    facts: dict[Path, ImageFacts],
    reports: dict[Path, FileReport],
    max_distance: int,
) -> None:
    paths = [item.path for item in dataset.images if item.path in facts]
    paths = list(dict.fromkeys(paths))
    first_of_content: dict[str, Path] = {}
    exact_copy: set[Path] = set()
    for path in paths:
        digest = facts[path].sha256
        if digest is None:
            continue
        original = first_of_content.setdefault(digest, path)
        if original != path:
            exact_copy.add(path)
            reports[path].add(
                Severity.WARNING,
                "duplicate",
                f"The same file as {_display(original, dataset.root)}: it would be trained "
                f"twice as often. Remove one copy.",
            )
    if max_distance < 0:
        return
    hashed = [p for p in paths if facts[p].dhash is not None and p not in exact_copy]
    hashes = [facts[p].dhash or 0 for p in hashed]
    for members in near_duplicate_groups(hashes, max_distance):
        # The one to keep: the most pixels (the earliest of equals); the others are flagged.
        keep = max(members, key=lambda i: (_pixels(facts[hashed[i]]), -i))
        for index in members:
            if index == keep:
                continue
            apart = hamming(hashes[index], hashes[keep])
            reports[hashed[index]].add(
                Severity.WARNING,
                "near_duplicate",
                f"Looks almost the same as {_display(hashed[keep], dataset.root)} "
                f"(perceptual hash {apart} of 64 bits apart); near-copies make the LoRA "
                f"overfit to them. Keep the better one.",
            )


def _pixels_text(count: int) -> str:
    return f"{count / 1e6:.1f} megapixels" if count >= 100_000 else f"{count:,} pixels"


def _pixels(fact: ImageFacts) -> int:
    return (fact.width or 0) * (fact.height or 0)


# ---- helpers -----------------------------------------------------------------------------


def _deduplicated(issues: list[Issue]) -> list[Issue]:
    seen: set[tuple[str, str]] = set()
    kept = []
    for issue in issues:
        key = (issue.code, issue.message)
        if key not in seen:
            seen.add(key)
            kept.append(issue)
    return kept


def _display(path: Path, root: Path | None) -> str:
    if root is not None:
        try:
            return path.relative_to(root).as_posix()
        except ValueError:
            pass
    return str(path)


def _plural(count: int, word: str) -> str:
    return f"{count} {word}{'' if count == 1 else 's'}"
