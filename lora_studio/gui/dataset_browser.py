"""The dataset browser: a thumbnail grid of the open folder, with counts and problems.

Thumbnails of images with a problem carry a badge (red: an error, the image cannot train;
amber: a warning) drawn by :class:`BadgeDelegate`; the tooltip says what is wrong. The
header counts images, captions and problems ("12 images · 10 captioned · 2 problems"); a
line under it says while the images are being checked; under the grid, the first problems are listed with
a link that shows all of them in the caption grid (its "Problems" filter).
"""

from __future__ import annotations

import html

from PySide6.QtCore import QModelIndex, QPersistentModelIndex, QRect, QSize, Qt, Signal
from PySide6.QtGui import QPainter
from PySide6.QtWidgets import (
    QAbstractItemView,
    QApplication,
    QFrame,
    QHBoxLayout,
    QLabel,
    QListView,
    QPushButton,
    QStackedWidget,
    QStyle,
    QStyledItemDelegate,
    QStyleOptionViewItem,
    QVBoxLayout,
    QWidget,
)

from lora_studio.core.formats import BASE_IMAGE_EXTENSIONS
from lora_studio.gui import artwork
from lora_studio.gui.dataset_model import Column, DatasetModel, Role
from lora_studio.gui.elided_label import ElidedLabel

ICON = 116
SHOWN_PROBLEMS = 3
_SHOW_ALL_LINK = "show-problems"


def counts_text(images: int, captioned: int, problems: int) -> str:
    """``12 images · 10 captioned · 2 problems`` (no problems: no third part)."""
    parts = [f"{images} images", f"{captioned} captioned"]
    if problems:
        parts.append(f"{problems} problem{'' if problems == 1 else 's'}")
    return " \u00b7 ".join(parts)


class BadgeDelegate(QStyledItemDelegate):
    """Draws the item as usual, then a problem badge on its thumbnail's corner."""

    def paint(
        self,
        painter: QPainter,
        option: QStyleOptionViewItem,
        index: QModelIndex | QPersistentModelIndex,
    ) -> None:
        super().paint(painter, option, index)
        severity = index.data(Role.SEVERITY)
        if severity:
            artwork.draw_badge(painter, self.icon_rect(option, index), severity)

    def icon_rect(
        self, option: QStyleOptionViewItem, index: QModelIndex | QPersistentModelIndex
    ) -> QRect:
        """Where the thumbnail of ``index`` is drawn within ``option.rect``."""
        opt = QStyleOptionViewItem(option)
        self.initStyleOption(opt, index)
        widget = opt.widget
        style = widget.style() if widget is not None else QApplication.style()
        return style.subElementRect(QStyle.SubElement.SE_ItemViewItemDecoration, opt, widget)


