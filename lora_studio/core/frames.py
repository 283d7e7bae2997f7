"""Training images from video files and edit timelines.

    extract_frames(source, out_dir, options, progress=..., should_stop=...)
     ├── a video file (anything FFmpeg decodes, read through PyAV)
     └── an edit timeline (``.otio``; EDL, FCP XML, AAF ... where their OpenTimelineIO
         adapters are installed): every clip on every enabled video track, only inside the
         clip's *used range*, from the clip's media file

**Sampling** (:class:`FrameSampling`): every N seconds (the decoded frame nearest each
target time; far targets are reached by seeking to the keyframe before them, so sparse
sampling of a long video decodes little), every N decoded frames (the whole range is
decoded), or one frame per scene.

**Scene detector**: every frame of the range is scaled (by FFmpeg) to a 64x36 RGB thumbnail;
the change between consecutive thumbnails is the larger of (a) the colour-histogram distance
(16 bins per channel, total-variation distance averaged over R, G, B; 0 same colours, 1 no
colour in common) and (b) the mean absolute difference of their luma (0-1). A cut is a change
above ``scene_threshold`` at least ``min_scene_seconds`` after the previous cut, which keeps
flashes and strobes from making a burst of scenes. Gradual fades are not cuts. Each scene gives
the frame at its middle, away from the cut and any transition.

**Quality filters**, applied to each picked frame before it is converted to a full-size image:
  - *blur*: variance of the Laplacian of the luma, measured with the frame scaled to at most
    512 px on its long side (so one threshold fits SD and 4K sources alike). Below
    ``blur_threshold`` the frame is dropped. Flat frames (black, solid colour, heavy blur)
    score near 0, and carry nothing to learn from either.
  - *near-duplicates*: a 64-bit difference hash (dHash) of the luma; a frame within
    ``dedupe_distance`` bits (Hamming distance) of any frame already kept in this run is
    dropped. Static shots, repeated shots and overlapping timeline clips collapse to one frame.

**Output**: ``<video stem>_<HH-MM-SS-mmm>.png`` (time in the file) or, for timeline clips,
``<clip name>_<HH-MM-SS-FF>.png`` (the source timecode at the timeline's rate), made safe for
every file system. Files are written atomically and never replace anything: a name taken by
any file with the same stem (an image *or* a stale caption) gets ``_2``, ``_3``, ... No caption
file is written; the app treats an image without one as uncaptioned.

Frames are turned upright by the video's display matrix (phone videos) and stretched to square
pixels when the stream's sample aspect ratio is not 1:1 (anamorphic DV, some broadcast files).

Decoding, filtering and the callbacks run on the caller's thread: the GUI calls
:func:`extract_frames` from a worker thread and receives :class:`FrameProgress` values through
``progress``; ``should_stop`` is polled for every decoded frame. Encoding and writing the
images overlaps with decoding on a few threads of its own, all done before the call returns.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import enum
import io
import itertools
import math
import os
import re
import time
import unicodedata
import urllib.parse
import urllib.request
from collections.abc import Callable, Generator, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import av
import numpy as np
import opentimelineio as otio
from av.video.reformatter import VideoReformatter
from PIL import Image

from lora_studio.core.atomic import atomic_write_bytes, ensure_writable_dir
from lora_studio.core.errors import ConfigError, DatasetError, OutputError
from lora_studio.core.imaging import dhash

#: Timeline formats we route to OpenTimelineIO, with the adapter package that reads each
#: (``opentimelineio-plugins`` installs them all). Suffixes of installed adapters are added.
_TIMELINE_ADAPTERS: dict[str, str] = {
    ".otio": "opentimelineio",
    ".otioz": "opentimelineio",
    ".otiod": "opentimelineio",
    ".edl": "otio-cmx3600-adapter",
    ".xml": "otio-fcp-adapter",
    ".fcpxml": "otio-fcpx-xml-adapter",
    ".aaf": "otio-aaf-adapter",
    ".ale": "otio-ale-adapter",
    ".kdenlive": "otio-kdenlive-adapter",
}

_ANALYSIS_LONG_SIDE = 512  # px; blur and hash are measured at this size
_THUMB_SIZE = (64, 36)  # scene detector thumbnail (w, h)
_HIST_BINS = 16
# Seek instead of decoding on when the next wanted frame is this far ahead: about one
# keyframe interval of common encoder settings, so a seek rarely lands behind us.
_SEEK_AHEAD_S = 4.0
_PROGRESS_INTERVAL_S = 0.1
_MAX_TIMELINE_SECONDS = 366 * 86_400  # anything later is a damaged file, not an edit
_MAX_BAD_PACKETS = 50  # consecutive undecodable packets before a file counts as broken
_SCENE_PASS_SHARE = 0.9  # of a source's progress bar: scene finding vs. writing frames
_WINDOWS_RESERVED = frozenset(
    {"CON", "PRN", "AUX", "NUL"}
    | {f"COM{n}" for n in range(1, 10)}
    | {f"LPT{n}" for n in range(1, 10)}
)
_TIMECODE = re.compile(r"^(\d+):(\d{1,2}):(\d{1,2})[:;.](\d+)$")
_UNSAFE_CHARS = re.compile(r'[<>:"/\\|?*\x00-\x1f\x7f]')


# ---- options ----------------------------------------------------------------------------


class FrameSampling(enum.StrEnum):
    """Which frames of a video are candidates."""

    SECONDS = "seconds"
    FRAMES = "frames"
    SCENES = "scenes"


class FrameImageFormat(enum.StrEnum):
    """File format of the written frames."""

    PNG = "png"
    JPG = "jpg"


def _meta(
    help_text: str,
    *,
    label: str,
    minimum: float | None = None,
    maximum: float | None = None,
    unit: str = "",
) -> dict[str, Any]:
    return {"help": help_text, "label": label, "min": minimum, "max": maximum, "unit": unit}


@dataclass(frozen=True)
class FrameOptions:
    """How frames are picked, filtered and written. Help texts drive the CLI and the GUI."""

    sampling: FrameSampling = field(
        default=FrameSampling.SECONDS,
        metadata=_meta(
            "Pick a frame every N seconds, every N frames, or one per scene.", label="Sampling"
        ),
    )
    every_seconds: float = field(
        default=1.0,
        metadata=_meta(
            "Seconds between picked frames (the frame nearest each time is taken).",
            label="Every N seconds",
            minimum=0.001,
            maximum=86_400,
            unit="s",
        ),
    )
    every_frames: int = field(
        default=30,
        metadata=_meta(
            "Decoded frames between picked frames.",
            label="Every N frames",
            minimum=1,
            maximum=1_000_000,
        ),
    )
    # Low rather than high: a missed cut loses a whole shot, while an extra one costs a
    # frame that the near-duplicate filter often drops anyway.
    scene_threshold: float = field(
        default=0.2,
        metadata=_meta(
            "How much the picture must change between two frames to count as a cut "
            "(0-1; lower finds more scenes).",
            label="Scene threshold",
            minimum=0.01,
            maximum=1.0,
        ),
    )
    min_scene_seconds: float = field(
        default=0.5,
        metadata=_meta(
            "Shortest scene: a cut this soon after the previous one is ignored.",
            label="Shortest scene",
            minimum=0.0,
            maximum=3600,
            unit="s",
        ),
    )
    max_frames: int | None = field(
        default=None,
        metadata=_meta(
            "Stop after writing this many frames (for the whole video or timeline).",
            label="At most",
            minimum=1,
            maximum=1_000_000,
        ),
    )
    blur_threshold: float = field(
        default=100.0,
        metadata=_meta(
            "Drop frames whose sharpness (variance of the Laplacian at 512 px) is below "
            "this; 0 keeps blurry frames.",
            label="Blur threshold",
            minimum=0.0,
            maximum=1_000_000,
        ),
    )
    dedupe_distance: int = field(
        default=6,
        metadata=_meta(
            "Drop frames whose perceptual hash is within this many bits (of 64) of a kept "
            "frame; 0 drops only identical-looking frames, -1 keeps near-duplicates.",
            label="Near-duplicate distance",
            minimum=-1,
            maximum=64,
        ),
    )
    image_format: FrameImageFormat = field(
        default=FrameImageFormat.PNG,
        metadata=_meta(
            "PNG (lossless) or JPEG (quality 95, no chroma subsampling).", label="Format"
        ),
    )
    jpeg_quality: int = field(
        default=95,
        metadata=_meta("JPEG quality.", label="JPEG quality", minimum=1, maximum=100),
    )

    def __post_init__(self) -> None:
        # The GUI and the CLI hand over plain strings; store the enums.
        try:
            object.__setattr__(self, "sampling", FrameSampling(self.sampling))
            object.__setattr__(self, "image_format", FrameImageFormat(self.image_format))
        except ValueError as exc:
            raise ConfigError(f"{exc}.") from None

    def problems(self) -> list[str]:
        """Every reason these options cannot be used, as user-facing sentences."""
        issues: list[str] = []
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if value is None or isinstance(value, (bool, str, enum.Enum)):
                continue
            label = f.metadata["label"]
            if isinstance(value, float) and not math.isfinite(value):
                issues.append(f"{label} must be a finite number.")
                continue
            lo, hi = f.metadata["min"], f.metadata["max"]
            if lo is not None and value < lo:
                issues.append(f"{label} must be at least {lo:g} (got {value:g}).")
            if hi is not None and value > hi:
                issues.append(f"{label} must be at most {hi:g} (got {value:g}).")
        return issues

    def validate(self) -> FrameOptions:
        """Return ``self``, or raise :class:`ConfigError` naming every problem."""
        issues = self.problems()
        if issues:
            raise ConfigError(" ".join(issues))
        return self


# ---- results and progress ---------------------------------------------------------------


@dataclass(frozen=True)
class ExtractedFrame:
    """One written frame and where it came from."""

    path: Path
    #: the media file the frame was decoded from
    source: Path
    #: seconds from the first frame of that file
    time: float
    #: Laplacian variance at 512 px (higher is sharper)
    sharpness: float
    #: the timeline clip's name; ``None`` for a plain video
    clip: str | None = None
    #: the frame's source timecode (``HH:MM:SS:FF``) for timeline clips
    timecode: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": str(self.path),
            "source": str(self.source),
            "time": round(self.time, 3),
            "sharpness": round(self.sharpness, 1),
            "clip": self.clip,
            "timecode": self.timecode,
        }


@dataclass(frozen=True)
class FrameProblem:
    """Why one clip (or the video) gave fewer frames than asked for."""

    #: the clip's name, or the video's file name
    source: str
    message: str
    media: Path | None = None

    def __str__(self) -> str:
        return f"{self.source}: {self.message}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "message": self.message,
            "media": str(self.media) if self.media else None,
        }


@dataclass
class FrameExtractionResult:
    """What a run wrote, what it dropped and why, and what went wrong per clip."""

    source: Path
    out_dir: Path
    frames: list[ExtractedFrame] = field(default_factory=list)
    skipped_blurry: int = 0
    skipped_duplicates: int = 0
    problems: list[FrameProblem] = field(default_factory=list)
    #: videos or timeline clips read (with or without success)
    sources: int = 0
    cancelled: bool = False
    #: ``max_frames`` was reached before the end
    limit_reached: bool = False

    def summary(self) -> str:
        """One line for a status bar or a terminal."""
        text = f"{len(self.frames)} frame{'s' if len(self.frames) != 1 else ''} written"
        dropped = []
        if self.skipped_blurry:
            dropped.append(f"{self.skipped_blurry} blurry")
        if self.skipped_duplicates:
            dropped.append(f"{self.skipped_duplicates} near-duplicate")
        if dropped:
            text += f", {' and '.join(dropped)} skipped"
        if self.problems:
            n = len(self.problems)
            text += f", {n} problem{'s' if n != 1 else ''}"
        if self.cancelled:
            text += " (cancelled)"
        elif self.limit_reached:
            text += " (frame limit reached)"
        return text

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": str(self.source),
            "out_dir": str(self.out_dir),
            "frames": [f.to_dict() for f in self.frames],
            "skipped_blurry": self.skipped_blurry,
            "skipped_duplicates": self.skipped_duplicates,
            "problems": [p.to_dict() for p in self.problems],
            "sources": self.sources,
            "cancelled": self.cancelled,
            "limit_reached": self.limit_reached,
        }


@dataclass(frozen=True)
class FrameProgress:
    """Where a run is; sent to the ``progress`` callback."""

    #: the video's file name or the clip's name
    source: str
    #: 1-based number of that source, of ``source_count``
    source_index: int
    source_count: int
    #: how far through the current source, 0-1; ``None`` when its length is unknown
    fraction: float | None
    frames_written: int
    skipped_blurry: int
    skipped_duplicates: int
    #: "finding scenes", "extracting frames", "done"
    message: str

    @property
    def overall(self) -> float | None:
        """Fraction of the whole run, 0-1 (``None`` while the current length is unknown)."""
        if self.fraction is None:
            return None
        return min(1.0, (self.source_index - 1 + self.fraction) / max(1, self.source_count))


ProgressCallback = Callable[[FrameProgress], None]
StopCallback = Callable[[], bool]


# ---- image measures ---------------------------------------------------------------------


def laplacian_variance(gray: np.ndarray) -> float:
    """Variance of the 4-neighbour Laplacian of a 2-D luma array (0-255): a sharpness score.

    Same kernel as OpenCV's ``cv2.Laplacian(gray, ksize=1)``; a frame too small to have an
    interior scores 0.
    """
    g = np.asarray(gray, dtype=np.float32)
    if g.ndim != 2 or g.shape[0] < 3 or g.shape[1] < 3:
        return 0.0
    lap = g[:-2, 1:-1] + g[2:, 1:-1] + g[1:-1, :-2] + g[1:-1, 2:] - 4.0 * g[1:-1, 1:-1]
    return float(lap.var())


class _HashIndex:
    """The hashes of kept frames; "is anything within d bits?" in one vectorised pass."""

    def __init__(self) -> None:
        self._hashes = np.zeros(64, dtype=np.uint64)
        self._count = 0

    def near(self, value: int, distance: int) -> bool:
        if distance < 0 or not self._count:
            return False
        xor = self._hashes[: self._count] ^ np.uint64(value)
        if hasattr(np, "bitwise_count"):  # numpy >= 2
            bits = np.bitwise_count(xor)
        else:
            bits = np.unpackbits(xor.view(np.uint8)).reshape(-1, 64).sum(axis=1)
        return bool(bits.min() <= distance)

    def add(self, value: int) -> None:
        if self._count == len(self._hashes):
            self._hashes = np.concatenate([self._hashes, np.zeros_like(self._hashes)])
        self._hashes[self._count] = value
        self._count += 1


def scene_change(previous: np.ndarray, current: np.ndarray) -> float:
    """How different two RGB thumbnails (H x W x 3, uint8) look, 0-1 (see the module doc)."""
    pixels = previous.shape[0] * previous.shape[1]
    distance = 0.0
    for channel in range(3):
        a = np.bincount(previous[..., channel].ravel() // (256 // _HIST_BINS), minlength=_HIST_BINS)
        b = np.bincount(current[..., channel].ravel() // (256 // _HIST_BINS), minlength=_HIST_BINS)
        distance += 0.5 * float(np.abs(a - b).sum()) / pixels
    weights = np.array([0.299, 0.587, 0.114], dtype=np.float32)
    luma_a = previous.astype(np.float32) @ weights
    luma_b = current.astype(np.float32) @ weights
    luma = float(np.abs(luma_a - luma_b).mean()) / 255.0
    return max(distance / 3.0, luma)


# ---- names ------------------------------------------------------------------------------


def safe_stem(text: str, fallback: str = "frame", max_length: int = 80) -> str:
    """``text`` as a file-name stem that every common file system accepts.

    Keeps Unicode letters and spaces; replaces path separators, ``<>:"|?*`` and control
    characters with ``_``; trims dots and spaces from the ends (Windows drops them) and
    avoids Windows device names (``CON``, ``NUL`` ...).
    """
    cleaned = _UNSAFE_CHARS.sub("_", unicodedata.normalize("NFC", text))
    cleaned = re.sub(r"\s+", " ", cleaned).strip(" .")[:max_length].strip(" .")
    if not cleaned:
        return fallback
    if cleaned.split(".")[0].upper() in _WINDOWS_RESERVED:
        cleaned = "_" + cleaned
    return cleaned


def clock_label(seconds: float) -> str:
    """``HH-MM-SS-mmm`` for a time in seconds (file-name safe)."""
    ms = max(0, round(seconds * 1000)) if math.isfinite(seconds) else 0
    hours, ms = divmod(ms, 3_600_000)
    minutes, ms = divmod(ms, 60_000)
    secs, ms = divmod(ms, 1000)
    return f"{hours:02d}-{minutes:02d}-{secs:02d}-{ms:03d}"


def timecode(seconds: float, rate: float) -> str:
    """SMPTE timecode (``HH:MM:SS:FF``; ``;`` before frames when drop-frame) of a time.

    Rates SMPTE has no timecode for (10, 12, 15 fps ...) fall back to ``HH:MM:SS.mmm``.
    """
    try:
        frames = otio.opentime.RationalTime(round(seconds * rate), rate)
        return str(otio.opentime.to_timecode(frames, rate))
    except (ValueError, TypeError):
        return clock_label(seconds).replace("-", ":", 2).replace("-", ".")


class _Names:
    """Unique, never-overwriting file names in the output folder.

    A stem is taken when *any* file in the folder has it (case-insensitively, as on macOS
    and Windows), so a new frame never picks up a stale caption left by an older image.
    """

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._taken = {p.stem.casefold() for p in folder.iterdir()}

    def claim(self, stem: str, suffix: str) -> Path:
        for n in itertools.count(1):
            candidate = stem if n == 1 else f"{stem}_{n}"
            path = self.folder / f"{candidate}{suffix}"
            if candidate.casefold() in self._taken or path.exists():
                continue
            self._taken.add(candidate.casefold())
            return path
        raise AssertionError("unreachable")


# ---- reading video ----------------------------------------------------------------------


class _MediaError(Exception):
    """Decoding stopped part-way; the message is for the user."""


def _ffmpeg_reason(exc: BaseException) -> str:
    if isinstance(exc, av.FFmpegError) and exc.strerror:
        return str(exc.strerror)
    return str(exc) or type(exc).__name__


class _VideoReader:
    """One open video file: decoded frames with their time from the first frame."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            self.container: Any = av.open(str(path), mode="r")
        except (av.FFmpegError, OSError, ValueError, UnicodeError) as exc:
            if isinstance(exc, FileNotFoundError):
                raise DatasetError(f"The file {path} does not exist.") from None
            raise DatasetError(
                f"{path.name} is not a video LoRA Studio can read ({_ffmpeg_reason(exc)})."
            ) from None
        if not self.container.streams.video:
            self.container.close()
            raise DatasetError(f"{path.name} has no video stream.")
        self.stream: Any = self.container.streams.video[0]
        self.stream.thread_type = "AUTO"
        tb = self.stream.time_base
        self.origin = float(self.stream.start_time * tb) if self.stream.start_time and tb else 0.0
        rate = self.stream.average_rate or self.stream.guessed_rate
        self.rate: float | None = float(rate) if rate else None
        self.half_period = 0.5 / self.rate if self.rate else 0.001
        if self.stream.duration and tb:
            self.duration: float | None = float(self.stream.duration * tb)
        elif self.container.duration:
            self.duration = self.container.duration / av.time_base
        else:
            self.duration = None
        sar = self.stream.sample_aspect_ratio
        self.sample_aspect = float(sar) if sar and sar > 0 else 1.0
        self.decoded = 0  # frames decoded so far, all passes
        # One scaler per purpose: FFmpeg's scaling context is costly to set up (about ten
        # times the scaling itself), and a reformatter keeps it while its settings hold.
        self._to_thumb = VideoReformatter()
        self._to_gray = VideoReformatter()
        self._to_rgb = VideoReformatter()

    def close(self) -> None:
        self.container.close()

    def __enter__(self) -> _VideoReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def start_timecode(self) -> float | None:
        """The file's embedded start timecode (camera / NLE exports), in seconds."""
        text = self.stream.metadata.get("timecode") or self.container.metadata.get("timecode")
        if not text or not self.rate:
            return None
        try:
            return float(otio.opentime.from_timecode(str(text), self.rate).to_seconds())
        except (ValueError, TypeError):
            pass
        # Rates SMPTE does not define (10, 12, 15 fps): count the frames plainly.
        match = _TIMECODE.match(str(text).strip())
        if not match:
            return None
        hours, minutes, seconds, frames = (int(g) for g in match.groups())
        return hours * 3600 + minutes * 60 + seconds + frames / self.rate

    def thumbnail(self, frame: Any) -> np.ndarray:
        """The scene detector's small RGB picture of ``frame``."""
        w, h = _THUMB_SIZE
        return self._to_thumb.reformat(
            frame, width=w, height=h, format="rgb24", interpolation="AREA"
        ).to_ndarray()

    def analysis_gray(self, frame: Any) -> np.ndarray:
        """The frame's luma, scaled to at most 512 px on its long side."""
        w, h = frame.width, frame.height
        scale = min(1.0, _ANALYSIS_LONG_SIDE / max(w, h, 1))
        small = self._to_gray.reformat(
            frame,
            width=max(1, round(w * scale)),
            height=max(1, round(h * scale)),
            format="gray",
            interpolation="AREA",
        )
        return small.to_ndarray()

    def image(self, frame: Any) -> Image.Image:
        """The full frame as it is meant to be seen: square pixels, upright."""
        image = Image.fromarray(self._to_rgb.reformat(frame, format="rgb24").to_ndarray())
        if abs(self.sample_aspect - 1.0) > 0.01:
            width = max(1, round(image.width * self.sample_aspect))
            image = image.resize((width, image.height), Image.Resampling.LANCZOS)
        rotation = round((getattr(frame, "rotation", 0) or 0) / 90) * 90 % 360
        # The display matrix rotates counter-clockwise by `rotation` degrees, as PIL does.
        if rotation == 90:
            image = image.transpose(Image.Transpose.ROTATE_90)
        elif rotation == 180:
            image = image.transpose(Image.Transpose.ROTATE_180)
        elif rotation == 270:
            image = image.transpose(Image.Transpose.ROTATE_270)
        return image

    def frames_from(self, start: float) -> Generator[tuple[float, Any], None, None]:
        """Decoded frames in display order from the keyframe at or before ``start``.

        Raises:
            _MediaError: the file is damaged beyond the packets that could be skipped.
        """
        if start > self.half_period:
            # Not seekable (a pipe, some raw streams): decode on from where we are; a fresh
            # reader starts at the beginning, so no wanted frame is passed over.
            with contextlib.suppress(av.FFmpegError, OSError, ValueError):
                self.container.seek(
                    round((start + self.origin) / self.stream.time_base),
                    stream=self.stream,
                    backward=True,
                )
        last: float | None = None
        bad = 0
        packets = self.container.demux(self.stream)
        while True:
            try:
                packet = next(packets)
            except StopIteration:
                return
            except (av.FFmpegError, OSError, ValueError, UnicodeError) as exc:
                raise _MediaError(_ffmpeg_reason(exc)) from exc
            try:
                frames = packet.decode()
                bad = 0
            except (av.FFmpegError, ValueError) as exc:
                bad += 1
                if bad > _MAX_BAD_PACKETS:
                    raise _MediaError(_ffmpeg_reason(exc)) from exc
                continue
            for frame in frames:
                if frame.time is not None:
                    t = float(frame.time) - self.origin
                elif last is not None:
                    t = last + 2 * self.half_period
                else:
                    t = 0.0
                last = t
                self.decoded += 1
                yield t, frame


