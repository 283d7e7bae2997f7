"""JobQueue with a remote backend (the Replicate stand-in on loopback): the LoRA is
downloaded before the job is reported done, and the queue closes the backends' HTTP
clients when a job ends and when it stops."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from replicate_server import ACCOUNT, TOKEN, ReplicateStandIn

from lora_studio.backends.base import BackendConfig
from lora_studio.backends.replicate import ReplicateBackend
from lora_studio.core.config import LoraConfig
from lora_studio.core.jobs import BackendType, JobSpec, JobStatus, JobStore
from lora_studio.jobqueue import JobQueue


@pytest.fixture(autouse=True)
def _no_ambient_token(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("REPLICATE_API_TOKEN", raising=False)
    import keyring

    monkeypatch.setattr(keyring, "get_password", lambda *_: None)


@pytest.fixture
async def server() -> AsyncIterator[ReplicateStandIn]:
    stand_in = await ReplicateStandIn(steps_per_poll=4).start()
    yield stand_in
    await stand_in.close()


def _spec(dataset: Path, out: Path, url: str) -> JobSpec:
    config = LoraConfig.flux_preset().replace(name="remote", trigger_word="pcs", max_steps=8)
    return JobSpec(
        dataset_dir=str(dataset),
        config=config.to_dict(),
        base_model="black-forest-labs/FLUX.1-dev",
        output_dir=str(out),
        backend=BackendType.REPLICATE,
        backend_options={"url": url, "destination": f"{ACCOUNT}/remote"},
    )


class _Made:
    """A factory that keeps the backends it made, to look at them afterwards."""

    def __init__(self) -> None:
        self.backends: list[ReplicateBackend] = []

    def __call__(self, spec: JobSpec) -> ReplicateBackend:
        options = spec.backend_options
        config = BackendConfig(
            spec.backend, Path(spec.output_dir), api_url=options["url"], api_key=TOKEN
        )
        backend = ReplicateBackend(
            config, destination=options["destination"], poll_interval=0.01, max_poll_interval=0.05
        )
        self.backends.append(backend)
        return backend


async def test_a_remote_job_ends_with_its_lora_downloaded_and_its_client_closed(
    server, small_dataset, tmp_path
) -> None:
    store = JobStore(tmp_path / "jobs.sqlite3")
    made = _Made()
    queue = JobQueue(store, made)
    statuses: list[JobStatus] = []
    queue.add_listener(lambda job, progress: statuses.append(progress.status))
    job = queue.enqueue(_spec(small_dataset, tmp_path / "out", server.api_url))
    await queue.start()
    try:
        done = await asyncio.wait_for(queue.wait(job.id), 30)
    finally:
        await queue.stop()
    assert done.status is JobStatus.SUCCEEDED, done.error
    assert done.output_path and Path(done.output_path).is_file()
    assert done.cost is not None and done.cost > 0
    assert statuses[-1] is JobStatus.SUCCEEDED and JobStatus.SAVING in statuses
    (backend,) = made.backends
    assert backend._http is None  # closed once the job ended


async def test_stop_closes_the_clients_of_runs_still_going(server, small_dataset, tmp_path) -> None:
    server.steps_per_poll = 1
    store = JobStore(tmp_path / "jobs.sqlite3")
    made = _Made()
    queue = JobQueue(store, made)
    running = asyncio.Event()
    queue.add_listener(lambda job, p: running.set() if p.status is JobStatus.PREPARING else None)
    job = queue.enqueue(_spec(small_dataset, tmp_path / "out", server.api_url))
    await queue.start()
    await asyncio.wait_for(running.wait(), 30)
    await queue.stop()
    (backend,) = made.backends
    assert backend._http is None
    stored = store.get(job.id)
    assert stored is not None and not stored.status.is_finished and stored.remote_id


async def test_a_queued_job_without_a_spec_is_left_to_whoever_recorded_it(tmp_path) -> None:
    from lora_studio.core.jobs import Job

    store = JobStore(tmp_path / "jobs.sqlite3")
    made = _Made()
    queue = JobQueue(store, made)
    outsider = Job(
        id=Job.new_id(), backend=BackendType.REPLICATE, name="x", base_model="", output_dir=""
    )
    store.save(outsider)  # queued, no spec: e.g. a run the window hosts itself
    await queue.start()
    await asyncio.sleep(0.05)
    await queue.stop()
    assert made.backends == []
    assert store.get(outsider.id).status is JobStatus.QUEUED  # type: ignore[union-attr]


async def test_a_run_waiting_in_the_servers_own_queue_is_not_queued_in_ours(tmp_path) -> None:
    """ComfyUI reports a prompt it holds as queued; the job has left our queue, so a
    restart must re-attach it, never submit it again."""
    import sys

    sys.path.insert(0, str(Path(__file__).parent))
    from comfyui_server import FakeComfyUI
    from PIL import Image

    from lora_studio.backends.factory import backend_for_spec

    data = tmp_path / "data"
    data.mkdir()
    for n in range(2):
        Image.new("RGB", (64, 64), "red").save(data / f"{n}.png")
        (data / f"{n}.txt").write_text("a red square", encoding="utf-8")
    server = FakeComfyUI(tmp_path / "comfy", generation="new")
    await server.start()
    server.hold = True
    store = JobStore(tmp_path / "jobs.sqlite3")
    queue = JobQueue(store, backend_for_spec)
    seen: list[JobStatus] = []
    queue.add_listener(lambda job, progress: seen.append(progress.status))
    config = LoraConfig.fast_preset().replace(name="held", resolution=64, max_steps=2)
    job = queue.enqueue(
        JobSpec(
            dataset_dir=str(data),
            config=config.to_dict(),
            base_model="",
            output_dir=str(tmp_path / "out"),
            backend=BackendType.COMFYUI,
            backend_options={"url": server.url, "checkpoint": "v1-5-pruned-emaonly.safetensors"},
        )
    )
    try:
        await queue.start()
        for _ in range(200):
            stored = store.get(job.id)
            if stored is not None and stored.remote_id:
                break
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.3)  # a few updates while ComfyUI holds the prompt
    finally:
        await queue.stop()
        await server.stop()
    stored = store.get(job.id)
    assert stored is not None and stored.remote_id
    assert stored.status is JobStatus.PREPARING
    assert seen[0] is JobStatus.QUEUED and JobStatus.QUEUED not in seen[1:]
