"""The job monitor: status, progress, loss curve, sample images, log and result of the
training run.

It only shows :class:`~lora_studio.core.jobs.Progress` values handed to it, so it works the
same whichever backend runs the job. Its Cancel button goes idle → running → "Stopping…"
(disabled) → idle. For runs that can pause (in-process ones) the Pause button goes
"Pause" → "Pausing…" → (the run reports Paused) "Resume" → "Resuming…" → "Pause"; Cancel
works throughout. A run that ended with a checkpoint behind it offers "Resume from step N".
"""

from __future__ import annotations

import enum
from pathlib import Path
from typing import TYPE_CHECKING

from PySide6.QtCore import Qt, QTimer, QUrl, Signal
from PySide6.QtGui import QDesktopServices, QFont, QFontDatabase, QTextCursor
from PySide6.QtWidgets import (
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPlainTextEdit,
    QProgressBar,
    QPushButton,
    QSplitter,
    QVBoxLayout,
    QWidget,
)

from lora_studio.core.config import LoraConfig
from lora_studio.core.errors import ConfigError
from lora_studio.core.jobs import Job, JobStatus, Progress
from lora_studio.gui import artwork
from lora_studio.gui.jobs_panel import JobsPanel
from lora_studio.gui.loss_curve import LossCurve
from lora_studio.gui.sample_gallery import SampleGallery
from lora_studio.gui.thumbnail_loader import ThumbnailLoader

if TYPE_CHECKING:
    from lora_studio.gui.controller import ResumePoint

_LOG_KEEP = 400


class MonitorState(enum.Enum):
    IDLE = "idle"
    STARTING = "starting"
    RUNNING = "running"
    PAUSING = "pausing"  # asked to pause; the run finishes its step first
    PAUSED = "paused"
    RESUMING = "resuming"
    STOPPING = "stopping"


#: States in which a run is going (Cancel is offered).
ACTIVE = (
    MonitorState.STARTING,
    MonitorState.RUNNING,
    MonitorState.PAUSING,
    MonitorState.PAUSED,
    MonitorState.RESUMING,
)
_PAUSE_TEXT = {
    MonitorState.PAUSING: "Pausing\u2026",
    MonitorState.PAUSED: "Resume",
    MonitorState.RESUMING: "Resuming\u2026",
}


def format_clock(seconds: float | None) -> str:
    """``0:25``, ``12:03``, ``1:02:03`` (``–`` when unknown)."""
    if seconds is None or seconds != seconds or seconds < 0:
        return "\u2013"
    total = round(seconds)
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def status_text(progress: Progress | None) -> str:
    """The headline: Idle / Preparing: Caching latents 3/12 / Running / ... / Cancelled."""
    if progress is None:
        return "Idle"
    if progress.status is JobStatus.PREPARING:
        return f"Preparing: {progress.message}" if progress.message else "Preparing\u2026"
    return progress.status.label


def stats_text(progress: Progress) -> str:
    """``step 12/60 · epoch 1/5 · loss 0.1043 · 2.4 it/s · ETA 0:25``."""
    parts = [f"step {progress.step}/{progress.total_steps}"]
    if progress.total_epochs:
        parts.append(f"epoch {progress.epoch}/{progress.total_epochs}")
    if progress.loss is not None:
        parts.append(f"loss {progress.loss:.4f}")
    if progress.step > 0 and progress.elapsed_s > 0:
        parts.append(f"{progress.step / progress.elapsed_s:.1f} it/s")
    if progress.is_finished():
        if progress.elapsed_s > 0:
            parts.append(f"took {format_clock(progress.elapsed_s)}")
    elif progress.eta_s is not None:
        parts.append(f"ETA {format_clock(progress.eta_s)}")
    return " \u00b7 ".join(parts)