# ---- timelines --------------------------------------------------------------------------


@dataclass(frozen=True)
class TimelineClip:
    """A clip on a timeline's video track, as far as the timeline itself tells."""

    name: str
    track: str
    #: the local media file; ``None`` when the clip has none we can read (see ``problem``)
    media: Path | None
    #: the used range, in the media's time as the timeline counts it (seconds); ``None``
    #: start means the whole media file
    source_start: float | None
    source_duration: float | None
    #: the frame rate timecodes are counted in
    rate: float
    #: the timeline's time of the media's first frame, when it records one
    media_start: float | None
    #: why frames cannot be taken from this clip (no media, not a local file, missing file)
    problem: str | None = None


def is_timeline_file(path: str | Path) -> bool:
    """Whether ``path`` is read as an edit timeline (by its extension)."""
    suffix = Path(path).suffix.lower()
    if suffix in _TIMELINE_ADAPTERS:
        return True
    try:
        installed = otio.adapters.suffixes_with_defined_adapters(read=True)
    except Exception:  # a broken adapter plugin must not stop video extraction
        return False
    return suffix.lstrip(".") in {s.lower() for s in installed}


def read_timeline_clips(path: str | Path) -> list[TimelineClip]:
    """Every enabled clip on every enabled video track, in track order.

    Gaps, transitions and generated clips (colour bars, solids) are left out.

    Raises:
        DatasetError: the file is missing, no adapter reads its format, or it is not a
            timeline.
    """
    timeline_path = Path(path)
    if not timeline_path.exists():
        raise DatasetError(f"The timeline {timeline_path} does not exist.")
    suffix = timeline_path.suffix.lower()
    try:
        obj = otio.adapters.read_from_file(str(timeline_path))
    except otio.exceptions.NoKnownAdapterForExtensionError:
        package = _TIMELINE_ADAPTERS.get(suffix, "opentimelineio-plugins")
        raise DatasetError(
            f"No OpenTimelineIO adapter for {suffix or 'extension-less'} files is installed; "
            f"install {package} (or opentimelineio-plugins for all formats) to read "
            f"{timeline_path.name}."
        ) from None
    except Exception as exc:  # adapters raise anything on damaged input; report, don't crash
        reason = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        raise DatasetError(
            f"{timeline_path.name} is not a timeline OpenTimelineIO can read ({reason})."
        ) from exc
    tracks = _video_tracks(obj)
    if tracks is None:
        raise DatasetError(f"{timeline_path.name} holds no timeline.")
    base_dir = timeline_path.parent if timeline_path.is_file() else timeline_path
    clips: list[TimelineClip] = []
    for number, track in enumerate(tracks, start=1):
        if not track.enabled:
            continue
        track_name = str(track.name or f"V{number}")
        for clip in _clips_in(track):
            ref = clip.media_reference
            if isinstance(ref, otio.schema.GeneratorReference) or not clip.enabled:
                continue
            clips.append(_timeline_clip(clip, track_name, base_dir))
    return clips