class DatasetBrowser(QWidget):
    """Thumbnails (``QListView`` in icon mode over column 0 of the dataset model).

    Signals:
        open_folder_requested(): the user wants to pick a dataset folder.
        open_sample_requested(): the user wants the sample dataset.
        show_problems_requested(): the user wants to see every image with a problem.
    """

    open_folder_requested = Signal()
    open_sample_requested = Signal()
    show_problems_requested = Signal()

    def __init__(self, model: DatasetModel, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.model = model

        title = QLabel("<b>Dataset</b>")
        self.open_button = QPushButton("Open folder\u2026")
        self.open_button.setToolTip("Open a folder of images (Ctrl+O), or drop one on the window")
        self.open_button.clicked.connect(self.open_folder_requested)
        top = QHBoxLayout()
        top.addWidget(title)
        top.addStretch(1)
        top.addWidget(self.open_button)

        self.counts_label = QLabel("No dataset open")
        self.counts_label.setStyleSheet("font-size: 13pt;")
        # Elided in the middle: a long path must not make the panel (and window) wider.
        self.folder_label = ElidedLabel(mode=Qt.TextElideMode.ElideMiddle)
        self.folder_label.setStyleSheet(f"color: {artwork.MUTED.name()};")
        self.checking_label = QLabel()
        self.checking_label.setStyleSheet(f"color: {artwork.MUTED.name()};")
        self.checking_label.setToolTip(
            "Every image is decoded and checked (corrupt, too small, duplicates\u2026) in "
            "the background; badges appear when it is done."
        )
        self.checking_label.hide()

        self.view = QListView()
        self.view.setModel(model)
        self.view.setModelColumn(Column.IMAGE)
        self.view.setViewMode(QListView.ViewMode.IconMode)
        self.view.setIconSize(QSize(ICON, ICON))
        self.view.setGridSize(QSize(ICON + 22, ICON + 34))
        self.view.setResizeMode(QListView.ResizeMode.Adjust)
        self.view.setMovement(QListView.Movement.Static)
        self.view.setUniformItemSizes(True)
        self.view.setWordWrap(False)
        self.view.setTextElideMode(Qt.TextElideMode.ElideMiddle)
        self.view.setSelectionMode(QAbstractItemView.SelectionMode.ExtendedSelection)
        self.view.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.view.setSpacing(2)
        self.badges = BadgeDelegate(self.view)
        self.view.setItemDelegate(self.badges)

        extensions = " ".join(sorted(BASE_IMAGE_EXTENSIONS))
        hint = QLabel(
            "Drop a folder of images here\n\nor use Open folder\u2026 (Ctrl+O)\n\n"
            f"Images: {extensions}\nCaptions: image.txt beside each image, or a "
            "metadata.jsonl"
        )
        hint.setAlignment(Qt.AlignmentFlag.AlignCenter)
        hint.setWordWrap(True)
        hint.setStyleSheet(f"color: {artwork.MUTED.name()};")
        self.sample_button = QPushButton("Open the sample dataset")
        self.sample_button.setToolTip("Twelve papercut landscapes to try the app with")
        self.sample_button.clicked.connect(self.open_sample_requested)
        self.empty = QFrame()
        self.empty.setObjectName("emptyState")
        self.empty.setStyleSheet("#emptyState { border: 2px dashed #c5c5c5; border-radius: 8px; }")
        empty_layout = QVBoxLayout(self.empty)
        empty_layout.addStretch(1)
        empty_layout.addWidget(hint)
        empty_layout.addWidget(self.sample_button, 0, Qt.AlignmentFlag.AlignHCenter)
        empty_layout.addStretch(1)
        self.stack = QStackedWidget()
        self.stack.addWidget(self.empty)
        self.stack.addWidget(self.view)

        self.problems_label = QLabel()
        self.problems_label.setWordWrap(True)
        self.problems_label.setTextFormat(Qt.TextFormat.RichText)
        self.problems_label.setStyleSheet(f"color: {artwork.WARNING.name()};")
        self.problems_label.linkActivated.connect(self._on_link)
        self.problems_label.hide()

        layout = QVBoxLayout(self)
        layout.setContentsMargins(6, 6, 6, 6)
        layout.addLayout(top)
        layout.addWidget(self.counts_label)
        layout.addWidget(self.folder_label)
        layout.addWidget(self.checking_label)
        layout.addWidget(self.stack, 1)
        layout.addWidget(self.problems_label)

        model.counts_changed.connect(self.update_counts)
        model.modelReset.connect(self.update_counts)
        self.update_counts()

    def set_loading(self, folder: str) -> None:
        """Say that ``folder`` is being opened."""
        self.folder_label.setText(f"Opening {folder}\u2026")

    def update_counts(self) -> None:
        dataset = self.model.dataset
        if dataset is None:
            self.counts_label.setText("No dataset open")
            self.folder_label.setText("")
            self.stack.setCurrentWidget(self.empty)
            self.problems_label.hide()
            self.checking_label.hide()
            return
        total, captioned = self.model.counts()
        problems = self.model.problems()
        self.counts_label.setText(counts_text(total, captioned, len(problems)))
        checking = self.model.validation_progress
        if checking is not None:
            self.checking_label.setText(f"Checking the images\u2026 {checking[0]}/{checking[1]}")
        self.checking_label.setVisible(checking is not None)
        self.counts_label.setToolTip(
            "Problems: images with an error (red badge: it cannot be trained on) or a "
            "warning (amber badge). Hover a thumbnail for what is wrong."
        )
        self.folder_label.setText(str(dataset.root))
        self.folder_label.setToolTip(str(dataset.root))
        self.stack.setCurrentWidget(self.view)
        if problems:
            lines = [f"\u26a0 {html.escape(line)}" for line in problems[:SHOWN_PROBLEMS]]
            if len(problems) > SHOWN_PROBLEMS:
                lines.append(f"\u2026and {len(problems) - SHOWN_PROBLEMS} more")
            lines.append(
                f'<a href="{_SHOW_ALL_LINK}">Show the images with problems in the caption grid</a>'
            )
            self.problems_label.setText("<br>".join(lines))
            self.problems_label.setToolTip("\n".join(problems[:50]))
            self.problems_label.show()
        else:
            self.problems_label.hide()

    def _on_link(self, link: str) -> None:
        if link == _SHOW_ALL_LINK:
            self.show_problems_requested.emit()
