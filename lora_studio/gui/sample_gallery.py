"""The job monitor's sample images: thumbnails of what the LoRA draws as it trains.

The trainer writes ``<output>/<name>-samples/stepNNNNNN-PP.png`` (step, prompt number) and
reports the paths in :attr:`Progress.sample_paths`; the gallery shows each one once,
newest first. Thumbnails are decoded by a :class:`ThumbnailLoader` on its own thread pool
(never on the GUI thread). Clicking a sample enlarges it in a :class:`SamplePreview` (decoded
off the GUI thread too, at :data:`PREVIEW` px), where the arrow keys step through the
samples; its buttons (and the gallery's context menu) open the image in the system viewer
or show its folder.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from pathlib import Path

from PySide6.QtCore import QEvent, QObject, QPoint, QSize, Qt, QUrl, Signal
from PySide6.QtGui import QDesktopServices, QIcon, QImage, QKeyEvent, QPixmap
from PySide6.QtWidgets import (
    QAbstractItemView,
    QDialog,
    QHBoxLayout,
    QLabel,
    QListView,
    QListWidget,
    QListWidgetItem,
    QMenu,
    QPushButton,
    QStyle,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

from lora_studio.gui import artwork
from lora_studio.gui.thumbnail_loader import ThumbnailLoader

ICON = 96
MIN_ICON = 40
#: The largest thumbnails, when the pane is tall (they are decoded at twice ICON).
MAX_ICON = 150
#: The enlarged sample's longest side (small samples are scaled up to it, pixel-sharp).
PREVIEW = 512
_NAME = re.compile(r"step(\d+)-(\d+)$")
_PATH_ROLE = int(Qt.ItemDataRole.UserRole) + 1


def sample_step(path: str | Path) -> tuple[int, int] | None:
    """``(step, prompt index)`` from a sample's file name, or ``None``."""
    match = _NAME.search(Path(path).stem)
    return (int(match.group(1)), int(match.group(2))) if match else None


