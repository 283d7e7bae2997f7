"""One queue for every backend, with history that survives restarts.

:class:`JobQueue` takes :class:`~lora_studio.core.jobs.JobSpec` values (a dataset folder,
a config, a base model, an output folder, a backend and its options), keeps them in the
:class:`~lora_studio.core.jobs.JobStore`, and starts them as slots free up:

* local jobs (this machine's GPU) one at a time;
* remote jobs (ComfyUI, Replicate) concurrently, up to ``remote_limit``.

Queued jobs can be reordered, cancelled, retried, and a dataset can be queued with several
presets or base models at once (:meth:`JobQueue.enqueue_batch`). Every update is written to
the store (status transitions, logs, the loss series, output, cost) through a
:class:`~lora_studio.core.jobs.ProgressRecorder`.

After a restart, :meth:`JobQueue.start` picks the store's unfinished jobs up again: queued
ones stay queued, remote runs are re-attached (their backend follows the ComfyUI prompt or
Replicate training by its ``remote_id``), and a local run that died with the app is marked
``interrupted``, with its newest checkpoint named so it can be resumed.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import replace
from pathlib import Path
from typing import Any

from lora_studio.backends.base import TrainingBackend
from lora_studio.core.config import LoraConfig
from lora_studio.core.dataset import Dataset
from lora_studio.core.errors import BackendError, LoraStudioError
from lora_studio.core.jobs import (
    BackendType,
    Job,
    JobSpec,
    JobStatus,
    JobStore,
    Progress,
    ProgressRecorder,
    current_process,
    process_alive,
)
from lora_studio.core.request import TrainingRequest

log = logging.getLogger(__name__)

BackendFactory = Callable[[JobSpec], TrainingBackend]
UpdateListener = Callable[[Job, Progress], None]


def latest_checkpoint_of(spec: JobSpec) -> Path | None:
    """The newest checkpoint a run of ``spec`` left in its output folder, if any."""
    return latest_checkpoint(spec.output_dir, str(spec.config.get("name", "")))


def latest_checkpoint(output_dir: str | Path, name: str) -> Path | None:
    """The newest finished checkpoint of the run ``name`` in ``output_dir``, if any."""
    root = Path(output_dir) / f"{name}-checkpoints"
    if not root.is_dir():
        return None
    found = sorted(
        p
        for p in root.iterdir()
        if p.is_dir() and not p.name.startswith(".") and (p / "state.json").exists()
    )  # ".step-N.partial" is one a kill interrupted while it was being written
    return found[-1] if found else None


def running_elsewhere(job: Job) -> bool:
    """Whether ``job`` is a local run that another live process (a ``lora-studio train``
    in a terminal, another window) is running now."""
    return (
        job.backend is BackendType.LOCAL
        and job.owner != current_process()
        and process_alive(job.owner)
    )


def mark_interrupted(store: JobStore, job: Job) -> None:
    """Record that ``job``'s run ended with its process, pointing at its last checkpoint."""
    if job.spec is not None:
        checkpoint = latest_checkpoint_of(job.spec)
    else:  # a run started from the command line records no spec
        checkpoint = latest_checkpoint(job.output_dir, job.name)
    job.status = JobStatus.INTERRUPTED
    job.finished_at = time.time()
    job.error = "The run ended with the process that ran it." + (
        f" Resume it from {checkpoint.name}." if checkpoint else " It left no checkpoint."
    )
    store.save(job)


def reconcile_local_jobs(store: JobStore) -> list[Job]:
    """Mark the local runs whose process is gone (killed, crashed, the machine restarted)
    as interrupted; returns them. Queued jobs wait for the next queue to start them."""
    found = []
    for job in store.unfinished():
        if job.backend is not BackendType.LOCAL or job.status is JobStatus.QUEUED:
            continue
        if job.owner == current_process() or process_alive(job.owner):
            continue
        mark_interrupted(store, job)
        found.append(job)
    return found


class _Running:
    def __init__(self, backend: TrainingBackend, backend_job: Job) -> None:
        self.backend = backend
        self.backend_job = backend_job
        self.task: asyncio.Task[None] | None = None
        self.latest: Progress | None = None
        self.changed = asyncio.Event()


