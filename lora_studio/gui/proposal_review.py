"""Reviewing automatic captions in the caption grid.

A proposal (an automatic caption waiting for review, see
:mod:`lora_studio.core.proposals`) is shown beside the image's caption as a word diff:
the caption column strikes through, in red, the words the proposal drops; the
"Proposed caption" column (:class:`ProposalDelegate`) shows the proposal with the words
it adds in green, which captioner made it, and the row's **Accept** and **Reject**
buttons. A proposal whose caption was edited after it was made is a conflict: its
button says **Overwrite**, which replaces the edit. :class:`ReviewBar` above the grid
counts the proposals and acts on the selection or on all of them.

Widgets only ask: the caption controller writes the files (through
:class:`~lora_studio.core.proposals.ProposalStore`, off the GUI thread).
"""

from __future__ import annotations

import html
from collections.abc import Sequence

from PySide6.QtCore import (
    QAbstractItemModel,
    QEvent,
    QModelIndex,
    QPersistentModelIndex,
    QPointF,
    QRect,
    QSize,
    Qt,
    Signal,
)
from PySide6.QtGui import (
    QColor,
    QFont,
    QFontMetrics,
    QMouseEvent,
    QPainter,
    QPalette,
    QResizeEvent,
    QTextDocument,
)
from PySide6.QtWidgets import (
    QApplication,
    QFrame,
    QGridLayout,
    QLabel,
    QPushButton,
    QStyle,
    QStyledItemDelegate,
    QStyleOptionButton,
    QStyleOptionViewItem,
    QWidget,
)

from lora_studio.core.proposals import DiffOp, ProposalState, ProposalView
from lora_studio.gui import artwork
from lora_studio.gui.dataset_model import Role

Index = QModelIndex | QPersistentModelIndex

DELETED = QColor("#c62828")
INSERTED = QColor("#1b5e20")
INSERTED_BACKGROUND = QColor("#dcf5dc")
#: What a row's buttons ask for.
ACCEPT, OVERWRITE, REJECT = "accept", "overwrite", "reject"
BUTTON_HEIGHT = 22
_PAD = 4


def diff_html(ops: Sequence[DiffOp], side: str) -> str:
    """One side of a word diff as HTML: ``old`` (the caption: removed words struck
    through in red) or ``new`` (the proposal: added words in green)."""
    parts: list[str] = []
    for op in ops:
        text = html.escape(op.text)
        if op.kind == "equal":
            parts.append(text)
        elif op.kind == "delete" and side == "old":
            parts.append(
                f'<span style="color:{DELETED.name()}; text-decoration:line-through;">{text}</span>'
            )
        elif op.kind == "insert" and side == "new":
            parts.append(
                f'<span style="color:{INSERTED.name()}; background-color:'
                f'{INSERTED_BACKGROUND.name()};">{text}</span>'
            )
    return "".join(parts)


def paint_html(painter: QPainter, rect: QRect, markup: str, font: QFont, color: QColor) -> None:
    """Draw ``markup`` wrapped into ``rect`` in ``font`` and ``color``: only whole lines,
    and an ellipsis after the last one shown when the text goes on (the tooltip has it)."""
    document = QTextDocument()
    document.setDefaultFont(font)
    document.setDocumentMargin(0)
    document.setTextWidth(max(10, rect.width()))
    document.setHtml(f'<span style="color:{color.name()};">{markup}</span>')
    document.size()  # lays the text out
    shown = 0.0
    cut = False
    block = document.firstBlock()
    while block.isValid() and not cut:
        layout = block.layout()
        top = layout.position().y()
        for number in range(layout.lineCount()):
            line = layout.lineAt(number)
            bottom = top + line.y() + line.height()
            if bottom > rect.height() + 0.5:
                cut = True
                break
            shown = bottom
        block = block.next()
    painter.save()
    painter.setClipRect(QRect(rect.left(), rect.top(), rect.width(), int(shown)))
    painter.translate(rect.topLeft())
    document.drawContents(painter)
    painter.restore()
    if cut and shown > 0:
        metrics = QFontMetrics(font)
        painter.save()
        painter.setFont(font)
        painter.setPen(color)
        painter.drawText(
            QRect(rect.left(), rect.top() + int(shown), rect.width(), metrics.height()),
            int(Qt.AlignmentFlag.AlignLeft | Qt.AlignmentFlag.AlignTop),
            "\u2026",
        )
        painter.restore()


def origin_text(view: ProposalView) -> str:
    """``openai · llava``: which captioner made the proposal."""
    return f"{view.proposal.provider} \u00b7 {view.proposal.model}"


