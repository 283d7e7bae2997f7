"""The jobs list: a Qt table model over the job history (:class:`~lora_studio.core.jobs.JobStore`).

One row per job, newest first: backend, name, status, progress (step/total on a bar),
speed (samples/s), ETA, started, elapsed (ticking while the job runs), cost.
Rows come from the store (:meth:`JobsModel.set_jobs`, read off the GUI thread by the
controller) and are kept current between reads by live updates
(:meth:`JobsModel.update_job`), so a running job's progress moves without re-reading the
store.
"""

from __future__ import annotations

import enum
import time
from typing import Any

from PySide6.QtCore import QAbstractTableModel, QModelIndex, QPersistentModelIndex, Qt
from PySide6.QtGui import QColor

from lora_studio.core.jobs import BackendType, Job, JobStatus, Progress
from lora_studio.gui import artwork

_Index = QModelIndex | QPersistentModelIndex

JOB_ROLE = Qt.ItemDataRole.UserRole + 1  # the Job of a row
FRACTION_ROLE = Qt.ItemDataRole.UserRole + 2  # the progress column's done fraction (or -1)


class JobColumn(enum.IntEnum):
    BACKEND = 0
    NAME = 1
    STATUS = 2
    PROGRESS = 3
    SPEED = 4
    ETA = 5
    STARTED = 6
    ELAPSED = 7
    COST = 8


HEADERS = ("Where", "Name", "Status", "Progress", "Speed", "ETA", "Started", "Elapsed", "Cost")
BACKEND_SHORT = {
    BackendType.LOCAL: "Local",
    BackendType.COMFYUI: "ComfyUI",
    BackendType.REPLICATE: "Replicate",
}
_STATUS_COLORS = {
    JobStatus.SUCCEEDED: artwork.SUCCESS,
    JobStatus.FAILED: artwork.ERROR,
    JobStatus.CANCELLED: artwork.WARNING,
    JobStatus.INTERRUPTED: artwork.WARNING,
    JobStatus.RUNNING: artwork.ACCENT,
    JobStatus.PAUSED: artwork.ACCENT,
}


def format_elapsed(seconds: float | None) -> str:
    if seconds is None or seconds < 0:
        return ""
    total = round(seconds)
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def format_speed(progress: Progress | None) -> str:
    """``9.6/s`` (samples per second), empty when unknown."""
    if progress is None or not progress.samples_per_s:
        return ""
    rate = progress.samples_per_s
    return f"{rate:.1f}/s" if rate < 100 else f"{rate:.0f}/s"


def format_started(at: float | None, now: float | None = None) -> str:
    """``14:05`` today, ``Mar 3 14:05`` before."""
    if at is None:
        return ""
    now = time.time() if now is None else now
    local = time.localtime(at)
    if time.localtime(now)[:3] == local[:3]:
        return time.strftime("%H:%M", local)
    return time.strftime("%b %d %H:%M", local)


def format_cost(job: Job) -> str:
    """``$0.14`` (billed), ``~$0.14`` (estimated), ``–`` (free: local and ComfyUI)."""
    if job.cost is not None:
        return f"${job.cost:.2f}"
    if job.estimated_cost:
        return f"~${job.estimated_cost:.2f}"
    return "\u2013" if job.backend is not BackendType.REPLICATE else ""