def new_log_lines(shown: list[str], tail: tuple[str, ...] | list[str]) -> list[str]:
    """The lines of ``tail`` not yet shown.

    ``Progress.log_tail`` is a sliding window over the log, so consecutive snapshots
    overlap: find the longest end of ``shown`` that begins ``tail`` and return the rest.
    """
    tail = list(tail)
    for k in range(min(len(shown), len(tail)), 0, -1):
        if shown[-k:] == tail[:k]:
            return tail[k:]
    return tail


_STATUS_COLORS = {
    JobStatus.PAUSED: artwork.ACCENT,
    JobStatus.SUCCEEDED: artwork.SUCCESS,
    JobStatus.FAILED: artwork.ERROR,
    JobStatus.CANCELLED: artwork.WARNING,
}


class JobMonitor(QWidget):
    """Shows the running (or last) training job.

    Signals:
        cancel_requested(): the user pressed Cancel.
        pause_requested(): the user pressed Pause.
        unpause_requested(): the user pressed Resume on a paused run.
        resume_checkpoint_requested(Path): the user wants to continue an ended run from
            its checkpoint.
    """

    cancel_requested = Signal()
    pause_requested = Signal()
    unpause_requested = Signal()
    resume_checkpoint_requested = Signal(object)

    def __init__(
        self, thumbnails: ThumbnailLoader | None = None, parent: QWidget | None = None
    ) -> None:
        super().__init__(parent)
        self._state = MonitorState.IDLE
        self._log_shown: list[str] = []
        self._last: Progress | None = None
        self._pausable = True
        self._resume_point: ResumePoint | None = None

        title = QLabel("<b>Training job</b>")
        self.job_label = QLabel("No run yet")
        self.job_label.setStyleSheet(f"color: {artwork.MUTED.name()};")
        self.status_label = QLabel("Idle")
        font = self.status_label.font()
        font.setPointSizeF(font.pointSizeF() * 1.35)
        font.setBold(True)
        self.status_label.setFont(font)
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setToolTip(
            "Stop the run after the current step; what was trained so far is saved"
        )
        self.cancel_button.setMinimumWidth(110)
        self.cancel_button.clicked.connect(self._on_cancel_clicked)
        self.pause_button = QPushButton("Pause")
        self.pause_button.setMinimumWidth(110)
        self.pause_button.clicked.connect(self._on_pause_clicked)
        self.resume_button = QPushButton("Resume")
        self.resume_button.setObjectName("resumeButton")
        self.resume_button.clicked.connect(self._on_resume_clicked)
        self.resume_button.hide()
        head = QHBoxLayout()
        head.addWidget(title)
        head.addWidget(self.job_label, 1)
        head.addWidget(self.resume_button)
        head.addWidget(self.pause_button)
        head.addWidget(self.cancel_button)

        self.progress_bar = QProgressBar()
        self.progress_bar.setRange(0, 1)
        self.progress_bar.setValue(0)
        self.progress_bar.setFormat("")
        self.progress_bar.setTextVisible(True)
        self.progress_bar.setMinimumHeight(22)
        self.stats_label = QLabel("")
        self.stats_label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)

        self.error_label = QLabel()
        self.error_label.setWordWrap(True)
        self.error_label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.error_label.setStyleSheet(f"color: {artwork.ERROR.name()}; font-weight: bold;")
        self.error_label.hide()

        self.output_label = QLabel("Output")
        self.output_edit = QLineEdit()
        self.output_edit.setReadOnly(True)
        self.output_edit.setToolTip("The LoRA file this run wrote")
        self.open_folder_button = QPushButton("Open folder")
        self.open_folder_button.setToolTip("Show the output file in the file manager")
        self.open_folder_button.clicked.connect(self._open_output_folder)
        self.output_row = QWidget()
        out = QHBoxLayout(self.output_row)
        out.setContentsMargins(0, 0, 0, 0)
        out.addWidget(self.output_label)
        out.addWidget(self.output_edit, 1)
        out.addWidget(self.open_folder_button)
        self.output_row.hide()

        self.loss_curve = LossCurve()
        self.log_view = QPlainTextEdit()
        self.log_view.setReadOnly(True)
        self.log_view.setMaximumBlockCount(2000)
        self.log_view.setLineWrapMode(QPlainTextEdit.LineWrapMode.WidgetWidth)
        mono = QFontDatabase.systemFont(QFontDatabase.SystemFont.FixedFont)
        mono.setPointSizeF(max(8.0, QFont().pointSizeF() * 0.9))
        self.log_view.setFont(mono)
        self.log_view.setPlaceholderText("Log lines of the run appear here")
        self.samples = SampleGallery(thumbnails)
        self.samples.hide()  # until a run draws samples
        body = QSplitter(Qt.Orientation.Horizontal)
        body.addWidget(self.loss_curve)
        body.addWidget(self.samples)
        body.addWidget(self.log_view)
        body.setStretchFactor(0, 2)
        body.setStretchFactor(1, 2)
        body.setStretchFactor(2, 3)
        body.setChildrenCollapsible(False)
        self.body = body

        self.jobs = JobsPanel()
        self.details = QWidget()
        layout = QVBoxLayout(self.details)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addLayout(head)
        layout.addWidget(self.status_label)
        layout.addWidget(self.progress_bar)
        layout.addWidget(self.stats_label)
        layout.addWidget(self.error_label)
        layout.addWidget(self.output_row)
        layout.addWidget(body, 1)
        self.splitter = QSplitter(Qt.Orientation.Horizontal)
        self.splitter.addWidget(self.jobs)
        self.splitter.addWidget(self.details)
        self.splitter.setStretchFactor(0, 2)
        self.splitter.setStretchFactor(1, 5)
        self.splitter.setSizes([560, 870])
        self.splitter.setChildrenCollapsible(False)
        outer = QVBoxLayout(self)
        outer.setContentsMargins(6, 6, 6, 6)
        outer.addWidget(self.splitter)
        self._shown_job: Job | None = None
        self._local_shown = True
        self._apply_state()

    # ---- state -----------------------------------------------------------------------

    @property
    def state(self) -> MonitorState:
        return self._state

    @property
    def last_progress(self) -> Progress | None:
        return self._last

    def log_lines(self) -> list[str]:
        return list(self._log_shown)

    def _set_state(self, state: MonitorState) -> None:
        self._state = state
        self._apply_state()

    def _apply_state(self) -> None:
        state = self._state
        stopping = state is MonitorState.STOPPING
        self.cancel_button.setText("Stopping\u2026" if stopping else "Cancel")
        self.cancel_button.setEnabled(state in ACTIVE)
        local = self._local_shown
        self.cancel_button.setVisible(local)
        self.pause_button.setVisible(self._pausable and local)
        self.pause_button.setText(_PAUSE_TEXT.get(state, "Pause"))
        self.pause_button.setEnabled(state in (MonitorState.RUNNING, MonitorState.PAUSED))
        self.pause_button.setToolTip(
            "Continue training from where it paused"
            if state is MonitorState.PAUSED
            else "Hold the run after the current step; it keeps everything in memory and "
            "goes on when you press Resume"
        )
        point = self._resume_point
        self.resume_button.setVisible(state is MonitorState.IDLE and point is not None and local)
        if point is not None:
            self.resume_button.setText(f"Resume from step {point.step}")
            after = (
                "e.g. after raising the epochs or max steps"
                if point.status is JobStatus.SUCCEEDED
                else "to finish what was cut short"
            )
            self.resume_button.setToolTip(
                f"Train on from the checkpoint at step {point.step} ({after}): weights, "
                f"optimizer, schedule and data order are restored.\n{point.path}"
            )

    def set_pause_supported(self, supported: bool) -> None:
        """Whether the run being shown can pause (multi-GPU runs cannot)."""
        self._pausable = supported
        self._apply_state()

    def set_resume_point(self, point: ResumePoint | None) -> None:
        """Offer (or stop offering) to continue the last run from its checkpoint."""
        self._resume_point = point
        self._apply_state()

    @property
    def resume_point(self) -> ResumePoint | None:
        return self._resume_point

    # ---- slots (connected to the controller) -------------------------------------------

    def set_training_active(self, active: bool) -> None:
        """A run is starting (``True``) or no run is going any more (``False``)."""
        if active and self._state is MonitorState.IDLE:
            self._shown_job = None
            self._local_shown = True
            self._reset()
            self.status_label.setText("Starting\u2026")
            self._set_state(MonitorState.STARTING)
        elif not active:
            self._set_state(MonitorState.IDLE)

    @property
    def shown_job(self) -> Job | None:
        """The job shown (``None``: the window's local run, or nothing yet)."""
        return self._shown_job

    @property
    def shows_local_run(self) -> bool:
        """The window's own local run is shown (its Pause/Cancel buttons apply)."""
        return self._local_shown

    def show_local_run(self) -> None:
        """Go back to showing the window's local run (what a new local run does)."""
        if not self._local_shown:
            self._shown_job = None
            self._local_shown = True
            self._reset()
            self.job_label.setText("No run yet")
            self.status_label.setText("Idle")
            self._apply_state()

    def show_job(
        self,
        job: Job,
        progress: Progress | None = None,
        logs: list[str] | None = None,
        losses: list[tuple[int, float]] | None = None,
    ) -> None:
        """Show ``job`` from the jobs list: its last progress (live, when it is running),
        or what the history recorded (status, loss series, log, output, error)."""
        self._shown_job = job
        self._local_shown = False
        self._reset()
        self._describe(job)
        if progress is None:
            history = tuple(loss for _step, loss in (losses or []))
            last_step = losses[-1][0] if losses else 0
            progress = Progress(
                status=job.status,
                step=last_step,
                total_steps=last_step if job.status is JobStatus.SUCCEEDED else 0,
                loss=history[-1] if history else None,
                loss_history=history,
                message=job.message,
                output_path=job.output_path,
                error=job.error,
            )
        if logs:  # the history's log holds the live tail's lines too
            progress = progress.evolve(log_tail=tuple(logs))
        self.on_progress(progress)
        if job.status is JobStatus.FAILED and not progress.error and job.error:
            self.error_label.setText(f"Failed: {job.error}")
            self.error_label.show()
        self._apply_state()

    def on_job_update(self, job: Job, progress: Progress) -> None:
        """A live update of some job: shown when that job is the one shown."""
        if self._shown_job is not None and self._shown_job.id == job.id:
            self._shown_job = job
            self.on_progress(progress)

    def _describe(self, job: Job) -> None:
        where = {"local": "this computer", "comfyui": "ComfyUI", "replicate": "Replicate"}
        self.job_label.setText(
            f"{job.name} \u00b7 {job.base_model} \u00b7 on {where.get(job.backend.value, '?')}"
        )
        try:
            self.samples.set_prompts(LoraConfig.from_dict(job.config).sample_prompt_list)
        except ConfigError:
            self.samples.set_prompts([])

    def on_job_started(self, job: Job) -> None:
        self._shown_job = None
        self._local_shown = True
        self.job_label.setText(f"{job.name} \u00b7 {job.base_model}")
        try:
            self.samples.set_prompts(LoraConfig.from_dict(job.config).sample_prompt_list)
        except ConfigError:  # a job from elsewhere with a config this version cannot read
            self.samples.set_prompts([])
        if self._state is not MonitorState.STOPPING:
            self._set_state(MonitorState.RUNNING)

    def on_progress(self, progress: Progress) -> None:
        self._last = progress
        state = self._state
        if progress.status is JobStatus.PAUSED and state in (
            MonitorState.RUNNING,
            MonitorState.PAUSING,
        ):
            self._set_state(MonitorState.PAUSED)
        elif progress.status is JobStatus.RUNNING and state in (
            MonitorState.PAUSED,
            MonitorState.RESUMING,
        ):
            self._set_state(MonitorState.RUNNING)
        if progress.sample_paths and self.samples.add(progress.sample_paths):
            self._show_samples()
        self.status_label.setText(status_text(progress))
        self.status_label.setStyleSheet(self._status_style(progress.status))
        total = max(1, progress.total_steps)
        self.progress_bar.setRange(0, total)
        if progress.status is JobStatus.SUCCEEDED:
            self.progress_bar.setValue(total)
        else:
            self.progress_bar.setValue(min(progress.step, total))
        if progress.status is JobStatus.PREPARING:
            self.progress_bar.setFormat("Preparing\u2026")
        elif progress.total_steps:
            self.progress_bar.setFormat(f"{progress.step} / {progress.total_steps} steps (%p%)")
        self.stats_label.setText(stats_text(progress) if progress.total_steps else "")
        self.loss_curve.set_values(progress.loss_history, progress.step)
        fresh = new_log_lines(self._log_shown, progress.log_tail)
        if fresh:
            self.log_view.appendPlainText("\n".join(fresh))
            # Follow the log, as a terminal would (the scroll range updates lazily, so
            # move the cursor rather than the scroll bar).
            self._follow_log()
            # Once more after the layout settles: showing the output row shrinks the log.
            QTimer.singleShot(0, self, self._follow_log)
            self._log_shown.extend(fresh)
            del self._log_shown[:-_LOG_KEEP]
        if progress.error:
            self.error_label.setText(f"{progress.status.label}: {progress.error}")
            self.error_label.show()
        if progress.output_path:
            self.output_edit.setText(progress.output_path)
            self.output_edit.setCursorPosition(len(progress.output_path))
            self.output_row.show()

    def on_finished(self, progress: Progress) -> None:
        self.on_progress(progress)
        if progress.status is JobStatus.FAILED and not progress.error:
            self.error_label.setText("Failed: the run stopped without giving a reason.")
            self.error_label.show()
        self._set_state(MonitorState.IDLE)

    # ---- internals --------------------------------------------------------------------------

    def shutdown(self) -> None:
        """Stop decoding sample thumbnails (the window is closing)."""
        self.samples.shutdown()

    def _reset(self) -> None:
        self._last = None
        self.samples.clear()
        self.samples.hide()
        self._log_shown.clear()
        self.log_view.clear()
        self.loss_curve.set_values(())
        self.error_label.hide()
        self.output_row.hide()
        self.output_edit.clear()
        self.stats_label.setText("")
        self.progress_bar.setRange(0, 1)
        self.progress_bar.setValue(0)
        self.progress_bar.setFormat("")
        self.status_label.setStyleSheet("")

    def _follow_log(self) -> None:
        self.log_view.moveCursor(QTextCursor.MoveOperation.End)
        self.log_view.ensureCursorVisible()

    def _status_style(self, status: JobStatus) -> str:
        color = _STATUS_COLORS.get(status)
        return f"color: {color.name()};" if color is not None else ""

    def _show_samples(self) -> None:
        if self.samples.isVisible():
            return
        self.samples.show()
        total = sum(self.body.sizes()) or self.body.width()
        # A third each for the curve and the samples, the rest for the log.
        self.body.setSizes([total * 3 // 10, total * 3 // 10, total - 2 * (total * 3 // 10)])

    def _on_cancel_clicked(self) -> None:
        if self._state in ACTIVE:
            self._set_state(MonitorState.STOPPING)
            self.cancel_requested.emit()

    def _on_pause_clicked(self) -> None:
        if self._state is MonitorState.RUNNING:
            self._set_state(MonitorState.PAUSING)
            self.pause_requested.emit()
        elif self._state is MonitorState.PAUSED:
            self._set_state(MonitorState.RESUMING)
            self.unpause_requested.emit()

    def _on_resume_clicked(self) -> None:
        if self._state is MonitorState.IDLE and self._resume_point is not None:
            self.resume_checkpoint_requested.emit(self._resume_point.path)

    def _open_output_folder(self) -> None:
        text = self.output_edit.text()
        if text:
            QDesktopServices.openUrl(QUrl.fromLocalFile(str(Path(text).parent)))