class JobQueue:
    """Queues, runs and records training jobs on any backend (see the module docstring)."""

    def __init__(
        self,
        store: JobStore,
        make_backend: BackendFactory,
        *,
        remote_limit: int = 3,
        local_limit: int = 1,
    ) -> None:
        self.store = store
        self.make_backend = make_backend
        self.remote_limit = remote_limit
        self.local_limit = local_limit
        self._recorder = ProgressRecorder(store)
        self._running: dict[str, _Running] = {}
        self._listeners: list[UpdateListener] = []
        self._wake = asyncio.Event()
        self._scheduler: asyncio.Task[None] | None = None
        self._finished: dict[str, asyncio.Event] = {}

    # ---- life --------------------------------------------------------------------------

    async def start(self) -> list[Job]:
        """Pick up the store's unfinished jobs and start scheduling; returns the jobs that
        were re-attached."""
        reattached: list[Job] = []
        for job in self.store.unfinished():
            if job.status is JobStatus.QUEUED:
                continue
            if job.backend is BackendType.LOCAL or not job.remote_id or job.spec is None:
                if not running_elsewhere(job):
                    mark_interrupted(self.store, job)
                    self._notify(job, Progress(status=JobStatus.INTERRUPTED, error=job.error))
                continue
            try:
                backend = self.make_backend(job.spec)
                await backend.reattach(job)
            except LoraStudioError as exc:
                job.status, job.error = JobStatus.FAILED, f"Could not re-attach: {exc}"
                job.finished_at = time.time()
                self.store.save(job)
                self._notify(job, Progress(status=JobStatus.FAILED, error=job.error))
                continue
            self._follow(job, backend, job)
            reattached.append(job)
        if self._scheduler is None:
            self._scheduler = asyncio.get_running_loop().create_task(self._schedule())
        self._wake.set()
        return reattached

    async def stop(self) -> None:
        """Stop scheduling and following (remote runs go on; the next start re-attaches
        them), and close the backends' HTTP clients."""
        running = list(self._running.values())
        tasks = [r.task for r in running if r.task is not None]
        if self._scheduler is not None:
            tasks.append(self._scheduler)
            self._scheduler = None
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._running.clear()
        for backend in {id(r.backend): r.backend for r in running}.values():
            await _close(backend)

    def add_listener(self, listener: UpdateListener) -> Callable[[], None]:
        """``listener(job, progress)`` on every update of any job (on the event loop)."""
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener)

    # ---- queueing ----------------------------------------------------------------------

    def enqueue(self, spec: JobSpec, *, batch_id: str | None = None) -> Job:
        """Add a job at the end of the queue."""
        config = LoraConfig.from_dict(spec.config)  # refuse a bad spec now, not when it runs
        job = Job(
            id=Job.new_id(),
            backend=spec.backend,
            name=config.name,
            base_model=spec.base_model,
            output_dir=spec.output_dir,
            dataset_dir=spec.dataset_dir,
            config=spec.config,
            spec=spec,
            position=self._next_position(),
            batch_id=batch_id,
        )
        self.store.save(job)
        self._notify(job, Progress(status=JobStatus.QUEUED, message="Queued"))
        self._wake.set()
        return job

    def enqueue_batch(self, spec: JobSpec, variations: Iterable[dict[str, Any]]) -> list[Job]:
        """The seed's multi-model orchestration: ``spec`` once per variation, each a dict of
        ``config`` changes (e.g. another preset's values) and/or ``base_model``,
        ``backend``, ``backend_options``. Output names get a suffix per variation."""
        batch_id = uuid.uuid4().hex[:8]
        jobs = []
        for number, variation in enumerate(variations, start=1):
            changes = dict(variation)
            config = {**spec.config, **changes.pop("config", {})}
            config.setdefault("name", "lora")
            suffix = changes.pop("suffix", None) or str(number)
            config["name"] = f"{spec.config.get('name', 'lora')}-{suffix}"
            jobs.append(self.enqueue(replace(spec, config=config, **changes), batch_id=batch_id))
        return jobs

    def jobs(self) -> list[Job]:
        """Unfinished jobs in queue order (running first)."""
        return self.store.unfinished()

    def move(self, job_id: str, position: int) -> None:
        """Put queued job ``job_id`` at ``position`` (0 = next) among the queued jobs."""
        queued = [j for j in self.store.unfinished() if j.status is JobStatus.QUEUED]
        moving = next((j for j in queued if j.id == job_id), None)
        if moving is None:
            raise BackendError("Only a job that is still waiting in the queue can be moved.")
        queued.remove(moving)
        queued.insert(max(0, min(position, len(queued))), moving)
        for index, job in enumerate(queued):
            job.position = index
            self.store.save(job)
        self._wake.set()

    async def cancel(self, job_id: str) -> None:
        """Cancel a queued job at once, or ask a running one to stop."""
        running = self._running.get(job_id)
        if running is not None:
            await running.backend.cancel(running.backend_job)
            return
        job = self._job(job_id)
        if job.status.is_finished:
            return
        job.status, job.finished_at, job.message = JobStatus.CANCELLED, time.time(), "Cancelled"
        self.store.save(job)
        self._notify(job, Progress(status=JobStatus.CANCELLED, message="Cancelled"))
        self._done(job_id)

    def retry(self, job_id: str, *, resume: bool = False) -> Job:
        """Queue ``job_id``'s spec again (from its newest checkpoint when ``resume``)."""
        job = self._job(job_id)
        if job.spec is None:
            raise BackendError(f"Job {job.name} has no saved spec to run again.")
        spec = job.spec
        if resume:
            checkpoint = latest_checkpoint_of(spec)
            if checkpoint is None:
                raise BackendError(f"Job {job.name} left no checkpoint to resume from.")
            spec = replace(spec, resume_from=str(checkpoint))
        return self.enqueue(spec, batch_id=job.batch_id)

    # ---- following ---------------------------------------------------------------------

    def progress(self, job_id: str) -> Progress | None:
        running = self._running.get(job_id)
        return running.latest if running else None

    async def wait(self, job_id: str) -> Job:
        """Wait until ``job_id`` has finished; returns it as stored."""
        job = self._job(job_id)
        if not job.status.is_finished:
            await self._finished.setdefault(job_id, asyncio.Event()).wait()
        return self._job(job_id)

    async def watch(self, job_id: str) -> AsyncIterator[Progress]:
        """Every update of ``job_id`` until it finishes."""
        updates: asyncio.Queue[Progress] = asyncio.Queue()

        def listener(job: Job, progress: Progress) -> None:
            if job.id == job_id:
                updates.put_nowait(progress)

        remove = self.add_listener(listener)
        try:
            job = self._job(job_id)
            if job.status.is_finished:
                return
            while True:
                progress = await updates.get()
                yield progress
                if progress.is_finished():
                    return
        finally:
            remove()

    # ---- internals ---------------------------------------------------------------------

    def _job(self, job_id: str) -> Job:
        job = self.store.get(job_id)
        if job is None:
            matches = self.store.find(job_id)
            if len(matches) == 1:
                return matches[0]
            raise BackendError(
                f"No job {job_id}." if not matches else f"{job_id} matches several jobs."
            )
        return job

    def _next_position(self) -> int:
        unfinished = self.store.unfinished()
        return max((j.position for j in unfinished), default=-1) + 1

    def _notify(self, job: Job, progress: Progress) -> None:
        for listener in list(self._listeners):
            try:
                listener(job, progress)
            except Exception:
                log.exception("job listener failed")

    def _done(self, job_id: str) -> None:
        event = self._finished.pop(job_id, None)
        if event is not None:
            event.set()

    async def _schedule(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            for job in self.store.unfinished():
                if job.status is not JobStatus.QUEUED or job.id in self._running:
                    continue
                if job.spec is None:  # recorded by another host (the window's local run)
                    continue
                if job.owner != current_process() and process_alive(job.owner):
                    continue  # queued by another live window or command: its queue runs it
                local = job.backend is BackendType.LOCAL
                busy = sum(
                    1
                    for r in self._running.values()
                    if (r.backend_job.backend is BackendType.LOCAL) == local
                )
                if busy >= (self.local_limit if local else self.remote_limit):
                    continue
                await self._launch(job)

    async def _launch(self, job: Job) -> None:
        spec = job.spec
        assert spec is not None
        job.owner = current_process()  # adopted, if the process that queued it is gone
        backend: TrainingBackend | None = None
        try:
            backend = self.make_backend(spec)
            dataset = await asyncio.to_thread(Dataset.from_directory, spec.dataset_dir)
            request = TrainingRequest(
                dataset=dataset,
                config=LoraConfig.from_dict(spec.config),
                base_model=spec.base_model,
                output_dir=Path(spec.output_dir),
                resume_from=Path(spec.resume_from) if spec.resume_from else None,
            )
            job.estimated_cost = await backend.estimate_cost(request)
            backend_job = await backend.submit(request)
        except LoraStudioError as exc:
            job.status, job.error, job.finished_at = JobStatus.FAILED, str(exc), time.time()
            self.store.save(job)
            self._notify(job, Progress(status=JobStatus.FAILED, error=str(exc)))
            self._done(job.id)
            if backend is not None:
                await _close(backend)
            return
        job.remote_id = backend_job.remote_id
        job.status = JobStatus.PREPARING
        job.started_at = time.time()
        self.store.save(job)
        self._follow(job, backend, backend_job)

    def _follow(self, job: Job, backend: TrainingBackend, backend_job: Job) -> None:
        running = _Running(backend, backend_job)
        self._running[job.id] = running
        running.task = asyncio.get_running_loop().create_task(self._watch(job, running))

    async def _watch(self, job: Job, running: _Running) -> None:
        final: Progress | None = None
        try:
            async for update in running.backend.watch(running.backend_job):
                progress = update
                if progress.status is JobStatus.QUEUED:
                    # Waiting in the server's own queue (ComfyUI): it has left ours. Stored
                    # as queued, a restart would submit it a second time.
                    progress = progress.evolve(
                        status=JobStatus.PREPARING, message=progress.message or "Waiting"
                    )
                if _needs_download(job, progress):
                    progress = await self._download(job, running, progress)
                final = progress
                running.latest = progress
                if running.backend_job.remote_id and not job.remote_id:
                    job.remote_id = running.backend_job.remote_id
                    self.store.save(job)
                self._recorder.record(job, progress)
                self._notify(job, progress)
        except LoraStudioError as exc:
            final = (final or Progress()).evolve(status=JobStatus.FAILED, error=str(exc))
            self._recorder.record(job, final)
            self._notify(job, final)
        finally:
            self._running.pop(job.id, None)
            self._recorder.forget(job.id)
        actual_cost = getattr(running.backend, "actual_cost", None)
        if callable(actual_cost):
            with contextlib.suppress(LoraStudioError):
                cost = actual_cost(running.backend_job)
                job.cost = await cost if inspect.isawaitable(cost) else cost
                self.store.save(job)
        if final is None or not final.is_finished():
            job.status = JobStatus.FAILED
            job.error = "The backend stopped reporting before the run finished."
            job.finished_at = time.time()
            self.store.save(job)
        if not any(r.backend is running.backend for r in self._running.values()):
            await _close(running.backend)
        self._done(job.id)
        self._wake.set()

    async def _download(self, job: Job, running: _Running, progress: Progress) -> Progress:
        """Fetch a remote run's LoRA into its output folder before reporting success."""
        fetching = progress.evolve(status=JobStatus.SAVING, message="Downloading the LoRA\u2026")
        running.latest = fetching
        self._notify(job, fetching)
        try:
            path = await running.backend.download_weights(running.backend_job)
        except LoraStudioError as exc:
            log.warning("Could not download the LoRA of %s: %s", job.name, exc)
            return progress.evolve(
                message="Trained, but the LoRA was not downloaded",
                error=f"The run succeeded, but its LoRA could not be downloaded: {exc}",
            )
        return progress.evolve(output_path=str(path), message="Downloaded the LoRA")


def _needs_download(job: Job, progress: Progress) -> bool:
    """A remote run that succeeded without its LoRA on this machine yet."""
    return (
        job.backend is not BackendType.LOCAL
        and progress.status is JobStatus.SUCCEEDED
        and not progress.output_path
    )


async def _close(backend: TrainingBackend) -> None:
    """Close a backend's HTTP client (backends without one have no ``aclose``)."""
    aclose = getattr(backend, "aclose", None)
    if not callable(aclose):
        return
    try:
        await aclose()
    except Exception:  # closing must not hide what the caller was doing
        log.warning("Could not close the %s backend cleanly", backend.kind.value, exc_info=True)