def _video_tracks(obj: Any) -> list[Any] | None:
    if isinstance(obj, otio.schema.Timeline):
        return list(obj.video_tracks())
    if isinstance(obj, otio.schema.SerializableCollection):
        found: list[Any] = []
        for child in obj.find_children(descended_from_type=otio.schema.Timeline):
            found.extend(child.video_tracks())
        return found
    if isinstance(obj, otio.schema.Stack):
        return [t for t in obj if _is_video_track(t)]
    if isinstance(obj, otio.schema.Track):
        return [obj] if _is_video_track(obj) else []
    return None


def _is_video_track(item: Any) -> bool:
    return isinstance(item, otio.schema.Track) and item.kind == otio.schema.TrackKind.Video


def _clips_in(composition: Any) -> Iterator[Any]:
    # Our own walk rather than find_clips(): a nested stack may hold audio tracks.
    for item in composition:
        if isinstance(item, otio.schema.Clip):
            yield item
        elif isinstance(item, otio.schema.Track):
            if item.kind == otio.schema.TrackKind.Video and item.enabled:
                yield from _clips_in(item)
        elif isinstance(item, otio.schema.Stack) and item.enabled:
            yield from _clips_in(item)
        # Gaps and transitions hold no media of their own.


def _timeline_clip(clip: Any, track: str, base_dir: Path) -> TimelineClip:
    ref = clip.media_reference
    media, problem = _resolve_media(ref, base_dir)
    available = getattr(ref, "available_range", None)
    try:
        used = clip.trimmed_range()
    except otio.exceptions.CannotComputeAvailableRangeError:
        used = None  # no source range and no available range: the whole file is used
    rate = float((used or available).start_time.rate) if (used or available) else 24.0
    source_start = source_duration = media_start = None
    if used is not None:
        source_start = _seconds(used.start_time)
        source_duration = _seconds(used.duration)
        if source_start is None or source_duration is None or source_duration < 0:
            problem = problem or "the clip's time range on the timeline is not valid"
    if available is not None:
        media_start = _seconds(available.start_time)
    name = str(clip.name or (media.stem if media else "") or "clip")
    return TimelineClip(
        name=name,
        track=track,
        media=media,
        source_start=source_start,
        source_duration=source_duration,
        rate=rate if math.isfinite(rate) and rate > 0 else 24.0,
        media_start=media_start,
        problem=problem,
    )