class JobsModel(QAbstractTableModel):
    """The job history as a table (see the module docstring)."""

    def __init__(self, parent: Any = None) -> None:
        super().__init__(parent)
        self._jobs: list[Job] = []
        self._progress: dict[str, Progress] = {}
        self._rows: dict[str, int] = {}
        #: the clock's last tick: running jobs' elapsed times are read at it, so a second
        #: shown here is the one the job monitor's header shows
        self._now: float | None = None

    # ---- data in -----------------------------------------------------------------------

    def set_jobs(self, jobs: list[Job]) -> None:
        """Show ``jobs`` (newest first, as the store lists them)."""
        listed = {job.id for job in jobs}
        # The window's own local run is written to the store behind it: a job that is
        # live here but not listed yet stays, and a live status is newer than the store's.
        merged = [j for j in self._jobs if j.id not in listed and not j.status.is_finished]
        for job in jobs:
            progress = self._progress.get(job.id)
            if progress is not None and not job.status.is_finished:
                job.status = progress.status
                job.output_path = progress.output_path or job.output_path
            merged.append(job)
        self.beginResetModel()
        self._jobs = merged
        self._rows = {job.id: row for row, job in enumerate(merged)}
        keep = set(self._rows)
        self._progress = {k: v for k, v in self._progress.items() if k in keep}
        self.endResetModel()

    def update_job(self, job: Job, progress: Progress | None = None) -> None:
        """A live update of ``job`` (added on top when it is new)."""
        row = self._rows.get(job.id)
        if progress is not None:
            self._progress[job.id] = progress
            job.status = progress.status
            if progress.output_path:
                job.output_path = progress.output_path
            if progress.error:
                job.error = progress.error
        if row is None:
            self.beginInsertRows(QModelIndex(), 0, 0)
            self._jobs.insert(0, job)
            self._rows = {j.id: r for r, j in enumerate(self._jobs)}
            self.endInsertRows()
            return
        current = self._jobs[row]
        if job is not current:
            self._jobs[row] = job
        self.dataChanged.emit(self.index(row, 0), self.index(row, len(HEADERS) - 1))

    def tick(self, now: float | None = None) -> None:
        """Refresh the elapsed time of the jobs that are running (as of ``now``, a
        ``time.time()``; default: now)."""
        self._now = time.time() if now is None else now
        for row, job in enumerate(self._jobs):
            if not job.status.is_finished and job.status is not JobStatus.QUEUED:
                index = self.index(row, JobColumn.ELAPSED)
                self.dataChanged.emit(index, index)

    # ---- data out ----------------------------------------------------------------------

    def job(self, row: int) -> Job | None:
        return self._jobs[row] if 0 <= row < len(self._jobs) else None

    def row_of(self, job_id: str) -> int:
        return self._rows.get(job_id, -1)

    def progress(self, job_id: str) -> Progress | None:
        return self._progress.get(job_id)

    def jobs(self) -> list[Job]:
        return list(self._jobs)

    def has_running(self) -> bool:
        return any(
            not job.status.is_finished and job.status is not JobStatus.QUEUED for job in self._jobs
        )

    # ---- QAbstractTableModel ----------------------------------------------------------------

    def rowCount(self, parent: _Index = QModelIndex()) -> int:  # noqa: B008, N802
        return 0 if parent.isValid() else len(self._jobs)

    def columnCount(self, parent: _Index = QModelIndex()) -> int:  # noqa: B008, N802
        return 0 if parent.isValid() else len(HEADERS)

    def headerData(  # noqa: N802
        self, section: int, orientation: Qt.Orientation, role: int = Qt.ItemDataRole.DisplayRole
    ) -> Any:
        if (
            orientation is Qt.Orientation.Horizontal
            and role == Qt.ItemDataRole.DisplayRole
            and 0 <= section < len(HEADERS)
        ):
            return HEADERS[section]
        return None

    def data(self, index: _Index, role: int = Qt.ItemDataRole.DisplayRole) -> Any:
        job = self.job(index.row()) if index.isValid() else None
        if job is None:
            return None
        column = JobColumn(index.column())
        if role == Qt.ItemDataRole.DisplayRole:
            return self._text(job, column)
        if role == JOB_ROLE:
            return job
        if role == FRACTION_ROLE:
            return self._fraction(job)
        if role == Qt.ItemDataRole.ForegroundRole and column is JobColumn.STATUS:
            color = _STATUS_COLORS.get(job.status)
            return QColor(color) if color is not None else None
        if role == Qt.ItemDataRole.ToolTipRole:
            return self._tooltip(job)
        if role == Qt.ItemDataRole.TextAlignmentRole and column in (
            JobColumn.SPEED,
            JobColumn.ETA,
            JobColumn.ELAPSED,
            JobColumn.COST,
        ):
            return int(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
        return None

    # ---- internals ---------------------------------------------------------------------

    def _fraction(self, job: Job) -> float:
        if job.status is JobStatus.SUCCEEDED:
            return 1.0
        progress = self._progress.get(job.id)
        if progress is None or progress.total_steps <= 0:
            return -1.0
        return progress.fraction

    def _text(self, job: Job, column: JobColumn) -> str:
        if column is JobColumn.BACKEND:
            return BACKEND_SHORT.get(job.backend, job.backend.value)
        if column is JobColumn.NAME:
            return job.name
        if column is JobColumn.STATUS:
            progress = self._progress.get(job.id)
            if job.status is JobStatus.PREPARING and progress and progress.message:
                return f"Preparing: {progress.message}"
            return job.status.label
        if column is JobColumn.PROGRESS:
            progress = self._progress.get(job.id)
            if job.status is JobStatus.SUCCEEDED:
                return "100%"
            if progress is None or progress.total_steps <= 0:
                return ""
            return f"{progress.step}/{progress.total_steps}"
        if column is JobColumn.SPEED:
            progress = self._progress.get(job.id)
            return "" if job.status.is_finished else format_speed(progress)
        if column is JobColumn.ETA:
            progress = self._progress.get(job.id)
            if job.status.is_finished or progress is None or progress.eta_s is None:
                return ""
            return format_elapsed(progress.eta_s)
        if column is JobColumn.STARTED:
            return format_started(job.started_at or job.created_at)
        if column is JobColumn.ELAPSED:
            return format_elapsed(self._elapsed(job))
        return format_cost(job)

    def _elapsed(self, job: Job) -> float | None:
        """Wall time since the job started: ticking while it runs, fixed once it ended."""
        progress = self._progress.get(job.id)
        if job.started_at is not None:
            if not job.status.is_finished:
                return max(0.0, (self._now or time.time()) - job.started_at)
            if job.finished_at is not None:
                return job.finished_at - job.started_at
        if progress is not None and progress.elapsed_s > 0:
            return progress.elapsed_s
        if job.started_at is None:
            return None
        return job.updated_at - job.started_at

    def _tooltip(self, job: Job) -> str:
        lines = [f"{job.name} \u00b7 {BACKEND_SHORT.get(job.backend, job.backend.value)}"]
        lines.append(f"Status: {job.status.label}")
        started = job.started_at or job.created_at
        lines.append(f"Started: {format_started(started)}")
        if job.base_model:
            lines.append(f"Base model: {job.base_model}")
        progress = self._progress.get(job.id)
        if progress is not None and progress.total_steps:
            lines.append(f"Step {progress.step} of {progress.total_steps}")
            if progress.samples_per_s and not job.status.is_finished:
                lines.append(f"{progress.samples_per_s:.1f} samples/s")
        if job.remote_id:
            lines.append(f"Remote id: {job.remote_id}")
        if job.output_path:
            lines.append(f"Output: {job.output_path}")
        if job.error:
            lines.append(job.error)
        return "\n".join(lines)
