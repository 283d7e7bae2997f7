"""The job monitor: status, progress, loss curve, sample images, log and result of the
training run.

It only shows :class:`~lora_studio.core.jobs.Progress` values handed to it, so it works the
same whichever backend runs the job. Its Cancel button goes idle → running → "Stopping…"
(disabled) → idle. For runs that can pause (in-process ones) the Pause button goes
"Pause" → "Pausing…" → (the run reports Paused) "Resume" → "Resuming…" → "Pause"; Cancel
works throughout. A run that ended with a checkpoint behind it offers "Resume from step N".

The header shows the status, a progress bar, the step, speed and ETA, and the elapsed time,
which ticks each second while the run goes on and stops when it ends. The charts
(:mod:`~lora_studio.gui.loss_curve`) draw the loss with its smoothing and the learning
rate. The log follows its end, as a terminal does, unless the user scrolled up to read.
A job picked in the jobs list is shown the same way, live or from its history.
"""

from __future__ import annotations

import enum
import time
from collections.abc import Sequence
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
from lora_studio.gui.loss_curve import TrainingCharts
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
    if progress.samples_per_s:
        parts.append(f"{progress.samples_per_s:.1f} samples/s")
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
    #: the user asked for a compatibility check of this LoRA file (a Path)
    check_requested = Signal(object)

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
        self.elapsed_label = QLabel("")
        self.elapsed_label.setStyleSheet(f"color: {artwork.MUTED.name()};")
        self.elapsed_label.setToolTip("Time since the run started (wall clock)")
        self.elapsed_label.setAlignment(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
        # The elapsed time ticks while a run goes on: (start, end) as time.time() values,
        # the jobs list's clock, so both show the same second.
        self._clock: tuple[float, float | None] | None = None
        self._lr_points: dict[int, float] = {}
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
        self.check_button = QPushButton("Check compatibility")
        self.check_button.setToolTip(
            "Load the file into diffusers and check its key names against what ComfyUI, "
            "Automatic1111 and Forge read"
        )
        self.check_button.clicked.connect(self._request_check)
        self.output_row = QWidget()
        out = QHBoxLayout(self.output_row)
        out.setContentsMargins(0, 0, 0, 0)
        out.addWidget(self.output_label)
        out.addWidget(self.output_edit, 1)
        out.addWidget(self.check_button)
        out.addWidget(self.open_folder_button)
        self.output_row.hide()

        self.charts = TrainingCharts()
        self.loss_curve = self.charts.loss
        self.log_view = QPlainTextEdit()
        self.log_view.setReadOnly(True)
        self.log_view.setMaximumBlockCount(2000)
        # Lines as a terminal shows them: one per line, scroll sideways for long ones.
        self.log_view.setLineWrapMode(QPlainTextEdit.LineWrapMode.NoWrap)
        mono = QFontDatabase.systemFont(QFontDatabase.SystemFont.FixedFont)
        mono.setPointSizeF(max(8.0, QFont().pointSizeF() * 0.9))
        self.log_view.setFont(mono)
        self.log_view.setPlaceholderText("Log lines of the run appear here")
        # Follow the end of the log until the user scrolls away from it (and again once
        # they scroll back to the end). Only the user's own scrolling counts.
        self._log_follow = True
        log_bar = self.log_view.verticalScrollBar()
        log_bar.actionTriggered.connect(self._update_log_follow)
        log_bar.sliderReleased.connect(self._update_log_follow)
        self.samples = SampleGallery(thumbnails)
        self.samples.hide()  # until a run draws samples
        body = QSplitter(Qt.Orientation.Horizontal)
        body.addWidget(self.charts)
        body.addWidget(self.samples)
        body.addWidget(self.log_view)
        body.setStretchFactor(0, 3)
        body.setStretchFactor(1, 2)
        body.setStretchFactor(2, 2)
        body.setChildrenCollapsible(False)
        self.body = body

        self.jobs = JobsPanel()
        self.jobs.ticked.connect(self._on_tick)  # one clock for the list and the header
        self.details = QWidget()
        layout = QVBoxLayout(self.details)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addLayout(head)
        status_row = QHBoxLayout()
        status_row.addWidget(self.status_label, 1)
        status_row.addWidget(self.elapsed_label)
        layout.addLayout(status_row)
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
        self.splitter.setSizes([580, 850])
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
            self._start_clock()
            self._set_state(MonitorState.STARTING)
        elif not active:
            self._stop_clock()
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
        rates: list[tuple[int, float]] | None = None,
    ) -> None:
        """Show ``job`` from the jobs list: its last progress (live, when it is running),
        or what the history recorded (status, loss and learning-rate series as
        ``(step, value)`` points, log, output, error)."""
        self._shown_job = job
        self._local_shown = False
        self._reset()
        self._describe(job)
        history = progress is None
        if job.started_at is not None and job.status.is_finished:
            end = job.finished_at or job.updated_at
            self._stop_clock(max(0.0, end - job.started_at))
        elif job.started_at is not None and job.status is not JobStatus.QUEUED:
            self._start_clock(job.started_at)
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
        if history and losses:  # every recorded step, with its own step number
            self.charts.set_points(losses, rates or ())
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
        if self._clock is None or self._clock[1] is None:
            self._start_clock(job.started_at)
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
        self._show_charts(progress)
        if progress.is_finished():
            self._stop_clock()
        elif self._clock is None and progress.status is not JobStatus.QUEUED:
            self._start_clock(self._shown_job.started_at if self._shown_job else None)
        fresh = new_log_lines(self._log_shown, progress.log_tail)
        if fresh:
            # Follow the log, as a terminal would, unless the user scrolled up to read.
            self.log_view.appendPlainText("\n".join(fresh))
            if self._log_follow:
                # The scroll range updates lazily, so move the cursor rather than the
                # scroll bar; once more after the layout settles (showing the output row
                # shrinks the log).
                self._follow_log()
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

    def log_follows(self) -> bool:
        """New log lines scroll the log to its end (the user has not scrolled away)."""
        return self._log_follow

    def _update_log_follow(self, *_action: object) -> None:
        # On actionTriggered the slider position has moved but the value not yet.
        bar = self.log_view.verticalScrollBar()
        self._log_follow = bar.sliderPosition() >= bar.maximum() - 1

    def elapsed_s(self, now: float | None = None) -> float | None:
        """The elapsed time (as of ``now``, a ``time.time()``; ``None``: none)."""
        if self._clock is None:
            return None
        start, end = self._clock
        return (end if end is not None else (time.time() if now is None else now)) - start

    @property
    def clock_running(self) -> bool:
        return self._clock is not None and self._clock[1] is None

    def _start_clock(self, started_at: float | None = None) -> None:
        """Tick from ``started_at`` (a ``time.time()``; default: now)."""
        now = time.time()
        self._clock = (min(started_at, now) if started_at is not None else now, None)
        self._show_elapsed()

    def _stop_clock(self, elapsed: float | None = None) -> None:
        """Stop ticking (at ``elapsed`` seconds when given)."""
        now = time.time()
        if self._clock is not None and self._clock[1] is None:
            start = now - elapsed if elapsed is not None else self._clock[0]
            self._clock = (start, now)
        elif self._clock is None and elapsed is not None:
            self._clock = (now - elapsed, now)
        self._show_elapsed()

    def _on_tick(self, now: float) -> None:
        if self.clock_running:
            self._show_elapsed(now)

    def _show_elapsed(self, now: float | None = None) -> None:
        elapsed = self.elapsed_s(now)
        self.elapsed_label.setText("" if elapsed is None else f"Elapsed {format_clock(elapsed)}")

    def _show_charts(self, progress: Progress) -> None:
        rates: Sequence[float] = progress.lr_history
        points: list[tuple[int, float]] = []
        if not rates and progress.learning_rate is not None and progress.step > 0:
            # A backend that reports only the current rate: collect the series here.
            self._lr_points[progress.step] = progress.learning_rate
        if not rates:
            points = sorted(self._lr_points.items())
        self.charts.set_history(
            progress.loss_history,
            progress.step,
            rates,
            loss=progress.loss,
            rate=progress.learning_rate,
            rate_points=points,
        )

    def _reset(self) -> None:
        self._last = None
        self._clock = None
        self.elapsed_label.setText("")
        self._lr_points.clear()
        self.samples.clear()
        self.samples.hide()
        self._log_shown.clear()
        self.log_view.clear()
        self._log_follow = True
        self.charts.clear()
        self.error_label.hide()
        self.output_row.hide()
        self.output_edit.clear()
        self.stats_label.setText("")
        self.progress_bar.setRange(0, 1)
        self.progress_bar.setValue(0)
        self.progress_bar.setFormat("")
        self.status_label.setStyleSheet("")

    def _follow_log(self) -> None:
        if not self._log_follow:
            return  # the user scrolled up meanwhile
        self.log_view.moveCursor(QTextCursor.MoveOperation.End)
        self.log_view.moveCursor(QTextCursor.MoveOperation.StartOfBlock)
        self.log_view.ensureCursorVisible()

    def _status_style(self, status: JobStatus) -> str:
        color = _STATUS_COLORS.get(status)
        return f"color: {color.name()};" if color is not None else ""

    def _show_samples(self) -> None:
        if self.samples.isVisible():
            return
        self.samples.show()
        total = sum(self.body.sizes()) or self.body.width()
        # The charts keep the most room; the samples and the log share the rest.
        charts, samples = total * 34 // 100, total * 28 // 100
        self.body.setSizes([charts, samples, total - charts - samples])

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

    def _request_check(self) -> None:
        text = self.output_edit.text()
        if text.endswith(".safetensors"):
            self.check_button.setEnabled(False)
            self.check_button.setText("Checking\u2026")
            self.check_requested.emit(Path(text))

    def show_check_done(self) -> None:
        """The compatibility check has answered: the button is ready again."""
        self.check_button.setEnabled(True)
        self.check_button.setText("Check compatibility")

    def _open_output_folder(self) -> None:
        text = self.output_edit.text()
        if text:
            QDesktopServices.openUrl(QUrl.fromLocalFile(str(Path(text).parent)))