def _seconds(value: Any) -> float | None:
    """A timeline time in seconds, or ``None`` when the file holds nonsense (rate 0, NaN,
    or beyond a year)."""
    if not value.rate > 0:
        return None
    seconds = float(value.to_seconds())
    return seconds if math.isfinite(seconds) and abs(seconds) < _MAX_TIMELINE_SECONDS else None


def _resolve_media(ref: Any, base_dir: Path) -> tuple[Path | None, str | None]:
    if isinstance(ref, otio.schema.ExternalReference):
        url = str(ref.target_url or "").strip()
        if not url:
            return None, "the clip's media reference has no file path"
        path, problem = _path_from_url(url, base_dir)
        if path is None:
            return None, problem
        if not path.is_file():
            return path, f"media file not found: {path}"
        return path, None
    if ref is None or isinstance(ref, otio.schema.MissingReference):
        return None, "the clip has no media on the timeline (offline / missing reference)"
    if isinstance(ref, otio.schema.ImageSequenceReference):
        return None, "image-sequence media is not supported; export the clip as a video"
    return None, f"unsupported media reference ({ref.schema_name()})"


def _path_from_url(url: str, base_dir: Path) -> tuple[Path | None, str | None]:
    parsed = urllib.parse.urlsplit(url)
    if parsed.scheme.lower() == "file":
        if parsed.netloc not in ("", "localhost"):
            return None, f"the media is on another machine ({url})"
        path = Path(urllib.request.url2pathname(parsed.path))
    elif len(parsed.scheme) > 1:  # one letter is a Windows drive ("C:\\clips\\a.mov")
        return None, f"the media is not a local file ({url})"
    else:
        path = Path(url).expanduser()
    if not path.is_absolute():
        path = base_dir / path
    return path, None


