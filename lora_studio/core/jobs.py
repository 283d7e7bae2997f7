"""Training jobs: :class:`Job`, the :class:`Progress` every backend reports, and the
SQLite-backed :class:`JobStore` that keeps the history.
"""

from __future__ import annotations

import enum
import functools
import json
import logging
import math
import os
import socket
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, TypeVar

from lora_studio.core.errors import LoraStudioError

log = logging.getLogger(__name__)


class JobStatus(enum.StrEnum):
    QUEUED = "queued"
    PREPARING = "preparing"
    RUNNING = "running"
    PAUSED = "paused"
    SAVING = "saving"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    #: a local run that ended with the app (it can be resumed from its last checkpoint)
    INTERRUPTED = "interrupted"

    @property
    def is_finished(self) -> bool:
        return self in (
            JobStatus.SUCCEEDED,
            JobStatus.FAILED,
            JobStatus.CANCELLED,
            JobStatus.INTERRUPTED,
        )

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

    ``loss_history`` holds at most :data:`MAX_HISTORY` points (older ones are thinned out,
    :func:`thin_history`), so a snapshot stays cheap to copy across threads.
    ``lr_history`` is the learning rate at the same points, when the backend knows it
    (empty otherwise; NaN where it is not known, e.g. the steps before a resume).
    """

    status: JobStatus = JobStatus.QUEUED
    step: int = 0
    total_steps: int = 0
    epoch: int = 0
    total_epochs: int = 0
    loss: float | None = None
    loss_history: tuple[float, ...] = ()
    learning_rate: float | None = None
    lr_history: tuple[float, ...] = ()
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
        for name in ("loss_history", "lr_history", "sample_paths", "log_tail"):
            if name in values:
                values[name] = tuple(values[name])
        return cls(**values)


MAX_HISTORY = 1000
LOG_TAIL = 200


def thin_history(values: list[float], limit: int = MAX_HISTORY) -> tuple[float, ...]:
    """Every k-th value so that at most ``limit`` remain (the same k for series of the
    same length, so a loss and a learning-rate history stay aligned)."""
    if len(values) <= limit:
        return tuple(values)
    stride = -(-len(values) // limit)
    return tuple(values[::stride])


@dataclass(frozen=True)
class JobSpec:
    """Everything needed to start a job again (retry, or after a restart): plain values.

    ``backend_options`` hold what the backend needs besides the request (server URL,
    trainer, destination, checkpoint, GPU count...) but never a token: tokens come from
    the keyring or the environment when the job runs.
    """

    dataset_dir: str
    config: dict[str, Any]
    base_model: str
    output_dir: str
    backend: BackendType = BackendType.LOCAL
    backend_options: dict[str, Any] = field(default_factory=dict)
    resume_from: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "dataset_dir": self.dataset_dir,
            "config": self.config,
            "base_model": self.base_model,
            "output_dir": self.output_dir,
            "backend": self.backend.value,
            "backend_options": self.backend_options,
            "resume_from": self.resume_from,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> JobSpec:
        return cls(
            dataset_dir=str(data["dataset_dir"]),
            config=dict(data["config"]),
            base_model=str(data["base_model"]),
            output_dir=str(data["output_dir"]),
            backend=BackendType(data.get("backend", "local")),
            backend_options=dict(data.get("backend_options") or {}),
            resume_from=data.get("resume_from"),
        )


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
    spec: JobSpec | None = None
    started_at: float | None = None
    finished_at: float | None = None
    estimated_cost: float | None = None
    cost: float | None = None
    position: int = 0
    batch_id: str | None = None
    message: str = ""
    #: the process that made the job (:func:`current_process`); a local job whose owner
    #: is gone was interrupted, one whose owner lives is still running elsewhere
    owner: str | None = field(default_factory=lambda: current_process())

    @staticmethod
    def new_id() -> str:
        return time.strftime("%Y%m%d-%H%M%S-") + uuid.uuid4().hex[:8]


def current_process() -> str:
    """This process as ``pid:start-time@host`` (the start time tells a reused pid apart)."""
    return f"{os.getpid()}:{_start_time(os.getpid())}@{socket.gethostname()}"


def process_alive(owner: str | None) -> bool:
    """Whether the process ``owner`` (from :func:`current_process`) still runs.

    ``None`` (a job from before owners were recorded) counts as gone. A process on another
    host cannot be checked and counts as alive: its jobs are not ours to mark.
    """
    if not owner or "@" not in owner:
        return False
    ident, _, host = owner.rpartition("@")
    pid_text, _, started = ident.partition(":")
    if host != socket.gethostname():
        return True
    try:
        pid = int(pid_text)
    except ValueError:
        return False
    return started != "" and _start_time(pid) == started


def _start_time(pid: int) -> str:
    """``pid``'s start time (empty when there is no such process)."""
    import psutil

    try:
        return f"{psutil.Process(pid).create_time():.2f}"
    except (psutil.Error, OSError):
        return ""


