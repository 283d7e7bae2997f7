"""The zoom popup: one image at full resolution, decoded off the GUI thread.

Clicking a thumbnail in the caption grid (or pressing Space on a row) opens it. The image
is decoded upright (EXIF rotation applied) on a ``QThreadPool`` worker and handed back as a
``QImage`` through a queued signal; until then the dialog says "Loading…". It opens fitted
to the window; **100 %** (or a double-click) shows it pixel for pixel with scroll bars.
Esc closes it; Left / Right (and Page Up / Page Down) ask the grid for the previous / next
image (:attr:`ZoomDialog.step_requested`).
"""

from __future__ import annotations

from pathlib import Path

from PIL import Image
from PySide6.QtCore import QObject, QRunnable, QSize, Qt, QThreadPool, Signal
from PySide6.QtGui import QImage, QKeyEvent, QMouseEvent, QPixmap, QResizeEvent
from PySide6.QtWidgets import (
    QDialog,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QScrollArea,
    QVBoxLayout,
    QWidget,
)

from lora_studio.core.imaging import open_upright_rgb
from lora_studio.gui import artwork


def decode_full(path: Path) -> QImage:
    """``path`` at full resolution, upright, as a ``QImage`` (safe on any thread).

    Raises:
        OSError: the image cannot be read or decoded (Pillow's errors are ``OSError``).
    """
    try:
        rgb = open_upright_rgb(path)
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        raise OSError(str(exc)) from exc
    data = rgb.tobytes("raw", "RGB")
    image = QImage(data, rgb.width, rgb.height, rgb.width * 3, QImage.Format.Format_RGB888)
    return image.copy()  # own the pixels: ``data`` dies with this frame


class _Signals(QObject):
    done = Signal(object, object)  # path, QImage
    failed = Signal(object, str)  # path, reason


class _Decode(QRunnable):
    def __init__(self, path: Path, signals: _Signals) -> None:
        super().__init__()
        self.path = path
        self.signals = signals

    def run(self) -> None:
        try:
            image = decode_full(self.path)
        except OSError as exc:
            self.signals.failed.emit(self.path, str(exc))
            return
        self.signals.done.emit(self.path, image)


class _ImageLabel(QLabel):
    double_clicked = Signal()

    def mouseDoubleClickEvent(self, event: QMouseEvent) -> None:  # noqa: N802
        self.double_clicked.emit()
        super().mouseDoubleClickEvent(event)


class ZoomDialog(QDialog):
    """Shows one image large (see the module docstring).

    Signals:
        step_requested(int): the user wants the previous (-1) or next (+1) image.
        loaded(Path): the image is decoded and shown.
    """

    step_requested = Signal(int)
    loaded = Signal(object)

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("zoom_dialog")
        self.setWindowTitle("Image")
        self.path: Path | None = None
        self.image: QImage | None = None
        self._fit = True
        self._pool = QThreadPool(self)
        self._pool.setMaxThreadCount(1)
        self._signals = _Signals(self)
        self._signals.done.connect(self._on_done)
        self._signals.failed.connect(self._on_failed)

        self.label = _ImageLabel("Loading\u2026")
        self.label.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.label.double_clicked.connect(self.toggle_fit)
        self.scroll = QScrollArea()
        self.scroll.setWidget(self.label)
        self.scroll.setWidgetResizable(True)
        self.scroll.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.info = QLabel()
        self.info.setStyleSheet(f"color: {artwork.MUTED.name()};")
        self.fit_button = QPushButton("100 %")
        self.fit_button.setToolTip("Pixel for pixel / fit to the window (double-click)")
        self.fit_button.clicked.connect(self.toggle_fit)
        close = QPushButton("Close")
        close.clicked.connect(self.close)
        bottom = QHBoxLayout()
        bottom.addWidget(self.info, 1)
        bottom.addWidget(QLabel("\u2190 \u2192 previous / next"))
        bottom.addWidget(self.fit_button)
        bottom.addWidget(close)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(6, 6, 6, 6)
        layout.addWidget(self.scroll, 1)
        layout.addLayout(bottom)
        self.resize(900, 700)

    def show_image(self, path: Path) -> None:
        """Show ``path`` (decoded on a worker thread)."""
        self.path = path
        self.image = None
        self.setWindowTitle(path.name)
        self.label.setPixmap(QPixmap())
        self.label.setText("Loading\u2026")
        self.info.setText(path.name)
        self._pool.start(_Decode(path, self._signals))

    def toggle_fit(self) -> None:
        self._fit = not self._fit
        self.fit_button.setText("100 %" if self._fit else "Fit")
        self._render()

    def _on_done(self, path: Path, image: QImage) -> None:
        if path != self.path:
            return  # an image asked for before the current one
        self.image = image
        self.info.setText(f"{path.name} \u00b7 {image.width()}\u00d7{image.height()} px")
        self._render()
        self.loaded.emit(path)

    def _on_failed(self, path: Path, reason: str) -> None:
        if path == self.path:
            self.label.setText(f"Cannot show {path.name}: {reason}")

    def _render(self) -> None:
        if self.image is None:
            return
        pixmap = QPixmap.fromImage(self.image)
        if self._fit:
            room = self.scroll.viewport().size() - QSize(4, 4)
            if pixmap.width() > room.width() or pixmap.height() > room.height():
                pixmap = pixmap.scaled(
                    room,
                    Qt.AspectRatioMode.KeepAspectRatio,
                    Qt.TransformationMode.SmoothTransformation,
                )
        self.scroll.setWidgetResizable(self._fit)
        self.label.setPixmap(pixmap)
        if not self._fit:
            self.label.resize(pixmap.size())

    def resizeEvent(self, event: QResizeEvent) -> None:  # noqa: N802
        super().resizeEvent(event)
        if self._fit:
            self._render()

    def keyPressEvent(self, event: QKeyEvent) -> None:  # noqa: N802
        key = event.key()
        if key in (Qt.Key.Key_Right, Qt.Key.Key_PageDown, Qt.Key.Key_Space):
            self.step_requested.emit(1)
        elif key in (Qt.Key.Key_Left, Qt.Key.Key_PageUp):
            self.step_requested.emit(-1)
        else:
            super().keyPressEvent(event)

    def done(self, result: int) -> None:
        self._pool.clear()
        super().done(result)
