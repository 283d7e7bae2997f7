"""The caption editor grid: every image with its caption, editable in place.

A ``QTableView`` over a filter proxy of :class:`~lora_studio.gui.dataset_model.DatasetModel`
(All / Uncaptioned / Problems: the images with an error or a warning, as badged in the
browser; the thumbnails here carry the same badge). Captions are edited with :class:`CaptionDelegate`'s multi-line
editor: Enter commits, Shift+Enter starts a new line, Esc cancels. Missing captions show
a grey "(no caption)" placeholder; under each file name, :class:`ImageDelegate` writes the
size the image trains at (its aspect-ratio bucket; the header's tooltip counts them); the
status column says "Saving…", "Saved ✓" or "⚠ Not saved" (with the reason as tooltip),
and the line under the grid sums it up.

Automatic captions waiting for review appear in a "Proposed caption" column beside the
caption, as a word diff with Accept / Reject buttons per image, and a bar above the grid
acts on the selection or on all of them (see :mod:`lora_studio.gui.proposal_review`);
the "Has proposal" filter shows only those images. The "Caption images…" button asks
for a caption run (:attr:`CaptionGrid.caption_images_requested`).
"""

from __future__ import annotations

from pathlib import Path

from PySide6.QtCore import (
    QAbstractItemModel,
    QEvent,
    QModelIndex,
    QObject,
    QPersistentModelIndex,
    QRect,
    QSize,
    QSortFilterProxyModel,
    Qt,
    Signal,
)
from PySide6.QtGui import QFont, QFontMetrics, QKeyEvent, QPainter, QPalette
from PySide6.QtWidgets import (
    QAbstractItemDelegate,
    QAbstractItemView,
    QApplication,
    QComboBox,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QPlainTextEdit,
    QPushButton,
    QStyle,
    QStyledItemDelegate,
    QStyleOptionViewItem,
    QTableView,
    QVBoxLayout,
    QWidget,
)

from lora_studio.core.proposals import ProposalState, ProposalView
from lora_studio.gui import artwork
from lora_studio.gui.dataset_model import CaptionState, Column, DatasetModel, Role
from lora_studio.gui.proposal_review import (
    ACCEPT,
    OVERWRITE,
    REJECT,
    ProposalDelegate,
    ReviewBar,
    diff_html,
    paint_html,
)

Index = QModelIndex | QPersistentModelIndex
PLACEHOLDER = "(no caption)"
ROW_HEIGHT = 60
#: Rows are taller while proposals are shown: three lines of text and the buttons.
REVIEW_ROW_HEIGHT = 84
THUMB = 48
IMAGE_WIDTH, IMAGE_MIN = 178, 158
REVIEW_IMAGE_MIN = 112  # the thumbnail and a few letters of the name
STATUS_WIDTH, STATUS_MIN = 92, 58