# ---- the extractor ----------------------------------------------------------------------


class _Stop(Exception):
    """Cancelled, or the frame limit was reached."""


class _Extractor:
    def __init__(
        self,
        result: FrameExtractionResult,
        options: FrameOptions,
        progress: ProgressCallback | None,
        should_stop: StopCallback | None,
        source_count: int,
    ) -> None:
        self.result = result
        self.options = options
        self._progress = progress
        self._should_stop = should_stop
        self._source_count = source_count
        self._source_index = 0
        self._source_name = ""
        self._last_report = 0.0
        self._names = _Names(result.out_dir)
        self._hashes = _HashIndex()
        self.writer = _FrameWriter(options)

    def finish(self) -> None:
        """Wait for every frame to be on disk (always call it: it stops the writer threads).

        Raises:
            OutputError: a frame could not be written.
        """
        self.writer.finish()

    # -- progress and cancel

    def begin_source(self, name: str) -> None:
        self._source_index += 1
        self._source_name = name
        self.result.sources += 1
        self.report(0.0, "extracting frames", force=True)

    def report(self, fraction: float | None, message: str, *, force: bool = False) -> None:
        if self._progress is None:
            return
        now = time.monotonic()
        if not force and now - self._last_report < _PROGRESS_INTERVAL_S:
            return
        self._last_report = now
        self._progress(
            FrameProgress(
                source=self._source_name,
                source_index=max(1, self._source_index),
                source_count=max(1, self._source_count),
                fraction=None if fraction is None else min(1.0, max(0.0, fraction)),
                frames_written=len(self.result.frames),
                skipped_blurry=self.result.skipped_blurry,
                skipped_duplicates=self.result.skipped_duplicates,
                message=message,
            )
        )

    def check_stop(self) -> None:
        if self._should_stop is not None and self._should_stop():
            self.result.cancelled = True
            raise _Stop

    # -- one range of one file

    def extract(
        self,
        reader: _VideoReader,
        start: float,
        end: float | None,
        name_for: Callable[[float], tuple[str, str | None]],
        clip: str | None,
    ) -> None:
        """Pick, filter and write frames of ``reader`` in ``[start, end)`` (file seconds;
        ``end=None``: to the last frame)."""
        stop = end if end is not None else reader.duration
        span = (stop - start) if stop is not None else None

        def fraction(t: float, lo: float = 0.0, hi: float = 1.0) -> float | None:
            if not span or span <= 0:
                return None
            return lo + (hi - lo) * (t - start) / span

        opts = self.options
        if opts.sampling is FrameSampling.SCENES:
            middles = self._scene_middles(reader, start, end, fraction)
            # A second reader for the picks: the first has decoded to the range's end.
            with _VideoReader(reader.path) as second:
                picked = _frames_at(second, middles, start, end, self.check_stop)
                for t, frame in picked:
                    self._consider(frame, t, second, name_for, clip)
                    self.report(fraction(t, _SCENE_PASS_SHARE, 1.0), "extracting frames")
            return
        if opts.sampling is FrameSampling.FRAMES:
            picked = _every_n_frames(reader, opts.every_frames, start, end, self.check_stop)
        else:
            targets = (start + k * opts.every_seconds for k in itertools.count())
            picked = _frames_at(reader, targets, start, end, self.check_stop)
        for t, frame in picked:
            self._consider(frame, t, reader, name_for, clip)
            self.report(fraction(t), "extracting frames")

    def _scene_middles(
        self,
        reader: _VideoReader,
        start: float,
        end: float | None,
        fraction: Callable[..., float | None],
    ) -> list[float]:
        opts = self.options
        cuts = [start]
        previous: np.ndarray | None = None
        last_t: float | None = None
        for t, frame in reader.frames_from(start):
            self.check_stop()
            if t < start - reader.half_period:
                continue
            if end is not None and t >= end:
                break
            thumb = reader.thumbnail(frame)
            if (
                previous is not None
                and t - cuts[-1] >= opts.min_scene_seconds
                and scene_change(previous, thumb) > opts.scene_threshold
            ):
                cuts.append(t)
            previous = thumb
            last_t = t
            self.report(fraction(t, 0.0, _SCENE_PASS_SHARE), "finding scenes")
        if last_t is None:
            return []
        stop = last_t + 2 * reader.half_period
        if end is not None:
            stop = min(stop, end)
        bounds = [*cuts, stop]
        return [(a + b) / 2 for a, b in itertools.pairwise(bounds)]

    def _consider(
        self,
        frame: Any,
        t: float,
        reader: _VideoReader,
        name_for: Callable[[float], tuple[str, str | None]],
        clip: str | None,
    ) -> None:
        opts = self.options
        gray = reader.analysis_gray(frame)
        sharpness = laplacian_variance(gray)
        if opts.blur_threshold > 0 and sharpness < opts.blur_threshold:
            self.result.skipped_blurry += 1
            return
        digest = dhash(gray)
        if self._hashes.near(digest, opts.dedupe_distance):
            self.result.skipped_duplicates += 1
            return
        image = reader.image(frame)
        suffix = ".jpg" if opts.image_format is FrameImageFormat.JPG else ".png"
        stem, tc = name_for(t)
        path = self._names.claim(stem, suffix)
        self.writer.submit(image, path)
        self._hashes.add(digest)
        self.result.frames.append(
            ExtractedFrame(
                path=path, source=reader.path, time=t, sharpness=sharpness, clip=clip, timecode=tc
            )
        )
        if opts.max_frames is not None and len(self.result.frames) >= opts.max_frames:
            self.result.limit_reached = True
            raise _Stop


