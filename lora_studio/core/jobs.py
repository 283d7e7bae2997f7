"""Training jobs: :class:`Job`, the :class:`Progress` every backend reports, and the
SQLite-backed :class:`JobStore` that keeps the history.
"""

from __future__ import annotations

import enum
import json
import sqlite3
import threading
import time
import uuid
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any


class JobStatus(enum.StrEnum):
    QUEUED = "queued"
    PREPARING = "preparing"
    RUNNING = "running"
    PAUSED = "paused"
    SAVING = "saving"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def is_finished(self) -> bool:
        return self in (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED)

    @property
    def label(self) -> str:
        return self.value.capitalize()


class BackendType(enum.StrEnum):
    """Where a job runs."""

    LOCAL = "local"
    COMFYUI = "comfyui"
    REPLICATE = "replicate"


@dataclass(frozen=True)
class Progress:
    """A snapshot of a job, the same for every backend.

    ``loss_history`` holds at most :data:`MAX_HISTORY` points (older ones are thinned out),
    so a snapshot stays cheap to copy across threads.
    """

    status: JobStatus = JobStatus.QUEUED
    step: int = 0
    total_steps: int = 0
    epoch: int = 0
    total_epochs: int = 0
    loss: float | None = None
    loss_history: tuple[float, ...] = ()
    learning_rate: float | None = None
    elapsed_s: float = 0.0
    eta_s: float | None = None
    samples_per_s: float | None = None
    message: str = ""
    sample_paths: tuple[str, ...] = ()
    log_tail: tuple[str, ...] = ()
    output_path: str | None = None
    error: str | None = None

    @property
    def fraction(self) -> float:
        """Done fraction in [0, 1]."""
        if self.status is JobStatus.SUCCEEDED:
            return 1.0
        if self.total_steps <= 0:
            return 0.0
        return min(1.0, self.step / self.total_steps)

    @property
    def progress(self) -> float:
        """Done percentage in [0, 100] (the seed's ``progress.progress``)."""
        return 100.0 * self.fraction

    def is_finished(self) -> bool:
        return self.status.is_finished

    def evolve(self, **changes: Any) -> Progress:
        return replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able values (e.g. to send across a process boundary)."""
        data = {f.name: getattr(self, f.name) for f in fields(self)}
        data["status"] = self.status.value
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Progress:
        """The inverse of :meth:`to_dict`; unknown keys are ignored."""
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        values["status"] = JobStatus(values.get("status", JobStatus.QUEUED))
        for name in ("loss_history", "sample_paths", "log_tail"):
            if name in values:
                values[name] = tuple(values[name])
        return cls(**values)


MAX_HISTORY = 1000
LOG_TAIL = 200


@dataclass
class Job:
    """One training run on some backend."""

    id: str
    backend: BackendType
    name: str
    base_model: str
    output_dir: str
    dataset_dir: str = ""
    status: JobStatus = JobStatus.QUEUED
    created_at: float = field(default_factory=time.time)
    updated_at: float = field(default_factory=time.time)
    config: dict[str, Any] = field(default_factory=dict)
    output_path: str | None = None
    error: str | None = None
    remote_id: str | None = None

    @staticmethod
    def new_id() -> str:
        return time.strftime("%Y%m%d-%H%M%S-") + uuid.uuid4().hex[:8]


_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    backend TEXT NOT NULL,
    name TEXT NOT NULL,
    base_model TEXT NOT NULL,
    output_dir TEXT NOT NULL,
    dataset_dir TEXT NOT NULL DEFAULT '',
    status TEXT NOT NULL,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    config TEXT NOT NULL DEFAULT '{}',
    output_path TEXT,
    error TEXT,
    remote_id TEXT
);
CREATE INDEX IF NOT EXISTS jobs_created ON jobs(created_at);
"""
_COLUMNS = (
    "id",
    "backend",
    "name",
    "base_model",
    "output_dir",
    "dataset_dir",
    "status",
    "created_at",
    "updated_at",
    "config",
    "output_path",
    "error",
    "remote_id",
)


class JobStore:
    """Job history in an SQLite file (``":memory:"`` for a throw-away store).

    Safe to call from several threads: one connection, guarded by a lock.
    """

    def __init__(self, path: str | Path = ":memory:") -> None:
        self.path = str(path)
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, check_same_thread=False, timeout=10)
        with self._lock, self._db:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.executescript(_SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def save(self, job: Job) -> None:
        """Insert or update ``job``."""
        job.updated_at = time.time()
        row = (
            job.id,
            job.backend.value,
            job.name,
            job.base_model,
            job.output_dir,
            job.dataset_dir,
            job.status.value,
            job.created_at,
            job.updated_at,
            json.dumps(job.config),
            job.output_path,
            job.error,
            job.remote_id,
        )
        placeholders = ", ".join("?" for _ in _COLUMNS)
        with self._lock, self._db:
            self._db.execute(
                f"INSERT OR REPLACE INTO jobs ({', '.join(_COLUMNS)}) VALUES ({placeholders})",
                row,
            )

    def get(self, job_id: str) -> Job | None:
        with self._lock:
            cur = self._db.execute(
                f"SELECT {', '.join(_COLUMNS)} FROM jobs WHERE id = ?", (job_id,)
            )
            row = cur.fetchone()
        return _row_to_job(row) if row else None

    def list(self, limit: int = 100) -> list[Job]:
        """Most recent first."""
        with self._lock:
            cur = self._db.execute(
                f"SELECT {', '.join(_COLUMNS)} FROM jobs ORDER BY created_at DESC LIMIT ?",
                (limit,),
            )
            rows = cur.fetchall()
        return [_row_to_job(r) for r in rows]


def _row_to_job(row: tuple[Any, ...]) -> Job:
    data = dict(zip(_COLUMNS, row, strict=True))
    data["backend"] = BackendType(data["backend"])
    data["status"] = JobStatus(data["status"])
    data["config"] = json.loads(data["config"] or "{}")
    return Job(**data)
