"""Which bucket each image of the dataset trains in, for the caption grid and the browser.

The trainer, ``dataset prepare`` and this preview all place images with
:func:`lora_studio.core.buckets.placement_for`, here with the sizes read from the image
headers. Sizes are read once per dataset, on a worker thread (for a big folder, in the
low-priority helper process of :mod:`lora_studio.core.background`);
placing them again when the resolution or bucket settings change is cheap.

No Qt here: the controller runs :func:`place_images` with ``asyncio.to_thread``.
"""

from __future__ import annotations

import functools
import threading
from collections import Counter
from collections.abc import Iterable, MutableMapping, Sequence
from pathlib import Path

from lora_studio.core.background import map_chunks, read_and_place, wants_process
from lora_studio.core.buckets import Bucket, Placement, placement_for
from lora_studio.core.config import LoraConfig
from lora_studio.core.imaging import read_size

#: Images per chunk sent to the helper process: a header read is quick, so bigger chunks
#: than the image check's keep the window's process from waking for every few images.
HEADER_CHUNK = 256
#: What an image's entry is when it has no bucket: why, for the user.
Unplaced = str
Size = tuple[int, int]


def bucket_settings(config: LoraConfig) -> tuple[int, bool, int, int, bool]:
    """The settings that decide buckets: a change in any of them moves images."""
    return (
        config.resolution,
        config.enable_bucket,
        config.min_bucket_side,
        config.max_bucket_side,
        config.bucket_no_upscale,
    )


def place_images(
    paths: Iterable[Path],
    sizes: MutableMapping[Path, Size | Unplaced],
    config: LoraConfig,
    stop: threading.Event | None = None,
) -> dict[Path, Placement | Unplaced]:
    """Each image's placement under ``config``; reads the sizes ``sizes`` lacks (and keeps
    them there for next time). Returns early, with what it has, once ``stop`` is set."""
    paths = list(paths)
    missing = [path for path in paths if path not in sizes]
    if wants_process(len(missing)):
        # A big folder is read and placed in the helper process (see core.background):
        # on a thread here, the Python of 10,000 header reads and placements holds the
        # GIL that the window's thread needs.
        placed_there: dict[Path, Placement | Unplaced] = {}

        def done(
            part: Sequence[Path], found: list[tuple[Size | Unplaced, Placement | Unplaced]]
        ) -> None:
            for path, (size, placement) in zip(part, found, strict=True):
                sizes[path] = size
                placed_there[path] = placement

        map_chunks(
            functools.partial(read_and_place, config=config),
            missing,
            chunk=HEADER_CHUNK,
            should_stop=stop.is_set if stop is not None else None,
            done=done,
        )
        if len(placed_there) == len(missing) == len(paths):
            return placed_there
    placed: dict[Path, Placement | Unplaced] = {}
    for path in paths:
        if stop is not None and stop.is_set():
            break
        size = sizes.get(path)
        if size is None:
            size = sizes[path] = read_size(path)
        placed[path] = size if isinstance(size, str) else placement_for(*size, config)
    return placed


def bucket_text(bucket: Bucket) -> str:
    """``640×384``."""
    return f"{bucket.width}\u00d7{bucket.height}"


def placement_tooltip(placement: Placement | Unplaced, config: LoraConfig | None = None) -> str:
    """One or two sentences on how an image is trained."""
    if isinstance(placement, str):
        return f"Not trained: {placement}"
    width, height = placement.original
    scaled_w, scaled_h = placement.scaled
    bucket = placement.bucket
    detail = []
    if placement.scaled != placement.original:
        detail.append(f"scaled to {scaled_w}\u00d7{scaled_h}")
    cut = [
        f"{px} px of {side}"
        for px, side in ((scaled_w - bucket.width, "width"), (scaled_h - bucket.height, "height"))
        if px
    ]
    if cut:
        detail.append("cropped by " + " and ".join(cut))
    how = (": " + ", then ".join(detail)) if detail else ""
    text = f"Trained at {bucket_text(bucket)} (the image is {width}\u00d7{height}{how})."
    if config is not None and not config.enable_bucket:
        text += " Aspect-ratio buckets are off: every image is cropped to a square."
    return text


def bucket_counts(placements: Iterable[Placement | Unplaced]) -> list[tuple[Bucket, int]]:
    """How many images each bucket holds, the fullest first."""
    counts = Counter(p.bucket for p in placements if not isinstance(p, str))
    return sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))


def buckets_summary(placements: Iterable[Placement | Unplaced], limit: int = 4) -> str:
    """``3 buckets: 256×256 (10) · 320×192 (1) · 192×320 (1)``."""
    counts = bucket_counts(placements)
    if not counts:
        return ""
    shown = " \u00b7 ".join(f"{bucket_text(b)} ({n})" for b, n in counts[:limit])
    more = f" \u00b7 {len(counts) - limit} more" if len(counts) > limit else ""
    word = "bucket" if len(counts) == 1 else "buckets"
    return f"{len(counts)} {word}: {shown}{more}"
