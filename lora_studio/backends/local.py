"""Local training: :class:`~lora_studio.training.trainer.Trainer` on this machine's GPU/CPU.

The trainer runs on a worker thread. By default that is a ``threading.Thread``; the GUI
passes ``start_worker`` to host it in a ``QThread`` instead (this package never imports Qt).
The trainer's callbacks arrive on the worker thread; :meth:`LocalBackend.watch` hands them
to the asyncio loop with ``call_soon_threadsafe``, so awaiting code (the controller, the
CLI) sees each new :class:`Progress` on its own thread.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import threading
import traceback
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from lora_studio.backends.base import BackendConfig, BackendStatus
from lora_studio.core.errors import BackendError, LoraStudioError
from lora_studio.core.jobs import BackendType, Job, JobStatus, Progress
from lora_studio.core.paths import default_output_dir
from lora_studio.core.request import TrainingRequest

log = logging.getLogger(__name__)


class WorkerHandle(Protocol):
    def join(self, timeout: float | None = None) -> None: ...

    def is_alive(self) -> bool: ...


WorkerStarter = Callable[[Callable[[], None], str], WorkerHandle]


def start_thread(target: Callable[[], None], name: str) -> WorkerHandle:
    """The default :data:`WorkerStarter`: a plain (non-daemon) thread."""
    thread = threading.Thread(target=target, name=name, daemon=False)
    thread.start()
    return thread


Listener = Callable[[Progress], None]


@dataclass
class _Run:
    job: Job
    commands: object
    latest: Progress = field(default_factory=lambda: Progress(status=JobStatus.QUEUED))
    listeners: list[Listener] = field(default_factory=list)
    finished: threading.Event = field(default_factory=threading.Event)
    worker: WorkerHandle | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)

    def publish(self, progress: Progress, *, final: bool = False) -> None:
        with self.lock:
            self.latest = progress
            if final:
                self.finished.set()
            listeners = list(self.listeners)
        for listener in listeners:
            try:
                listener(progress)
            except Exception:
                log.exception("progress listener failed")


class LocalBackend:
    """Trains on this machine, one job at a time."""

    kind = BackendType.LOCAL

    def __init__(
        self,
        config: BackendConfig | None = None,
        *,
        start_worker: WorkerStarter | None = None,
    ) -> None:
        self.config = config or BackendConfig(BackendType.LOCAL, default_output_dir())
        self._start_worker = start_worker or start_thread
        self._runs: dict[str, _Run] = {}

    # ---- Protocol ----------------------------------------------------------------------

    async def check(self) -> BackendStatus:
        return await asyncio.to_thread(_device_status)

    async def submit(self, request: TrainingRequest) -> Job:
        busy = [r for r in self._runs.values() if not r.finished.is_set()]
        if busy:
            raise BackendError(
                f"A local training run ({busy[0].job.name}) is still going; wait for it to "
                f"finish or cancel it first."
            )
        from lora_studio.training.trainer import TrainerCommands

        job = Job(
            id=Job.new_id(),
            backend=BackendType.LOCAL,
            name=request.config.name,
            base_model=request.base_model,
            output_dir=str(request.output_dir),
            dataset_dir=str(request.dataset.root),
            config=request.config.to_dict(),
        )
        run = _Run(job=job, commands=TrainerCommands())
        self._runs[job.id] = run
        run.worker = self._start_worker(lambda: self._work(run, request), f"train-{job.id}")
        return job

    async def progress(self, job: Job) -> Progress:
        return self._run(job).latest

    async def watch(self, job: Job) -> AsyncIterator[Progress]:
        run = self._run(job)
        loop = asyncio.get_running_loop()
        wake = asyncio.Event()

        def on_progress(_: Progress) -> None:
            loop.call_soon_threadsafe(wake.set)

        with run.lock:
            run.listeners.append(on_progress)
        try:
            last: Progress | None = None
            while True:
                # Clear before reading: a publish after the read sets it again, so no
                # update is missed. The run is over only when the worker has finished.
                wake.clear()
                current = run.latest
                done = run.finished.is_set()
                if current is not last:
                    last = current
                    yield current
                if done:
                    return
                await wake.wait()
        finally:
            with run.lock:
                if on_progress in run.listeners:
                    run.listeners.remove(on_progress)

    async def cancel(self, job: Job) -> None:
        run = self._run(job)
        run.commands.stop()  # type: ignore[attr-defined]

    async def pause(self, job: Job) -> None:
        """Hold the run after its current step (it keeps its memory; Cancel still works)."""
        self._run(job).commands.pause()  # type: ignore[attr-defined]

    async def resume(self, job: Job) -> None:
        """Continue a paused run."""
        self._run(job).commands.resume()  # type: ignore[attr-defined]

    async def download_weights(self, job: Job, dest: Path | None = None) -> Path:
        run = self._run(job)
        if not run.finished.is_set():
            raise BackendError(f"Job {job.name} has not finished yet.")
        output = run.latest.output_path
        if not output:
            raise BackendError(
                f"Job {job.name} produced no LoRA ({run.latest.error or 'no output'})."
            )
        source = Path(output)
        if dest is None:
            return source
        target = dest / source.name if dest.is_dir() else dest
        if target.resolve() != source.resolve():
            await asyncio.to_thread(shutil.copy2, source, target)
        return target

    async def estimate_cost(self, request: TrainingRequest) -> float | None:
        return 0.0

    async def reattach(self, job: Job) -> None:
        raise BackendError(
            f"The local run {job.name} ended when the app closed; resume it from its last "
            f"checkpoint instead."
        )

    # ---- extras the GUI uses -------------------------------------------------------------

    def subscribe(self, job: Job, listener: Listener) -> Callable[[], None]:
        """Call ``listener`` (on the trainer's thread) with every new Progress."""
        run = self._run(job)
        with run.lock:
            run.listeners.append(listener)

        def unsubscribe() -> None:
            with run.lock:
                if listener in run.listeners:
                    run.listeners.remove(listener)

        return unsubscribe

    def wait(self, job: Job, timeout: float | None = None) -> bool:
        """Block until the job's worker ends (for hosts shutting down)."""
        return self._run(job).finished.wait(timeout)

    def running_jobs(self) -> list[Job]:
        return [r.job for r in self._runs.values() if not r.finished.is_set()]

    # ---- internals ---------------------------------------------------------------------

    def _run(self, job: Job) -> _Run:
        try:
            return self._runs[job.id]
        except KeyError:
            raise BackendError(f"Unknown local job {job.id}.") from None

    def _work(self, run: _Run, request: TrainingRequest) -> None:
        # The first import of torch and diffusers takes seconds: say what is happening.
        run.publish(
            Progress(status=JobStatus.PREPARING, message="Starting: loading PyTorch and diffusers")
        )
        from lora_studio.training.trainer import Trainer

        class Callbacks:
            def on_progress(self, progress: Progress) -> None:
                run.job.status = progress.status
                run.publish(progress)

            def on_log(self, line: str) -> None:
                pass  # lines also arrive in Progress.log_tail

        final: Progress
        try:
            result = Trainer(request, Callbacks(), run.commands).train()  # type: ignore[arg-type]
            run.job.output_path = str(result.output_path)
            run.job.status = JobStatus.CANCELLED if result.cancelled else JobStatus.SUCCEEDED
            final = run.latest
        except LoraStudioError as exc:
            cancelled = run.latest.status is JobStatus.CANCELLED
            run.job.status = JobStatus.CANCELLED if cancelled else JobStatus.FAILED
            run.job.error = str(exc)
            final = run.latest.evolve(status=run.job.status, error=str(exc))
        except BaseException as exc:  # a bug: keep the details for the log, tell the user
            log.error("Unexpected error in local training:\n%s", traceback.format_exc())
            message = f"Unexpected error: {type(exc).__name__}: {exc}"
            run.job.status = JobStatus.FAILED
            run.job.error = message
            final = run.latest.evolve(status=JobStatus.FAILED, error=message, message="Failed")
        run.publish(final, final=True)


def _device_status() -> BackendStatus:
    try:
        import torch
    except ImportError:
        return BackendStatus(False, "PyTorch is not installed.")
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        vram = props.total_memory / 1024**3
        return BackendStatus(True, f"{props.name}, {vram:.0f} GB", "cuda", vram)
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        return BackendStatus(True, "Apple GPU (MPS)", "mps", None)
    return BackendStatus(
        True, "CPU only: fine for the built-in tiny model, slow for real models", "cpu"
    )
