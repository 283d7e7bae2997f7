"""``lora-studio dataset frames``: training images from a video file or an edit timeline.

    lora-studio dataset frames VIDEO_OR_TIMELINE --out DIR
        [--every-seconds S | --every-frames N | --scenes] [--scene-threshold T]
        [--max-frames N] [--blur-threshold X] [--dedupe-distance D] [--format png|jpg] [--json]

Prints a summary and one line per clip that gave no frames. Exit codes: 0 done (also when
some clips had problems but others gave frames), 1 a user-facing error or nothing could be
extracted at all, 130 stopped with Ctrl+C (the frames written so far stay, and are listed).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import signal
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from lora_studio.core.errors import DatasetError
from lora_studio.core.frames import (
    FrameExtractionResult,
    FrameImageFormat,
    FrameOptions,
    FrameProgress,
    FrameSampling,
    extract_frames,
    is_timeline_file,
)

EXIT_OK, EXIT_ERROR, EXIT_CANCELLED = 0, 1, 130

_HELP = {f.name: str(f.metadata["help"]).rstrip(".") for f in dataclasses.fields(FrameOptions)}
_DEFAULTS = FrameOptions()


def _help(name: str, default: object = None) -> str:
    text = _HELP[name]
    return f"{text} (default {default})" if default is not None else text


def register(subparsers: Any) -> None:
    """Add ``frames`` to the ``lora-studio dataset`` sub-commands."""
    parser = subparsers.add_parser(
        "frames",
        help="extract training images from a video or an edit timeline",
        description="Write frames of a video file, or of the used range of every clip of an "
        "edit timeline (.otio; EDL, FCP XML, AAF with their OpenTimelineIO adapters), as "
        "images in a dataset folder. Blurry frames and near-duplicates are skipped; no "
        "captions are written.",
    )
    parser.add_argument("source", type=Path, metavar="VIDEO_OR_TIMELINE")
    parser.add_argument(
        "--out", "-o", type=Path, required=True, help="folder for the images (created)"
    )
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument(
        "--every-seconds",
        type=float,
        metavar="S",
        help=_help("every_seconds", f"every {_DEFAULTS.every_seconds:g} s"),
    )
    mode.add_argument("--every-frames", type=int, metavar="N", help=_help("every_frames"))
    mode.add_argument(
        "--scenes",
        action="store_true",
        help="one frame from the middle of each scene (cuts found by picture change)",
    )
    parser.add_argument(
        "--scene-threshold",
        type=float,
        metavar="T",
        default=_DEFAULTS.scene_threshold,
        help=_help("scene_threshold", f"{_DEFAULTS.scene_threshold:g}"),
    )
    parser.add_argument("--max-frames", type=int, metavar="N", help=_help("max_frames", "no limit"))
    parser.add_argument(
        "--blur-threshold",
        type=float,
        metavar="X",
        default=_DEFAULTS.blur_threshold,
        help=_help("blur_threshold", f"{_DEFAULTS.blur_threshold:g}"),
    )
    parser.add_argument(
        "--dedupe-distance",
        type=int,
        metavar="D",
        default=_DEFAULTS.dedupe_distance,
        help=_help("dedupe_distance", _DEFAULTS.dedupe_distance),
    )
    parser.add_argument(
        "--format",
        dest="image_format",
        choices=[f.value for f in FrameImageFormat],
        default=_DEFAULTS.image_format.value,
        help=_help("image_format", "png"),
    )
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    parser.set_defaults(run=run)


def options_from_args(args: argparse.Namespace) -> FrameOptions:
    """The :class:`FrameOptions` the flags ask for (validated; ConfigError otherwise)."""
    if args.scenes:
        sampling = FrameSampling.SCENES
    elif args.every_frames is not None:
        sampling = FrameSampling.FRAMES
    else:
        sampling = FrameSampling.SECONDS
    values: dict[str, Any] = {
        "sampling": sampling,
        "scene_threshold": args.scene_threshold,
        "max_frames": args.max_frames,
        "blur_threshold": args.blur_threshold,
        "dedupe_distance": args.dedupe_distance,
        "image_format": FrameImageFormat(args.image_format),
    }
    if args.every_seconds is not None:
        values["every_seconds"] = args.every_seconds
    if args.every_frames is not None:
        values["every_frames"] = args.every_frames
    return FrameOptions(**values).validate()


def run(args: argparse.Namespace) -> int:
    options = options_from_args(args)
    stop = _StopOnInterrupt()
    with stop.installed(), _ProgressLine(enabled=not args.json and sys.stderr.isatty()) as bar:
        result = extract_frames(
            args.source, args.out, options, progress=bar.update, should_stop=stop
        )
    if args.json:
        print(json.dumps(result.to_dict(), indent=2, ensure_ascii=False))
    else:
        _print_summary(result)
    if result.cancelled:
        print(
            "lora-studio: error: interrupted; the frames written so far are kept", file=sys.stderr
        )
        return EXIT_CANCELLED
    if not result.frames and result.problems:
        why = (
            str(result.problems[0])
            if len(result.problems) == 1
            else f"{len(result.problems)} clips had problems (listed above)"
        )
        raise DatasetError(f"No frames could be extracted from {args.source.name}: {why}")
    return EXIT_OK


def _print_summary(result: FrameExtractionResult) -> None:
    origin = f"from {result.source.name}"
    if is_timeline_file(result.source):
        origin += f", {result.sources} clip{'s' if result.sources != 1 else ''}"
    n = len(result.frames)
    print(f"Wrote {n} frame{'s' if n != 1 else ''} to {result.out_dir} ({origin}).")
    skipped = [
        f"{count} {why}"
        for count, why in (
            (result.skipped_blurry, "blurry"),
            (result.skipped_duplicates, "near-duplicate"),
        )
        if count
    ]
    if skipped:
        print(f"  skipped: {', '.join(skipped)}")
    if result.limit_reached:
        print(f"  stopped at --max-frames {n}")
    for problem in result.problems:
        print(f"  problem: {problem}")
    if not result.frames and result.skipped_blurry and not result.problems:
        print("  every frame was too blurry: try a lower --blur-threshold (0 keeps all)")


class _StopOnInterrupt:
    """Ctrl+C asks the extraction to stop after the current frame (a second one quits)."""

    def __init__(self) -> None:
        self.requested = False

    def __call__(self) -> bool:
        return self.requested

    @contextlib.contextmanager
    def installed(self) -> Iterator[None]:
        def on_sigint(signum: int, frame: object) -> None:
            if self.requested:
                raise KeyboardInterrupt
            self.requested = True

        try:
            previous = signal.signal(signal.SIGINT, on_sigint)
        except ValueError:  # not the main thread (embedded use): Ctrl+C stays as it was
            yield
            return
        try:
            yield
        finally:
            signal.signal(signal.SIGINT, previous)


class _ProgressLine:
    """A rich progress bar on a terminal; nothing otherwise (the summary follows)."""

    def __init__(self, *, enabled: bool) -> None:
        self.enabled = enabled
        self._bar: Any = None
        self._task: Any = None

    def __enter__(self) -> _ProgressLine:
        if self.enabled:
            from rich.console import Console
            from rich.progress import BarColumn, TextColumn, TimeElapsedColumn
            from rich.progress import Progress as RichProgress

            self._bar = RichProgress(
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                TextColumn("{task.fields[counts]}"),
                TimeElapsedColumn(),
                console=Console(stderr=True),
                transient=True,
            )
            self._bar.start()
            self._task = self._bar.add_task("Reading", total=1.0, counts="")
        return self

    def update(self, progress: FrameProgress) -> None:
        if self._bar is None:
            return
        overall = progress.overall
        self._bar.update(
            self._task,
            description=f"{progress.source} ({progress.message})",
            completed=overall if overall is not None else 0.0,
            counts=f"{progress.frames_written} written",
        )

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            self._bar.stop()
