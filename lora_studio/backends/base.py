"""The training-backend interface: one Protocol for local, ComfyUI and Replicate runs.

Backends take a :class:`BackendConfig` (base URL, API key, output folder); the remote ones
also take an optional ``httpx.AsyncClient`` so tests can point them at a local server.
Every method is ``async``; progress comes back as the same frozen
:class:`~lora_studio.core.jobs.Progress` whichever backend runs the job.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Protocol, runtime_checkable

from lora_studio.core.errors import BackendError
from lora_studio.core.jobs import BackendType, Job, Progress
from lora_studio.core.request import TrainingRequest


@dataclass(frozen=True)
class BackendConfig:
    """Where and how a backend runs jobs.

    ``api_key`` is kept out of ``repr`` so it never lands in a log line.
    """

    backend_type: BackendType
    output_dir: Path
    api_url: str | None = None
    api_key: str | None = field(default=None, repr=False)
    timeout_s: float = 30.0

    def with_api_url(self, url: str) -> BackendConfig:
        return replace(self, api_url=url.rstrip("/"))

    def with_api_key(self, key: str) -> BackendConfig:
        return replace(self, api_key=key)


@dataclass(frozen=True)
class BackendStatus:
    """Result of :meth:`TrainingBackend.check`."""

    ok: bool
    message: str
    device: str | None = None
    vram_gb: float | None = None


@runtime_checkable
class TrainingBackend(Protocol):
    kind: BackendType

    async def check(self) -> BackendStatus:
        """Is the backend usable (reachable, authorised, has a GPU)?"""
        ...

    async def submit(self, request: TrainingRequest) -> Job:
        """Start a training run; returns at once with the new job."""
        ...

    async def progress(self, job: Job) -> Progress:
        """The job's latest state."""
        ...

    def watch(self, job: Job) -> AsyncIterator[Progress]:
        """Every new state of the job until it finishes (the last one is final)."""
        ...

    async def cancel(self, job: Job) -> None:
        """Ask the job to stop; it ends as cancelled within one training step."""
        ...

    async def download_weights(self, job: Job, dest: Path | None = None) -> Path:
        """The finished LoRA on local disk (copied to ``dest`` when given)."""
        ...

    async def estimate_cost(self, request: TrainingRequest) -> float | None:
        """Estimated cost in US dollars (0 for local runs, ``None`` if unknown)."""
        ...

    async def reattach(self, job: Job) -> None:
        """Follow ``job`` again after the app restarted (its ``remote_id`` says which
        remote run it is); afterwards ``progress``/``watch``/``cancel`` work as for a job
        submitted in this session. Backends whose runs cannot outlive the app raise
        :class:`BackendError` saying so."""
        ...


def create_backend(config: BackendConfig) -> TrainingBackend:
    """The backend for ``config.backend_type``."""
    if config.backend_type is BackendType.LOCAL:
        from lora_studio.backends.local import LocalBackend

        return LocalBackend(config)
    raise BackendError(
        f"The {config.backend_type.value} backend is not available in this version; train locally."
    )
