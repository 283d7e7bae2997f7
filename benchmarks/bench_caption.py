"""Benchmark captioning throughput against a slow OpenAI-compatible server on loopback.

    python benchmarks/bench_caption.py [--images 100] [--latency 0.2] [--size 768]
                                       [--sweep 4,8] [--json]

Starts the loopback chat-completions server the captioning tests use
(``tests/captioning/caption_servers.py``: real HTTP in a thread, it decodes every image it
is sent), makes every answer wait ``--latency`` seconds as a remote vision model would,
and captions N generated JPEGs with :class:`~lora_studio.captioning.runner.CaptionRun`
and the ``openai`` provider: once with the provider's default concurrency, once one image
at a time (``--concurrency 1``), and once per ``--sweep`` value. Reports images per second
and the speed-up over one at a time, measured in the same process (ratios hold on a busy
machine); the ideal speed-up at concurrency ``c`` is ``c`` while the latency dominates.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "captioning"))

from caption_servers import LoopbackServer, Reply, Request, openai_chat  # noqa: E402

from lora_studio.captioning.openai_chat import OpenAIChatProvider  # noqa: E402
from lora_studio.captioning.postprocess import CaptionMode  # noqa: E402
from lora_studio.captioning.runner import CaptionRun, RunOptions, RunState  # noqa: E402
from lora_studio.core.dataset import Dataset  # noqa: E402


def make_images(folder: Path, count: int, size: int, seed: int = 0) -> None:
    """``count`` smooth JPEGs of ``size`` px (a few distinct ones under many names)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    distinct = []
    for _ in range(min(count, 8)):
        small = rng.integers(0, 256, (size // 32, size // 32, 3), np.uint8)
        img = Image.fromarray(small).resize((size, size), Image.Resampling.BICUBIC)
        path = folder / f"_{len(distinct)}.jpg"
        img.save(path, quality=90)
        distinct.append(path.read_bytes())
        path.unlink()
    for index in range(count):
        (folder / f"img_{index:04d}.jpg").write_bytes(distinct[index % len(distinct)])


def slow(handler, latency: float):  # type: ignore[no-untyped-def]
    """``handler`` with every answer delayed by ``latency`` seconds."""

    def handle(request: Request) -> Reply:
        reply = handler(request)
        reply.delay = latency
        return reply

    return handle


async def caption_all(url: str, dataset: Dataset, concurrency: int | None) -> dict[str, object]:
    provider = OpenAIChatProvider(url + "/v1", "llava", timeout_s=60.0)
    try:
        run = CaptionRun(
            provider,
            dataset,
            RunOptions(mode=CaptionMode.OVERWRITE, concurrency=concurrency, retries=0),
        )
        used = concurrency or provider.default_concurrency
        started = time.perf_counter()
        report = await run.run()
        seconds = time.perf_counter() - started
    finally:
        await provider.aclose()
    if report.state is not RunState.FINISHED or report.failed:
        raise SystemExit(f"captioning failed: {report.error or report.failed[0].error}")
    return {
        "concurrency": used,
        "default": concurrency is None,
        "images": len(report.captioned),
        "seconds": round(seconds, 3),
        "images_per_s": round(len(report.captioned) / seconds, 2),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=100)
    parser.add_argument("--latency", type=float, default=0.2, help="seconds per answer")
    parser.add_argument("--size", type=int, default=768, help="side of the generated images")
    parser.add_argument("--sweep", default="4,8", help="more concurrencies to try")
    parser.add_argument("--json", action="store_true", help="print only the JSON summary")
    args = parser.parse_args(argv)

    def say(text: str) -> None:
        if not args.json:
            print(text, flush=True)

    server = LoopbackServer(slow(openai_chat(), args.latency)).start()
    runs: list[dict[str, object]] = []
    try:
        with tempfile.TemporaryDirectory(prefix="bench-caption-") as scratch:
            make_images(Path(scratch), args.images, args.size)
            say(
                f"{args.images} images of {args.size} px, {args.latency * 1000:.0f} ms per "
                f"answer, {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}"
            )
            plan: list[int | None] = [None, 1]
            plan += [int(c) for c in args.sweep.split(",") if c.strip()]
            for concurrency in plan:
                # A fresh Dataset each time: a run reads captions from disk, none are written.
                run = asyncio.run(
                    caption_all(server.url, Dataset.from_directory(scratch), concurrency)
                )
                runs.append(run)
                say(
                    f"concurrency {run['concurrency']}{' (default)' if run['default'] else ''}: "
                    f"{run['images_per_s']} images/s ({run['seconds']} s)"
                )
    finally:
        server.stop()
    serial = float(runs[1]["images_per_s"])  # type: ignore[arg-type]
    for run in runs:
        run["speedup"] = round(float(run["images_per_s"]) / serial, 2)  # type: ignore[arg-type]
    default = runs[0]
    say("")
    say("| concurrency | images/s | vs one at a time | ideal |")
    say("|---|---|---|---|")
    for run in sorted(runs, key=lambda r: int(r["concurrency"])):  # type: ignore[arg-type]
        tag = " (default)" if run["default"] else ""
        say(
            f"| {run['concurrency']}{tag} | {run['images_per_s']} | {run['speedup']:.2f} | "
            f"{run['concurrency']} |"
        )
    summary = {
        "images": args.images,
        "latency_s": args.latency,
        "size": args.size,
        "cpu_count": os.cpu_count(),
        "default_concurrency": default["concurrency"],
        "default_speedup": default["speedup"],
        "runs": runs,
    }
    print(json.dumps(summary, indent=2 if args.json else None))
    return 0


if __name__ == "__main__":
    sys.exit(main())
