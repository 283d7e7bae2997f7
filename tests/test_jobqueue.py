"""The job queue with real local training on the tiny model (remote backends are tested
against their loopback stand-ins in tests/backends)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from lora_studio.backends.local import LocalBackend
from lora_studio.core.config import LoraConfig
from lora_studio.core.errors import BackendError, ConfigError
from lora_studio.core.jobs import BackendType, Job, JobSpec, JobStatus, JobStore
from lora_studio.jobqueue import JobQueue

pytestmark = pytest.mark.usefixtures("tiny_model")


def _spec(dataset: Path, out: Path, steps: int = 2, **config) -> JobSpec:
    settings = {"name": "q", "resolution": 64, "max_steps": steps, "rank": 4, "alpha": 4.0}
    return JobSpec(
        dataset_dir=str(dataset),
        config=LoraConfig.fast_preset().replace(**{**settings, **config}).to_dict(),
        base_model="builtin:tiny-sd15",
        output_dir=str(out),
    )


def _queue(store: JobStore) -> JobQueue:
    local = LocalBackend()  # one GPU (here: the CPU): one local run at a time
    return JobQueue(store, lambda spec: local)


async def test_local_jobs_run_one_at_a_time_in_queue_order(small_dataset, tmp_path) -> None:
    store = JobStore(tmp_path / "jobs.sqlite3")
    queue = _queue(store)
    seen: list[tuple[str, JobStatus]] = []
    queue.add_listener(lambda job, progress: seen.append((job.name, progress.status)))
    first = queue.enqueue(_spec(small_dataset, tmp_path / "out", name="first"))
    second = queue.enqueue(_spec(small_dataset, tmp_path / "out", name="second"))
    await queue.start()
    done = await asyncio.wait_for(queue.wait(second.id), 120)
    assert done.status is JobStatus.SUCCEEDED
    assert (await queue.wait(first.id)).status is JobStatus.SUCCEEDED
    running = [name for name, status in seen if status is JobStatus.RUNNING]
    assert running.index("second") > len(running) - 1 - running[::-1].index("first")
    stored = store.get(first.id)
    assert stored is not None and stored.output_path and Path(stored.output_path).exists()
    assert [e.status for e in store.events(first.id)][0] is JobStatus.QUEUED
    assert JobStatus.SUCCEEDED in [e.status for e in store.events(first.id)]
    assert store.losses(first.id) and store.logs(first.id)
    await queue.stop()


async def test_cancel_move_retry_and_batches(small_dataset, tmp_path) -> None:
    store = JobStore(tmp_path / "jobs.sqlite3")
    queue = _queue(store)
    a = queue.enqueue(_spec(small_dataset, tmp_path / "out", name="a"))
    b = queue.enqueue(_spec(small_dataset, tmp_path / "out", name="b"))
    batch = queue.enqueue_batch(
        _spec(small_dataset, tmp_path / "out", name="style"),
        [{"config": {"rank": 2, "alpha": 2.0}, "suffix": "r2"}, {"config": {"rank": 8}}],
    )
    assert [j.name for j in batch] == ["style-r2", "style-2"]
    assert batch[0].batch_id == batch[1].batch_id and batch[0].config["rank"] == 2
    queue.move(batch[1].id, 0)
    assert [j.name for j in queue.jobs()] == ["style-2", "a", "b", "style-r2"]
    await queue.cancel(b.id)
    assert store.get(b.id).status is JobStatus.CANCELLED  # type: ignore[union-attr]
    with pytest.raises(BackendError, match="still waiting"):
        queue.move(b.id, 0)
    again = queue.retry(b.id)
    assert again.id != b.id and again.spec == b.spec and again.status is JobStatus.QUEUED
    with pytest.raises(BackendError, match="no checkpoint"):
        queue.retry(a.id, resume=True)
    with pytest.raises(ConfigError):
        queue.enqueue(_spec(small_dataset, tmp_path / "out", rank=0))


async def test_a_restart_keeps_the_queue_and_marks_a_dead_local_run_interrupted(
    small_dataset, tmp_path
) -> None:
    db = tmp_path / "jobs.sqlite3"
    store = JobStore(db)
    queue = _queue(store)
    # A run that saved a checkpoint, then "the app closed" while it was running.
    spec = _spec(small_dataset, tmp_path / "out", steps=6, name="long", save_every_n_steps=2)
    from lora_studio.core.dataset import Dataset
    from lora_studio.core.request import TrainingRequest
    from lora_studio.training.trainer import Trainer

    Trainer(
        TrainingRequest(
            Dataset.from_directory(small_dataset),
            LoraConfig.from_dict(spec.config).replace(max_steps=2),
            spec.base_model,
            Path(spec.output_dir),
        )
    ).train()
    dead = Job(
        id=Job.new_id(), backend=BackendType.LOCAL, name="long", base_model=spec.base_model,
        output_dir=spec.output_dir, dataset_dir=spec.dataset_dir, config=spec.config,
        spec=spec, status=JobStatus.RUNNING, started_at=time.time(),
    )  # fmt: skip
    store.save(dead)
    waiting = queue.enqueue(_spec(small_dataset, tmp_path / "out", name="waiting"))
    store.close()

    reopened = JobStore(db)
    restarted = _queue(reopened)
    assert await restarted.start() == []
    interrupted = reopened.get(dead.id)
    assert interrupted is not None and interrupted.status is JobStatus.INTERRUPTED
    assert "Resume it from step-000002" in (interrupted.error or "")
    done = await asyncio.wait_for(restarted.wait(waiting.id), 120)
    assert done.status is JobStatus.SUCCEEDED
    resumed = restarted.retry(dead.id, resume=True)
    assert resumed.spec is not None and resumed.spec.resume_from
    assert (await asyncio.wait_for(restarted.wait(resumed.id), 120)).status is JobStatus.SUCCEEDED
    assert any("Resumed from step-000002" in line for line in reopened.logs(resumed.id))
    await restarted.stop()


async def test_a_job_whose_dataset_vanished_fails_with_the_reason(tmp_path) -> None:
    store = JobStore(tmp_path / "jobs.sqlite3")
    queue = _queue(store)
    job = queue.enqueue(_spec(tmp_path / "gone", tmp_path / "out"))
    await queue.start()
    failed = await asyncio.wait_for(queue.wait(job.id), 60)
    assert failed.status is JobStatus.FAILED and "does not exist" in (failed.error or "")
    await queue.stop()
