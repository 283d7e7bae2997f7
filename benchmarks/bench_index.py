"""Benchmark opening a folder: ``Dataset.from_directory`` over N images, in images/second.

    python benchmarks/bench_index.py [--images 10000] [--captions 0.8] [--folders 4]
                                     [--repeat 3] [--json]

Creates N small PNG images (the same bytes written N times: indexing never reads pixels,
so their size does not matter) in a temporary folder, spread over kohya repeat folders,
with a caption file beside a share of them, then times ``Dataset.from_directory`` a few
times and reports the best and the median. Opening a folder reads only the listing and
the caption files, so 10,000 images should index in well under a couple of seconds.
A run with ``--layout metadata`` puts the captions in one ``metadata.jsonl`` instead.
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

from PIL import Image

from lora_studio.core.dataset import Dataset


def make_dataset(folder: Path, count: int, captions: float, folders: int, layout: str) -> None:
    """``count`` images under ``folder`` in ``folders`` repeat folders; a ``captions``
    share of them captioned (sidecars, or one ``metadata.jsonl`` with ``layout=metadata``)."""
    buffer = io.BytesIO()
    Image.new("RGB", (16, 16), (90, 140, 200)).save(buffer, format="PNG")
    png = buffer.getvalue()
    rows = []
    for index in range(count):
        sub = folder / f"{index % folders + 1}_concept {index % folders}"
        sub.mkdir(parents=True, exist_ok=True)
        image = sub / f"image {index:06d}.png"
        image.write_bytes(png)
        if int((index + 1) * captions) > int(index * captions):
            text = f"bench, a picture number {index}, soft light"
            if layout == "metadata":
                rows.append({"file_name": image.relative_to(folder).as_posix(), "text": text})
            else:
                image.with_suffix(".txt").write_text(text, encoding="utf-8")
    if rows:
        (folder / "metadata.jsonl").write_text(
            "".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8"
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=10_000)
    parser.add_argument("--captions", type=float, default=0.8, help="share captioned (0-1)")
    parser.add_argument("--folders", type=int, default=4, help="kohya repeat folders")
    parser.add_argument("--layout", choices=["kohya", "metadata"], default="kohya")
    parser.add_argument("--repeat", type=int, default=3, help="timed runs")
    parser.add_argument("--json", action="store_true", help="print only a JSON summary")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="lora-studio-bench-index-") as tmp:
        folder = Path(tmp) / "dataset"
        started = time.perf_counter()
        make_dataset(folder, args.images, args.captions, max(1, args.folders), args.layout)
        made = time.perf_counter() - started
        if not args.json:
            print(f"made {args.images} images in {made:.1f} s ({args.layout} layout)")
        timings = []
        dataset = None
        for _ in range(max(1, args.repeat)):
            started = time.perf_counter()
            dataset = Dataset.from_directory(folder)
            timings.append(time.perf_counter() - started)
        assert dataset is not None and len(dataset) == args.images
        captioned = sum(1 for item in dataset if item.has_caption)
    best, median = min(timings), statistics.median(timings)
    summary = {
        "benchmark": "index",
        "layout": args.layout,
        "images": args.images,
        "captioned": captioned,
        "best_s": round(best, 4),
        "median_s": round(median, 4),
        "images_per_s": round(args.images / best),
    }
    if args.json:
        print(json.dumps(summary))
    else:
        print(
            f"from_directory: {args.images} images ({captioned} captioned) in {best:.3f} s "
            f"best, {median:.3f} s median: {args.images / best:,.0f} images/s"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
