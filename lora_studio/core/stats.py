"""Dataset statistics: image sizes, aspect ratios, buckets, caption lengths, tags.

:func:`dataset_statistics` reads image *headers* only (no pixel data), so it stays fast on
thousands of images; the sizes it reads can be kept in a ``headers`` mapping and handed
back next time. Sizes are as displayed: EXIF rotation applied, as training sees them.

Caption length is counted in characters and words, and in tokens when the caller passes
``count_tokens`` - core imports no ML library, so the tokenizer-backed counter lives in
:mod:`lora_studio.training.tokens`. Tag frequency is :meth:`Dataset.tag_frequency`, the
very numbers written into a LoRA's ``ss_tag_frequency``.
"""

from __future__ import annotations

import collections
import math
import statistics
from collections.abc import Callable, MutableMapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lora_studio.core.buckets import placement_for
from lora_studio.core.config import LoraConfig
from lora_studio.core.dataset import Dataset
from lora_studio.core.imaging import ImageHeader, read_header
from lora_studio.core.preprocess import MIN_SIDE

#: Short-side bins of the resolution histogram: ``(lower bound, label)``.
RESOLUTION_BINS: tuple[tuple[int, str], ...] = (
    (0, "<256"),
    (256, "256-511"),
    (512, "512-767"),
    (768, "768-1023"),
    (1024, "1024-1535"),
    (1536, "1536-2047"),
    (2048, "2048+"),
)
#: Named aspect ratios (width:height), tallest first; each image counts for the nearest
#: one (in log space, so 2:1 and 1:2 are equally far from 1:1).
ASPECT_RATIOS: tuple[tuple[int, int], ...] = (
    (1, 3),
    (9, 21),
    (9, 16),
    (2, 3),
    (3, 4),
    (4, 5),
    (1, 1),
    (5, 4),
    (4, 3),
    (3, 2),
    (16, 9),
    (21, 9),
    (3, 1),
)
TOP_TAGS = 20
TOP_SIZES = 10

#: What a header cache holds per image: its header, or why it cannot be read.
HeaderOrProblem = ImageHeader | str


@dataclass(frozen=True)
class CaptionStats:
    """Caption lengths over the captioned images.

    Token fields are ``None`` when no tokenizer was given. ``over_limit`` names the
    captions longer than ``token_limit`` tokens (the text encoder cuts them off).
    """

    captioned: int
    mean_chars: float
    median_chars: float
    max_chars: int
    mean_words: float
    tokenizer: str | None = None
    mean_tokens: float | None = None
    max_tokens: int | None = None
    token_limit: int | None = None
    over_limit: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        data = dict(self.__dict__)
        data["over_limit"] = list(self.over_limit)
        return data


@dataclass
class DatasetStatistics:
    """Everything :func:`dataset_statistics` found; :meth:`to_dict` for JSON."""

    total_images: int
    readable_images: int
    unreadable: list[tuple[str, str]]
    resolution_histogram: dict[str, int]
    aspect_histogram: dict[str, int]
    top_sizes: list[tuple[str, int]]
    min_side: int | None
    max_side: int | None
    mean_megapixels: float
    captions: CaptionStats
    tag_frequency: dict[str, dict[str, int]]
    top_tags: list[tuple[str, int]]
    buckets: list[tuple[str, int]] | None = None
    bucket_settings: dict[str, Any] | None = None
    upscaled: int | None = None
    cancelled: bool = False
    rotated: int = 0
    modes: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "total_images": self.total_images,
            "readable_images": self.readable_images,
            "unreadable": [{"file": f, "reason": r} for f, r in self.unreadable],
            "resolution_histogram": self.resolution_histogram,
            "aspect_histogram": self.aspect_histogram,
            "top_sizes": [{"size": s, "count": c} for s, c in self.top_sizes],
            "min_side": self.min_side,
            "max_side": self.max_side,
            "mean_megapixels": round(self.mean_megapixels, 3),
            "rotated": self.rotated,
            "modes": self.modes,
            "captions": self.captions.to_dict(),
            "buckets": (
                [{"bucket": b, "count": c} for b, c in self.buckets]
                if self.buckets is not None
                else None
            ),
            "bucket_settings": self.bucket_settings,
            "upscaled": self.upscaled,
            "tag_frequency": self.tag_frequency,
            "top_tags": [{"tag": t, "count": c} for t, c in self.top_tags],
            "cancelled": self.cancelled,
        }


def resolution_bin(width: int, height: int) -> str:
    """The :data:`RESOLUTION_BINS` label of an image's short side."""
    short = min(width, height)
    label = RESOLUTION_BINS[0][1]
    for lower, name in RESOLUTION_BINS:
        if short >= lower:
            label = name
    return label