class _FrameWriter:
    """Encodes and writes frames on a few threads while the caller decodes the next ones.

    Pillow's encoders release the GIL, and PNG compression costs more than decoding at
    typical sampling rates. At most two images per thread wait in memory.
    """

    def __init__(self, options: FrameOptions) -> None:
        self._options = options
        self._workers = max(1, min(4, os.cpu_count() or 1))
        self._pool = ThreadPoolExecutor(self._workers, thread_name_prefix="frame-writer")
        self._pending: collections.deque[Future[None]] = collections.deque()

    def submit(self, image: Image.Image, path: Path) -> None:
        while len(self._pending) >= 2 * self._workers:
            self._pending.popleft().result()
        self._pending.append(self._pool.submit(self._write, image, path))

    def _write(self, image: Image.Image, path: Path) -> None:
        buffer = io.BytesIO()
        if self._options.image_format is FrameImageFormat.JPG:
            image.save(buffer, "JPEG", quality=self._options.jpeg_quality, subsampling=0)
        else:
            # zlib level 3 is as fast as level 1 and close to the default (6) in size, at
            # about half the default's time.
            image.save(buffer, "PNG", compress_level=3)
        try:
            atomic_write_bytes(path, buffer.getvalue())
        except OSError as exc:
            raise OutputError(
                f"Cannot write {path.name} in {path.parent}: {exc.strerror or exc}."
            ) from None

    def finish(self) -> None:
        """Wait for all writes; raise the first failure."""
        try:
            while self._pending:
                self._pending.popleft().result()
        finally:
            for future in self._pending:
                future.cancel()
            self._pool.shutdown(wait=True)