class CaptionFilter(QSortFilterProxyModel):
    """Shows all rows, only those without a caption, only those with a problem, or only
    those with a proposed caption."""

    ALL = "All"
    UNCAPTIONED = "Uncaptioned"
    PROBLEMS = "Problems"
    PROPOSALS = "Has proposal"
    MODES = (ALL, UNCAPTIONED, PROBLEMS, PROPOSALS)

    def __init__(self, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self._mode = self.ALL

    @property
    def mode(self) -> str:
        return self._mode

    @property
    def only_uncaptioned(self) -> bool:
        return self._mode == self.UNCAPTIONED

    def set_only_uncaptioned(self, value: bool) -> None:
        self.set_mode(self.UNCAPTIONED if value else self.ALL)

    def set_mode(self, mode: str) -> None:
        """Show :attr:`ALL`, :attr:`UNCAPTIONED`, :attr:`PROBLEMS` or :attr:`PROPOSALS` rows."""
        if mode not in self.MODES:
            raise ValueError(f"unknown filter {mode!r}")
        if mode == self._mode:
            return
        self._refilter(mode)

    def refresh(self) -> None:
        """The rows' data changed in a way the filter sees (proposals came or went)."""
        if self._mode != self.ALL:
            self._refilter(self._mode)

    def _refilter(self, mode: str) -> None:
        if hasattr(self, "beginFilterChange"):  # Qt >= 6.10
            self.beginFilterChange()
            self._mode = mode
            self.endFilterChange(QSortFilterProxyModel.Direction.Rows)
        else:  # pragma: no cover - older Qt
            self._mode = mode
            self.invalidateRowsFilter()

    def filterAcceptsRow(self, source_row: int, source_parent: Index) -> bool:  # noqa: N802
        if self._mode == self.ALL:
            return True
        source = self.sourceModel()
        index = source.index(source_row, Column.CAPTION, source_parent)
        # A row whose save is still under way stays, so it does not vanish under the
        # user's cursor mid-edit.
        state = source.data(index, Role.CAPTION_STATE)
        if state is CaptionState.SAVING:
            return True
        if self._mode == self.PROBLEMS:
            return bool(source.data(index, Role.SEVERITY))
        if self._mode == self.PROPOSALS:
            return source.data(index, Role.PROPOSAL) is not None
        return not source.data(index, Role.HAS_CAPTION)


class CaptionEditor(QPlainTextEdit):
    """The multi-line caption editor (see :class:`CaptionDelegate` for its keys)."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setTabChangesFocus(True)
        self.setPlaceholderText("Describe the image; Enter saves, Shift+Enter adds a line")
        self.setFrameShape(QPlainTextEdit.Shape.Box)


class CaptionDelegate(QStyledItemDelegate):
    """Edits captions in a :class:`CaptionEditor` and draws the "(no caption)" placeholder;
    beside a proposal, the words it would drop are struck through in red."""

    def paint(self, painter: QPainter, option: QStyleOptionViewItem, index: Index) -> None:
        view = index.data(Role.PROPOSAL)
        text = str(index.data(Qt.ItemDataRole.DisplayRole) or "")
        if (
            not isinstance(view, ProposalView)
            or view.state is ProposalState.SAME
            or not text.strip()
        ):
            super().paint(painter, option, index)
            return
        opt = QStyleOptionViewItem(option)
        self.initStyleOption(opt, index)
        opt.text = ""
        widget = opt.widget
        style = widget.style() if widget is not None else QApplication.style()
        style.drawControl(QStyle.ControlElement.CE_ItemViewItem, opt, painter, widget)
        selected = bool(opt.state & QStyle.StateFlag.State_Selected)
        role = QPalette.ColorRole.HighlightedText if selected else QPalette.ColorRole.Text
        color = opt.palette.color(opt.palette.currentColorGroup(), role)
        paint_html(
            painter, opt.rect.adjusted(4, 4, -4, -4), diff_html(view.diff, "old"), opt.font, color
        )

    def createEditor(  # noqa: N802
        self, parent: QWidget, option: QStyleOptionViewItem, index: Index
    ) -> QWidget:
        editor = CaptionEditor(parent)
        editor.installEventFilter(self)
        return editor

    def setEditorData(self, editor: QWidget, index: Index) -> None:  # noqa: N802
        assert isinstance(editor, CaptionEditor)
        editor.setPlainText(str(index.data(Qt.ItemDataRole.EditRole) or ""))
        editor.moveCursor(editor.textCursor().MoveOperation.End)

    def setModelData(  # noqa: N802
        self, editor: QWidget, model: QAbstractItemModel, index: Index
    ) -> None:
        assert isinstance(editor, CaptionEditor)
        model.setData(index, editor.toPlainText(), Qt.ItemDataRole.EditRole)

    def updateEditorGeometry(  # noqa: N802
        self, editor: QWidget, option: QStyleOptionViewItem, index: Index
    ) -> None:
        # Taller than the row when needed, so a long caption can be read while editing.
        rect = option.rect
        rect.setHeight(max(rect.height(), 96))
        editor.setGeometry(rect)

    def eventFilter(self, watched: QObject, event: QEvent) -> bool:  # noqa: N802
        if isinstance(watched, CaptionEditor) and event.type() == QEvent.Type.KeyPress:
            assert isinstance(event, QKeyEvent)
            key = event.key()
            if key in (Qt.Key.Key_Return, Qt.Key.Key_Enter):
                if event.modifiers() & Qt.KeyboardModifier.ShiftModifier:
                    watched.insertPlainText("\n")
                    return True
                self.commitData.emit(watched)
                self.closeEditor.emit(watched, QAbstractItemDelegate.EndEditHint.NoHint)
                return True
            if key == Qt.Key.Key_Escape:
                self.closeEditor.emit(watched, QAbstractItemDelegate.EndEditHint.RevertModelCache)
                return True
        return super().eventFilter(watched, event)

    def initStyleOption(self, option: QStyleOptionViewItem, index: Index) -> None:  # noqa: N802
        super().initStyleOption(option, index)
        if not str(index.data(Qt.ItemDataRole.DisplayRole) or "").strip():
            option.text = PLACEHOLDER
            option.font.setItalic(True)
            option.palette.setColor(QPalette.ColorRole.Text, artwork.MUTED)
            option.palette.setColor(QPalette.ColorRole.HighlightedText, artwork.MUTED.lighter(150))


class ImageDelegate(QStyledItemDelegate):
    """The image cell: thumbnail, file name, and under it, muted, the image's bucket."""

    def paint(self, painter: QPainter, option: QStyleOptionViewItem, index: Index) -> None:
        self._paint_cell(painter, option, index)
        severity = index.data(Role.SEVERITY)
        if severity:
            opt = QStyleOptionViewItem(option)
            self.initStyleOption(opt, index)
            widget = opt.widget
            style = widget.style() if widget is not None else QApplication.style()
            rect = style.subElementRect(QStyle.SubElement.SE_ItemViewItemDecoration, opt, widget)
            artwork.draw_badge(painter, rect, severity)

    def _paint_cell(self, painter: QPainter, option: QStyleOptionViewItem, index: Index) -> None:
        bucket = index.data(Role.BUCKET)
        if not bucket:
            super().paint(painter, option, index)
            return
        opt = QStyleOptionViewItem(option)
        self.initStyleOption(opt, index)
        name = opt.text
        opt.text = ""
        widget = opt.widget
        style = widget.style() if widget is not None else QApplication.style()
        style.drawControl(QStyle.ControlElement.CE_ItemViewItem, opt, painter, widget)
        opt.text = name
        rect = style.subElementRect(QStyle.SubElement.SE_ItemViewItemText, opt, widget)
        rect = rect.adjusted(3, 0, -3, 0)
        selected = bool(opt.state & QStyle.StateFlag.State_Selected)
        group = opt.palette.currentColorGroup()
        text_color = opt.palette.color(
            group,
            QPalette.ColorRole.HighlightedText if selected else QPalette.ColorRole.Text,
        )
        small = QFont(opt.font)
        small.setPointSizeF(opt.font.pointSizeF() * 0.9)
        line = QFontMetrics(opt.font).height()
        small_line = QFontMetrics(small).height()
        top = rect.top() + (rect.height() - line - small_line) // 2
        painter.save()
        painter.setFont(opt.font)
        painter.setPen(text_color)
        metrics = QFontMetrics(opt.font)
        painter.drawText(
            QRect(rect.left(), top, rect.width(), line),
            int(Qt.AlignmentFlag.AlignLeft | Qt.AlignmentFlag.AlignVCenter),
            metrics.elidedText(name, Qt.TextElideMode.ElideMiddle, rect.width()),
        )
        painter.setFont(small)
        painter.setPen(text_color if selected else artwork.MUTED)
        painter.drawText(
            QRect(rect.left(), top + line, rect.width(), small_line),
            int(Qt.AlignmentFlag.AlignLeft | Qt.AlignmentFlag.AlignVCenter),
            str(bucket),
        )
        painter.restore()


class CaptionGrid(QWidget):
    """The caption panel: filter, table, save state, proposals to review.

    Signals:
        caption_images_requested(): the user wants to caption images automatically.
        accept_requested(list[Path], bool): write these images' proposals (``True``:
            also over captions edited since, i.e. overwrite).
        reject_requested(list[Path]): drop these images' proposals.
        notice(str, str): a message for the user: level, text.
    """

    caption_images_requested = Signal()
    accept_requested = Signal(object, bool)
    reject_requested = Signal(object)
    notice = Signal(str, str)

    def __init__(self, model: DatasetModel, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.model = model
        self.proxy = CaptionFilter(self)
        self.proxy.setSourceModel(model)

        title = QLabel("<b>Captions</b>")
        self.filter_box = QComboBox()
        self.filter_box.addItems(list(CaptionFilter.MODES))
        self.filter_box.setToolTip(
            "Show all images, only those without a caption, only those with a problem "
            "(a badge on the thumbnail), or only those with a proposed caption to review"
        )
        self.filter_box.currentTextChanged.connect(self.proxy.set_mode)
        self.caption_button = QPushButton("Caption images\u2026")
        self.caption_button.setToolTip(
            "Caption images automatically (BLIP, BLIP-2, a vision LLM...); the captions "
            "arrive as proposals to review here"
        )
        self.caption_button.clicked.connect(self.caption_images_requested)
        header = QHBoxLayout()
        header.addWidget(title)
        header.addStretch(1)
        header.addWidget(self.caption_button)
        header.addSpacing(8)
        header.addWidget(QLabel("Show"))
        header.addWidget(self.filter_box)
        self.review_bar = ReviewBar()

        self.table = QTableView()
        self.table.setModel(self.proxy)
        self.delegate = CaptionDelegate(self.table)
        self.table.setItemDelegateForColumn(Column.CAPTION, self.delegate)
        self.image_delegate = ImageDelegate(self.table)
        self.table.setItemDelegateForColumn(Column.IMAGE, self.image_delegate)
        self.proposal_delegate = ProposalDelegate(self.table)
        self.table.setItemDelegateForColumn(Column.PROPOSAL, self.proposal_delegate)
        self.proposal_delegate.action_requested.connect(self._on_row_action)
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.setSelectionMode(QAbstractItemView.SelectionMode.ExtendedSelection)
        self.table.setEditTriggers(
            QAbstractItemView.EditTrigger.DoubleClicked
            | QAbstractItemView.EditTrigger.EditKeyPressed
            | QAbstractItemView.EditTrigger.SelectedClicked
            | QAbstractItemView.EditTrigger.AnyKeyPressed
        )
        self.table.setIconSize(QSize(THUMB, THUMB))
        self.table.setWordWrap(True)
        self.table.setTextElideMode(Qt.TextElideMode.ElideRight)
        self.table.verticalHeader().setVisible(False)
        self.table.verticalHeader().setSectionResizeMode(QHeaderView.ResizeMode.Fixed)
        self.table.verticalHeader().setDefaultSectionSize(ROW_HEIGHT)
        self.table.setAlternatingRowColors(True)
        self.table.setShowGrid(False)
        head = self.table.horizontalHeader()
        head.setSectionResizeMode(Column.IMAGE, QHeaderView.ResizeMode.Interactive)
        head.setSectionResizeMode(Column.CAPTION, QHeaderView.ResizeMode.Stretch)
        head.setSectionResizeMode(Column.STATUS, QHeaderView.ResizeMode.Interactive)
        head.setSectionResizeMode(Column.PROPOSAL, QHeaderView.ResizeMode.Stretch)
        # Side by side: the caption, then what is proposed instead, then the status.
        head.moveSection(head.visualIndex(Column.PROPOSAL), head.visualIndex(Column.STATUS))
        self.table.setColumnHidden(Column.PROPOSAL, True)
        self._fit_columns = True  # until the user drags a column border
        self._fitting = False
        self._fit_widths()
        head.sectionResized.connect(self._on_section_resized)
        head.setHighlightSections(False)
        self.table.viewport().installEventFilter(self)

        self.state_label = QLabel()
        self.state_label.setWordWrap(True)
        hint = QLabel(
            "Double-click a caption to edit \u00b7 Enter saves \u00b7 Shift+Enter new line \u00b7 Esc cancels"
        )
        hint.setStyleSheet(f"color: {artwork.MUTED.name()};")
        hint.setWordWrap(True)

        layout = QVBoxLayout(self)
        layout.setContentsMargins(6, 6, 6, 6)
        layout.addLayout(header)
        layout.addWidget(self.review_bar)
        layout.addWidget(self.table, 1)
        layout.addWidget(self.state_label)
        layout.addWidget(hint)

        model.dataChanged.connect(self._update_state)
        model.modelReset.connect(self._update_state)
        model.proposals_changed.connect(self._on_proposals_changed)
        model.modelReset.connect(self._on_proposals_changed)
        self.table.selectionModel().selectionChanged.connect(self._update_review_bar)
        self.review_bar.accept_selected.connect(lambda: self._accept(self.selected_paths()))
        self.review_bar.reject_selected.connect(lambda: self._reject(self.selected_paths()))
        self.review_bar.accept_all.connect(lambda: self._accept(self.model.proposal_paths()))
        self.review_bar.reject_all.connect(lambda: self._reject(self.model.proposal_paths()))
        self._update_state()
        self._on_proposals_changed()

    def eventFilter(self, watched: QObject, event: QEvent) -> bool:  # noqa: N802
        if event.type() == QEvent.Type.Resize and watched is self.table.viewport():
            self._fit_widths()
        return super().eventFilter(watched, event)

    def _fit_widths(self) -> None:
        """Image and status columns as wide as a roomy grid allows, narrower in a narrow
        one: the caption keeps at least about half the width."""
        if not self._fit_columns:
            return
        width = self.table.viewport().width()
        # Beside a proposed caption, the two captions need the room more than the names.
        reviewing = not self.table.isColumnHidden(Column.PROPOSAL)
        image_share, image_min = (26, REVIEW_IMAGE_MIN) if reviewing else (36, IMAGE_MIN)
        status_share = 13 if reviewing else 17
        self._fitting = True
        try:
            head = self.table.horizontalHeader()
            head.resizeSection(
                Column.IMAGE, max(image_min, min(IMAGE_WIDTH, width * image_share // 100))
            )
            head.resizeSection(
                Column.STATUS, max(STATUS_MIN, min(STATUS_WIDTH, width * status_share // 100))
            )
        finally:
            self._fitting = False

    def _on_section_resized(self, section: int, old: int, new: int) -> None:
        if not self._fitting and section in (Column.IMAGE, Column.STATUS):
            self._fit_columns = False  # the user chose a width: keep it

    # ---- proposals ------------------------------------------------------------------------

    def selected_paths(self) -> list[Path]:
        """The selected images, in row order."""
        rows = sorted(
            {self.source_index(i).row() for i in self.table.selectionModel().selectedIndexes()}
        )
        return [self.model.item(row).path for row in rows if row >= 0]

    def show_proposals(self) -> None:
        """Show only the images with a proposed caption."""
        self.filter_box.setCurrentText(CaptionFilter.PROPOSALS)

    def _accept(self, paths: list[Path]) -> None:
        views = [v for v in (self.model.proposal_view(p) for p in paths) if v is not None]
        # A conflict here may be an edit not saved yet, which the store cannot see: only
        # the row's own Overwrite replaces it.
        wanted = [v.image for v in views if v.state is not ProposalState.CONFLICT]
        conflicts = len(views) - len(wanted)
        if wanted:
            self.accept_requested.emit(wanted, False)
        if conflicts:
            self.notice.emit(
                "warning",
                f"{conflicts} proposed caption(s) were left alone: their captions were edited "
                f"after they were proposed. Use Overwrite on those rows to replace the edit.",
            )

    def _reject(self, paths: list[Path]) -> None:
        wanted = [p for p in paths if self.model.proposal_view(p) is not None]
        if wanted:
            self.reject_requested.emit(wanted)

    def _on_row_action(self, path: Path, action: str) -> None:
        if action == ACCEPT:
            self.accept_requested.emit([path], False)
        elif action == OVERWRITE:
            self.accept_requested.emit([path], True)
        elif action == REJECT:
            self.reject_requested.emit([path])

    def _on_proposals_changed(self) -> None:
        pending, _conflicts = self.model.proposal_counts()
        showing = not self.table.isColumnHidden(Column.PROPOSAL)
        if bool(pending) != showing:
            self.table.setColumnHidden(Column.PROPOSAL, not pending)
            self.table.verticalHeader().setDefaultSectionSize(
                REVIEW_ROW_HEIGHT if pending else ROW_HEIGHT
            )
            self._fit_widths()
        self.proxy.refresh()
        self._update_review_bar()

    def _update_review_bar(self, *_: object) -> None:
        pending, conflicts = self.model.proposal_counts()
        selected = sum(1 for p in self.selected_paths() if self.model.proposal_view(p) is not None)
        self.review_bar.set_counts(pending, conflicts, selected)

    def show_problems(self) -> None:
        """Show only the images with a problem."""
        self.filter_box.setCurrentText(CaptionFilter.PROBLEMS)

    def proxy_index(self, source: QModelIndex) -> QModelIndex:
        return self.proxy.mapFromSource(source)

    def source_index(self, index: QModelIndex) -> QModelIndex:
        return self.proxy.mapToSource(index)

    def edit_caption(self, source_row: int) -> None:
        """Open the caption editor of ``source_row`` (scrolls to it)."""
        index = self.proxy.mapFromSource(self.model.index(source_row, Column.CAPTION))
        if index.isValid():
            self.table.scrollTo(index)
            self.table.setCurrentIndex(index)
            self.table.edit(index)

    def _update_state(self, *_: object) -> None:
        counts = self.model.state_counts()
        saving = counts.get(CaptionState.SAVING, 0)
        failed = counts.get(CaptionState.FAILED, 0)
        saved = counts.get(CaptionState.SAVED, 0)
        if failed:
            self.state_label.setText(
                f"\u26a0 {failed} caption(s) not saved \u2014 your text is kept; hover the row "
                f"for the reason and edit it again to retry."
            )
            self.state_label.setStyleSheet(f"color: {artwork.ERROR.name()}; font-weight: bold;")
        elif saving:
            self.state_label.setText(f"Saving {saving} caption(s)\u2026")
            self.state_label.setStyleSheet(f"color: {artwork.MUTED.name()};")
        elif saved:
            self.state_label.setText(f"All captions saved \u2713 ({saved} edited)")
            self.state_label.setStyleSheet(f"color: {artwork.SUCCESS.name()};")
        else:
            self.state_label.setText("")
