"""The job monitor's sample images: thumbnails of what the LoRA draws as it trains.

The trainer writes ``<output>/<name>-samples/stepNNNNNN-PP.png`` (step, prompt number) and
reports the paths in :attr:`Progress.sample_paths`; the gallery shows each one once,
newest first. Thumbnails are decoded by a :class:`ThumbnailLoader` on its own thread pool
(never on the GUI thread); clicking a sample opens the image, its context menu also shows
the folder.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from pathlib import Path

from PySide6.QtCore import QEvent, QObject, QPoint, QSize, Qt, QUrl
from PySide6.QtGui import QDesktopServices, QIcon, QImage, QPixmap
from PySide6.QtWidgets import (
    QAbstractItemView,
    QHBoxLayout,
    QLabel,
    QListView,
    QListWidget,
    QListWidgetItem,
    QMenu,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

from lora_studio.gui import artwork
from lora_studio.gui.thumbnail_loader import ThumbnailLoader

ICON = 96
MIN_ICON = 40
_NAME = re.compile(r"step(\d+)-(\d+)$")
_PATH_ROLE = int(Qt.ItemDataRole.UserRole) + 1


def sample_step(path: str | Path) -> tuple[int, int] | None:
    """``(step, prompt index)`` from a sample's file name, or ``None``."""
    match = _NAME.search(Path(path).stem)
    return (int(match.group(1)), int(match.group(2))) if match else None