def _in_range(
    frames: Iterable[tuple[float, Any]], start: float, end: float | None, tol: float
) -> Generator[tuple[float, Any], None, None]:
    for t, frame in frames:
        if t < start - tol:
            continue
        if end is not None and t >= end - 1e-9:
            return
        yield t, frame


def _every_n_frames(
    reader: _VideoReader,
    n: int,
    start: float,
    end: float | None,
    check_stop: Callable[[], None],
) -> Iterator[tuple[float, Any]]:
    for index, (t, frame) in enumerate(
        _in_range(reader.frames_from(start), start, end, reader.half_period)
    ):
        check_stop()
        if index % n == 0:
            yield t, frame


def _frames_at(
    reader: _VideoReader,
    targets: Iterable[float],
    start: float,
    end: float | None,
    check_stop: Callable[[], None],
) -> Iterator[tuple[float, Any]]:
    """For each target time (increasing), the first frame at or after it, give or take half a
    frame, so the frame nearest the target is taken. Targets a frame has already answered are
    skipped; targets far ahead are reached by seeking."""
    tol = reader.half_period
    frames = _in_range(reader.frames_from(start), start, end, tol)
    current: float | None = None
    picked: float | None = None
    for target in targets:
        if end is not None and target >= end:
            return
        if picked is not None and target - tol <= picked:
            continue
        if current is not None and target - current > _SEEK_AHEAD_S:
            frames.close()
            frames = _in_range(reader.frames_from(target), start, end, tol)
        for t, frame in frames:
            check_stop()
            current = t
            if t >= target - tol:
                picked = t
                yield t, frame
                break
        else:
            return


# ---- entry points -----------------------------------------------------------------------


