"""Multi-process training through `accelerate launch`: two CPU processes stand in for two
GPUs (gloo instead of NCCL), so the distributed path of the trainer runs here."""

from __future__ import annotations

from pathlib import Path

import pytest

from lora_studio.backends.launch import LaunchBackend, launch_command
from lora_studio.core.config import LoraConfig
from lora_studio.core.dataset import Dataset
from lora_studio.core.jobs import JobStatus
from lora_studio.core.request import TrainingRequest

pytestmark = pytest.mark.usefixtures("tiny_model")


def _request(dataset: Path, out: Path, steps: int, **changes) -> TrainingRequest:
    config = LoraConfig.fast_preset().replace(
        name="multi", resolution=64, max_steps=steps, rank=4, alpha=4.0, **changes
    )
    return TrainingRequest(Dataset.from_directory(dataset), config, "builtin:tiny-sd15", out)


def test_the_command_is_an_accelerate_launch_of_the_cli(small_dataset, tmp_path) -> None:
    request = _request(small_dataset, tmp_path / "out", 5)
    command = launch_command(request, tmp_path / "run.toml", 4, python="py")
    assert command[:3] == ["py", "-m", "accelerate.commands.launch"]
    assert command[command.index("--num_processes") + 1] == "4"
    tail = command[command.index("-m", 3) :]
    assert tail[:4] == ["-m", "lora_studio", "train", str(small_dataset)]
    assert "--progress-json" in tail and str(tmp_path / "run.toml") in tail


async def test_two_processes_train_and_report_progress(small_dataset, tmp_path) -> None:
    backend = LaunchBackend(num_processes=2)
    job = await backend.submit(_request(small_dataset, tmp_path / "out", 4))
    seen = [p async for p in backend.watch(job)]
    final = seen[-1]
    assert final.status is JobStatus.SUCCEEDED, final.error
    steps = [p.step for p in seen if p.status is JobStatus.RUNNING]
    assert steps and steps == sorted(steps) and steps[-1] == 4
    # 4 images, batch 1, 2 processes: each epoch is 2 steps of 2 images each.
    assert final.total_steps == 4 and final.epoch == 2
    assert any("Distributed training: 2 processes" in line for line in final.log_tail)
    output = await backend.download_weights(job)
    assert output == tmp_path / "out" / "multi.safetensors" and output.exists()
    assert not list((tmp_path / "out").glob(".*.launch.toml"))


async def test_cancel_stops_every_process_after_the_same_step(small_dataset, tmp_path) -> None:
    backend = LaunchBackend(num_processes=2)
    job = await backend.submit(_request(small_dataset, tmp_path / "out", 2000))
    cancelled = False
    final = None
    async for progress in backend.watch(job):
        final = progress
        if progress.step >= 1 and not cancelled:
            cancelled = True
            await backend.cancel(job)
    assert final is not None and final.status is JobStatus.CANCELLED, final
    assert final.output_path and Path(final.output_path).name.startswith("multi-step")
    assert (tmp_path / "out" / "multi-checkpoints").is_dir()
