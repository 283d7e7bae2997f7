"""Measure real training runs and compare them with LoRA Studio's estimates.

    python benchmarks/bench_estimates.py [--steps 20] [--model builtin:tiny-sd15]

On a CPU it trains the tiny built-in model at a few settings; with CUDA it also records
the peak GPU memory (``torch.cuda.max_memory_allocated``) and compares it with
``estimate_vram``. Prints a Markdown table (the one in docs/estimates.md).
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from lora_studio.core.base_model import ModelKind, resolve_base_model  # noqa: E402
from lora_studio.core.config import LoraConfig  # noqa: E402
from lora_studio.core.dataset import Dataset  # noqa: E402
from lora_studio.core.estimates import (  # noqa: E402
    architecture_for,
    estimate_vram_gb,
    seconds_per_step,
)
from lora_studio.core.jobs import JobStatus, Progress  # noqa: E402
from lora_studio.core.request import TrainingRequest  # noqa: E402
from lora_studio.training.trainer import Trainer  # noqa: E402

CASES = [
    ("128 px, batch 1", {"resolution": 128}),
    ("256 px, batch 1", {"resolution": 256}),
    ("256 px, batch 2", {"resolution": 256, "batch_size": 2}),
    ("256 px, checkpointing", {"resolution": 256, "gradient_checkpointing": True}),
    ("256 px, text encoder", {"resolution": 256, "train_text_encoder": True}),
    ("512 px, batch 1", {"resolution": 512}),
]


class StepTimes:
    """Wall time of every optimizer step after the first (warm-up) one."""

    def __init__(self) -> None:
        self.stamps: list[float] = []

    def on_progress(self, progress: Progress) -> None:
        new_step = len(self.stamps) < progress.step
        if progress.status is JobStatus.RUNNING and progress.step and new_step:
            self.stamps.append(time.perf_counter())

    def on_log(self, line: str) -> None:
        pass

    def per_step(self) -> float:
        gaps = [b - a for a, b in zip(self.stamps[1:], self.stamps[2:], strict=False)]
        return statistics.median(gaps)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--model", default="builtin:tiny-sd15")
    args = parser.parse_args()

    import torch

    ref = resolve_base_model(args.model)
    assert ref.family is not None
    tiny = ref.kind is ModelKind.BUILTIN
    arch = architecture_for(ref.family, tiny=tiny)
    cuda = torch.cuda.is_available()
    device = torch.cuda.get_device_name(0) if cuda else f"CPU ({torch.get_num_threads()} threads)"
    print(f"Model {args.model}, {args.steps} steps per case, on {device}\n")
    header = "| case | measured s/step | estimated s/step | error |"
    if cuda:
        header += " peak VRAM GB | estimated GB | error |"
    print(header)
    print("|" + "---|" * (header.count("|") - 1))
    scratch = Path(tempfile.mkdtemp(prefix="lora-studio-measure-"))
    try:
        data = scratch / "data"
        shutil.copytree(REPO / "resources" / "sample_dataset", data)
        dataset = Dataset.from_directory(data)
        for name, changes in CASES:
            config = LoraConfig.fast_preset().replace(
                max_steps=args.steps, name="measure", cache_to_disk=False, **changes
            )
            times = StepTimes()
            if cuda:
                torch.cuda.reset_peak_memory_stats()
            Trainer(TrainingRequest(dataset, config, args.model, scratch / "out"), times).train()
            measured = times.per_step()
            estimated = seconds_per_step(config, arch)
            row = (
                f"| {name} | {measured:.3f} | {estimated:.3f} | "
                f"{(estimated - measured) / measured:+.0%} |"
            )
            if cuda:
                peak = torch.cuda.max_memory_allocated() / 1e9
                guess = estimate_vram_gb(config, ref.family, tiny=tiny)
                row += f" {peak:.2f} | {guess:.2f} | {(guess - peak) / peak:+.0%} |"
            print(row, flush=True)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
