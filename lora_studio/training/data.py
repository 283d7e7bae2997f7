"""What the trainer feeds on: images placed in buckets, captions, and batches per epoch.

Every random choice (batch order, caption dropout, tag shuffling) draws from the run's
generator, so a seeded run is reproducible and a resumed run continues the same stream.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from PIL import Image, ImageOps

from lora_studio.core.buckets import Bucket, Placement, placement_for
from lora_studio.core.config import LoraConfig
from lora_studio.core.dataset import ImageItem, split_tags, training_caption
from lora_studio.core.imaging import UNUSABLE_SIDE, WHITE, Color, read_header, to_rgb

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class TrainItem:
    """One usable image of the run."""

    item: ImageItem
    placement: Placement
    caption: str  # with the trigger word in front
    repeats: int

    @property
    def bucket(self) -> Bucket:
        return self.placement.bucket

    @property
    def meta(self) -> tuple[float, float, float, float, float, float]:
        """SDXL micro-conditioning: original h, w, crop top, left, target h, w."""
        p = self.placement
        return (
            float(p.original[1]),
            float(p.original[0]),
            float(p.crop_top),
            float(p.crop_left),
            float(p.bucket.height),
            float(p.bucket.width),
        )


def prepare_items(
    images: Sequence[ImageItem], config: LoraConfig, skip: Callable[[ImageItem, str], None]
) -> list[TrainItem]:
    """Place every readable image; ``skip(item, reason)`` is told about the others."""
    items: list[TrainItem] = []
    for image in images:
        try:
            width, height = read_header(image.path).size
        except FileNotFoundError:
            skip(image, "Image file is missing.")
            continue
        except Exception as exc:  # PIL raises many types for a broken header
            skip(image, f"Not a readable image ({exc}).")
            continue
        if width < UNUSABLE_SIDE or height < UNUSABLE_SIDE:
            skip(image, f"Image is too small ({width}x{height}).")
            continue
        items.append(
            TrainItem(
                item=image,
                placement=placement_for(width, height, config),
                caption=training_caption(image, config.trigger_word),
                repeats=image.repeats or config.repeats,
            )
        )
    return items


def load_pixels(path: Path, placement: Placement, background: Color = WHITE) -> torch.Tensor:
    """The image resized and cropped into its bucket: ``(3, h, w)`` in [-1, 1].

    Turned upright by its EXIF orientation and converted by
    :func:`lora_studio.core.imaging.to_rgb`: transparency flattened onto ``background``
    (white by default), 16-bit greyscale scaled to 8 bits, CMYK through its ICC profile.
    """
    import numpy as np
    import torch

    with Image.open(path) as img:
        img = to_rgb(ImageOps.exif_transpose(img), background)
        if img.size != placement.scaled:
            img = img.resize(placement.scaled, Image.Resampling.LANCZOS)
        bucket = placement.bucket
        img = img.crop(
            (
                placement.crop_left,
                placement.crop_top,
                placement.crop_left + bucket.width,
                placement.crop_top + bucket.height,
            )
        )
        array = np.asarray(img, dtype=np.float32) / 127.5 - 1.0
    return torch.from_numpy(array.transpose(2, 0, 1).copy())


def epoch_batches(
    items: Sequence[TrainItem], batch_size: int, generator: torch.Generator
) -> list[list[int]]:
    """One epoch's batches of item indices: each image ``repeats`` times, batches drawn
    within a bucket (one tensor shape per batch), the order of batches shuffled."""
    import torch

    by_bucket: dict[Bucket, list[int]] = {}
    for index, item in enumerate(items):
        by_bucket.setdefault(item.bucket, []).extend([index] * item.repeats)
    batches: list[list[int]] = []
    for bucket in sorted(by_bucket):
        indices = by_bucket[bucket]
        order = torch.randperm(len(indices), generator=generator).tolist()
        shuffled = [indices[i] for i in order]
        batches.extend(
            shuffled[start : start + batch_size] for start in range(0, len(shuffled), batch_size)
        )
    order = torch.randperm(len(batches), generator=generator).tolist()
    return [batches[i] for i in order]


def batches_per_epoch(items: Sequence[TrainItem], batch_size: int) -> int:
    """How many batches :func:`epoch_batches` makes (it does not depend on the order)."""
    counts: dict[Bucket, int] = {}
    for item in items:
        counts[item.bucket] = counts.get(item.bucket, 0) + item.repeats
    return sum(-(-n // batch_size) for n in counts.values())


def varied_caption(caption: str, config: LoraConfig, generator: torch.Generator) -> str:
    """Caption dropout, then tag shuffling after the first ``keep_tokens`` tags."""
    import torch

    if (
        config.caption_dropout
        and torch.rand((), generator=generator).item() < config.caption_dropout
    ):
        return ""
    if not config.shuffle_tags:
        return caption
    tags = split_tags(caption)
    kept, rest = tags[: config.keep_tokens], tags[config.keep_tokens :]
    order = torch.randperm(len(rest), generator=generator).tolist()
    return ", ".join(kept + [rest[i] for i in order])
