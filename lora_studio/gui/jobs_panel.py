"""The jobs list in the job monitor: every job of every backend, with its actions.

A :class:`QTableView` over :class:`~lora_studio.gui.jobs_model.JobsModel` (one row per
job, never one widget per job) and the buttons that act on the selected job: Cancel,
Retry, Resume from checkpoint (a local run that was interrupted or stopped and left one),
Open folder, and move a waiting job up or down the queue. The panel only emits what the
user asked for; the controller does it.
"""

from __future__ import annotations

import time
from pathlib import Path

from PySide6.QtCore import (
    QModelIndex,
    QPersistentModelIndex,
    QPoint,
    QRect,
    Qt,
    QTimer,
    QUrl,
    Signal,
)
from PySide6.QtGui import QDesktopServices, QPainter
from PySide6.QtWidgets import (
    QAbstractItemView,
    QApplication,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QMenu,
    QPushButton,
    QStyle,
    QStyledItemDelegate,
    QStyleOptionProgressBar,
    QStyleOptionViewItem,
    QTableView,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

from lora_studio.core.jobs import BackendType, Job, JobStatus
from lora_studio.gui.jobs_model import FRACTION_ROLE, JobColumn, JobsModel


class ProgressDelegate(QStyledItemDelegate):
    """Draws the progress column as a thin progress bar with its text."""

    def paint(
        self,
        painter: QPainter,
        option: QStyleOptionViewItem,
        index: QModelIndex | QPersistentModelIndex,
    ) -> None:
        fraction = index.data(FRACTION_ROLE)
        if not isinstance(fraction, float) or fraction < 0:
            super().paint(painter, option, index)
            return
        if option.state & QStyle.StateFlag.State_Selected:  # type: ignore[attr-defined]
            painter.fillRect(option.rect, option.palette.highlight())  # type: ignore[attr-defined]
        bar = QStyleOptionProgressBar()
        rect: QRect = option.rect.adjusted(3, 3, -3, -3)  # type: ignore[attr-defined]
        bar.rect = rect  # type: ignore[attr-defined]
        bar.minimum = 0  # type: ignore[attr-defined]
        bar.maximum = 1000  # type: ignore[attr-defined]
        bar.progress = round(fraction * 1000)  # type: ignore[attr-defined]
        bar.text = str(index.data(Qt.ItemDataRole.DisplayRole) or "")  # type: ignore[attr-defined]
        bar.textVisible = True  # type: ignore[attr-defined]
        bar.textAlignment = Qt.AlignmentFlag.AlignCenter  # type: ignore[attr-defined]
        style = QApplication.style()
        style.drawControl(QStyle.ControlElement.CE_ProgressBar, bar, painter)


class JobsPanel(QWidget):
    """The jobs table and its buttons (see the module docstring).

    Signals:
        job_selected(Job | None): the selection changed.
        cancel_requested(str), retry_requested(str), resume_requested(str): the action,
            with the job's id.
        move_requested(str, int): move the waiting job by -1 (up) or +1 (down).
        ticked(float): a second passed, at this ``time.time()`` (the running jobs' elapsed
            times were refreshed as of it).
    """

    job_selected = Signal(object)
    cancel_requested = Signal(str)
    retry_requested = Signal(str)
    resume_requested = Signal(str)
    move_requested = Signal(str, int)
    #: every second, with the time (the job monitor's elapsed time ticks with the list's)
    ticked = Signal(float)

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.model = JobsModel(self)
        self._resumable: set[str] = set()
        self.view = QTableView()
        self.view.setModel(self.model)
        self.view.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.view.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.view.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.view.setAlternatingRowColors(True)
        self.view.setShowGrid(False)
        self.view.setWordWrap(False)
        self.view.verticalHeader().hide()
        self.view.verticalHeader().setDefaultSectionSize(24)
        self.view.setItemDelegateForColumn(JobColumn.PROGRESS, ProgressDelegate(self.view))
        header = self.view.horizontalHeader()
        header.setHighlightSections(False)
        header.setSectionResizeMode(QHeaderView.ResizeMode.Interactive)
        header.setSectionResizeMode(JobColumn.NAME, QHeaderView.ResizeMode.Stretch)
        header.setMinimumSectionSize(36)
        # The start time is in each row's tooltip; the header's menu shows it as a column.
        self.view.setColumnHidden(JobColumn.STARTED, True)
        header.setContextMenuPolicy(Qt.ContextMenuPolicy.CustomContextMenu)
        header.customContextMenuRequested.connect(self._header_menu)
        for column, width in (
            (JobColumn.BACKEND, 66),
            (JobColumn.STATUS, 80),
            (JobColumn.PROGRESS, 92),
            (JobColumn.SPEED, 50),
            (JobColumn.ETA, 42),
            (JobColumn.STARTED, 46),
            (JobColumn.ELAPSED, 52),
            (JobColumn.COST, 50),
        ):
            self.view.setColumnWidth(column, width)
        self.view.selectionModel().selectionChanged.connect(self._on_selection)
        self.model.dataChanged.connect(self._on_data_changed)
        self.model.modelReset.connect(self._restore_selection)
        # The cost column only means something once a paid (Replicate) job is listed.
        self.model.modelReset.connect(self._show_cost_column)
        self.model.rowsInserted.connect(self._show_cost_column)
        self._show_cost_column()
        self._selected_id: str | None = None

        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setToolTip("Stop the selected job (a waiting one leaves the queue)")
        self.cancel_button.clicked.connect(lambda: self._emit(self.cancel_requested))
        self.retry_button = QPushButton("Retry")
        self.retry_button.setToolTip("Run the selected job again with the same settings")
        self.retry_button.clicked.connect(lambda: self._emit(self.retry_requested))
        self.resume_button = QPushButton("Resume from checkpoint")
        self.resume_button.setToolTip(
            "Continue the selected local run from the newest checkpoint it saved"
        )
        self.resume_button.clicked.connect(lambda: self._emit(self.resume_requested))
        self.folder_button = QPushButton("Open folder")
        self.folder_button.setToolTip("Show the selected job's output folder")
        self.folder_button.clicked.connect(self._open_folder)
        self.up_button = QToolButton()
        self.up_button.setArrowType(Qt.ArrowType.UpArrow)
        self.up_button.setToolTip("Run this waiting job sooner")
        self.up_button.clicked.connect(lambda: self._move(-1))
        self.down_button = QToolButton()
        self.down_button.setArrowType(Qt.ArrowType.DownArrow)
        self.down_button.setToolTip("Run this waiting job later")
        self.down_button.clicked.connect(lambda: self._move(1))

        title = QLabel("<b>Jobs</b>")
        head = QHBoxLayout()
        head.addWidget(title)
        head.addStretch(1)
        head.addWidget(self.up_button)
        head.addWidget(self.down_button)
        buttons = QHBoxLayout()
        buttons.addWidget(self.cancel_button)
        buttons.addWidget(self.retry_button)
        buttons.addWidget(self.resume_button)
        buttons.addWidget(self.folder_button)
        buttons.addStretch(1)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addLayout(head)
        layout.addWidget(self.view, 1)
        layout.addLayout(buttons)

        self._clock = QTimer(self)
        self._clock.setInterval(1000)
        self._clock.timeout.connect(self._tick)
        self._clock.start()
        self._update_buttons()

    # ---- state -----------------------------------------------------------------------

    def selected_job(self) -> Job | None:
        rows = self.view.selectionModel().selectedRows()
        return self.model.job(rows[0].row()) if rows else None

    def select_job(self, job_id: str, *, notify: bool = True) -> bool:
        """Select job ``job_id`` (with ``notify``, :attr:`job_selected` shows it);
        ``False`` when it is not listed."""
        row = self.model.row_of(job_id)
        if row < 0:
            return False
        selection = self.view.selectionModel()
        already = selection.isRowSelected(row)
        blocked = selection.blockSignals(not notify)
        try:
            self.view.selectRow(row)
        finally:
            selection.blockSignals(blocked)
        self.view.viewport().update()
        self._selected_id = job_id
        self._update_buttons()
        self.view.scrollTo(self.model.index(row, 0))
        if notify and already:
            self.job_selected.emit(self.selected_job())
        return True

    def set_resumable(self, job_id: str, resumable: bool) -> None:
        """Whether job ``job_id`` left a checkpoint to resume from (the controller looks)."""
        if resumable:
            self._resumable.add(job_id)
        else:
            self._resumable.discard(job_id)
        self._update_buttons()

    # ---- internals ---------------------------------------------------------------------

    def _emit(self, signal: object) -> None:
        job = self.selected_job()
        if job is not None:
            signal.emit(job.id)  # type: ignore[attr-defined]

    def _move(self, delta: int) -> None:
        job = self.selected_job()
        if job is not None and job.status is JobStatus.QUEUED:
            self.move_requested.emit(job.id, delta)

    def _open_folder(self) -> None:
        job = self.selected_job()
        if job is None:
            return
        folder = Path(job.output_path).parent if job.output_path else Path(job.output_dir)
        QDesktopServices.openUrl(QUrl.fromLocalFile(str(folder)))

    def _on_selection(self, *_: object) -> None:
        job = self.selected_job()
        self._selected_id = job.id if job is not None else None
        self._update_buttons()
        self.job_selected.emit(job)

    def _restore_selection(self) -> None:
        if self._selected_id is None:
            self._update_buttons()
            return
        row = self.model.row_of(self._selected_id)
        if row >= 0:
            blocked = self.view.selectionModel().blockSignals(True)
            try:
                self.view.selectRow(row)
            finally:
                self.view.selectionModel().blockSignals(blocked)
        self._update_buttons()

    def _on_data_changed(self, top: QModelIndex, *_: object) -> None:
        job = self.selected_job()
        if job is not None and top.row() == self.model.row_of(job.id):
            self._update_buttons()

    def _header_menu(self, pos: QPoint) -> None:
        menu = QMenu(self)
        for column in JobColumn:
            if column in (JobColumn.NAME, JobColumn.COST):
                continue  # the name always shows; the cost shows with paid jobs
            action = menu.addAction(str(self.model.headerData(column, Qt.Orientation.Horizontal)))
            action.setCheckable(True)
            action.setChecked(not self.view.isColumnHidden(column))
            action.toggled.connect(lambda shown, c=column: self.view.setColumnHidden(c, not shown))
        menu.exec(self.view.horizontalHeader().mapToGlobal(pos))

    def _show_cost_column(self, *_: object) -> None:
        paid = any(job.backend is BackendType.REPLICATE for job in self.model.jobs())
        self.view.setColumnHidden(JobColumn.COST, not paid)

    def _tick(self) -> None:
        now = time.time()
        if self.isVisible() and self.model.has_running():
            self.model.tick(now)
        self.ticked.emit(now)

    def _update_buttons(self) -> None:
        job = self.selected_job()
        finished = job is not None and job.status.is_finished
        self.cancel_button.setEnabled(job is not None and not finished)
        self.retry_button.setEnabled(finished and job is not None and job.spec is not None)
        self.resume_button.setEnabled(
            finished
            and job is not None
            and job.backend is BackendType.LOCAL
            and job.status is not JobStatus.SUCCEEDED
            and job.id in self._resumable
        )
        self.folder_button.setEnabled(job is not None and bool(job.output_path or job.output_dir))
        queued = job is not None and job.status is JobStatus.QUEUED
        self.up_button.setEnabled(queued)
        self.down_button.setEnabled(queued)
