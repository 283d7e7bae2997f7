"""The tag-frequency side list of the caption grid, and the tag completer's model.

:class:`TagList` shows every tag of the dataset's captions with how many captions have it
(:func:`lora_studio.core.tags.tag_counts`), sortable by either column, with a search box.
Clicking a tag asks the grid to show only the images that have it
(:attr:`TagList.tag_chosen`); clicking it again, or **Show all**, clears that
(``tag_chosen("")``). :class:`TagCountModel` is the same list for the caption editor's
completer ("red hair  12").
"""

from __future__ import annotations

from PySide6.QtCore import (
    QModelIndex,
    QPersistentModelIndex,
    QSortFilterProxyModel,
    Qt,
    Signal,
)
from PySide6.QtGui import QStandardItem, QStandardItemModel
from PySide6.QtWidgets import (
    QAbstractItemView,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QLineEdit,
    QPushButton,
    QTableView,
    QVBoxLayout,
    QWidget,
)

from lora_studio.gui import artwork

Index = QModelIndex | QPersistentModelIndex
#: The role holding the bare tag (the completion text); display shows "tag  12".
TAG_ROLE = int(Qt.ItemDataRole.UserRole) + 1


class TagCountModel(QStandardItemModel):
    """One row per tag: column 0 the tag (``TAG_ROLE`` and edit role: the bare tag), column
    1 the count (sorted as a number)."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(0, 2, parent)
        self.setHorizontalHeaderLabels(["Tag", "#"])
        self.setHeaderData(
            1, Qt.Orientation.Horizontal, "Images with the tag", Qt.ItemDataRole.ToolTipRole
        )
        self.counts: dict[str, int] = {}

    def set_counts(self, counts: dict[str, int]) -> None:
        if counts == self.counts:
            return
        self.counts = dict(counts)
        self.removeRows(0, self.rowCount())
        for tag, count in counts.items():
            name = QStandardItem(tag)
            name.setData(tag, TAG_ROLE)
            name.setData(tag, Qt.ItemDataRole.EditRole)
            name.setToolTip(f"{tag}: in {count} caption{'s' if count != 1 else ''}")
            number = QStandardItem()
            number.setData(count, Qt.ItemDataRole.DisplayRole)
            number.setTextAlignment(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
            for item in (name, number):
                item.setEditable(False)
            self.appendRow([name, number])

    def tags(self) -> list[str]:
        return list(self.counts)


class TagList(QWidget):
    """The tag-frequency list (see the module docstring).

    Signals:
        tag_chosen(str): show only the images with this tag (``""``: all of them).
    """

    tag_chosen = Signal(str)

    def __init__(self, model: TagCountModel, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("tag_list")
        self.model = model
        self.proxy = QSortFilterProxyModel(self)
        self.proxy.setSourceModel(model)
        self.proxy.setFilterCaseSensitivity(Qt.CaseSensitivity.CaseInsensitive)
        self.proxy.setFilterKeyColumn(0)
        self.proxy.setSortCaseSensitivity(Qt.CaseSensitivity.CaseInsensitive)
        self.chosen = ""

        self.title = QLabel("<b>Tags</b>")
        self.search = QLineEdit()
        self.search.setPlaceholderText("Find a tag")
        self.search.setClearButtonEnabled(True)
        self.search.textChanged.connect(self.proxy.setFilterFixedString)
        self.table = QTableView()
        self.table.setModel(self.proxy)
        self.table.setSortingEnabled(True)
        self.table.sortByColumn(1, Qt.SortOrder.DescendingOrder)
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.verticalHeader().setVisible(False)
        self.table.verticalHeader().setDefaultSectionSize(22)
        self.table.setShowGrid(False)
        self.table.setAlternatingRowColors(True)
        self.table.setTextElideMode(Qt.TextElideMode.ElideRight)
        self.table.setWordWrap(False)
        self.setMinimumWidth(150)
        head = self.table.horizontalHeader()
        head.setSectionResizeMode(0, QHeaderView.ResizeMode.Stretch)
        head.setSectionResizeMode(1, QHeaderView.ResizeMode.ResizeToContents)
        head.setToolTip("Click a column to sort by it")
        self.table.setToolTip("Click a tag to show only the images that have it")
        self.table.clicked.connect(self._on_clicked)
        self.clear_button = QPushButton("Show all")
        self.clear_button.setToolTip("Show every image again")
        self.clear_button.clicked.connect(lambda: self.choose(""))
        self.clear_button.setEnabled(False)
        self.count_label = QLabel()
        self.count_label.setStyleSheet(f"color: {artwork.MUTED.name()};")
        bottom = QHBoxLayout()
        bottom.addWidget(self.count_label, 1)
        bottom.addWidget(self.clear_button)

        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.title)
        layout.addWidget(self.search)
        layout.addWidget(self.table, 1)
        layout.addLayout(bottom)
        model.modelReset.connect(self._update_count)
        model.rowsInserted.connect(self._update_count)
        model.rowsRemoved.connect(self._update_count)
        self._update_count()

    def choose(self, tag: str) -> None:
        """Filter the grid by ``tag`` (``""``: no tag filter)."""
        self.chosen = tag
        self.clear_button.setEnabled(bool(tag))
        if not tag:
            self.table.clearSelection()
        self.title.setText(
            f"<b>Tags</b> \u00b7 showing \u201c{tag}\u201d" if tag else "<b>Tags</b>"
        )
        self.tag_chosen.emit(tag)

    def _on_clicked(self, index: QModelIndex) -> None:
        tag = str(self.proxy.index(index.row(), 0).data(TAG_ROLE) or "")
        self.choose("" if tag == self.chosen else tag)

    def _update_count(self, *_: object) -> None:
        count = self.model.rowCount()
        self.count_label.setText(f"{count} tag{'s' if count != 1 else ''}")
