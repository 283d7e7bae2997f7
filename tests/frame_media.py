"""Real media for the frame-extraction tests, written with PyAV and OpenTimelineIO.

The test video (8 s, 10 fps, 160x120, H.264 with a keyframe every 2.5 s) has four scenes,
built so that each filter has exactly one thing to catch:

    0-2 s  A  red/white checkerboard, static          -> sharp; its frames are duplicates
    2-4 s  B  teal, a checkered stripe that jumps      -> sharp, four distinct looks
              to a new place every 0.5 s (x = 0, 80, 40, 120)
    4-6 s  C  green/magenta checkerboard, blurred      -> blurry (Laplacian variance ~0)
    6-8 s  D  scene A again                            -> duplicates of A

Measured on this video: cuts score >= 0.9 and changes inside a scene <= 0.11 (threshold 0.2);
B's looks are >= 16 bits apart and A/B >= 20 (dedupe distance 6); sharp frames have a
Laplacian variance >= 1900 and blurred ones < 1 (threshold 100).
"""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import opentimelineio as otio
from PIL import Image, ImageFilter

WIDTH, HEIGHT, FPS, SECONDS = 160, 120, 10, 8
TEAL = (0, 140, 160)
RED = (230, 30, 30)


def _checker(c1: tuple[int, int, int], c2: tuple[int, int, int], cell: int, w: int, h: int):
    y, x = np.mgrid[0:h, 0:w]
    mask = ((x // cell + y // cell) % 2).astype(bool)
    out = np.empty((h, w, 3), np.uint8)
    out[mask] = c1
    out[~mask] = c2
    return out


_A = _checker(RED, (250, 250, 250), 10, WIDTH, HEIGHT)
_STRIPE = _checker((250, 220, 30), (120, 90, 0), 8, 40, HEIGHT)
_C = np.asarray(
    Image.fromarray(_checker((40, 200, 60), (200, 40, 200), 12, WIDTH, HEIGHT)).filter(
        ImageFilter.GaussianBlur(8)
    )
)


def _scene_b(i: int) -> np.ndarray:
    out = np.empty((HEIGHT, WIDTH, 3), np.uint8)
    out[:] = TEAL
    x0 = (0, 80, 40, 120)[i // 5]
    out[:, x0 : x0 + 40] = _STRIPE
    return out


def picture_at(i: int) -> np.ndarray:
    """The RGB picture of frame ``i`` (time ``i / FPS``)."""
    if i < 20:
        return _A
    if i < 40:
        return _scene_b(i - 20)
    if i < 60:
        return _C
    return _A


def _codec() -> str:
    return "libx264" if "libx264" in av.codecs_available else "mpeg4"


def write_video(
    path: Path,
    frames: int = FPS * SECONDS,
    picture=picture_at,
    *,
    rotation: int | None = None,
    sample_aspect: Fraction | None = None,
) -> Path:
    """Write the test video (or ``picture(i)`` for each frame) to ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as container:
        stream = container.add_stream(_codec(), rate=FPS)
        stream.width, stream.height, stream.pix_fmt = WIDTH, HEIGHT, "yuv420p"
        stream.codec_context.gop_size = 25
        if _codec() == "libx264":
            stream.options = {"crf": "12", "preset": "ultrafast", "keyint_min": "25"}
        else:
            stream.codec_context.qscale = 2
        if rotation is not None:
            stream.set_display_rotation(rotation)
        if sample_aspect is not None:
            stream.codec_context.sample_aspect_ratio = sample_aspect
        for i in range(frames):
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(picture(i)), format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def rt(seconds: float, rate: float = 24) -> otio.opentime.RationalTime:
    return otio.opentime.RationalTime(round(seconds * rate), rate)


def tr(start: float, duration: float, rate: float = 24) -> otio.opentime.TimeRange:
    return otio.opentime.TimeRange(rt(start, rate), rt(duration, rate))


def clip(name: str, url: str | None, start: float, duration: float, **kwargs) -> otio.schema.Clip:
    ref = otio.schema.ExternalReference(target_url=url) if url else otio.schema.MissingReference()
    return otio.schema.Clip(
        name=name, media_reference=ref, source_range=tr(start, duration), **kwargs
    )


def timeline_of(*tracks: otio.schema.Track) -> otio.schema.Timeline:
    timeline = otio.schema.Timeline()
    timeline.tracks.extend(tracks)
    return timeline


def write_edit(folder: Path, video: Path) -> Path:
    """An edit in ``folder``: ``cut.otio`` and its media under ``media/``.

    V1: "Shot One" (relative path, 2.0-4.0 s = scene B), a 1 s gap, "Missing Shot" (a
        file that is not there), "Shot/Two: take?" (a file:// URL, 6.0-7.0 s = scene D),
        a generated "Bars" clip, and a disabled clip.
    V2: "Timecoded", whose media starts at 01:00:00:00 on the timeline; used range
        01:00:00:12-01:00:01:12, i.e. 0.5-1.5 s of the file (scene A).
    A1: an audio clip of a file that does not exist (not reported: audio is not read).
    """
    media = folder / "media" / "clip.mp4"
    media.parent.mkdir(parents=True, exist_ok=True)
    media.write_bytes(video.read_bytes())
    v1 = otio.schema.Track(name="V1", kind=otio.schema.TrackKind.Video)
    v1.append(clip("Shot One", "media/clip.mp4", 2.0, 2.0))
    v1.append(otio.schema.Gap(source_range=tr(0, 1.0)))
    v1.append(clip("Missing Shot", "media/nope.mp4", 0.0, 2.0))
    v1.append(clip("Shot/Two: take?", media.resolve().as_uri(), 6.0, 1.0))
    bars = otio.schema.Clip(
        name="Bars",
        media_reference=otio.schema.GeneratorReference(generator_kind="SMPTEBars"),
        source_range=tr(0, 1.0),
    )
    v1.append(bars)
    disabled = clip("Disabled", "media/clip.mp4", 4.0, 2.0)
    disabled.enabled = False
    v1.append(disabled)

    v2 = otio.schema.Track(name="V2", kind=otio.schema.TrackKind.Video)
    timecoded = clip("Timecoded", "media/clip.mp4", 3600.5, 1.0)
    timecoded.media_reference.available_range = tr(3600.0, SECONDS)
    v2.append(timecoded)

    a1 = otio.schema.Track(name="A1", kind=otio.schema.TrackKind.Audio)
    a1.append(clip("Sound", "media/sound.wav", 0.0, 2.0))

    timeline = otio.schema.Timeline(name="cut")
    timeline.tracks.extend([v1, v2, a1])
    path = folder / "cut.otio"
    otio.adapters.write_to_file(timeline, str(path))
    return path