def aspect_bin(width: int, height: int) -> str:
    """The nearest :data:`ASPECT_RATIOS` entry, as ``"16:9"``."""
    log_aspect = math.log(width / height)
    w, h = min(ASPECT_RATIOS, key=lambda r: abs(math.log(r[0] / r[1]) - log_aspect))
    return f"{w}:{h}"


def read_headers(
    dataset: Dataset,
    cache: MutableMapping[Path, HeaderOrProblem] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> dict[Path, HeaderOrProblem]:
    """Every image's header (or why it is unreadable), reading only those ``cache`` lacks
    and adding them to it. Returns early, with what it has, once ``should_stop`` is true."""
    found: dict[Path, HeaderOrProblem] = {}
    for item in dataset.images:
        if should_stop is not None and should_stop():
            break
        header = cache.get(item.path) if cache is not None else None
        if header is None:
            header = _header_or_problem(item.path)
            if cache is not None:
                cache[item.path] = header
        found[item.path] = header
    return found


def _header_or_problem(path: Path) -> HeaderOrProblem:
    try:
        header = read_header(path)
    except FileNotFoundError:
        return "The image file is missing."
    except Exception as exc:  # Pillow raises many types for broken headers
        if type(exc).__name__ == "UnidentifiedImageError":
            return "Not a readable image (the file is corrupt or not an image)."
        return f"Not a readable image ({str(exc).strip() or type(exc).__name__})."
    if header.width < MIN_SIDE or header.height < MIN_SIDE:
        return f"The image is too small ({header.width}x{header.height})."
    return header


def caption_stats(
    dataset: Dataset,
    count_tokens: Callable[[str], int] | None = None,
    *,
    token_limit: int | None = None,
    tokenizer_name: str | None = None,
) -> CaptionStats:
    """Caption lengths in characters, words and (with ``count_tokens``) tokens.

    Characters are counted as :meth:`Dataset.stats` counts them (the stripped caption).
    """
    captioned = [item for item in dataset.images if item.has_caption]
    chars = [len(item.caption or "") for item in captioned]
    words = [len((item.caption or "").split()) for item in captioned]
    mean_tokens: float | None = None
    max_tokens: int | None = None
    over: list[str] = []
    if count_tokens is not None:
        tokens = [count_tokens(item.caption or "") for item in captioned]
        mean_tokens = sum(tokens) / len(tokens) if tokens else 0.0
        max_tokens = max(tokens, default=0)
        if token_limit is not None:
            over = [
                dataset.relative_name(item)
                for item, n in zip(captioned, tokens, strict=True)
                if n > token_limit
            ]
    return CaptionStats(
        captioned=len(captioned),
        mean_chars=sum(chars) / len(chars) if chars else 0.0,
        median_chars=float(statistics.median(chars)) if chars else 0.0,
        max_chars=max(chars, default=0),
        mean_words=sum(words) / len(words) if words else 0.0,
        tokenizer=tokenizer_name if count_tokens is not None else None,
        mean_tokens=mean_tokens,
        max_tokens=max_tokens,
        token_limit=token_limit if count_tokens is not None else None,
        over_limit=tuple(over),
    )


def dataset_statistics(
    dataset: Dataset,
    *,
    config: LoraConfig | None = None,
    count_tokens: Callable[[str], int] | None = None,
    token_limit: int | None = None,
    tokenizer_name: str | None = None,
    headers: MutableMapping[Path, HeaderOrProblem] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> DatasetStatistics:
    """Statistics of ``dataset`` from image headers and captions (pixels are not decoded).

    Args:
        dataset: the dataset.
        config: with it, the bucket distribution under its resolution and bucket settings
            (the trainer's placement), and how many images would be enlarged.
        count_tokens: caption -> token count (without start/end tokens), e.g.
            :func:`lora_studio.training.tokens.caption_token_counter`.
        token_limit: captions over this many tokens are listed (the encoder truncates).
        tokenizer_name: shown beside the token numbers.
        headers: a cache of headers by path, read from and added to.
        should_stop: polled per image; statistics of the images read so far come back
            with ``cancelled`` set.
    """
    found = read_headers(dataset, headers, should_stop)
    cancelled = len(found) < len(dataset.images)
    readable: list[ImageHeader] = []
    unreadable: list[tuple[str, str]] = []
    for item in dataset.images:
        header = found.get(item.path)
        if header is None:
            continue
        if isinstance(header, str):
            unreadable.append((dataset.relative_name(item), header))
        else:
            readable.append(header)

    resolution_hist = {label: 0 for _, label in RESOLUTION_BINS}
    aspect_hist = {f"{w}:{h}": 0 for w, h in ASPECT_RATIOS}
    sizes: collections.Counter[str] = collections.Counter()
    modes: collections.Counter[str] = collections.Counter()
    for header in readable:
        resolution_hist[resolution_bin(header.width, header.height)] += 1
        aspect_hist[aspect_bin(header.width, header.height)] += 1
        sizes[f"{header.width}x{header.height}"] += 1
        modes[header.mode] += 1

    buckets: list[tuple[str, int]] | None = None
    settings: dict[str, Any] | None = None
    upscaled: int | None = None
    if config is not None:
        placed = [placement_for(h.width, h.height, config) for h in readable]
        counts = collections.Counter(str(p.bucket) for p in placed)
        buckets = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
        upscaled = sum(1 for p in placed if p.scaled[0] > p.original[0])
        settings = {
            "resolution": config.resolution,
            "enable_bucket": config.enable_bucket,
            "min_bucket_side": config.min_bucket_side,
            "max_bucket_side": config.max_bucket_side,
            "bucket_no_upscale": config.bucket_no_upscale,
        }

    frequency = dataset.tag_frequency()
    totals: collections.Counter[str] = collections.Counter()
    for tags in frequency.values():
        totals.update(tags)
    sides = [s for h in readable for s in (h.width, h.height)]
    return DatasetStatistics(
        total_images=len(dataset.images),
        readable_images=len(readable),
        unreadable=unreadable,
        resolution_histogram={k: v for k, v in resolution_hist.items() if v},
        aspect_histogram={k: v for k, v in aspect_hist.items() if v},
        top_sizes=sizes.most_common(TOP_SIZES),
        min_side=min((min(h.width, h.height) for h in readable), default=None),
        max_side=max(sides, default=None),
        mean_megapixels=(
            sum(h.width * h.height for h in readable) / len(readable) / 1e6 if readable else 0.0
        ),
        captions=caption_stats(
            dataset, count_tokens, token_limit=token_limit, tokenizer_name=tokenizer_name
        ),
        tag_frequency=frequency,
        top_tags=totals.most_common(TOP_TAGS),
        buckets=buckets,
        bucket_settings=settings,
        upscaled=upscaled,
        cancelled=cancelled,
        rotated=sum(1 for h in readable if h.orientation != 1),
        modes=dict(sorted(modes.items())),
    )


def _bars(histogram: dict[str, int], width: int = 24) -> list[str]:
    if not histogram:
        return []
    peak = max(histogram.values())
    label_width = max(len(k) for k in histogram)
    return [
        f"    {label:>{label_width}}  {'#' * max(1, round(width * n / peak)):<{width}} {n}"
        for label, n in histogram.items()
    ]


def stats_report(stats: DatasetStatistics) -> list[str]:
    """Human-readable lines for ``lora-studio dataset stats`` (after its existing lines)."""
    lines: list[str] = []
    if stats.unreadable:
        lines.append(f"  unreadable:      {len(stats.unreadable)} of {stats.total_images}")
    if stats.readable_images:
        lines.append(
            f"  sizes:           short side {stats.min_side} px smallest, "
            f"long side {stats.max_side} px largest, "
            f"{stats.mean_megapixels:.2f} MP on average"
        )
        if stats.rotated:
            lines.append(f"  EXIF-rotated:    {stats.rotated} (turned upright for training)")
        lines.append("  short side:")
        lines.extend(_bars(stats.resolution_histogram))
        lines.append("  aspect ratio:")
        lines.extend(_bars(stats.aspect_histogram))
    if stats.buckets is not None and stats.bucket_settings is not None:
        how = "buckets" if stats.bucket_settings["enable_bucket"] else "square crops (buckets off)"
        lines.append(f"  at {stats.bucket_settings['resolution']} px, {how}:")
        lines.extend(_bars(dict(stats.buckets)))
        if stats.upscaled:
            lines.append(
                f"  enlarged:        {stats.upscaled} images are smaller than their bucket"
            )
    captions = stats.captions
    if captions.captioned:
        lines.append(
            f"  caption chars:   {captions.mean_chars:.0f} on average, "
            f"median {captions.median_chars:.0f}, longest {captions.max_chars}"
        )
        if captions.mean_tokens is not None:
            text = (
                f"  caption tokens:  {captions.mean_tokens:.1f} on average, "
                f"longest {captions.max_tokens}"
            )
            if captions.tokenizer:
                text += f" ({captions.tokenizer})"
            lines.append(text)
            if captions.over_limit:
                lines.append(
                    f"  too long:        {len(captions.over_limit)} captions exceed "
                    f"{captions.token_limit} tokens and are cut off: "
                    + ", ".join(captions.over_limit[:5])
                    + (" ..." if len(captions.over_limit) > 5 else "")
                )
    for name, reason in stats.unreadable:
        lines.append(f"  unreadable:      {name}: {reason}")
    return lines