def _newest_first(path: Path) -> tuple[int, int, str]:
    found = sample_step(path)
    return (-found[0], found[1], path.name) if found else (1, 0, path.name)


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
        self._preview_loader = ThumbnailLoader(size=PREVIEW, max_threads=1, parent=self)
        self.preview: SamplePreview | None = None

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
        # Newest first, read like text: the latest step's prompts side by side, older
        # steps below them to scroll to.
        self.list.setFlow(QListView.Flow.LeftToRight)
        self.list.setWrapping(True)
        self.list.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        self.list.setResizeMode(QListView.ResizeMode.Adjust)
        self.list.setMovement(QListView.Movement.Static)
        self.list.setUniformItemSizes(True)
        self.list.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.list.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.list.setContextMenuPolicy(Qt.ContextMenuPolicy.CustomContextMenu)
        self.list.customContextMenuRequested.connect(self._context_menu)
        self.list.itemClicked.connect(self._open_item)
        self.list.setMinimumWidth(ICON + 40)
        self.list.installEventFilter(self)
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
        fresh = sorted({Path(p) for p in paths if Path(p) not in self._items}, key=_newest_first)
        for path in fresh:
            item = QListWidgetItem(artwork.loading_icon(ICON), self._caption(path))
            item.setData(_PATH_ROLE, str(path))
            item.setToolTip(self._tooltip(path))
            item.setSizeHint(self.list.gridSize())
            # Newest step first, each step's prompts in order (a monitor that meets a run
            # midway gets all its samples at once).
            key = _newest_first(path)
            row = 0
            while row < self.list.count() and _newest_first(self._path_at(row)) < key:
                row += 1
            self.list.insertItem(row, item)
            self._items[path] = item
            self._thumbnails.request(path)
        if fresh:
            latest = sample_step(self._path_at(0))
            count = len(self._items)
            at = f" \u00b7 latest: step {latest[0]}" if latest else ""
            self.title.setText(f"Samples ({count}){at}")
        return len(fresh)

    def _path_at(self, row: int) -> Path:
        return Path(str(self.list.item(row).data(_PATH_ROLE)))

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
        self._preview_loader.shutdown()
        if self.preview is not None:
            self.preview.close()

    def enlarge(self, path: str | Path) -> SamplePreview:
        """Show the sample ``path`` big (what a click on it does)."""
        if self.preview is None:
            self.preview = SamplePreview(self._preview_loader, self)
            self.preview.step_requested.connect(self._step_preview)
        self.preview.show_sample(Path(path), self._tooltip(Path(path)).splitlines()[0])
        self.preview.show()
        self.preview.raise_()
        return self.preview

    def _step_preview(self, delta: int) -> None:
        if self.preview is None or self.preview.path is None:
            return
        paths = self.paths()
        try:
            row = paths.index(self.preview.path)
        except ValueError:
            return
        row = min(max(row + delta, 0), len(paths) - 1)
        self.list.setCurrentRow(row)
        self.enlarge(paths[row])

    # ---- internals -----------------------------------------------------------------------

    def eventFilter(self, watched: QObject, event: QEvent) -> bool:  # noqa: N802
        if event.type() == QEvent.Type.Resize and watched is self.list:
            # Thumbnails as big as the pane allows: two side by side, one row high at
            # least. Measured on the list itself (room for its scroll bar kept), so a
            # scroll bar that comes and goes does not make the size flicker.
            lst = self.list
            text = lst.fontMetrics().height()
            bar = lst.style().pixelMetric(QStyle.PixelMetric.PM_ScrollBarExtent)
            width = lst.width() - 2 * lst.frameWidth() - bar - 6
            height = lst.height() - 2 * lst.frameWidth() - 4
            size = max(MIN_ICON, min(MAX_ICON, width // 2 - 14, height - text - 14))
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
        lines.append("Click to enlarge; right-click to open it elsewhere.")
        return "\n".join(lines)

    def _on_ready(self, path: Path, image: QImage) -> None:
        item = self._items.get(path)
        if item is None:
            return
        pixmap = QPixmap.fromImage(image)
        if max(pixmap.width(), pixmap.height()) < MAX_ICON:
            # Small samples (a 64 px test run) are enlarged so they can be seen at all.
            pixmap = pixmap.scaled(
                MAX_ICON,
                MAX_ICON,
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
        self.enlarge(str(item.data(_PATH_ROLE)))

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
        menu.addAction("Enlarge", lambda: self._open_item(item))
        menu.addAction(
            "Open in image viewer",
            lambda: QDesktopServices.openUrl(QUrl.fromLocalFile(str(path))),
        )
        menu.addAction(
            "Show in folder",
            lambda: QDesktopServices.openUrl(QUrl.fromLocalFile(str(path.parent))),
        )
        menu.exec(self.list.viewport().mapToGlobal(pos))


class SamplePreview(QDialog):
    """One sample, enlarged: step, prompt, the image; ←/→ step through the gallery.

    Signals:
        step_requested(int): show the previous (-1, newer) or next (+1, older) sample.
    """

    step_requested = Signal(int)

    def __init__(self, loader: ThumbnailLoader, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setWindowTitle("Sample")
        self._loader = loader
        self._loader.thumbnail_ready.connect(self._on_ready)
        self._loader.thumbnail_failed.connect(self._on_failed)
        self.path: Path | None = None
        self.caption = QLabel()
        self.caption.setWordWrap(True)
        self.caption.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.image = QLabel("Loading\u2026")
        self.image.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.image.setMinimumSize(PREVIEW, PREVIEW)
        self.image.setStyleSheet("background: palette(base); border-radius: 4px;")
        self.newer_button = QPushButton("\u2190 Newer")
        self.newer_button.setToolTip("The sample before this one in the gallery (\u2190)")
        self.newer_button.clicked.connect(lambda: self.step_requested.emit(-1))
        self.older_button = QPushButton("Older \u2192")
        self.older_button.setToolTip("The sample after this one in the gallery (\u2192)")
        self.older_button.clicked.connect(lambda: self.step_requested.emit(1))
        self.open_button = QPushButton("Open in viewer")
        self.open_button.setToolTip("Open the image at full size in the system's image viewer")
        self.open_button.clicked.connect(self._open)
        self.folder_button = QPushButton("Show in folder")
        self.folder_button.clicked.connect(self._open_folder)
        buttons = QHBoxLayout()
        buttons.addWidget(self.newer_button)
        buttons.addWidget(self.older_button)
        buttons.addStretch(1)
        buttons.addWidget(self.open_button)
        buttons.addWidget(self.folder_button)
        layout = QVBoxLayout(self)
        layout.addWidget(self.caption)
        layout.addWidget(self.image, 1)
        layout.addLayout(buttons)
        for button in (self.newer_button, self.older_button, self.open_button):
            button.setFocusPolicy(Qt.FocusPolicy.NoFocus)

    def show_sample(self, path: Path, caption: str) -> None:
        self.path = path
        self.caption.setText(caption)
        self.setWindowTitle(f"Sample \u00b7 {path.name}")
        self.image.setPixmap(QPixmap())
        self.image.setText("Loading\u2026")
        self._loader.request(path)

    def has_image(self) -> bool:
        pixmap = self.image.pixmap()
        return pixmap is not None and not pixmap.isNull()

    def keyPressEvent(self, event: QKeyEvent) -> None:  # noqa: N802
        if event.key() == Qt.Key.Key_Left:
            self.step_requested.emit(-1)
        elif event.key() == Qt.Key.Key_Right:
            self.step_requested.emit(1)
        else:
            super().keyPressEvent(event)

    def _on_ready(self, path: Path, image: QImage) -> None:
        if path != self.path:
            return
        pixmap = QPixmap.fromImage(image)
        side = max(pixmap.width(), pixmap.height())
        if side < PREVIEW:
            # A tiny sample (a 64 px test run) is enlarged with sharp pixels, not blurred;
            # a bigger one smoothly.
            pixmap = pixmap.scaled(
                PREVIEW,
                PREVIEW,
                Qt.AspectRatioMode.KeepAspectRatio,
                Qt.TransformationMode.FastTransformation
                if side <= 128
                else Qt.TransformationMode.SmoothTransformation,
            )
        self.image.setPixmap(pixmap)

    def _on_failed(self, path: Path, reason: str) -> None:
        if path == self.path:
            self.image.setText(f"\u26a0 {reason}")

    def _open(self) -> None:
        if self.path is not None:
            QDesktopServices.openUrl(QUrl.fromLocalFile(str(self.path)))

    def _open_folder(self) -> None:
        if self.path is not None:
            QDesktopServices.openUrl(QUrl.fromLocalFile(str(self.path.parent)))