@dataclass(frozen=True)
class JobEvent:
    """A status change of a job, with when it happened."""

    at: float
    status: JobStatus
    message: str = ""


SCHEMA_VERSION = 4

_SCHEMA_V1 = """
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
_MIGRATIONS: dict[int, str] = {
    # 1 -> 2: the job's spec (to retry and reattach), times, cost, queue order, batches;
    # status transitions, logs and the loss series in their own tables.
    2: """
ALTER TABLE jobs ADD COLUMN spec TEXT;
ALTER TABLE jobs ADD COLUMN started_at REAL;
ALTER TABLE jobs ADD COLUMN finished_at REAL;
ALTER TABLE jobs ADD COLUMN estimated_cost REAL;
ALTER TABLE jobs ADD COLUMN cost REAL;
ALTER TABLE jobs ADD COLUMN position INTEGER NOT NULL DEFAULT 0;
ALTER TABLE jobs ADD COLUMN batch_id TEXT;
ALTER TABLE jobs ADD COLUMN message TEXT NOT NULL DEFAULT '';
CREATE TABLE IF NOT EXISTS job_events (
    job_id TEXT NOT NULL REFERENCES jobs(id) ON DELETE CASCADE,
    at REAL NOT NULL,
    status TEXT NOT NULL,
    message TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS job_events_job ON job_events(job_id, at);
CREATE TABLE IF NOT EXISTS job_logs (
    job_id TEXT NOT NULL REFERENCES jobs(id) ON DELETE CASCADE,
    seq INTEGER NOT NULL,
    line TEXT NOT NULL,
    PRIMARY KEY (job_id, seq)
);
CREATE TABLE IF NOT EXISTS job_losses (
    job_id TEXT NOT NULL REFERENCES jobs(id) ON DELETE CASCADE,
    step INTEGER NOT NULL,
    loss REAL NOT NULL,
    PRIMARY KEY (job_id, step)
);
""",
    # 2 -> 3: the process that owns a job, so a live run in another process (the CLI while
    # the window opens) is not taken for an interrupted one.
    3: """
ALTER TABLE jobs ADD COLUMN owner TEXT;
""",
    # 3 -> 4: the learning rate beside each step's loss, so a job opened from the history
    # draws its LR curve too. NULL where the backend did not say (and for the points an
    # older version recorded); an older version still writes its rows without it.
    4: """
ALTER TABLE job_losses ADD COLUMN lr REAL;
""",
}
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
    "spec",
    "started_at",
    "finished_at",
    "estimated_cost",
    "cost",
    "position",
    "batch_id",
    "message",
    "owner",
)


class JobStoreError(LoraStudioError):
    """The job history file cannot be read or written (full disk, read-only folder,
    a damaged file)."""


_T = TypeVar("_T")


def _db_errors(what: str) -> Callable[[Callable[..., _T]], Callable[..., _T]]:
    """Turn an SQLite error in a :class:`JobStore` method into a :class:`JobStoreError`
    that names the file, what was being done and why."""

    def wrap(method: Callable[..., _T]) -> Callable[..., _T]:
        @functools.wraps(method)
        def guarded(self: JobStore, *args: Any, **kwargs: Any) -> _T:
            try:
                return method(self, *args, **kwargs)
            except (sqlite3.Error, OSError) as exc:
                raise JobStoreError(
                    f"The job history ({self.path}) could not be {what}: {exc}."
                ) from None

        return guarded

    return wrap


class JobStore:
    """Job history in an SQLite file (``":memory:"`` for a throw-away store): each job's
    spec, status transitions with times, log lines, loss series, output and cost.

    Safe to call from several threads: one connection, guarded by a lock. WAL journaling
    lets another process (``lora-studio jobs list`` while the app runs) read at the same
    time. Older files are migrated in place (``PRAGMA user_version``).
    """

    @_db_errors("opened")
    def __init__(self, path: str | Path = ":memory:") -> None:
        self.path = str(path)
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, check_same_thread=False, timeout=10)
        with self._lock, self._db:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA foreign_keys=ON")
            self._db.executescript(_SCHEMA_V1)
            version = int(self._db.execute("PRAGMA user_version").fetchone()[0]) or 1
            for target in range(version + 1, SCHEMA_VERSION + 1):
                # Each step is one transaction with its version number: a step that fails
                # halfway (a full disk, a kill) leaves the file at the previous version.
                try:
                    self._db.executescript(
                        f"BEGIN;\n{_MIGRATIONS[target]}\nPRAGMA user_version = {target};\nCOMMIT;"
                    )
                except sqlite3.Error:
                    if self._db.in_transaction:
                        self._db.rollback()
                    raise

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # ---- jobs ------------------------------------------------------------------------

    @_db_errors("written")
    def save(self, job: Job) -> None:
        """Insert or update ``job`` (a status change is also recorded as an event)."""
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
            json.dumps(job.spec.to_dict()) if job.spec else None,
            job.started_at,
            job.finished_at,
            job.estimated_cost,
            job.cost,
            job.position,
            job.batch_id,
            job.message,
            job.owner,
        )
        placeholders = ", ".join("?" for _ in _COLUMNS)
        updates = ", ".join(f"{c} = excluded.{c}" for c in _COLUMNS[1:])
        with self._lock, self._db:
            previous = self._db.execute(
                "SELECT status FROM jobs WHERE id = ?", (job.id,)
            ).fetchone()
            self._db.execute(
                f"INSERT INTO jobs ({', '.join(_COLUMNS)}) VALUES ({placeholders}) "
                f"ON CONFLICT(id) DO UPDATE SET {updates}",
                row,
            )
            if previous is None or previous[0] != job.status.value:
                self._db.execute(
                    "INSERT INTO job_events (job_id, at, status, message) VALUES (?, ?, ?, ?)",
                    (job.id, job.updated_at, job.status.value, job.error or job.message or ""),
                )

    @_db_errors("read")
    def get(self, job_id: str) -> Job | None:
        with self._lock:
            cur = self._db.execute(
                f"SELECT {', '.join(_COLUMNS)} FROM jobs WHERE id = ?", (job_id,)
            )
            row = cur.fetchone()
        return _row_to_job(row) if row else None

    @_db_errors("read")
    def find(self, prefix: str) -> list[Job]:
        """Jobs whose id starts with ``prefix`` (so the CLI can take a short id)."""
        with self._lock:
            cur = self._db.execute(
                f"SELECT {', '.join(_COLUMNS)} FROM jobs WHERE id LIKE ? ESCAPE '\\' "
                f"ORDER BY created_at DESC",
                (prefix.replace("%", "\\%").replace("_", "\\_") + "%",),
            )
            rows = cur.fetchall()
        return [_row_to_job(r) for r in rows]

    @_db_errors("read")
    def list(self, limit: int = 100, statuses: Iterable[JobStatus] | None = None) -> list[Job]:
        """Most recent first (optionally only jobs in ``statuses``)."""
        query = f"SELECT {', '.join(_COLUMNS)} FROM jobs"
        args: list[Any] = []
        if statuses is not None:
            wanted = [s.value for s in statuses]
            query += f" WHERE status IN ({', '.join('?' for _ in wanted)})"
            args += wanted
        query += " ORDER BY created_at DESC LIMIT ?"
        args.append(limit)
        with self._lock:
            rows = self._db.execute(query, args).fetchall()
        return [_row_to_job(r) for r in rows]

    def unfinished(self) -> list[Job]:
        """Jobs not yet succeeded, failed or cancelled, in queue order."""
        open_statuses = [s for s in JobStatus if not s.is_finished]
        jobs = self.list(limit=10_000, statuses=open_statuses)
        return sorted(jobs, key=lambda j: (j.position, j.created_at))

    @_db_errors("written")
    def delete(self, job_id: str) -> None:
        with self._lock, self._db:
            self._db.execute("DELETE FROM jobs WHERE id = ?", (job_id,))

    # ---- history -----------------------------------------------------------------------

    @_db_errors("read")
    def events(self, job_id: str) -> list[JobEvent]:
        with self._lock:
            rows = self._db.execute(
                "SELECT at, status, message FROM job_events WHERE job_id = ? ORDER BY at, rowid",
                (job_id,),
            ).fetchall()
        return [JobEvent(at, JobStatus(status), message) for at, status, message in rows]

    @_db_errors("written")
    def append_logs(self, job_id: str, lines: Iterable[str]) -> None:
        new = list(lines)
        if not new:
            return
        with self._lock, self._db:
            (last,) = self._db.execute(
                "SELECT COALESCE(MAX(seq), 0) FROM job_logs WHERE job_id = ?", (job_id,)
            ).fetchone()
            self._db.executemany(
                "INSERT INTO job_logs (job_id, seq, line) VALUES (?, ?, ?)",
                [(job_id, last + i, line) for i, line in enumerate(new, start=1)],
            )

    @_db_errors("read")
    def logs(self, job_id: str, tail: int | None = None) -> list[str]:
        with self._lock:
            if tail is None:
                rows = self._db.execute(
                    "SELECT line FROM job_logs WHERE job_id = ? ORDER BY seq", (job_id,)
                ).fetchall()
            else:
                rows = self._db.execute(
                    "SELECT line FROM (SELECT seq, line FROM job_logs WHERE job_id = ? "
                    "ORDER BY seq DESC LIMIT ?) ORDER BY seq",
                    (job_id, tail),
                ).fetchall()
        return [line for (line,) in rows]

    @_db_errors("written")
    def record_losses(
        self,
        job_id: str,
        points: Iterable[tuple[int, float] | tuple[int, float, float | None]],
    ) -> None:
        """Record a job's loss at some steps: ``(step, loss)`` points, or
        ``(step, loss, learning rate)`` ones (``None``: the rate is not known). A step
        recorded again replaces what was recorded for it. A loss that is not a number
        (NaN or infinite: a run that diverged) is left out: the curve cannot draw it,
        and the run's error says at which step it happened."""
        rows = []
        for step, loss, *rate in points:
            if not math.isfinite(loss):
                continue
            lr = rate[0] if rate else None
            # A rate that is not a number (NaN: not known) is stored as not known.
            known = lr is not None and math.isfinite(lr)
            rows.append((job_id, int(step), float(loss), float(lr) if known else None))
        with self._lock, self._db:
            self._db.executemany(
                "INSERT OR REPLACE INTO job_losses (job_id, step, loss, lr) VALUES (?, ?, ?, ?)",
                rows,
            )

    @_db_errors("read")
    def losses(self, job_id: str) -> list[tuple[int, float]]:
        """The job's recorded ``(step, loss)`` points, in step order."""
        with self._lock:
            rows = self._db.execute(
                "SELECT step, loss FROM job_losses WHERE job_id = ? ORDER BY step", (job_id,)
            ).fetchall()
        return [(int(step), float(loss)) for step, loss in rows]

    @_db_errors("read")
    def learning_rates(self, job_id: str) -> list[tuple[int, float]]:
        """The job's learning rate as ``(step, rate)`` points, in step order: at the
        steps of :meth:`losses` whose rate was recorded (none for a backend that does not
        report one, or a job recorded before the rates were kept)."""
        with self._lock:
            rows = self._db.execute(
                "SELECT step, lr FROM job_losses WHERE job_id = ? AND lr IS NOT NULL ORDER BY step",
                (job_id,),
            ).fetchall()
        return [(int(step), float(lr)) for step, lr in rows]


class ProgressRecorder:
    """Writes what each :class:`Progress` adds (log lines, the step's loss and learning
    rate, status and output) to a :class:`JobStore`, so the history shows the run as it
    went."""

    def __init__(self, store: JobStore) -> None:
        self.store = store
        self._seen: dict[str, set[str]] = {}
        self._last_step: dict[str, int] = {}
        self._failed: set[str] = set()

    def record(self, job: Job, progress: Progress) -> None:
        """Record ``progress``; a history that cannot be written (a full disk) is logged
        once per job and never stops the run."""
        try:
            self._record(job, progress)
        except JobStoreError as exc:
            if job.id not in self._failed:
                self._failed.add(job.id)
                log.warning("%s The run goes on without it.", exc)

    def _record(self, job: Job, progress: Progress) -> None:
        # The log and the loss first; a failure there must not keep the job's status (its
        # end above all) from being saved, so it is raised after the save.
        failed: JobStoreError | None = None
        try:
            self._record_lines_and_loss(job, progress)
        except JobStoreError as exc:
            failed = exc
        self._record_status(job, progress)
        if failed is not None:
            raise failed

    def _record_lines_and_loss(self, job: Job, progress: Progress) -> None:
        seen = self._seen.setdefault(job.id, set())
        new_lines = [line for line in progress.log_tail if line not in seen]
        seen.update(new_lines)
        self.store.append_logs(job.id, new_lines)
        if progress.loss is not None and progress.step > self._last_step.get(job.id, 0):
            self._last_step[job.id] = progress.step
            self.store.record_losses(
                job.id, [(progress.step, progress.loss, progress.learning_rate)]
            )

    def _record_status(self, job: Job, progress: Progress) -> None:
        changed = job.status is not progress.status
        job.status = progress.status
        job.message = progress.message
        if progress.status is JobStatus.RUNNING and job.started_at is None:
            job.started_at = time.time()
        if progress.is_finished():
            job.finished_at = job.finished_at or time.time()
            job.output_path = progress.output_path or job.output_path
            job.error = progress.error
        if changed or progress.is_finished():
            self.store.save(job)

    def forget(self, job_id: str) -> None:
        self._seen.pop(job_id, None)
        self._last_step.pop(job_id, None)


def _row_to_job(row: tuple[Any, ...]) -> Job:
    data = dict(zip(_COLUMNS, row, strict=True))
    data["backend"] = BackendType(data["backend"])
    data["status"] = JobStatus(data["status"])
    data["config"] = json.loads(data["config"] or "{}")
    data["spec"] = JobSpec.from_dict(json.loads(data["spec"])) if data["spec"] else None
    data["position"] = int(data["position"] or 0)
    data["message"] = data["message"] or ""
    return Job(**data)
