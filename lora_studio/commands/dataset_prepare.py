"""``lora-studio dataset prepare DIR --out OUT --resolution R``: a training-ready copy.

    lora-studio dataset prepare photos/ --out prepared/ --resolution 512 --mode smart
    lora-studio dataset prepare photos/ --resolution 1024 --buckets --preview

Writes resized copies (and their captions, kohya layout kept) into OUT; the originals are
not changed. A second run over an unchanged folder does no work. ``--preview`` prints
where each image would go (bucket, scaled size, crop) and writes nothing.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
from typing import Any

from lora_studio.core.preprocess import (
    IMAGE_FORMATS,
    PlannedImage,
    PrepareMode,
    PrepareProgress,
    bucket_counts,
    prepare_dataset,
    preview_assignments,
)

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_CANCELLED = 0, 1, 2, 130


def register(subparsers: Any) -> None:
    """Add ``prepare`` under ``lora-studio dataset``."""
    parser = subparsers.add_parser(
        "prepare",
        help="write resized, training-ready copies of a dataset's images",
        description=(__doc__ or "").replace("``", ""),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("dataset", help="dataset folder (images with .txt captions)")
    parser.add_argument("--out", help="folder for the prepared copy (not needed with --preview)")
    parser.add_argument(
        "--resolution", type=int, required=True, help="square side, or bucket resolution (px)"
    )
    parser.add_argument(
        "--mode",
        choices=[m.value for m in PrepareMode],
        default=PrepareMode.CROP.value,
        help="; ".join(f"{m.value}: {m.help}" for m in PrepareMode) + " (default: crop)",
    )
    parser.add_argument(
        "--buckets",
        action="store_true",
        help="fit each image to its aspect-ratio bucket (as training does) instead of a square",
    )
    parser.add_argument("--min-bucket-side", type=int, default=256, help="smallest bucket side")
    parser.add_argument("--max-bucket-side", type=int, default=2048, help="largest bucket side")
    parser.add_argument(
        "--no-upscale", action="store_true", help="small images get a bucket of their own size"
    )
    parser.add_argument(
        "--background",
        default="white",
        help="colour transparent pixels are flattened on (name, #rrggbb or r,g,b)",
    )
    parser.add_argument("--pad-color", default="black", help="border colour of --mode pad")
    parser.add_argument("--format", choices=IMAGE_FORMATS, default="png", help="output format")
    parser.add_argument(
        "--workers", type=int, default=None, help="parallel workers (default: CPUs)"
    )
    parser.add_argument(
        "--preview", action="store_true", help="print each image's bucket and crop; write nothing"
    )
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    parser.set_defaults(run=run)


def _options(args: argparse.Namespace) -> dict[str, Any]:
    from lora_studio.core.config import LoraConfig

    config = LoraConfig().replace(
        resolution=args.resolution,
        enable_bucket=args.buckets,
        min_bucket_side=args.min_bucket_side,
        max_bucket_side=args.max_bucket_side,
        bucket_no_upscale=args.no_upscale,
    )
    return {
        "resolution": args.resolution,
        "mode": args.mode,
        "buckets": args.buckets,
        "config": config,
        "workers": args.workers,
    }


def run(args: argparse.Namespace) -> int:
    if args.preview:
        return _preview(args)
    if not args.out:
        print("lora-studio: error: --out is required (or use --preview)", file=sys.stderr)
        return EXIT_USAGE
    stop = threading.Event()
    show = not args.json and sys.stderr.isatty()

    def progress(p: PrepareProgress) -> None:
        if show:
            print(f"\r{p.done}/{p.total} {p.current[-60:]:<60}", end="", file=sys.stderr)

    try:
        result = prepare_dataset(
            args.dataset,
            args.out,
            progress=progress,
            should_stop=stop.is_set,
            background=args.background,
            pad_color=args.pad_color,
            image_format=args.format,
            **_options(args),
        )
    except KeyboardInterrupt:
        stop.set()
        print("\nlora-studio: cancelled; what was written is kept", file=sys.stderr)
        return EXIT_CANCELLED
    if show:
        print(file=sys.stderr)
    if args.json:
        print(json.dumps(result.to_dict(), indent=2, ensure_ascii=False))
    else:
        for failed in result.failed:
            print(f"skipped {failed.source}: {failed.error}", file=sys.stderr)
        print(f"{result.summary()} -> {result.out_dir}")
    if result.total and len(result.failed) == result.total:
        return EXIT_ERROR
    return EXIT_OK


def _describe(plan: PlannedImage) -> str:
    if plan.geometry is None:
        return f"{plan.source}: not usable: {plan.problem}"
    g = plan.geometry
    text = f"{plan.source} -> {plan.output}  {g.original[0]}x{g.original[1]}"
    text += f" -> {g.target[0]}x{g.target[1]}"
    if g.scaled != g.target:
        text += f" (scaled to {g.scaled[0]}x{g.scaled[1]}"
        if g.crop is not None:
            text += ", crop at {},{}".format(*g.crop[:2])
        elif g.paste is not None:
            text += ", padded at {},{}".format(*g.paste)
        text += ")"
    return text


def _preview(args: argparse.Namespace) -> int:
    options = _options(args)
    plans = preview_assignments(args.dataset, image_format=args.format, **options)
    counts = bucket_counts(plans)
    if args.json:
        data = {
            "images": [p.to_dict() for p in plans],
            "buckets": [{"size": size, "count": n} for size, n in counts],
        }
        print(json.dumps(data, indent=2, ensure_ascii=False))
        return EXIT_OK
    for plan in plans:
        print(_describe(plan))
    print("buckets: " + ", ".join(f"{size} ({n})" for size, n in counts))
    return EXIT_OK
