"""LocalBackend: the real trainer on a worker thread, watched from asyncio."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from lora_studio.backends import BackendConfig, BackendType, LocalBackend, create_backend
from lora_studio.core.config import LoraConfig
from lora_studio.core.dataset import Dataset
from lora_studio.core.errors import BackendError
from lora_studio.core.jobs import JobStatus
from lora_studio.core.request import TrainingRequest


def _request(dataset: Path, out: Path, steps: int = 3) -> TrainingRequest:
    config = LoraConfig.fast_preset().replace(name="bk", resolution=64, max_steps=steps)
    return TrainingRequest(Dataset.from_directory(dataset), config, "builtin:tiny-sd15", out)


async def test_submit_watch_and_download(tiny_model, small_dataset, tmp_path) -> None:
    started: list[str] = []

    def start_worker(fn, name):
        started.append(name)
        thread = threading.Thread(target=fn, name=name)
        thread.start()
        return thread

    backend = LocalBackend(start_worker=start_worker)
    job = await backend.submit(_request(small_dataset, tmp_path / "out"))
    assert started == [f"train-{job.id}"]
    seen = [p async for p in backend.watch(job)]
    statuses = [p.status for p in seen]
    assert statuses[-1] is JobStatus.SUCCEEDED
    assert JobStatus.RUNNING in statuses
    steps = [p.step for p in seen]
    assert steps == sorted(steps) and steps[-1] == 3
    final = await backend.progress(job)
    assert final.output_path == str(tmp_path / "out" / "bk.safetensors")
    assert job.status is JobStatus.SUCCEEDED
    copied = await backend.download_weights(job, tmp_path)
    assert copied == tmp_path / "bk.safetensors" and copied.stat().st_size > 0
    assert await backend.estimate_cost(_request(small_dataset, tmp_path)) == 0.0


async def test_one_local_run_at_a_time_and_cancel(tiny_model, small_dataset, tmp_path) -> None:
    backend = LocalBackend()
    job = await backend.submit(_request(small_dataset, tmp_path / "out", steps=500))
    with pytest.raises(BackendError, match="still going"):
        await backend.submit(_request(small_dataset, tmp_path / "out2"))
    with pytest.raises(BackendError, match="has not finished"):
        await backend.download_weights(job)
    cancelled_at = None
    async for progress in backend.watch(job):
        if progress.step >= 1 and cancelled_at is None:
            cancelled_at = progress.step
            await backend.cancel(job)
    final = await backend.progress(job)
    assert final.status is JobStatus.CANCELLED
    assert cancelled_at is not None and final.step <= cancelled_at + 1
    assert Path(final.output_path).exists()
    assert backend.running_jobs() == []


async def test_failures_arrive_as_a_failed_progress(small_dataset, tmp_path) -> None:
    backend = LocalBackend()
    request = _request(small_dataset, tmp_path / "out")
    request = TrainingRequest(
        request.dataset, request.config, str(tmp_path / "missing"), request.output_dir
    )
    job = await backend.submit(request)
    seen = [p async for p in backend.watch(job)]
    assert seen[-1].status is JobStatus.FAILED
    assert "does not exist" in (seen[-1].error or "")
    with pytest.raises(BackendError, match="produced no LoRA"):
        await backend.download_weights(job)


async def test_check_reports_the_device() -> None:
    status = await LocalBackend().check()
    assert status.ok and status.device in {"cpu", "cuda", "mps"}


def test_factory() -> None:
    backend = create_backend(BackendConfig(BackendType.LOCAL, Path("out")))
    assert isinstance(backend, LocalBackend)
    with pytest.raises(BackendError, match="not available"):
        create_backend(BackendConfig(BackendType.REPLICATE, Path("out")).with_api_key("r8_secret"))
    assert "r8_secret" not in repr(
        BackendConfig(BackendType.REPLICATE, Path("o"), api_key="r8_secret")
    )
