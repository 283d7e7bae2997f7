"""The dataset browser: a thumbnail grid of the open folder, with counts and problems."""

from __future__ import annotations

from PySide6.QtCore import QSize, Qt, Signal
from PySide6.QtWidgets import (
    QAbstractItemView,
    QFrame,
    QHBoxLayout,
    QLabel,
    QListView,
    QPushButton,
    QStackedWidget,
    QVBoxLayout,
    QWidget,
)

from lora_studio.gui import artwork
from lora_studio.gui.dataset_model import Column, DatasetModel
from lora_studio.gui.elided_label import ElidedLabel

ICON = 116


class DatasetBrowser(QWidget):
    """Thumbnails (``QListView`` in icon mode over column 0 of the dataset model).

    Signals:
        open_folder_requested(): the user wants to pick a dataset folder.
        open_sample_requested(): the user wants the sample dataset.
    """

    open_folder_requested = Signal()
    open_sample_requested = Signal()

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

        hint = QLabel(
            "Drop a folder of images here\n\nor use Open folder\u2026 (Ctrl+O)\n\n"
            "Images: .png .jpg .jpeg .webp .bmp\nCaptions: image.txt beside each image"
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
        self.problems_label.setStyleSheet(f"color: {artwork.WARNING.name()};")
        self.problems_label.hide()

        layout = QVBoxLayout(self)
        layout.setContentsMargins(6, 6, 6, 6)
        layout.addLayout(top)
        layout.addWidget(self.counts_label)
        layout.addWidget(self.folder_label)
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
            return
        total, captioned = self.model.counts()
        self.counts_label.setText(f"{total} images \u00b7 {captioned} captioned")
        self.folder_label.setText(str(dataset.root))
        self.folder_label.setToolTip(str(dataset.root))
        self.stack.setCurrentWidget(self.view)
        problems = self.model.problems()
        if problems:
            shown = "\n".join(f"\u26a0 {line}" for line in problems[:3])
            more = f"\n\u2026and {len(problems) - 3} more" if len(problems) > 3 else ""
            self.problems_label.setText(shown + more)
            self.problems_label.setToolTip("\n".join(problems))
            self.problems_label.show()
        else:
            self.problems_label.hide()
