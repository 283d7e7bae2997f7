"""The dataset browser: a thumbnail grid of the open folder, with counts and problems.

Thumbnails of images with a problem carry a badge (red: an error, the image cannot train;
amber: a warning) drawn by :class:`BadgeDelegate`; the tooltip says what is wrong. The
header counts images, captions and problems ("12 images · 10 captioned · 2 problems"); a
bar under it shows while a folder is indexed (busy) and while its images are checked
(done/total); under the grid, the first problems are listed with a link that shows all of
them in the caption grid (its "Problems" filter).

Above the grid, a search box (text in captions and file names, or whole comma-separated
tags), a *show* filter (missing caption, problems, errors), a bucket filter and the sort
(name, file size, aspect ratio) drive a :class:`~lora_studio.gui.browser_filters.BrowserFilter`
proxy between the model and the view; "Showing N of M" says when images are hidden. The
view's rows are the proxy's: :meth:`DatasetBrowser.source_row` and
:meth:`DatasetBrowser.view_index` map between them.
"""

from __future__ import annotations

import html
from pathlib import Path

from PySide6.QtCore import QModelIndex, QPersistentModelIndex, QSize, Qt, QTimer, Signal
from PySide6.QtGui import QPainter, QPalette
from PySide6.QtWidgets import (
    QAbstractItemView,
    QApplication,
    QComboBox,
    QFrame,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QListView,
    QProgressBar,
    QPushButton,
    QStackedWidget,
    QStyle,
    QStyledItemDelegate,
    QStyleOptionViewItem,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

from lora_studio.core.formats import BASE_IMAGE_EXTENSIONS
from lora_studio.gui import artwork
from lora_studio.gui.browser_filters import NO_BUCKET, BrowserFilter
from lora_studio.gui.dataset_model import Cell, Column, DatasetModel, ListingModel, Role
from lora_studio.gui.elided_label import ElidedLabel

ICON = 116
SHOWN_PROBLEMS = 3
_SHOW_ALL_LINK = "show-problems"
_CLEAR_LINK = "clear-filters"
#: The count line while the first files of a folder are shown and it is still read.
READING = "Reading the folder\u2026"
#: The search runs this long after the last key press (10,000 rows take ~0.1 s to filter).
SEARCH_DELAY_MS = 200


def counts_text(images: int, captioned: int, problems: int) -> str:
    """``12 images · 10 captioned · 2 problems`` (no problems: no third part)."""
    parts = [f"{images} images", f"{captioned} captioned"]
    if problems:
        parts.append(f"{problems} problem{'' if problems == 1 else 's'}")
    return " \u00b7 ".join(parts)


class BadgeDelegate(QStyledItemDelegate):
    """Draws a thumbnail cell as the style does (thumbnail, file name, selection), then a
    problem badge on its thumbnail's corner.

    What a cell shows comes from the model in one ``data()`` call (:attr:`Role.CELL`).
    ``QStyledItemDelegate.initStyleOption`` asks for about fifteen roles instead, each
    through the filter proxy into the Python model (with two more Python calls to make the
    source index): some 50 calls a cell, 3,000 a page, and each gives up the GIL and takes
    it back. With a thumbnail thread decoding beside it, the GUI thread waited for the GIL
    at each of them: scroll stalls of 50-60 ms with 10-20 ms of its own CPU.
    """

    def paint(
        self,
        painter: QPainter,
        option: QStyleOptionViewItem,
        index: QModelIndex | QPersistentModelIndex,
    ) -> None:
        opt, severity = self._cell_option(option, index)
        widget, style = _widget_and_style(opt)
        style.drawControl(QStyle.ControlElement.CE_ItemViewItem, opt, painter, widget)
        if severity:
            rect = style.subElementRect(QStyle.SubElement.SE_ItemViewItemDecoration, opt, widget)
            artwork.draw_badge(painter, rect, severity)

    def sizeHint(  # noqa: N802
        self, option: QStyleOptionViewItem, index: QModelIndex | QPersistentModelIndex
    ) -> QSize:
        """Every cell the size of a full thumbnail and one line of name.

        The list view (uniform item sizes) measures one item for all, its last: a small
        last image must not shrink every cell to its own size.
        """
        opt = QStyleOptionViewItem(option)
        opt.features |= _CELL_FEATURES
        opt.decorationSize = QSize(ICON, ICON)
        opt.text = "Mg"
        widget, style = _widget_and_style(opt)
        return style.sizeFromContents(QStyle.ContentsType.CT_ItemViewItem, opt, QSize(), widget)

    def _cell_option(
        self, option: QStyleOptionViewItem, index: QModelIndex | QPersistentModelIndex
    ) -> tuple[QStyleOptionViewItem, str | None]:
        """The style option ``initStyleOption`` would make for the cell, and its badge."""
        opt = QStyleOptionViewItem(option)
        cell: Cell | None = index.data(Role.CELL)
        if cell is None:  # another model: ask role by role
            self.initStyleOption(opt, index)
            return opt, index.data(Role.SEVERITY)
        opt.index = QModelIndex(index)
        opt.features |= _CELL_FEATURES
        opt.text = cell.text
        opt.icon = cell.icon
        # As initStyleOption: the thumbnail's own size, at most the view's icon size.
        actual = cell.icon.actualSize(option.decorationSize)
        opt.decorationSize = actual.boundedTo(option.decorationSize)
        if cell.foreground is not None:
            palette = opt.palette
            palette.setBrush(QPalette.ColorRole.Text, cell.foreground)
            opt.palette = palette
        return opt, cell.severity


_CELL_FEATURES = (
    QStyleOptionViewItem.ViewItemFeature.HasDisplay
    | QStyleOptionViewItem.ViewItemFeature.HasDecoration
)


def _widget_and_style(opt: QStyleOptionViewItem) -> tuple[QWidget | None, QStyle]:
    """The view an option paints for and its style (the app's when there is none)."""
    widget = opt.widget
    return widget, widget.style() if widget is not None else QApplication.style()


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

    def __init__(
        self,
        model: DatasetModel,
        parent: QWidget | None = None,
        listing: ListingModel | None = None,
    ) -> None:
        super().__init__(parent)
        self.model = model
        # The first files of a folder being opened, shown until its dataset arrives.
        self.listing = listing if listing is not None else ListingModel(None, self)
        self._loading = False

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
        self.progress = QProgressBar()
        self.progress.setTextVisible(False)
        self.progress.setMaximumHeight(6)
        self.progress.hide()

        self.proxy = BrowserFilter(model, self)
        self._build_filters()

        self.view = self._grid()
        self.view.setModel(self.proxy)
        self.view.setModelColumn(Column.IMAGE)
        self.view.setSelectionMode(QAbstractItemView.SelectionMode.ExtendedSelection)
        self.badges = BadgeDelegate(self.view)
        self.view.setItemDelegate(self.badges)
        self.listing_view = self._grid()
        self.listing_view.setModel(self.listing)
        self.listing_view.setSelectionMode(QAbstractItemView.SelectionMode.NoSelection)
        self.listing_view.setItemDelegate(BadgeDelegate(self.listing_view))

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
        self.stack.addWidget(self.listing_view)

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
        layout.addWidget(self.progress)
        layout.addWidget(self.filters)
        layout.addWidget(self.stack, 1)
        layout.addWidget(self.shown_label)
        layout.addWidget(self.problems_label)

        model.counts_changed.connect(self.update_counts)
        model.modelReset.connect(self.update_counts)
        model.modelReset.connect(self._fill_buckets)
        model.headerDataChanged.connect(self._fill_buckets)  # placements arrived
        self.proxy.layoutChanged.connect(self._update_shown)
        self.proxy.rowsInserted.connect(self._update_shown)
        self.proxy.rowsRemoved.connect(self._update_shown)
        self.proxy.modelReset.connect(self._update_shown)
        self.update_counts()

    @staticmethod
    def _grid() -> QListView:
        view = QListView()
        view.setViewMode(QListView.ViewMode.IconMode)
        view.setIconSize(QSize(ICON, ICON))
        view.setGridSize(QSize(ICON + 22, ICON + 34))
        view.setResizeMode(QListView.ResizeMode.Adjust)
        view.setMovement(QListView.Movement.Static)
        view.setUniformItemSizes(True)
        view.setWordWrap(False)
        view.setTextElideMode(Qt.TextElideMode.ElideMiddle)
        view.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        view.setSpacing(2)
        return view

    # ---- filters ------------------------------------------------------------------------------

    def _build_filters(self) -> None:
        self.search_box = QLineEdit()
        self.search_box.setPlaceholderText("Search captions and file names")
        self.search_box.setClearButtonEnabled(True)
        self.search_box.setToolTip(
            "Text: images whose caption or file name contains it.\n"
            "Tags: images that have every comma-separated tag (whole tags: \u2018red\u2019 "
            "does not match \u2018red hair\u2019)."
        )
        self.search_mode = QComboBox()
        self.search_mode.addItem("Text", BrowserFilter.TEXT)
        self.search_mode.addItem("Tags", BrowserFilter.TAGS)
        self.search_mode.setToolTip(self.search_box.toolTip())
        self._search_timer = QTimer(self)
        self._search_timer.setSingleShot(True)
        self._search_timer.setInterval(SEARCH_DELAY_MS)
        self._search_timer.timeout.connect(self.apply_search)
        self.search_box.textChanged.connect(self._search_timer.start)
        self.search_box.returnPressed.connect(self.apply_search)
        self.search_mode.currentIndexChanged.connect(self.apply_search)

        self.show_box = QComboBox()
        self.show_box.addItems(list(BrowserFilter.SHOWS))
        self.show_box.setToolTip(
            "Missing caption: no caption yet. Problems: an error or a warning from the "
            "check (badged). Errors only: images that cannot be trained on."
        )
        self.show_box.currentTextChanged.connect(self.proxy.set_show)
        self.bucket_box = QComboBox()
        self.bucket_box.setToolTip("Only the images trained at one size (aspect-ratio bucket)")
        self.bucket_box.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToContents)
        self.bucket_box.currentIndexChanged.connect(self._on_bucket_chosen)
        self.sort_box = QComboBox()
        for key in BrowserFilter.SORTS:
            self.sort_box.addItem(f"Sort: {key.lower()}", key)
        self.sort_box.setToolTip("Name: folder, then file name. Aspect ratio: width / height.")
        self.sort_box.currentIndexChanged.connect(self._on_sort_chosen)
        self.order_button = QToolButton()
        self.order_button.setCheckable(True)
        self.order_button.setAutoRaise(True)
        self.order_button.toggled.connect(self._on_sort_chosen)
        self._update_order_button()

        search_row = QHBoxLayout()
        search_row.setContentsMargins(0, 0, 0, 0)
        search_row.addWidget(self.search_box, 1)
        search_row.addWidget(self.search_mode)
        choice_row = QHBoxLayout()
        choice_row.setContentsMargins(0, 0, 0, 0)
        choice_row.addWidget(self.show_box, 1)
        choice_row.addWidget(self.bucket_box, 1)
        choice_row.addWidget(self.sort_box, 1)
        choice_row.addWidget(self.order_button)
        self.filters = QWidget()
        rows = QVBoxLayout(self.filters)
        rows.setContentsMargins(0, 2, 0, 2)
        rows.setSpacing(4)
        rows.addLayout(search_row)
        rows.addLayout(choice_row)
        self.filters.hide()

        self.shown_label = QLabel()
        self.shown_label.setStyleSheet(f"color: {artwork.MUTED.name()};")
        self.shown_label.linkActivated.connect(self._on_link)
        self.shown_label.hide()
        self._fill_buckets()

    def apply_search(self) -> None:
        """Filter by the search box now (it also does so shortly after typing stops)."""
        self._search_timer.stop()
        self.proxy.set_search(self.search_box.text(), self.search_mode.currentData())

    def clear_filters(self) -> None:
        """Show every image (search, show and bucket filters cleared; the sort stays)."""
        for box in (self.search_box, self.show_box, self.bucket_box):
            box.blockSignals(True)
        self.search_box.clear()
        self.show_box.setCurrentIndex(0)
        self.bucket_box.setCurrentIndex(0)
        for box in (self.search_box, self.show_box, self.bucket_box):
            box.blockSignals(False)
        self._search_timer.stop()
        self.proxy.clear_filters()

    def _fill_buckets(self, *_: object) -> None:
        current = self.proxy.bucket
        box = self.bucket_box
        box.blockSignals(True)
        box.clear()
        box.addItem("Any bucket", None)
        for key, count in self.proxy.bucket_choices():
            label = "No bucket" if key == NO_BUCKET else key
            box.addItem(f"{label} ({count})", key)
        found = box.findData(current) if current is not None else 0
        box.setCurrentIndex(max(0, found))
        box.blockSignals(False)
        if current is not None and found < 0:
            self.proxy.set_bucket(None)

    def _on_bucket_chosen(self, *_: object) -> None:
        self.proxy.set_bucket(self.bucket_box.currentData())

    def _on_sort_chosen(self, *_: object) -> None:
        self._update_order_button()
        self.proxy.set_sort(self.sort_box.currentData(), self.order_button.isChecked())

    def _update_order_button(self) -> None:
        descending = self.order_button.isChecked()
        self.order_button.setText("\u2193" if descending else "\u2191")
        self.order_button.setToolTip(
            "Descending (click for ascending)" if descending else "Ascending (click for descending)"
        )

    def _update_shown(self, *_: object) -> None:
        total = self.model.rowCount()
        shown = self.proxy.rowCount()
        if self.model.dataset is None or shown == total:
            self.shown_label.hide()
            return
        text = (
            f"Showing {shown} of {total} images"
            if shown
            else f"No image of {total} matches these filters"
        )
        self.shown_label.setText(f'{text} \u00b7 <a href="{_CLEAR_LINK}">Show all</a>')
        self.shown_label.show()

    # ---- rows of the view vs rows of the model --------------------------------------------------

    def source_row(self, index: QModelIndex | QPersistentModelIndex) -> int:
        """The dataset model's row of a view index (-1: none)."""
        return self.proxy.mapToSource(index).row() if index.isValid() else -1

    def view_index(self, source_row: int) -> QModelIndex:
        """The view's index of the model's ``source_row`` (invalid when it is filtered out)."""
        return self.proxy.mapFromSource(self.model.index(source_row, Column.IMAGE))

    def selected_paths(self) -> list[Path]:
        """The selected images, in view order."""
        rows = sorted(self.view.selectionModel().selectedIndexes(), key=lambda i: i.row())
        return [self.model.item(self.source_row(i)).path for i in rows]

    # ---- state ----------------------------------------------------------------------------------

    def set_loading(self, folder: str) -> None:
        """Say that ``folder`` is being opened (a busy bar until it is indexed)."""
        self.folder_label.setText(f"Opening {folder}\u2026")
        self.progress.setRange(0, 0)
        self.progress.setToolTip("Reading the folder\u2019s file list and captions")
        self.progress.show()
        self._loading = True

    def show_listing(self, paths: list[Path]) -> None:
        """Show the first image files of the folder being opened (names and thumbnails)
        until its dataset arrives; only while the grid would show them first anyway (no
        filter, the dataset's own order)."""
        if not self._loading or not paths or not self.proxy.shows_dataset_order:
            return
        self.listing.set_paths(paths)
        self.stack.setCurrentWidget(self.listing_view)
        if self.model.dataset is None:
            self.counts_label.setText(READING)

    def loading_ended(self) -> None:
        """The folder opened (or failed): no busy bar, no listing."""
        self._loading = False
        if self.model.validation_progress is None:
            self.progress.hide()
        if self.stack.currentWidget() is self.listing_view:
            self.stack.setCurrentWidget(self.view if self.model.dataset is not None else self.empty)
        self.listing.set_paths([])
        self._show_folder()

    def _show_folder(self) -> None:
        dataset = self.model.dataset
        if not self._loading:  # (while a folder opens, it says "Opening ...")
            self.folder_label.setText(str(dataset.root) if dataset is not None else "")
            self.folder_label.setToolTip(str(dataset.root) if dataset is not None else "")

    def _show_page(self, page: QWidget) -> None:
        # The listing of a folder being opened stays until loading_ended().
        if not (self._loading and self.stack.currentWidget() is self.listing_view):
            self.stack.setCurrentWidget(page)

    def update_counts(self) -> None:
        dataset = self.model.dataset
        if dataset is None:
            listing = self._loading and self.stack.currentWidget() is self.listing_view
            self.counts_label.setText(READING if listing else "No dataset open")
            if not self.progress.isVisible():
                self.folder_label.setText("")
            self._show_page(self.empty)
            self.problems_label.hide()
            self.checking_label.hide()
            self.filters.hide()
            return
        total, captioned = self.model.counts()
        problems = self.model.problems()
        self.counts_label.setText(counts_text(total, captioned, len(problems)))
        checking = self.model.validation_progress
        if checking is not None:
            self.checking_label.setText(f"Checking the images\u2026 {checking[0]}/{checking[1]}")
        self.checking_label.setVisible(checking is not None)
        if checking is not None:
            self.progress.setRange(0, max(1, checking[1]))
            self.progress.setValue(checking[0])
            self.progress.setToolTip(self.checking_label.toolTip())
            self.progress.show()
        elif self.progress.maximum() != 0:
            self.progress.hide()  # the busy bar of an open stays until loading_ended
        self.filters.show()
        self._update_shown()
        self.counts_label.setToolTip(
            "Problems: images with an error (red badge: it cannot be trained on) or a "
            "warning (amber badge). Hover a thumbnail for what is wrong."
        )
        self._show_folder()
        self._show_page(self.view)
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
        elif link == _CLEAR_LINK:
            self.clear_filters()