class ProposalDelegate(QStyledItemDelegate):
    """Paints a proposal (added words in green), its origin and its row's buttons, and
    turns clicks on the buttons into :attr:`action_requested`.

    Signals:
        action_requested(path, action): ``accept``, ``overwrite`` or ``reject`` for
            the image ``path``.
    """

    action_requested = Signal(object, str)

    def button_rects(self, rect: QRect, view: ProposalView) -> dict[str, QRect]:
        """Where the buttons of a cell at ``rect`` are: bottom right, accept first."""
        metrics = QFontMetrics(QApplication.font())
        labels = self.button_labels(view)
        rects: dict[str, QRect] = {}
        right = rect.right() - _PAD
        top = rect.bottom() - _PAD - BUTTON_HEIGHT + 1
        for action in (REJECT, labels[0][0]):
            label = dict(labels)[action]
            width = metrics.horizontalAdvance(label) + 18
            rects[action] = QRect(right - width + 1, top, width, BUTTON_HEIGHT)
            right -= width + _PAD
        return {action: rects[action] for action, _ in labels}

    @staticmethod
    def button_labels(view: ProposalView) -> list[tuple[str, str]]:
        if view.state is ProposalState.CONFLICT:
            return [(OVERWRITE, "Overwrite"), (REJECT, "Reject")]
        return [(ACCEPT, "Accept"), (REJECT, "Reject")]

    def paint(self, painter: QPainter, option: QStyleOptionViewItem, index: Index) -> None:
        view = index.data(Role.PROPOSAL)
        if not isinstance(view, ProposalView):
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
        rect = opt.rect.adjusted(_PAD, _PAD, -_PAD, -_PAD)
        buttons = self.button_rects(opt.rect, view)
        text_rect = QRect(rect.left(), rect.top(), rect.width(), rect.height() - BUTTON_HEIGHT - 2)
        markup = diff_html(view.diff, "new") if view.state is not ProposalState.SAME else ""
        if view.state is ProposalState.SAME:
            markup = html.escape(view.proposal.text) + " <i>(the caption already says this)</i>"
        paint_html(painter, text_rect, markup, opt.font, color)
        # Which captioner made it, muted, left of the buttons.
        small = QFont(opt.font)
        small.setPointSizeF(opt.font.pointSizeF() * 0.85)
        left_of_buttons = min(r.left() for r in buttons.values()) - _PAD
        origin_rect = QRect(
            rect.left(),
            rect.bottom() - BUTTON_HEIGHT + 1,
            left_of_buttons - rect.left(),
            BUTTON_HEIGHT,
        )
        if origin_rect.width() >= 48:
            self._paint_origin(painter, origin_rect, view, small, color, selected)
        for action, text in self.button_labels(view):
            button = QStyleOptionButton()
            button.rect = buttons[action]
            button.text = text
            button.state = QStyle.StateFlag.State_Enabled | QStyle.StateFlag.State_Raised
            button.palette = opt.palette
            if action == OVERWRITE:
                button.palette.setColor(QPalette.ColorRole.ButtonText, artwork.WARNING)
            elif action == ACCEPT:
                button.palette.setColor(QPalette.ColorRole.ButtonText, INSERTED)
            else:
                button.palette = QApplication.palette()
            style.drawControl(QStyle.ControlElement.CE_PushButton, button, painter, widget)

    def _paint_origin(
        self,
        painter: QPainter,
        origin_rect: QRect,
        view: ProposalView,
        small: QFont,
        color: QColor,
        selected: bool,
    ) -> None:
        painter.save()
        painter.setFont(small)
        painter.setPen(color if selected else artwork.MUTED)
        label = origin_text(view)
        if view.state is ProposalState.CONFLICT:
            label = "\u26a0 caption edited since \u00b7 " + label
            if not selected:
                painter.setPen(artwork.WARNING)
        painter.drawText(
            origin_rect,
            int(Qt.AlignmentFlag.AlignLeft | Qt.AlignmentFlag.AlignVCenter),
            QFontMetrics(small).elidedText(label, Qt.TextElideMode.ElideRight, origin_rect.width()),
        )
        painter.restore()

    def sizeHint(self, option: QStyleOptionViewItem, index: Index) -> QSize:  # noqa: N802
        return QSize(200, 60)

    def editorEvent(  # noqa: N802
        self,
        event: QEvent,
        model: QAbstractItemModel,
        option: QStyleOptionViewItem,
        index: Index,
    ) -> bool:
        if event.type() not in (
            QEvent.Type.MouseButtonRelease,
            QEvent.Type.MouseButtonPress,
            QEvent.Type.MouseButtonDblClick,
        ):
            return super().editorEvent(event, model, option, index)
        view = index.data(Role.PROPOSAL)
        if not isinstance(view, ProposalView) or not isinstance(event, QMouseEvent):
            return super().editorEvent(event, model, option, index)
        if event.button() != Qt.MouseButton.LeftButton:
            return super().editorEvent(event, model, option, index)
        point = event.position().toPoint() if isinstance(event.position(), QPointF) else event.pos()
        for action, rect in self.button_rects(option.rect, view).items():
            if rect.contains(point):
                if event.type() == QEvent.Type.MouseButtonRelease:
                    self.action_requested.emit(index.data(Role.PATH), action)
                return True  # a click on a button does not change the selection
        return super().editorEvent(event, model, option, index)