class SampleGallery(QWidget):
    """Sample images as thumbnails, newest first (see the module docstring)."""

    def __init__(
        self, thumbnails: ThumbnailLoader | None = None, parent: QWidget | None = None
    ) -> None:
        super().__init__(parent)
        self._thumbnails = thumbnails or ThumbnailLoader(size=ICON * 2, max_threads=1, parent=self)
        self._thumbnails.thumbnail_ready.connect(self._on_ready)
        self._thumbnails.thumbnail_failed.connect(self._on_failed)
        self._items: dict[Path, QListWidgetItem] = {}
        self._ready: set[Path] = set()
        self._prompts: list[str] = []

        self.title = QLabel("Samples")
        self.title.setStyleSheet(f"color: {artwork.MUTED.name()};")
        self.folder_button = QToolButton()
        self.folder_button.setText("Open folder")
        self.folder_button.setAutoRaise(True)
        self.folder_button.setToolTip("Show the samples folder in the file manager")
        self.folder_button.clicked.connect(self._open_folder)
        head = QHBoxLayout()
        head.setContentsMargins(2, 0, 0, 0)
        head.addWidget(self.title, 1)
        head.addWidget(self.folder_button)

        self.list = QListWidget()
        self.list.setViewMode(QListView.ViewMode.IconMode)
        self.list.setIconSize(QSize(ICON, ICON))
        self.list.setGridSize(QSize(ICON + 14, ICON + 26))
        # One row, newest on the left, older ones to scroll to: a timeline of the run.
        self.list.setFlow(QListView.Flow.LeftToRight)
        self.list.setWrapping(False)
        self.list.setVerticalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        self.list.setResizeMode(QListView.ResizeMode.Adjust)
        self.list.setMovement(QListView.Movement.Static)
        self.list.setUniformItemSizes(True)
        self.list.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.list.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.list.setContextMenuPolicy(Qt.ContextMenuPolicy.CustomContextMenu)
        self.list.customContextMenuRequested.connect(self._context_menu)
        self.list.itemClicked.connect(self._open_item)
        self.list.setMinimumWidth(ICON + 40)
        self.list.viewport().installEventFilter(self)
        self._icon = ICON

        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.setSpacing(2)
        layout.addLayout(head)
        layout.addWidget(self.list, 1)

    # ---- content -------------------------------------------------------------------------

    def set_prompts(self, prompts: Sequence[str]) -> None:
        """The run's sample prompts (for the tooltips; the file names carry their number)."""
        self._prompts = list(prompts)

    def add(self, paths: Iterable[str | Path]) -> int:
        """Show the samples among ``paths`` not shown yet; returns how many were new."""
        fresh = [Path(p) for p in paths if Path(p) not in self._items]
        for position, path in enumerate(fresh):
            item = QListWidgetItem(artwork.loading_icon(ICON), self._caption(path))
            item.setData(_PATH_ROLE, str(path))
            item.setToolTip(self._tooltip(path))
            item.setSizeHint(self.list.gridSize())
            self.list.insertItem(position, item)  # newest first, in prompt order
            self._items[path] = item
            self._thumbnails.request(path)
        if fresh:
            latest = sample_step(fresh[0])
            count = len(self._items)
            at = f" \u00b7 latest: step {latest[0]}" if latest else ""
            self.title.setText(f"Samples ({count}){at}")
        return len(fresh)

    def clear(self) -> None:
        self.list.clear()
        self._items.clear()
        self._ready.clear()
        self.title.setText("Samples")

    def paths(self) -> list[Path]:
        """The samples shown, newest first."""
        return [Path(self.list.item(i).data(_PATH_ROLE)) for i in range(self.list.count())]

    def has_thumbnail(self, path: str | Path) -> bool:
        return Path(path) in self._ready

    def shutdown(self) -> None:
        self._thumbnails.shutdown()

    # ---- internals -----------------------------------------------------------------------

    def eventFilter(self, watched: QObject, event: QEvent) -> bool:  # noqa: N802
        if event.type() == QEvent.Type.Resize and watched is self.list.viewport():
            # Thumbnails as big as the pane's height allows (one row; the horizontal
            # scroll bar takes its share of the height when it shows).
            text = self.list.fontMetrics().height()
            size = max(MIN_ICON, min(ICON, self.list.viewport().height() - text - 14))
            if size != self._icon:
                self._icon = size
                self.list.setIconSize(QSize(size, size))
                self.list.setGridSize(QSize(max(size + 14, 84), size + text + 12))
                for i in range(self.list.count()):
                    self.list.item(i).setSizeHint(self.list.gridSize())
        return super().eventFilter(watched, event)

    def _caption(self, path: Path) -> str:
        found = sample_step(path)
        return f"step {found[0]} \u00b7 #{found[1] + 1}" if found else path.stem

    def _tooltip(self, path: Path) -> str:
        found = sample_step(path)
        lines = []
        if found:
            step, index = found
            prompt = self._prompts[index] if index < len(self._prompts) else ""
            lines.append(
                f"Step {step} \u00b7 prompt {index + 1}" + (f": {prompt}" if prompt else "")
            )
        lines.append(str(path))
        lines.append("Click to open the image; right-click for its folder.")
        return "\n".join(lines)

    def _on_ready(self, path: Path, image: QImage) -> None:
        item = self._items.get(path)
        if item is None:
            return
        pixmap = QPixmap.fromImage(image)
        if max(pixmap.width(), pixmap.height()) < ICON:
            # Small samples (a 64 px test run) are enlarged so they can be seen at all.
            pixmap = pixmap.scaled(
                ICON,
                ICON,
                Qt.AspectRatioMode.KeepAspectRatio,
                Qt.TransformationMode.FastTransformation,
            )
        item.setIcon(QIcon(pixmap))
        self._ready.add(path)

    def _on_failed(self, path: Path, reason: str) -> None:
        item = self._items.get(path)
        if item is None:
            return
        item.setIcon(artwork.broken_image_icon(ICON))
        item.setToolTip(f"{self._tooltip(path)}\n\u26a0 {reason}")
        self._ready.add(path)

    def _open_item(self, item: QListWidgetItem) -> None:
        QDesktopServices.openUrl(QUrl.fromLocalFile(str(item.data(_PATH_ROLE))))

    def _open_folder(self) -> None:
        if self._items:
            folder = next(iter(self._items)).parent
            QDesktopServices.openUrl(QUrl.fromLocalFile(str(folder)))

    def _context_menu(self, pos: QPoint) -> None:
        item = self.list.itemAt(pos)
        if item is None:
            return
        path = Path(str(item.data(_PATH_ROLE)))
        menu = QMenu(self)
        menu.addAction("Open image", lambda: self._open_item(item))
        menu.addAction(
            "Show in folder",
            lambda: QDesktopServices.openUrl(QUrl.fromLocalFile(str(path.parent))),
        )
        menu.exec(self.list.viewport().mapToGlobal(pos))
