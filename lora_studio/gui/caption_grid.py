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

Editing is keyboard-first: Ctrl+Down / Ctrl+Up go to the next / previous image (in the
editor too: the caption is kept and the next one opens), Ctrl+U jumps to the next image
without a caption, Space or a click on the thumbnail zooms the image
(:class:`~lora_studio.gui.image_zoom.ZoomDialog`). A caption being typed is saved within a
second of the last key (:data:`AUTOSAVE_MS`). The caption editor completes the tag under
the cursor from the dataset's own tags, with their counts, and says how many tokens the
caption has against the text encoder's limit (an estimate, :func:`~lora_studio.core.tags.
estimate_tokens`); a caption that will be cut shows its count in red in the grid too.

Batch operations (Ctrl+E, Ctrl+H for find and replace; the "Batch edit" button's menu) run
over the selected images or all shown ones through
:class:`~lora_studio.gui.batch_edit_dialog.BatchEditDialog`, with a preview. Every change -
a caption typed, a batch operation - is one step of :attr:`CaptionGrid.undo_stack`
(:class:`~lora_studio.gui.caption_commands.CaptionEdit`; Ctrl+Z / Ctrl+Shift+Z): undoing
writes the files again. The tag list beside the grid counts every tag; clicking one shows
only the images that have it. A caption file changed by another program is flagged on its
row and in a bar above the grid that offers to reload it or keep the text shown here.
"""

from __future__ import annotations

import time
from collections.abc import Callable
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
    QTimer,
    Signal,
)
from PySide6.QtGui import (
    QAction,
    QFont,
    QFontMetrics,
    QKeyEvent,
    QKeySequence,
    QMouseEvent,
    QPainter,
    QPalette,
    QUndoStack,
)
from PySide6.QtWidgets import (
    QAbstractItemDelegate,
    QAbstractItemView,
    QApplication,
    QComboBox,
    QCompleter,
    QFrame,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QMenu,
    QPlainTextEdit,
    QPushButton,
    QSplitter,
    QStyle,
    QStyledItemDelegate,
    QStyleOptionViewItem,
    QTableView,
    QToolButton,
    QTreeView,
    QVBoxLayout,
    QWidget,
)

from lora_studio.core.proposals import ProposalState, ProposalView
from lora_studio.core.tags import (
    BatchKind,
    TagCounter,
    TokenLimit,
    cut_index,
    estimate_tokens,
    has_tag,
    tag_under_cursor,
    token_limit,
)
from lora_studio.gui import artwork
from lora_studio.gui.batch_edit_dialog import OPERATIONS, BatchEditDialog
from lora_studio.gui.caption_commands import CaptionEdit, batch_label, new_session
from lora_studio.gui.dataset_model import CaptionState, Column, DatasetModel, Role
from lora_studio.gui.image_zoom import ZoomDialog
from lora_studio.gui.proposal_review import (
    ACCEPT,
    OVERWRITE,
    REJECT,
    ProposalDelegate,
    ReviewBar,
    diff_html,
    paint_html,
)
from lora_studio.gui.tag_list import TAG_ROLE, TagCountModel, TagList

Index = QModelIndex | QPersistentModelIndex
PLACEHOLDER = "(no caption)"
ROW_HEIGHT = 60
#: Rows are taller while proposals are shown: three lines of text and the buttons.
REVIEW_ROW_HEIGHT = 84
THUMB = 48
IMAGE_WIDTH, IMAGE_MIN = 178, 158
REVIEW_IMAGE_MIN = 112  # the thumbnail and a few letters of the name
STATUS_WIDTH, STATUS_MIN = 92, 58
#: A caption being typed is saved this long after the last key.
AUTOSAVE_MS = 700
#: The tag list and the completer are recounted this long after the last change.
RECOUNT_MS = 250
#: Type this many letters of a tag before completions pop up.
COMPLETE_AFTER = 2


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
        self._tag = ""

    @property
    def tag(self) -> str:
        return self._tag

    def set_tag(self, tag: str) -> None:
        """Show only the rows whose caption has the tag ``tag`` (``""``: any caption)."""
        if tag != self._tag:
            self._refilter(self._mode, tag)

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

    def _refilter(self, mode: str, tag: str | None = None) -> None:
        if hasattr(self, "beginFilterChange"):  # Qt >= 6.10
            self.beginFilterChange()
            self._mode = mode
            self._tag = self._tag if tag is None else tag
            self.endFilterChange(QSortFilterProxyModel.Direction.Rows)
        else:  # pragma: no cover - older Qt
            self._mode = mode
            self._tag = self._tag if tag is None else tag
            self.invalidateRowsFilter()

    def filterAcceptsRow(self, source_row: int, source_parent: Index) -> bool:  # noqa: N802
        if self._mode == self.ALL and not self._tag:
            return True
        source = self.sourceModel()
        index = source.index(source_row, Column.CAPTION, source_parent)
        # A row whose save is still under way stays, so it does not vanish under the
        # user's cursor mid-edit.
        state = source.data(index, Role.CAPTION_STATE)
        if state is CaptionState.SAVING:
            return True
        if self._tag and not has_tag(str(source.data(index) or ""), self._tag):
            return False
        if self._mode == self.ALL:
            return True
        if self._mode == self.PROBLEMS:
            return bool(source.data(index, Role.SEVERITY))
        if self._mode == self.PROPOSALS:
            return source.data(index, Role.PROPOSAL) is not None
        return not source.data(index, Role.HAS_CAPTION)


class CaptionEditor(QPlainTextEdit):
    """The multi-line caption editor (see :class:`CaptionDelegate` for its keys).

    It completes the tag under the cursor (:meth:`set_completer`), shows the caption's
    token count against ``limit`` in its corner, and asks for an autosave
    (:attr:`autosave`) :data:`AUTOSAVE_MS` after the last change.
    """

    autosave = Signal()

    def __init__(self, parent: QWidget | None = None, limit: TokenLimit | None = None) -> None:
        super().__init__(parent)
        self.setTabChangesFocus(True)
        self.setPlaceholderText("Describe the image; Enter saves, Shift+Enter adds a line")
        self.setFrameShape(QPlainTextEdit.Shape.Box)
        self.session = new_session()
        self.limit = limit or token_limit(None)
        self.completer: QCompleter | None = None
        self._popup_closed = 0.0
        self.timer = QTimer(self)
        self.timer.setSingleShot(True)
        self.timer.setInterval(AUTOSAVE_MS)
        self.timer.timeout.connect(self.autosave)
        self.tokens = QLabel(self)
        self.tokens.setObjectName("token_counter")
        self.tokens.setAlignment(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
        self.tokens.setAttribute(Qt.WidgetAttribute.WA_TransparentForMouseEvents, False)
        self.textChanged.connect(self._on_text_changed)
        self._update_tokens()

    @property
    def unsaved(self) -> bool:
        """Typed text that has not been handed to the model yet."""
        return self.timer.isActive()

    def set_completer(self, completer: QCompleter) -> None:
        self.completer = completer
        completer.setWidget(self)
        completer.activated[str].connect(self.insert_completion)
        completer.popup().installEventFilter(self)

    def completing(self) -> bool:
        """The completions are shown, or were closed a moment ago: a focus change now is
        theirs, not the user leaving the editor."""
        popup = self.completer.popup() if self.completer is not None else None
        if popup is None:
            return False
        return popup.isVisible() or time.monotonic() - self._popup_closed < 0.3

    def eventFilter(self, watched: QObject, event: QEvent) -> bool:  # noqa: N802
        if event.type() == QEvent.Type.Hide:
            self._popup_closed = time.monotonic()
            # Some platforms leave no window active when a popup closes: take it back.
            if self.isVisible() and not self.hasFocus():
                QTimer.singleShot(0, self, self._refocus)
        return False

    def _refocus(self) -> None:
        if self.isVisible():
            self.activateWindow()
            self.setFocus(Qt.FocusReason.PopupFocusReason)

    def insert_completion(self, tag: str) -> None:
        """Replace the tag under the cursor (as far as it is typed) with ``tag``."""
        if self.completer is None or self.completer.widget() is not self:
            return
        cursor = self.textCursor()
        start, end = tag_under_cursor(self.toPlainText(), cursor.position())
        cursor.setPosition(start)
        cursor.setPosition(end, cursor.MoveMode.KeepAnchor)
        at_end = end == len(self.toPlainText())
        cursor.insertText(tag + (", " if at_end else ""))
        self.setTextCursor(cursor)

    def keyPressEvent(self, event: QKeyEvent) -> None:  # noqa: N802
        popup = self.completer.popup() if self.completer is not None else None
        if (
            popup is not None
            and popup.isVisible()
            and event.key()
            in (
                Qt.Key.Key_Enter,
                Qt.Key.Key_Return,
                Qt.Key.Key_Escape,
                Qt.Key.Key_Tab,
                Qt.Key.Key_Backtab,
            )
        ):
            event.ignore()  # the completer takes these
            return
        super().keyPressEvent(event)
        if self.completer is not None and event.text() and event.text().isprintable():
            self._complete()

    def _complete(self) -> None:
        assert self.completer is not None
        text = self.toPlainText()
        start, end = tag_under_cursor(text, self.textCursor().position())
        prefix = text[start:end]
        popup = self.completer.popup()
        if len(prefix.strip()) < COMPLETE_AFTER:
            popup.hide()
            return
        self.completer.setCompletionPrefix(prefix)
        if self.completer.completionCount() == 0:
            popup.hide()
            return
        if (
            self.completer.completionCount() == 1
            and self.completer.currentCompletion().casefold() == prefix.casefold()
        ):
            popup.hide()  # typed in full already
            return
        popup.setCurrentIndex(self.completer.completionModel().index(0, 0))
        # Below the editor (the popup opens under this rectangle), at the cursor's x: the
        # text and the token count stay in view.
        left = min(self.cursorRect().left(), max(0, self.width() - 240))
        self.completer.complete(QRect(left, 0, max(240, self.width() // 2), self.height()))

    def _on_text_changed(self) -> None:
        self.timer.start()
        self._update_tokens()

    def _update_tokens(self) -> None:
        text = self.toPlainText()
        count = estimate_tokens(text)
        over = count > self.limit.limit
        self.tokens.setText(f"\u2248{count}/{self.limit.limit}")
        color = artwork.ERROR if over else artwork.MUTED
        self.tokens.setStyleSheet(
            f"color: {color.name()}; background: palette(base); padding: 0 4px;"
            + (" font-weight: bold;" if over else "")
        )
        tip = (
            f"About {count} {self.limit.encoder} tokens; the text encoder reads "
            f"{self.limit.limit} (an estimate: the exact count depends on the tokenizer)."
        )
        cut = cut_index(text, self.limit.limit)
        if cut is not None:
            lost = text[cut:].strip()
            lost = lost if len(lost) <= 200 else lost[:200] + "\u2026"
            tip += f"\nCut off: \u201c{lost}\u201d"
        self.tokens.setToolTip(tip)
        self._place_tokens()

    def _place_tokens(self) -> None:
        # A strip under the text, as wide as the editor, so the count never covers what
        # is typed (and nothing behind the editor shows through).
        height = self.tokens.sizeHint().height()
        if self.viewportMargins().bottom() != height:
            self.setViewportMargins(0, 0, 0, height)
        area = self.viewport().geometry()
        self.tokens.setGeometry(area.left(), area.bottom() + 1, area.width(), height)

    def resizeEvent(self, event: object) -> None:  # noqa: N802
        super().resizeEvent(event)  # type: ignore[arg-type]
        self._place_tokens()


#: ``(path, before, after, session)``: how the delegate hands a typed caption to the grid.
CommitFn = Callable[[Path, str, str, int], None]


class CaptionDelegate(QStyledItemDelegate):
    """Edits captions in a :class:`CaptionEditor` and draws the "(no caption)" placeholder;
    beside a proposal, the words it would drop are struck through in red. The token count
    is drawn in the cell's corner, in red when the caption will be cut.

    Signals:
        navigate(int): the editor asked for the previous (-1) / next (+1) image, or
            (:data:`NEXT_UNCAPTIONED`) the next one without a caption.
    """

    navigate = Signal(int)
    cancelled = Signal(int)  # an editor session ended with Esc
    typing = Signal()  # the open editor's text changed (not saved yet)
    NEXT_UNCAPTIONED = 2

    def __init__(self, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.commit: CommitFn | None = None
        self.before_edit: Callable[[], None] | None = None  # the completer's tags up to date
        self.completer: QCompleter | None = None
        self.limit = token_limit(None)
        self.editor: CaptionEditor | None = None  # the open one

    def paint(self, painter: QPainter, option: QStyleOptionViewItem, index: Index) -> None:
        self._paint_text(painter, option, index)
        text = str(index.data(Qt.ItemDataRole.DisplayRole) or "")
        if text.strip():
            self._paint_tokens(painter, option, text)

    def _paint_tokens(self, painter: QPainter, option: QStyleOptionViewItem, text: str) -> None:
        count = estimate_tokens(text)
        limit = self.limit.limit
        over = count > limit
        if not over and count < limit * 0.8:
            return  # only worth a look when near or over the limit
        small = QFont(option.font)
        small.setPointSizeF(option.font.pointSizeF() * 0.85)
        small.setBold(over)
        label = f"\u26a0 {count}/{limit} tokens" if over else f"{count}/{limit}"
        metrics = QFontMetrics(small)
        width = metrics.horizontalAdvance(label) + 6
        rect = QRect(
            option.rect.right() - width - 2,
            option.rect.bottom() - metrics.height() - 2,
            width,
            metrics.height(),
        )
        painter.save()
        painter.setFont(small)
        painter.fillRect(rect, option.palette.color(QPalette.ColorRole.Base))
        painter.setPen(artwork.ERROR if over else artwork.MUTED)
        painter.drawText(rect, int(Qt.AlignmentFlag.AlignCenter), label)
        painter.restore()

    def _paint_text(self, painter: QPainter, option: QStyleOptionViewItem, index: Index) -> None:
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
        if self.before_edit is not None:
            self.before_edit()
        editor = CaptionEditor(parent, self.limit)
        editor.installEventFilter(self)
        if self.completer is not None:
            editor.set_completer(self.completer)
        editor.autosave.connect(lambda: self.commitData.emit(editor))
        editor.textChanged.connect(self.typing)
        editor.destroyed.connect(lambda *_: self._forget(editor))
        self.editor = editor
        return editor

    def _forget(self, editor: object) -> None:
        if self.editor is editor:
            self.editor = None

    def destroyEditor(self, editor: QWidget, index: Index) -> None:  # noqa: N802
        if isinstance(editor, CaptionEditor):
            editor.timer.stop()
            if self.completer is not None and self.completer.widget() is editor:
                self.completer.popup().hide()
                self.completer.setWidget(None)
        if self.editor is editor:
            self.editor = None
        super().destroyEditor(editor, index)

    def setEditorData(self, editor: QWidget, index: Index) -> None:  # noqa: N802
        assert isinstance(editor, CaptionEditor)
        text = str(index.data(Qt.ItemDataRole.EditRole) or "")
        if editor.document().isModified() or editor.toPlainText() == text:
            return  # never replace what the user is typing (an autosave's echo)
        editor.setPlainText(text)
        editor.document().setModified(False)
        editor.timer.stop()
        editor.moveCursor(editor.textCursor().MoveOperation.End)

    def setModelData(  # noqa: N802
        self, editor: QWidget, model: QAbstractItemModel, index: Index
    ) -> None:
        assert isinstance(editor, CaptionEditor)
        editor.timer.stop()
        text = editor.toPlainText()
        path = index.data(Role.PATH)
        before = str(index.data(Qt.ItemDataRole.EditRole) or "")
        if self.commit is not None and isinstance(path, Path):
            if text != before:
                self.commit(path, before, text, editor.session)
            return
        model.setData(index, text, Qt.ItemDataRole.EditRole)

    def updateEditorGeometry(  # noqa: N802
        self, editor: QWidget, option: QStyleOptionViewItem, index: Index
    ) -> None:
        # Taller than the row when needed, so a long caption can be read while editing.
        rect = option.rect
        rect.setHeight(max(rect.height(), 96))
        editor.setGeometry(rect)

    def eventFilter(self, watched: QObject, event: QEvent) -> bool:  # noqa: N802
        if (
            isinstance(watched, CaptionEditor)
            and event.type() == QEvent.Type.FocusOut
            and watched.completing()
        ):
            return False  # the completions took the focus: keep editing
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
                watched.timer.stop()
                self.closeEditor.emit(watched, QAbstractItemDelegate.EndEditHint.RevertModelCache)
                self.cancelled.emit(watched.session)
                return True
            ctrl = event.modifiers() & Qt.KeyboardModifier.ControlModifier
            step = {Qt.Key.Key_Down: 1, Qt.Key.Key_Up: -1, Qt.Key.Key_U: self.NEXT_UNCAPTIONED}
            if ctrl and key in step:
                self.commitData.emit(watched)
                self.closeEditor.emit(watched, QAbstractItemDelegate.EndEditHint.NoHint)
                self.navigate.emit(step[key])
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
        reload_requested(dict[Path, str | None]): take these captions from disk (another
            program changed them).
        keep_requested(dict[Path, str]): save these captions over the files another
            program changed.
    """

    caption_images_requested = Signal()
    accept_requested = Signal(object, bool)
    reject_requested = Signal(object)
    notice = Signal(str, str)
    reload_requested = Signal(object)
    keep_requested = Signal(object)

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
        self.undo_stack = QUndoStack(self)
        self.tag_model = TagCountModel(self)
        self.trigger_word = ""
        self.zoom: ZoomDialog | None = None
        self.batch_dialog: BatchEditDialog | None = None
        self._build_actions()
        self.batch_button = QToolButton()
        self.batch_button.setText("Batch edit")
        self.batch_button.setToolTip(
            f"Change the selected captions (or all shown) at once, with a preview; "
            f"undo with {self.undo_action.shortcut().toString(QKeySequence.SequenceFormat.NativeText)}"
        )
        self.batch_button.setPopupMode(QToolButton.ToolButtonPopupMode.InstantPopup)
        self.batch_button.setMenu(self.batch_menu)
        self.tags_button = QToolButton()
        self.tags_button.setText("Tags")
        self.tags_button.setCheckable(True)
        self.tags_button.setToolTip("Show the list of tags with their counts")
        header = QHBoxLayout()
        header.addWidget(title)
        header.addStretch(1)
        header.addWidget(self.batch_button)
        header.addWidget(self.tags_button)
        header.addWidget(self.caption_button)
        header.addSpacing(8)
        header.addWidget(QLabel("Show"))
        header.addWidget(self.filter_box)
        self.review_bar = ReviewBar()
        self.disk_bar = QFrame()
        self.disk_bar.setObjectName("disk_bar")
        self.disk_bar.setFrameShape(QFrame.Shape.StyledPanel)
        self.disk_label = QLabel()
        self.disk_label.setWordWrap(True)
        self.reload_button = QPushButton("Reload")
        self.reload_button.setToolTip("Show the captions as the other program saved them")
        self.keep_button = QPushButton("Keep mine")
        self.keep_button.setToolTip("Save the captions shown here over the other program's")
        disk_row = QHBoxLayout(self.disk_bar)
        disk_row.setContentsMargins(6, 3, 6, 3)
        disk_row.addWidget(self.disk_label, 1)
        disk_row.addWidget(self.reload_button)
        disk_row.addWidget(self.keep_button)
        self.disk_bar.setVisible(False)
        self.reload_button.clicked.connect(self._reload_from_disk)
        self.keep_button.clicked.connect(self._keep_mine)

        self.table = QTableView()
        self.table.setModel(self.proxy)
        self.delegate = CaptionDelegate(self.table)
        self.delegate.commit = self._commit_typed
        self.delegate.before_edit = self.recount_if_needed
        self.delegate.navigate.connect(self._navigate_from_editor)
        self.delegate.cancelled.connect(self._editor_cancelled)
        self.delegate.typing.connect(self._update_state)
        self.completer = self._make_completer()
        self.delegate.completer = self.completer
        self.table.setItemDelegateForColumn(Column.CAPTION, self.delegate)
        self.table.addAction(self.zoom_action)
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
            "Double-click a caption to edit \u00b7 Enter saves \u00b7 Shift+Enter new line "
            "\u00b7 Esc cancels \u00b7 Ctrl+\u2193/\u2191 next/previous \u00b7 Ctrl+U next "
            "uncaptioned \u00b7 Space zooms"
        )
        hint.setStyleSheet(f"color: {artwork.MUTED.name()};")
        hint.setWordWrap(True)
        self.hint = hint

        self.tag_list = TagList(self.tag_model)
        self.tag_list.tag_chosen.connect(self._filter_by_tag)
        self.tag_list.setVisible(False)
        self.tags_button.toggled.connect(self.tag_list.setVisible)
        self.splitter = QSplitter(Qt.Orientation.Horizontal)
        self.splitter.addWidget(self.table)
        self.splitter.addWidget(self.tag_list)
        self.splitter.setStretchFactor(0, 4)
        self.splitter.setStretchFactor(1, 1)
        self.splitter.setChildrenCollapsible(False)
        self.splitter.setSizes([620, 230])

        layout = QVBoxLayout(self)
        layout.setContentsMargins(6, 6, 6, 6)
        layout.addLayout(header)
        layout.addWidget(self.review_bar)
        layout.addWidget(self.disk_bar)
        layout.addWidget(self.splitter, 1)
        layout.addWidget(self.state_label)
        layout.addWidget(hint)

        self._recount = QTimer(self)
        self._recount.setSingleShot(True)
        self._recount.setInterval(RECOUNT_MS)
        self._recount.timeout.connect(self.recount_tags)
        self._counter = TagCounter()
        model.dataChanged.connect(self._on_data_changed)
        model.modelReset.connect(self._tags_changed)
        self._tags_dirty = True
        self.tags_button.toggled.connect(lambda on: on and self.recount_if_needed())
        model.disk_changes_changed.connect(self._update_disk_bar)
        model.modelReset.connect(self._update_disk_bar)
        self.undo_stack.cleanChanged.connect(self._update_state)
        self.undo_stack.indexChanged.connect(self._update_state)

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
        if (
            event.type() == QEvent.Type.MouseButtonRelease
            and watched is self.table.viewport()
            and isinstance(event, QMouseEvent)
        ):
            self._clicked_thumbnail(event)
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
        disk = len(self.model.changed_on_disk())
        typing = self.delegate.editor is not None and self.delegate.editor.unsaved
        if disk:
            self.state_label.setText(
                f"\u26a0 {disk} caption file(s) changed by another program \u2014 nothing "
                f"was saved over them; reload them or keep yours (the bar above)."
            )
            self.state_label.setStyleSheet(f"color: {artwork.WARNING.name()}; font-weight: bold;")
        elif failed:
            self.state_label.setText(
                f"\u26a0 {failed} caption(s) not saved \u2014 your text is kept; hover the row "
                f"for the reason and edit it again to retry."
            )
            self.state_label.setStyleSheet(f"color: {artwork.ERROR.name()}; font-weight: bold;")
        elif typing or saving:
            what = f"Saving {saving} caption(s)\u2026" if saving else "Not saved yet\u2026"
            self.state_label.setText(what)
            self.state_label.setStyleSheet(f"color: {artwork.MUTED.name()};")
        elif saved:
            self.state_label.setText(f"All captions saved \u2713 ({saved} edited)")
            self.state_label.setStyleSheet(f"color: {artwork.SUCCESS.name()};")
        else:
            self.state_label.setText("")

    # ---- editing: commands, navigation, zoom ---------------------------------------------

    def _build_actions(self) -> None:
        """The grid's actions (the window's Edit menu shows them too); their shortcuts work
        while the focus is in the grid."""

        def action(text: str, keys: list[str], slot: Callable[[], object], tip: str) -> QAction:
            act = QAction(text, self)
            act.setShortcuts([QKeySequence(k) for k in keys])
            act.setShortcutContext(Qt.ShortcutContext.WidgetWithChildrenShortcut)
            shown = " / ".join(
                QKeySequence(k).toString(QKeySequence.SequenceFormat.NativeText) for k in keys
            )
            act.setToolTip(f"{tip} ({shown})" if shown else tip)
            act.setStatusTip(tip)
            act.triggered.connect(slot)
            self.addAction(act)
            return act

        self.undo_action = self.undo_stack.createUndoAction(self, "&Undo")
        self.undo_action.setShortcuts(QKeySequence.StandardKey.Undo)
        self.redo_action = self.undo_stack.createRedoAction(self, "&Redo")
        redo_keys = [QKeySequence("Ctrl+Shift+Z")]
        for key in QKeySequence.keyBindings(QKeySequence.StandardKey.Redo):
            if key not in redo_keys:  # a key twice is an ambiguous shortcut: none fires
                redo_keys.append(key)
        self.redo_action.setShortcuts(redo_keys)
        for act in (self.undo_action, self.redo_action):
            act.setShortcutContext(Qt.ShortcutContext.WidgetWithChildrenShortcut)
            self.addAction(act)
        self.next_action = action(
            "&Next image", ["Ctrl+Down"], lambda: self.step(1), "Go to the next image"
        )
        self.previous_action = action(
            "&Previous image", ["Ctrl+Up"], lambda: self.step(-1), "Go to the previous image"
        )
        self.next_uncaptioned_action = action(
            "Next &uncaptioned image",
            ["Ctrl+U"],
            self.next_uncaptioned,
            "Go to the next image without a caption and edit it",
        )
        self.zoom_action = action(
            "&Zoom image", ["Space"], self.zoom_current, "Show the image at full size"
        )
        # Space only where it means nothing else: in the table (a focused button of the
        # grid must still press with Space).
        self.removeAction(self.zoom_action)
        self.zoom_action.setShortcutContext(Qt.ShortcutContext.WidgetShortcut)
        self.batch_actions: dict[BatchKind, QAction] = {}
        keys = {BatchKind.ADD: ["Ctrl+E"], BatchKind.REPLACE: ["Ctrl+H"]}
        self.batch_menu = QMenu("&Batch edit", self)
        for kind, label in OPERATIONS.items():
            act = action(
                label + "\u2026",
                keys.get(kind, []),
                lambda k=kind: self.open_batch_dialog(k),
                f"{label} in the selected captions (or all shown), with a preview",
            )
            self.batch_actions[kind] = act
            self.batch_menu.addAction(act)

    def edit_actions(self) -> list[QAction | None]:
        """The Edit menu's entries (``None``: a separator)."""
        return [
            self.undo_action,
            self.redo_action,
            None,
            self.next_action,
            self.previous_action,
            self.next_uncaptioned_action,
            self.zoom_action,
        ]

    def _make_completer(self) -> QCompleter:
        completer = QCompleter(self.tag_model, self)
        popup = QTreeView()
        popup.setRootIsDecorated(False)
        popup.setHeaderHidden(True)
        popup.setUniformRowHeights(True)
        popup.setObjectName("tag_completions")
        completer.setPopup(popup)
        popup.header().setStretchLastSection(False)
        popup.header().setSectionResizeMode(0, QHeaderView.ResizeMode.Stretch)
        popup.header().setSectionResizeMode(1, QHeaderView.ResizeMode.ResizeToContents)
        completer.setCompletionColumn(0)
        completer.setCompletionRole(TAG_ROLE)
        completer.setCaseSensitivity(Qt.CaseSensitivity.CaseInsensitive)
        completer.setFilterMode(Qt.MatchFlag.MatchStartsWith)
        completer.setMaxVisibleItems(8)
        return completer

    def _on_data_changed(self, first: QModelIndex, last: QModelIndex, *_: object) -> None:
        # Thumbnails arriving (the image column) change no tag.
        if first.column() <= Column.CAPTION <= last.column():
            self._tags_changed()

    def _tags_changed(self, *_: object) -> None:
        # Counted when someone looks: the list is shown, an editor or a batch edit opens
        # (the first count of 10,000 captions takes a moment).
        self._tags_dirty = True
        if self.tag_list.isVisible():
            self._recount.start()

    def recount_if_needed(self) -> None:
        if self._tags_dirty:
            self.recount_tags()

    def recount_tags(self) -> None:
        """Count the tags of every caption shown now (the tag list, the completer)."""
        self._recount.stop()
        self._tags_dirty = False
        self.tag_model.set_counts(self._counter.count(self.model.captions().values()))

    def set_training(self, trigger_word: str, family: object) -> None:
        """The training config's trigger word (batch edits) and model family (the token
        limit of its text encoder)."""
        self.trigger_word = trigger_word
        limit = token_limit(str(family) if family else None)
        if limit != self.delegate.limit:
            self.delegate.limit = limit
            self.table.viewport().update()

    def _commit_typed(self, path: Path, before: str, after: str, session: int) -> None:
        name = path.name
        if self.model.caption_or_none(path) is None:
            change: tuple[str | None, str] = (None, after)  # undo: no caption file again
        else:
            change = (before, after)
        self.undo_stack.push(
            CaptionEdit(self.model, {path: change}, f"edit caption of {name}", session)
        )
        self._update_state()

    def _editor_cancelled(self, session: int) -> None:
        # Esc undoes what autosave already wrote of this editing session.
        index = self.undo_stack.index()
        top = self.undo_stack.command(index - 1) if index > 0 else None
        if isinstance(top, CaptionEdit) and top.session == session:
            self.undo_stack.undo()
        self._update_state()

    def apply_changes(self, changes: dict[Path, tuple[str, str]], label: str) -> None:
        """Change captions as one undo step (``{path: (before, after)}``)."""
        if changes:
            exact: dict[Path, tuple[str | None, str]] = {
                path: (None if self.model.caption_or_none(path) is None else before, after)
                for path, (before, after) in changes.items()
            }
            self.undo_stack.push(CaptionEdit(self.model, exact, label))

    def open_batch_dialog(self, kind: BatchKind = BatchKind.ADD) -> BatchEditDialog:
        """Open the batch edit dialog (not modal for tests: ``open()``), showing ``kind``."""
        editor = self.delegate.editor
        if editor is not None:  # its text first, or closing it later would undo the batch
            self.delegate.commitData.emit(editor)
            self.delegate.closeEditor.emit(editor, QAbstractItemDelegate.EndEditHint.NoHint)
        self.recount_if_needed()
        shown_rows = [
            self.proxy.mapToSource(self.proxy.index(r, 0)).row()
            for r in range(self.proxy.rowCount())
        ]
        captions = self.model.captions()
        shown = {self.model.item(r).path: captions[self.model.item(r).path] for r in shown_rows}
        selected = {p: captions[p] for p in self.selected_paths()}
        if self.batch_dialog is not None:
            self.batch_dialog.close()
        dialog = BatchEditDialog(
            selected, shown, self.tag_model.tags(), self.trigger_word, kind, self
        )
        dialog.accepted.connect(lambda: self._apply_batch(dialog))
        dialog.finished.connect(dialog.deleteLater)
        self.batch_dialog = dialog
        dialog.open()
        return dialog

    def _apply_batch(self, dialog: BatchEditDialog) -> None:
        dialog.update_preview()
        if dialog.changes:
            label = OPERATIONS[dialog.kind].lower()
            self.apply_changes(dialog.changes, batch_label(label, len(dialog.changes)))
            self.notice.emit(
                "info", f"{OPERATIONS[dialog.kind]}: {len(dialog.changes)} caption(s) changed."
            )
        if self.batch_dialog is dialog:
            self.batch_dialog = None

    def current_source_row(self) -> int:
        index = self.table.currentIndex()
        return self.proxy.mapToSource(index).row() if index.isValid() else -1

    def step(self, delta: int, edit: bool = False) -> None:
        """Go to the next (``delta`` 1) or previous (-1) shown image."""
        rows = self.proxy.rowCount()
        if not rows:
            return
        edit = edit or self.delegate.editor is not None  # keep editing, one row on
        current = self.table.currentIndex()
        row = current.row() + delta if current.isValid() else (0 if delta > 0 else rows - 1)
        row = max(0, min(rows - 1, row))
        self._go(self.proxy.index(row, Column.CAPTION), edit)
        if self.zoom is not None and self.zoom.isVisible():
            self.zoom_current()

    def next_uncaptioned(self) -> None:
        """Go to the next shown image without a caption (wrapping round) and edit it."""
        rows = self.proxy.rowCount()
        current = self.table.currentIndex()
        start = current.row() + 1 if current.isValid() else 0
        for offset in range(rows):
            index = self.proxy.index((start + offset) % rows, Column.CAPTION)
            if not index.data(Role.HAS_CAPTION):
                self._go(index, edit=True)
                return
        self.notice.emit("info", "Every image shown has a caption.")

    def _go(self, index: QModelIndex, edit: bool) -> None:
        self.table.scrollTo(index)
        self.table.selectionModel().setCurrentIndex(
            index,
            self.table.selectionModel().SelectionFlag.ClearAndSelect
            | self.table.selectionModel().SelectionFlag.Rows,
        )
        if edit:
            self.table.edit(index)

    def _navigate_from_editor(self, step: int) -> None:
        # After the editor has closed (its commit first), on the next turn of the loop.
        if step == CaptionDelegate.NEXT_UNCAPTIONED:
            QTimer.singleShot(0, self, self.next_uncaptioned)
        else:
            QTimer.singleShot(0, self, lambda: self.step(step, edit=True))

    def _clicked_thumbnail(self, event: QMouseEvent) -> bool:
        """A left click on a row's thumbnail (not its name) zooms the image."""
        if event.button() != Qt.MouseButton.LeftButton or event.modifiers():
            return False
        pos = event.position().toPoint()
        index = self.table.indexAt(pos)
        if not index.isValid() or index.column() != Column.IMAGE:
            return False
        if pos.x() - self.table.visualRect(index).left() > THUMB + 12:
            return False
        self.zoom_row(self.proxy.mapToSource(index).row())
        return True

    def zoom_current(self) -> None:
        row = self.current_source_row()
        if row >= 0:
            self.zoom_row(row)

    def zoom_row(self, source_row: int) -> ZoomDialog:
        """Show image ``source_row`` at full size in the zoom popup."""
        if self.zoom is None:
            self.zoom = ZoomDialog(self)
            self.zoom.step_requested.connect(self.step)
        self.zoom.show_image(self.model.item(source_row).path)
        self.zoom.show()
        self.zoom.raise_()
        return self.zoom

    # ---- tags filter, files changed on disk ---------------------------------------------

    def _filter_by_tag(self, tag: str) -> None:
        self.proxy.set_tag(tag)

    def _update_disk_bar(self, *_: object) -> None:
        changed = self.model.changed_on_disk()
        self.disk_bar.setVisible(bool(changed))
        if changed:
            names = ", ".join(p.name for p in list(changed)[:3])
            more = f" and {len(changed) - 3} more" if len(changed) > 3 else ""
            self.disk_label.setText(
                f"\u26a0 Another program changed the caption of {names}{more}. Nothing was "
                f"saved over it."
            )
        self._update_state()

    def _reload_from_disk(self) -> None:
        self.reload_requested.emit(self.model.changed_on_disk())

    def _keep_mine(self) -> None:
        changed = self.model.changed_on_disk()
        texts = {p: self.model.caption_text(p) for p in changed}
        self.model.forget_disk_changes(list(changed))
        self.keep_requested.emit(texts)