class ReviewBar(QFrame):
    """Above the grid while proposals wait: how many, and buttons for the selection and
    for all of them.

    Signals:
        accept_selected(), reject_selected(), accept_all(), reject_all().
    """

    accept_selected = Signal()
    reject_selected = Signal()
    accept_all = Signal()
    reject_all = Signal()

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("reviewBar")
        self.setStyleSheet(
            "#reviewBar { background: #eef1fb; border: 1px solid #c5cae9; border-radius: 4px; }"
        )
        self.label = QLabel()
        self.accept_selected_button = QPushButton("Accept selected")
        self.reject_selected_button = QPushButton("Reject selected")
        self.accept_all_button = QPushButton("Accept all")
        self.reject_all_button = QPushButton("Reject all")
        self.accept_selected_button.setToolTip(
            "Write the proposed captions of the selected images (conflicts are left for "
            "you to overwrite one by one)"
        )
        self.reject_selected_button.setToolTip(
            "Drop the proposals of the selected images; their captions stay as they are"
        )
        self.accept_all_button.setToolTip(
            "Write every proposed caption whose caption was not edited since it was proposed"
        )
        self.reject_all_button.setToolTip("Drop every proposal; no caption changes")
        self.accept_selected_button.clicked.connect(self.accept_selected)
        self.reject_selected_button.clicked.connect(self.reject_selected)
        self.accept_all_button.clicked.connect(self.accept_all)
        self.reject_all_button.clicked.connect(self.reject_all)
        self.buttons = (
            self.accept_selected_button,
            self.reject_selected_button,
            self.accept_all_button,
            self.reject_all_button,
        )
        self._layout = QGridLayout(self)
        self._layout.setContentsMargins(8, 4, 4, 4)
        self._layout.setHorizontalSpacing(6)
        self._stacked: bool | None = None
        self._arrange(stacked=False)
        self.hide()

    def _arrange(self, stacked: bool) -> None:
        """One row; or, when the panel is too narrow for that, the count above the buttons."""
        if stacked == self._stacked:
            return
        self._stacked = stacked
        for widget in (self.label, *self.buttons):
            self._layout.removeWidget(widget)
        if stacked:
            self._layout.addWidget(self.label, 0, 0, 1, len(self.buttons) + 1)
            for column, button in enumerate(self.buttons):
                self._layout.addWidget(button, 1, column)
            self._layout.setColumnStretch(0, 0)
            self._layout.setColumnStretch(len(self.buttons), 1)
        else:
            self._layout.addWidget(self.label, 0, 0)
            for column, button in enumerate(self.buttons, start=1):
                self._layout.addWidget(button, 0, column)
            self._layout.setColumnStretch(len(self.buttons), 0)
            self._layout.setColumnStretch(0, 1)

    def _one_row_width(self) -> int:
        margins = self._layout.contentsMargins()
        spacing = self._layout.horizontalSpacing() * len(self.buttons)
        widths = sum(b.sizeHint().width() for b in self.buttons)
        return self.label.sizeHint().width() + widths + spacing + margins.left() + margins.right()

    def resizeEvent(self, event: QResizeEvent) -> None:  # noqa: N802
        self._arrange(stacked=self.width() < self._one_row_width())
        super().resizeEvent(event)

    def set_counts(self, pending: int, conflicts: int, selected: int) -> None:
        """``pending`` proposals (``conflicts`` of them), ``selected`` among the selection."""
        self.setVisible(pending > 0)
        text = f"<b>{pending}</b> proposed caption{'' if pending == 1 else 's'}"
        if conflicts:
            text += (
                f" \u00b7 <span style='color:{artwork.WARNING.name()}'>{conflicts} "
                f"conflict{'' if conflicts == 1 else 's'}</span>"
            )
        self.label.setText(text)
        self._arrange(stacked=self.width() < self._one_row_width())
        self.label.setToolTip(
            "Automatic captions wait here until you accept them; the caption files do not "
            "change before. A conflict is a caption you edited after it was proposed."
        )
        self.accept_selected_button.setEnabled(selected > 0)
        self.reject_selected_button.setEnabled(selected > 0)
