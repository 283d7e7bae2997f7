"""The frame-extraction dialog: a dropped video (or edit timeline) becomes a dataset.

The dialog offers the sampling of :class:`~lora_studio.core.frames.FrameOptions` (every N
seconds, every N frames, or one frame per scene), a limit on the number of frames and the
output folder (by default ``<video name>_frames`` beside the video). **Extract** runs
:func:`~lora_studio.core.frames.extract_frames` on a worker thread
(:class:`FrameExtraction`); its progress comes back through queued signals, **Cancel**
stops it within a decoded frame and keeps what was written. When frames were written the
dialog emits :attr:`FramesDialog.dataset_ready` with the folder, which the window opens
as the dataset.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path

from PySide6.QtCore import QObject, Qt, Signal
from PySide6.QtWidgets import (
    QComboBox,
    QDialog,
    QDoubleSpinBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QProgressBar,
    QPushButton,
    QSpinBox,
    QStackedWidget,
    QVBoxLayout,
    QWidget,
)

from lora_studio.core.errors import ConfigError, DatasetError, OutputError
from lora_studio.core.frames import (
    FrameExtractionResult,
    FrameOptions,
    FrameProgress,
    FrameSampling,
    extract_frames,
    is_timeline_file,
)
from lora_studio.gui import artwork
from lora_studio.gui.elided_label import ElidedLabel

log = logging.getLogger(__name__)

#: File name endings the window treats as videos when they are dropped on it.
VIDEO_EXTENSIONS = frozenset(
    {
        ".mp4",
        ".m4v",
        ".mov",
        ".mkv",
        ".webm",
        ".avi",
        ".wmv",
        ".flv",
        ".mpg",
        ".mpeg",
        ".ts",
        ".mts",
        ".m2ts",
        ".3gp",
        ".ogv",
    }
)


def is_frame_source(path: Path) -> bool:
    """A video or an edit timeline that frames can be extracted from."""
    return path.is_file() and (path.suffix.lower() in VIDEO_EXTENSIONS or is_timeline_file(path))


def default_output_dir(source: Path) -> Path:
    """``clip_frames`` beside ``clip.mp4``."""
    return source.with_name(f"{source.stem}_frames")


class FrameExtraction(QObject):
    """Runs one extraction on a worker thread; results arrive as signals on the GUI thread.

    Signals:
        progress(FrameProgress): where the run is (at most ~10 per second).
        finished(FrameExtractionResult): the run ended (``cancelled`` set if it was).
        failed(str): the run could not start or broke off; the text is for the user.
    """

    progress = Signal(object)
    finished = Signal(object)
    failed = Signal(str)

    def __init__(self, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self, source: Path, out_dir: Path, options: FrameOptions) -> None:
        if self.running:
            raise RuntimeError("an extraction is already running")
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._run, args=(source, out_dir, options, self._stop), daemon=True
        )
        self._thread.start()

    def cancel(self) -> None:
        """Stop after the frame being decoded; what was written stays."""
        self._stop.set()

    def wait(self, timeout: float | None = None) -> bool:
        """Wait for the worker; ``True`` when it has ended."""
        if self._thread is not None:
            self._thread.join(timeout)
        return not self.running

    def _run(self, source: Path, out_dir: Path, options: FrameOptions, stop: threading.Event):
        # Signals emitted here are queued to the GUI thread (this QObject lives there).
        try:
            result = extract_frames(
                source, out_dir, options, progress=self.progress.emit, should_stop=stop.is_set
            )
        except (DatasetError, ConfigError, OutputError) as exc:
            self.failed.emit(str(exc))
        except Exception as exc:  # a bug: say it, keep the details in the log
            log.exception("Frame extraction from %s failed", source)
            self.failed.emit(f"Unexpected error: {type(exc).__name__}: {exc}")
        else:
            self.finished.emit(result)


class FramesDialog(QDialog):
    """Extract frames from ``source`` (see the module docstring).

    Signals:
        dataset_ready(Path): frames were written to this folder; open it as the dataset.
    """

    dataset_ready = Signal(object)

    def __init__(self, source: Path, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.source = source
        self.result: FrameExtractionResult | None = None
        self.worker = FrameExtraction(self)
        self.worker.progress.connect(self._on_progress)
        self.worker.finished.connect(self._on_finished)
        self.worker.failed.connect(self._on_failed)
        timeline = is_timeline_file(source)
        self.setWindowTitle("Extract frames")
        self.setMinimumWidth(480)

        kind = "edit timeline" if timeline else "video"
        intro = QLabel(
            f"Turn this {kind} into a dataset: frames are picked, blurry ones and "
            "near-duplicates are dropped, and the rest are saved as images"
            + (" (only each clip's used range)." if timeline else ".")
        )
        intro.setWordWrap(True)
        source_label = ElidedLabel(mode=Qt.TextElideMode.ElideMiddle)
        source_label.setText(str(source))
        source_label.setToolTip(str(source))
        source_label.setStyleSheet("font-weight: bold;")

        defaults = FrameOptions()
        help_of = {
            f: FrameOptions.__dataclass_fields__[f].metadata["help"]
            for f in ("sampling", "every_seconds", "every_frames", "scene_threshold", "max_frames")
        }
        self.sampling = QComboBox()
        self.sampling.addItem("Every N seconds", FrameSampling.SECONDS)
        self.sampling.addItem("Every N frames", FrameSampling.FRAMES)
        self.sampling.addItem("One frame per scene", FrameSampling.SCENES)
        self.sampling.setToolTip(help_of["sampling"])
        self.every_seconds = QDoubleSpinBox()
        self.every_seconds.setRange(0.01, 3600)
        self.every_seconds.setDecimals(2)
        self.every_seconds.setSuffix(" s")
        self.every_seconds.setValue(defaults.every_seconds)
        self.every_seconds.setToolTip(help_of["every_seconds"])
        self.every_frames = QSpinBox()
        self.every_frames.setRange(1, 1_000_000)
        self.every_frames.setValue(defaults.every_frames)
        self.every_frames.setSuffix(" frames")
        self.every_frames.setToolTip(help_of["every_frames"])
        self.scene_threshold = QDoubleSpinBox()
        self.scene_threshold.setRange(0.01, 1.0)
        self.scene_threshold.setSingleStep(0.05)
        self.scene_threshold.setValue(defaults.scene_threshold)
        self.scene_threshold.setToolTip(help_of["scene_threshold"])
        self.every_stack = QStackedWidget()
        for widget in (self.every_seconds, self.every_frames, self.scene_threshold):
            self.every_stack.addWidget(widget)
        self.every_label = QLabel()
        self.sampling.currentIndexChanged.connect(self._on_sampling)

        self.max_frames = QSpinBox()
        self.max_frames.setRange(0, 1_000_000)
        self.max_frames.setValue(200)
        self.max_frames.setSpecialValueText("No limit")
        self.max_frames.setSuffix(" frames")
        self.max_frames.setToolTip(help_of["max_frames"] + " 0: no limit.")

        self.out_edit = QLineEdit(str(default_output_dir(source)))
        self.out_edit.setToolTip(
            "Where the frames are saved (created if needed; nothing in it is replaced)."
        )
        self.browse_button = QPushButton("Browse\u2026")
        self.browse_button.clicked.connect(self._browse)
        out_row = QHBoxLayout()
        out_row.addWidget(self.out_edit, 1)
        out_row.addWidget(self.browse_button)

        form = QFormLayout()
        form.addRow("Pick", self.sampling)
        form.addRow(self.every_label, self.every_stack)
        form.addRow("At most", self.max_frames)
        form.addRow("Save to", out_row)

        self.progress_bar = QProgressBar()
        self.progress_bar.setRange(0, 1000)
        self.progress_bar.setTextVisible(False)
        self.progress_bar.hide()
        self.status = QLabel()
        self.status.setWordWrap(True)
        self.status.setStyleSheet(f"color: {artwork.MUTED.name()};")

        self.extract_button = QPushButton("Extract frames")
        self.extract_button.setDefault(True)
        self.extract_button.clicked.connect(self.start)
        self.open_button = QPushButton("Open the frames")
        self.open_button.clicked.connect(self._open_frames)
        self.open_button.hide()
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.clicked.connect(self._cancel_or_close)
        buttons = QHBoxLayout()
        buttons.addStretch(1)
        buttons.addWidget(self.cancel_button)
        buttons.addWidget(self.open_button)
        buttons.addWidget(self.extract_button)

        layout = QVBoxLayout(self)
        layout.addWidget(intro)
        layout.addWidget(source_label)
        layout.addSpacing(6)
        layout.addLayout(form)
        layout.addWidget(self.progress_bar)
        layout.addWidget(self.status)
        layout.addStretch(1)
        layout.addLayout(buttons)
        self._on_sampling()

    # ---- choices ---------------------------------------------------------------------------------

    def options(self) -> FrameOptions:
        """The options as chosen (validated)."""
        limit = self.max_frames.value()
        return FrameOptions(
            sampling=self.sampling.currentData(),
            every_seconds=self.every_seconds.value(),
            every_frames=self.every_frames.value(),
            scene_threshold=self.scene_threshold.value(),
            max_frames=limit or None,
        ).validate()

    def out_dir(self) -> Path:
        return Path(self.out_edit.text().strip()).expanduser()

    def _on_sampling(self, *_: object) -> None:
        row = self.sampling.currentIndex()
        self.every_stack.setCurrentIndex(row)
        self.every_label.setText(("Every", "Every", "Scene threshold")[row])

    def _browse(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Save the frames in", str(self.out_dir()))
        if folder:
            self.out_edit.setText(folder)

    # ---- the run ---------------------------------------------------------------------------------

    def start(self) -> None:
        """Start extracting with the chosen options."""
        if self.worker.running:
            return
        if not self.out_edit.text().strip():
            self._say_error("Choose a folder to save the frames in.")
            return
        try:
            options = self.options()
        except ConfigError as exc:
            self._say_error(str(exc))
            return
        self.result = None
        self._set_running(True)
        self.status.setText("Starting\u2026")
        self.worker.start(self.source, self.out_dir(), options)

    def _set_running(self, running: bool) -> None:
        for widget in (
            self.sampling,
            self.every_stack,
            self.max_frames,
            self.out_edit,
            self.browse_button,
            self.extract_button,
        ):
            widget.setEnabled(not running)
        self.cancel_button.setText("Cancel" if running else "Close")
        self.cancel_button.setEnabled(True)
        self.progress_bar.setVisible(running)
        if running:
            self.open_button.hide()
            self.progress_bar.setRange(0, 0)
        self.status.setStyleSheet(f"color: {artwork.MUTED.name()};")

    def _on_progress(self, progress: FrameProgress) -> None:
        overall = progress.overall
        if overall is None:
            self.progress_bar.setRange(0, 0)
        else:
            self.progress_bar.setRange(0, 1000)
            self.progress_bar.setValue(int(overall * 1000))
        where = (
            f" ({progress.source_index}/{progress.source_count}: {progress.source})"
            if progress.source_count > 1
            else ""
        )
        dropped = progress.skipped_blurry + progress.skipped_duplicates
        self.status.setText(
            f"{progress.message.capitalize()}{where}\u2026 {progress.frames_written} frames "
            f"written" + (f", {dropped} dropped" if dropped else "")
        )

    def _on_finished(self, result: FrameExtractionResult) -> None:
        self.result = result
        self._set_running(False)
        self.progress_bar.hide()
        text = result.summary() + "."
        if result.problems:
            text += "\n" + "\n".join(str(p) for p in result.problems[:3])
        if not result.frames:
            self._say_error(text + " No frames to open: try another sampling or threshold.")
            return
        if result.cancelled:
            self.status.setText(text)
            self.open_button.setText(f"Open the {len(result.frames)} frames")
            self.open_button.show()
            return
        self.status.setText(text)
        self._open_frames()

    def _on_failed(self, message: str) -> None:
        self._set_running(False)
        self.progress_bar.hide()
        self._say_error(message)

    def _open_frames(self) -> None:
        if self.result is not None and self.result.frames:
            self.dataset_ready.emit(self.result.out_dir)
            self.accept()

    def _say_error(self, text: str) -> None:
        self.status.setStyleSheet(f"color: {artwork.ERROR.name()};")
        self.status.setText(text)

    def _cancel_or_close(self) -> None:
        if self.worker.running:
            self.cancel_button.setEnabled(False)
            self.cancel_button.setText("Stopping\u2026")
            self.worker.cancel()
        else:
            self.reject()

    def done(self, result: int) -> None:
        """Closing the dialog stops a run (what was written stays)."""
        if self.worker.running:
            self.worker.cancel()
            self.worker.wait(10)
        super().done(result)
