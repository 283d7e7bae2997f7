"""Benchmark ``dataset prepare``: images per second, serial against parallel.

    python benchmarks/bench_prepare.py [--images N] [--resolution 512] [--mode crop]
                                       [--workers W] [--executors thread,process]

Generates N photo-sized images (a mix of JPEG and PNG, landscape and portrait, 1600-3000 px,
smooth content so JPEG and PNG sizes are realistic) in a temporary folder, then prepares
them into a fresh folder with one worker, and with W workers per executor kind. A last run
repeats the parallel one over the unchanged folder to show the cache (it should do no
work). Prints one line per run and a JSON summary at the end (``--json`` prints only that).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from lora_studio.core.dataset import Dataset
from lora_studio.core.preprocess import prepare_dataset

_SIZES = [(1600, 1200), (1200, 1600), (2048, 1365), (3000, 2000), (1920, 1080)]


def make_images(folder: Path, count: int, seed: int = 0) -> None:
    """``count`` images with captions in a kohya repeat folder under ``folder``."""
    target = folder / "10_bench"
    target.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for index in range(count):
        width, height = _SIZES[index % len(_SIZES)]
        # Low-resolution noise scaled up: smooth like a photo, not incompressible.
        small = rng.integers(0, 256, (max(2, height // 32), max(2, width // 32), 3), np.uint8)
        img = Image.fromarray(small).resize((width, height), Image.Resampling.BICUBIC)
        if index % 3 == 2:
            img.save(target / f"img_{index:04d}.png", compress_level=1)
        else:
            img.save(target / f"img_{index:04d}.jpg", quality=90)
        (target / f"img_{index:04d}.txt").write_text(f"bench, image {index}", encoding="utf-8")


def run_once(
    dataset: Dataset,
    out: Path,
    resolution: int,
    mode: str,
    workers: int,
    executor: str,
) -> dict[str, object]:
    started = time.perf_counter()
    result = prepare_dataset(
        dataset,
        out,
        resolution=resolution,
        mode=mode,
        workers=workers,
        executor=executor,  # type: ignore[arg-type]
    )
    seconds = time.perf_counter() - started
    return {
        "workers": workers,
        "executor": executor if workers > 1 else "serial",
        "seconds": round(seconds, 3),
        "images_per_s": round(len(dataset) / seconds, 2),
        "summary": result.summary(),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=60)
    parser.add_argument("--resolution", type=int, default=512)
    parser.add_argument("--mode", default="crop", choices=["crop", "pad", "fill", "smart"])
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--executors", default="thread,process")
    parser.add_argument("--json", action="store_true", help="print only the JSON summary")
    args = parser.parse_args(argv)

    def say(text: str) -> None:
        if not args.json:
            print(text, flush=True)

    runs: list[dict[str, object]] = []
    with tempfile.TemporaryDirectory(prefix="bench-prepare-") as scratch:
        root = Path(scratch)
        say(f"generating {args.images} images ...")
        make_images(root / "src", args.images)
        dataset = Dataset.from_directory(root / "src")
        plan = [(1, "thread")] + [
            (args.workers, kind.strip()) for kind in args.executors.split(",") if kind.strip()
        ]
        for n, (workers, executor) in enumerate(plan):
            run = run_once(dataset, root / f"out{n}", args.resolution, args.mode, workers, executor)
            runs.append(run)
            say(
                f"{run['executor']:>8} x{workers}: {run['images_per_s']:7.2f} images/s "
                f"({run['seconds']} s; {run['summary']})"
            )
        cached = run_once(
            dataset,
            root / f"out{len(plan) - 1}",
            args.resolution,
            args.mode,
            args.workers,
            "thread",
        )
        cached["executor"] = "cached"
        runs.append(cached)
        say(f"  cached x{args.workers}: {cached['seconds']} s ({cached['summary']})")
    serial = float(runs[0]["seconds"])  # type: ignore[arg-type]
    summary = {
        "images": args.images,
        "resolution": args.resolution,
        "mode": args.mode,
        "cpu_count": os.cpu_count(),
        "runs": runs,
        "speedup": {
            f"{r['executor']}x{r['workers']}": round(serial / float(r["seconds"]), 2)  # type: ignore[arg-type]
            for r in runs[1:-1]
        },
    }
    print(json.dumps(summary, indent=None if not args.json else 2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
