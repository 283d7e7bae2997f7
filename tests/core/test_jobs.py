from __future__ import annotations

import threading
from pathlib import Path

from lora_studio.core.jobs import BackendType, Job, JobStatus, JobStore, Progress


def _job(name: str = "demo") -> Job:
    return Job(
        id=Job.new_id(),
        backend=BackendType.LOCAL,
        name=name,
        base_model="builtin:tiny-sd15",
        output_dir="/tmp/out",
        config={"rank": 8},
    )


def test_job_store_round_trip_survives_reopening(tmp_path: Path) -> None:
    db = tmp_path / "jobs.sqlite3"
    store = JobStore(db)
    job = _job()
    store.save(job)
    job.status = JobStatus.SUCCEEDED
    job.output_path = "/tmp/out/demo.safetensors"
    store.save(job)
    store.close()
    again = JobStore(db)
    loaded = again.get(job.id)
    assert loaded is not None
    assert loaded.status is JobStatus.SUCCEEDED
    assert loaded.config == {"rank": 8}
    assert loaded.output_path == "/tmp/out/demo.safetensors"
    assert again.get("missing") is None


def test_job_store_lists_newest_first_and_is_thread_safe() -> None:
    store = JobStore()
    jobs = [_job(f"j{i}") for i in range(20)]
    for offset, job in enumerate(jobs):
        job.created_at += offset
    threads = [threading.Thread(target=store.save, args=(job,)) for job in jobs]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    listed = store.list()
    assert [j.name for j in listed] == [f"j{i}" for i in reversed(range(20))]


def test_progress_fraction_and_finish() -> None:
    assert Progress().fraction == 0.0
    p = Progress(status=JobStatus.RUNNING, step=15, total_steps=60)
    assert p.progress == 25.0 and not p.is_finished()
    done = p.evolve(status=JobStatus.SUCCEEDED)
    assert done.fraction == 1.0 and done.is_finished()
    assert JobStatus.CANCELLED.is_finished and not JobStatus.SAVING.is_finished
