"""Local training in a child process, for more than one GPU: ``accelerate launch``.

The app's own process hosts one trainer on one device (:mod:`lora_studio.backends.local`).
To use several GPUs, data-parallel, this backend runs

    python -m accelerate.commands.launch --multi_gpu --num_processes N ... \
        -m lora_studio train DATASET --config RUN.toml --progress-json ...

and reads the main process's JSON progress lines from its stdout (stderr lines go to the
log tail). Cancel sends SIGINT to the training processes: they stop after the same step
(the trainer agrees on it collectively), and the main one saves the LoRA so far and a
checkpoint.

On a machine without GPUs the same command runs N CPU processes (gloo), which is how the
tests exercise this path.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import sys
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

from lora_studio.backends.base import BackendConfig, BackendStatus
from lora_studio.core.errors import BackendError
from lora_studio.core.jobs import LOG_TAIL, BackendType, Job, JobStatus, Progress
from lora_studio.core.paths import default_output_dir
from lora_studio.core.request import TrainingRequest

log = logging.getLogger(__name__)


def launch_command(
    request: TrainingRequest, config_file: Path, num_processes: int, python: str = sys.executable
) -> list[str]:
    """The ``accelerate launch`` command line of a training request."""
    precision = request.config.mixed_precision.value
    command = [
        python, "-m", "accelerate.commands.launch",
        "--multi_gpu",
        "--num_processes", str(num_processes),
        "--num_machines", "1",
        "--mixed_precision", precision,
        "--dynamo_backend", "no",
        "-m", "lora_studio", "train", str(request.dataset.root),
        "--config", str(config_file),
        "--base-model", request.base_model,
        "--output", str(request.output_dir),
        "--progress-json",
    ]  # fmt: skip
    if request.resume_from is not None:
        command += ["--resume", str(request.resume_from)]
    return command


@dataclass
class _Process:
    job: Job
    latest: Progress = field(default_factory=lambda: Progress(status=JobStatus.QUEUED))
    log_tail: deque[str] = field(default_factory=lambda: deque(maxlen=LOG_TAIL))
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    finished: asyncio.Event = field(default_factory=asyncio.Event)
    process: asyncio.subprocess.Process | None = None
    task: asyncio.Task[None] | None = None

    def publish(self, progress: Progress) -> None:
        self.latest = progress
        self.changed.set()


class LaunchBackend:
    """Trains on several local GPUs through an ``accelerate launch`` child process."""

    kind = BackendType.LOCAL

    def __init__(
        self,
        config: BackendConfig | None = None,
        *,
        num_processes: int = 2,
        python: str = sys.executable,
        env: dict[str, str] | None = None,
    ) -> None:
        self.config = config or BackendConfig(BackendType.LOCAL, default_output_dir())
        self.num_processes = num_processes
        self.python = python
        self.env = env
        self._runs: dict[str, _Process] = {}

    async def check(self) -> BackendStatus:
        return await asyncio.to_thread(_gpu_count_status, self.num_processes)

    async def submit(self, request: TrainingRequest) -> Job:
        if any(not r.finished.is_set() for r in self._runs.values()):
            raise BackendError("A multi-GPU run is still going; wait for it or cancel it first.")
        request.output_dir.mkdir(parents=True, exist_ok=True)
        config_file = request.output_dir / f".{request.config.name}.launch.toml"
        await asyncio.to_thread(request.config.save, config_file)
        job = Job(
            id=Job.new_id(),
            backend=BackendType.LOCAL,
            name=request.config.name,
            base_model=request.base_model,
            output_dir=str(request.output_dir),
            dataset_dir=str(request.dataset.root),
            config=request.config.to_dict(),
        )
        run = _Process(job=job)
        command = launch_command(request, config_file, self.num_processes, self.python)
        env = dict(os.environ if self.env is None else self.env)
        env.setdefault("PYTHONUNBUFFERED", "1")
        try:
            run.process = await asyncio.create_subprocess_exec(
                *command,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                env=env,
                start_new_session=True,  # Ctrl+C in the app's terminal must not reach it
            )
        except OSError as exc:
            raise BackendError(f"Cannot start accelerate launch: {exc}") from None
        self._runs[job.id] = run
        run.publish(
            Progress(status=JobStatus.PREPARING, message=f"Starting {self.num_processes} processes")
        )
        run.task = asyncio.get_running_loop().create_task(self._follow(run, config_file))
        return job

    async def progress(self, job: Job) -> Progress:
        return self._run(job).latest

    async def watch(self, job: Job) -> AsyncIterator[Progress]:
        run = self._run(job)
        last: Progress | None = None
        while True:
            run.changed.clear()
            current, done = run.latest, run.finished.is_set()
            if current is not last:
                last = current
                yield current
            if done:
                return
            await run.changed.wait()

    async def cancel(self, job: Job) -> None:
        run = self._run(job)
        if run.process is not None and run.process.returncode is None:
            await asyncio.to_thread(_interrupt_workers, run.process.pid)

    def running_jobs(self) -> list[Job]:
        return [r.job for r in self._runs.values() if not r.finished.is_set()]

    def interrupt(self, job: Job) -> None:
        """:meth:`cancel` without the event loop (for a host that is shutting down): the
        processes stop after the current step and save, on their own."""
        run = self._run(job)
        if run.process is not None and run.process.returncode is None:
            _interrupt_workers(run.process.pid)

    async def download_weights(self, job: Job, dest: Path | None = None) -> Path:
        run = self._run(job)
        if not run.finished.is_set():
            raise BackendError(f"Job {job.name} has not finished yet.")
        if not run.latest.output_path:
            raise BackendError(
                f"Job {job.name} produced no LoRA ({run.latest.error or 'no output'})."
            )
        source = Path(run.latest.output_path)
        if dest is None:
            return source
        import shutil

        target = dest / source.name if dest.is_dir() else dest
        await asyncio.to_thread(shutil.copy2, source, target)
        return target

    async def estimate_cost(self, request: TrainingRequest) -> float | None:
        return 0.0

    async def reattach(self, job: Job) -> None:
        raise BackendError(
            f"The multi-GPU run {job.name} ended when the app closed; resume it from its last "
            f"checkpoint instead."
        )

    def _run(self, job: Job) -> _Process:
        try:
            return self._runs[job.id]
        except KeyError:
            raise BackendError(f"Unknown job {job.id}.") from None

    async def _follow(self, run: _Process, config_file: Path) -> None:
        process = run.process
        assert process is not None and process.stdout is not None and process.stderr is not None
        errors: deque[str] = deque(maxlen=20)

        async def read_stdout() -> None:
            assert process.stdout is not None
            async for raw in process.stdout:
                line = raw.decode("utf-8", "replace").strip()
                if not line.startswith("{"):
                    continue
                try:
                    data = json.loads(line)
                except ValueError:
                    continue
                if data.get("event") == "progress":
                    progress = Progress.from_dict(data)
                    run.job.status = progress.status
                    run.publish(progress)

        async def read_stderr() -> None:
            assert process.stderr is not None
            async for raw in process.stderr:
                line = raw.decode("utf-8", "replace").rstrip()
                if line:
                    errors.append(line)

        await asyncio.gather(read_stdout(), read_stderr())
        code = await process.wait()
        with contextlib.suppress(OSError):
            config_file.unlink()
        final = run.latest
        if not final.is_finished():
            reason = next(
                (
                    line.split("error:", 1)[1].strip()
                    for line in reversed(errors)
                    if "error:" in line
                ),
                errors[-1] if errors else f"exit code {code}",
            )
            final = final.evolve(
                status=JobStatus.FAILED,
                error=f"The multi-GPU run stopped: {reason}",
                message="Failed",
            )
            log.error("accelerate launch failed (exit %s):\n%s", code, "\n".join(errors))
        run.job.status = final.status
        run.job.output_path = final.output_path
        run.job.error = final.error
        run.finished.set()
        run.publish(final)


def _interrupt_workers(launcher_pid: int) -> None:
    """SIGINT to the training processes, not to the launcher: each trainer stops after
    the same step and saves; the launcher (torchrun) would instead kill them at once."""
    import psutil

    try:
        children = psutil.Process(launcher_pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return
    targets = [c for c in children if "lora_studio" in " ".join(_cmdline(c))] or children
    for child in targets:
        with contextlib.suppress(psutil.NoSuchProcess):
            child.send_signal(signal.SIGINT)


def _cmdline(process: object) -> list[str]:
    import psutil

    try:
        return list(process.cmdline())  # type: ignore[attr-defined]
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return []


def cuda_device_count() -> int:
    """How many CUDA GPUs this machine has (0 without CUDA or without torch). Imports torch:
    call it off the GUI thread."""
    try:
        import torch
    except ImportError:
        return 0
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def cuda_gpu_memory() -> tuple[str, float]:
    """The first CUDA GPU's name and memory in GB (``("", 0.0)`` without one). Imports
    torch: call it off the GUI thread."""
    if not cuda_device_count():
        return "", 0.0
    import torch

    props = torch.cuda.get_device_properties(0)
    return str(props.name), props.total_memory / 1024**3


def _gpu_count_status(wanted: int) -> BackendStatus:
    try:
        import torch  # noqa: F401
    except ImportError:
        return BackendStatus(False, "PyTorch is not installed.")
    count = cuda_device_count()
    if count >= wanted:
        return BackendStatus(True, f"{count} CUDA GPUs; using {wanted}", "cuda")
    if count == 0:
        return BackendStatus(True, f"No CUDA GPU: {wanted} CPU processes (slow)", "cpu")
    return BackendStatus(False, f"{wanted} GPUs asked for, {count} found.", "cuda")