def extract_frames(
    source: str | Path,
    out_dir: str | Path,
    options: FrameOptions | None = None,
    *,
    progress: ProgressCallback | None = None,
    should_stop: StopCallback | None = None,
) -> FrameExtractionResult:
    """Write frames of a video file or an edit timeline into ``out_dir``.

    Timelines are recognised by extension (:func:`is_timeline_file`); anything else is
    opened as a video.

    Args:
        source: a video file or a timeline.
        out_dir: folder for the frames (created if needed); nothing in it is replaced.
        options: sampling, filters and format; defaults to :class:`FrameOptions`'s defaults.
        progress: called with :class:`FrameProgress` on the calling thread, at most about
            ten times a second.
        should_stop: polled for every decoded frame; when it returns true the run stops and
            the result so far is returned with ``cancelled`` set.

    Raises:
        DatasetError: the source is missing, not a video, or not a readable timeline.
        ConfigError: an option is out of range.
        OutputError: the output folder cannot be written.
    """
    path = Path(source)
    if is_timeline_file(path):
        return extract_timeline_frames(
            path, out_dir, options, progress=progress, should_stop=should_stop
        )
    return extract_video_frames(path, out_dir, options, progress=progress, should_stop=should_stop)


def extract_video_frames(
    video: str | Path,
    out_dir: str | Path,
    options: FrameOptions | None = None,
    *,
    progress: ProgressCallback | None = None,
    should_stop: StopCallback | None = None,
) -> FrameExtractionResult:
    """Frames of one video file, named ``<video stem>_<HH-MM-SS-mmm>``; see
    :func:`extract_frames`."""
    opts = (options or FrameOptions()).validate()
    path = Path(video)
    _check_source_file(path)
    folder = Path(out_dir)
    stem = safe_stem(path.stem, fallback="video")
    with _VideoReader(path) as reader:  # before the folder is made: a bad file leaves none
        ensure_writable_dir(folder)
        result = FrameExtractionResult(source=path, out_dir=folder)
        extractor = _Extractor(result, opts, progress, should_stop, source_count=1)
        extractor.begin_source(path.name)
        try:
            extractor.extract(reader, 0.0, None, lambda t: (f"{stem}_{clock_label(t)}", None), None)
        except _Stop:
            pass
        except _MediaError as exc:
            if not reader.decoded:
                raise DatasetError(f"{path.name} cannot be decoded ({exc}).") from None
            result.problems.append(
                FrameProblem(path.name, f"decoding stopped part-way ({exc})", path)
            )
        finally:
            extractor.finish()
        if not reader.decoded and not result.cancelled:
            raise DatasetError(f"{path.name} has no video frames that can be decoded.")
    extractor.report(1.0, "done", force=True)
    return result


def extract_timeline_frames(
    timeline: str | Path,
    out_dir: str | Path,
    options: FrameOptions | None = None,
    *,
    progress: ProgressCallback | None = None,
    should_stop: StopCallback | None = None,
) -> FrameExtractionResult:
    """Frames from the used range of every clip of a timeline, named
    ``<clip name>_<HH-MM-SS-FF>`` (source timecode); see :func:`extract_frames`.

    A clip whose media is missing or unreadable, or whose range lies outside its media,
    is reported in ``result.problems``; the other clips are still extracted.
    """
    opts = (options or FrameOptions()).validate()
    path = Path(timeline)
    clips = read_timeline_clips(path)
    folder = Path(out_dir)
    ensure_writable_dir(folder)
    result = FrameExtractionResult(source=path, out_dir=folder)
    extractor = _Extractor(result, opts, progress, should_stop, source_count=len(clips))
    try:
        for clip in clips:
            extractor.check_stop()
            extractor.begin_source(clip.name)
            problem = _extract_clip(extractor, clip)
            if problem:
                result.problems.append(FrameProblem(clip.name, problem, clip.media))
    except _Stop:
        pass
    finally:
        extractor.finish()
    extractor.report(1.0, "done", force=True)
    return result


def _extract_clip(extractor: _Extractor, clip: TimelineClip) -> str | None:
    """Extract one clip; return why it gave nothing, or ``None``."""
    if clip.problem or clip.media is None:
        return clip.problem or "the clip has no media file"
    try:
        reader = _VideoReader(clip.media)
    except DatasetError as exc:
        return str(exc)
    with reader:
        span = _range_in_file(clip, reader)
        if isinstance(span, str):
            return span
        start, end, origin = span
        stem = safe_stem(clip.name, fallback="clip")

        def name_for(t: float) -> tuple[str, str | None]:
            tc = timecode(origin + t, clip.rate)
            return f"{stem}_{tc.replace(':', '-').replace(';', '-').replace('.', '-')}", tc

        try:
            extractor.extract(reader, start, end, name_for, clip.name)
        except _MediaError as exc:
            return f"decoding {clip.media.name} stopped part-way ({exc})"
        if not reader.decoded:
            return f"no frames of {clip.media.name} could be decoded in the clip's range"
    return None


def _range_in_file(
    clip: TimelineClip, reader: _VideoReader
) -> tuple[float, float | None, float] | str:
    """The clip's used range in seconds from the file's first frame, and the timeline time
    of that first frame; or why the range is not in the file.

    The timeline's time of the first frame is the media's available range when the timeline
    records one; otherwise (EDLs) the file's own start timecode, or else 0.
    """
    if clip.source_start is None or clip.source_duration is None:
        return 0.0, reader.duration, clip.media_start or 0.0
    if clip.media_start is not None:
        origins = [clip.media_start]
    else:
        embedded = reader.start_timecode()
        origins = [embedded, 0.0] if embedded else [0.0]
    length = reader.duration
    for origin in origins:
        start = clip.source_start - origin
        end = start + clip.source_duration
        if end > 0 and (length is None or start < length):
            return max(0.0, start), (min(end, length) if length is not None else end), origin
    tc_in = timecode(clip.source_start, clip.rate)
    tc_out = timecode(clip.source_start + clip.source_duration, clip.rate)
    long = f" ({length:.2f} s long)" if length is not None else ""
    return f"the clip's used range {tc_in}-{tc_out} is outside its media file{long}"


def _check_source_file(path: Path) -> None:
    if not path.exists():
        raise DatasetError(f"The file {path} does not exist.")
    if path.is_dir():
        raise DatasetError(f"{path} is a folder; give a video file or an edit timeline.")
