"""Aspect-ratio bucketing (kohya-style), without torch.

Instead of centre-cropping every image to a square, each image is trained at the bucket
whose aspect ratio is closest to its own. Buckets have sides that are multiples of 64 and
about ``resolution x resolution`` pixels; an image is scaled to cover its bucket and
centre-cropped by at most a few pixels. Images of one bucket are batched together.

With ``no_upscale``, an image smaller than the training area is never enlarged: it gets a
bucket of its own size (rounded down to multiples of 64).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from lora_studio.core.config import LoraConfig

STEP = 64


@dataclass(frozen=True, order=True)
class Bucket:
    width: int
    height: int

    @property
    def aspect(self) -> float:
        return self.width / self.height

    def __str__(self) -> str:
        return f"{self.width}x{self.height}"


@dataclass(frozen=True)
class Placement:
    """How one image fits its bucket: resize to ``scaled``, then crop at ``(left, top)``."""

    bucket: Bucket
    original: tuple[int, int]  # (width, height)
    scaled: tuple[int, int]
    crop_left: int
    crop_top: int


def make_buckets(
    resolution: int, min_side: int = 256, max_side: int = 2048, step: int = STEP
) -> list[Bucket]:
    """Every bucket of area at most ``resolution**2`` with sides in ``[min_side, max_side]``."""
    max_area = resolution * resolution
    # The square bucket must fit, whatever the side limits say.
    lo = max(step, (min(min_side, resolution) // step) * step)
    hi = max(lo, (max(max_side, resolution) // step) * step)
    found: set[Bucket] = set()
    width = lo
    while width <= hi:
        height = min(hi, (max_area // width) // step * step)
        if height >= lo:
            found.add(Bucket(width, height))
            found.add(Bucket(height, width))
        width += step
    square = min(hi, max(lo, (resolution // step) * step))
    found.add(Bucket(square, square))
    return sorted(found)


def place(
    width: int,
    height: int,
    buckets: list[Bucket],
    resolution: int,
    *,
    no_upscale: bool = False,
    step: int = STEP,
) -> Placement:
    """The bucket of a ``width x height`` image and how it is resized and cropped into it."""
    if width <= 0 or height <= 0:
        raise ValueError(f"bad image size {width}x{height}")
    if no_upscale and width * height <= resolution * resolution:
        bucket = Bucket(max(step, width // step * step), max(step, height // step * step))
    else:
        log_aspect = math.log(width / height)
        bucket = min(
            buckets, key=lambda b: (abs(math.log(b.aspect) - log_aspect), -b.width * b.height)
        )
    scale = max(bucket.width / width, bucket.height / height)
    scaled = (max(bucket.width, round(width * scale)), max(bucket.height, round(height * scale)))
    left = (scaled[0] - bucket.width) // 2
    top = (scaled[1] - bucket.height) // 2
    return Placement(bucket, (width, height), scaled, left, top)


def square_placement(width: int, height: int, resolution: int) -> Placement:
    """No bucketing: short side scaled to ``resolution``, centre-cropped to a square."""
    bucket = Bucket(resolution, resolution)
    scale = resolution / min(width, height)
    scaled = (max(resolution, round(width * scale)), max(resolution, round(height * scale)))
    return Placement(
        bucket,
        (width, height),
        scaled,
        (scaled[0] - resolution) // 2,
        (scaled[1] - resolution) // 2,
    )


@functools.lru_cache(maxsize=32)
def _cached_buckets(resolution: int, min_side: int, max_side: int) -> tuple[Bucket, ...]:
    return tuple(make_buckets(resolution, min_side, max_side))


def placement(
    width: int,
    height: int,
    *,
    resolution: int,
    bucketed: bool = True,
    min_side: int = 256,
    max_side: int = 2048,
    no_upscale: bool = False,
) -> Placement:
    """A ``width x height`` image's bucket (or centre-cropped square when not
    ``bucketed``) and how it is scaled and cropped into it."""
    if not bucketed:
        return square_placement(width, height, resolution)
    buckets = _cached_buckets(resolution, min_side, max_side)
    return place(width, height, list(buckets), resolution, no_upscale=no_upscale)


def placement_for(width: int, height: int, config: LoraConfig) -> Placement:
    """Where training with ``config`` puts a ``width x height`` image. The one placement
    rule of the app: the trainer, the window's bucket preview, ``dataset prepare`` and the
    statistics all come here."""
    return placement(
        width,
        height,
        resolution=config.resolution,
        bucketed=config.enable_bucket,
        min_side=config.min_bucket_side,
        max_side=config.max_bucket_side,
        no_upscale=config.bucket_no_upscale,
    )
