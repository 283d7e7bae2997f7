"""The caption grid's batch edit dialog: one operation over the selected (or all shown)
captions, with a preview of every change before it is applied.

Operations (:class:`~lora_studio.core.tags.BatchEdit`): add a tag (first, last, or at a
position), remove a tag, find and replace (plain text or a regular expression, with or
without case), put the trigger word first, sort tags, remove duplicate tags. The preview
lists each caption that changes as a word diff (removed words struck through in red, added
ones in green); for find and replace it also counts the matches. A pattern that is not a
valid regular expression says why under the field and disables **Apply**. The dialog only
plans: the grid applies :attr:`BatchEditDialog.changes` as one undo step.
"""

from __future__ import annotations

import html
from pathlib import Path

from PySide6.QtCore import QStringListModel, Qt, QTimer
from PySide6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QCompleter,
    QDialog,
    QDialogButtonBox,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QRadioButton,
    QSpinBox,
    QStackedWidget,
    QTextBrowser,
    QVBoxLayout,
    QWidget,
)

from lora_studio.core.proposals import word_diff
from lora_studio.core.tags import BatchEdit, BatchKind, TagPatternError, find_matches
from lora_studio.gui import artwork
from lora_studio.gui.proposal_review import diff_html

OPERATIONS: dict[BatchKind, str] = {
    BatchKind.ADD: "Add a tag",
    BatchKind.REMOVE: "Remove a tag",
    BatchKind.REPLACE: "Find and replace",
    BatchKind.TRIGGER_FIRST: "Put the trigger word first",
    BatchKind.SORT: "Sort tags",
    BatchKind.DEDUPE: "Remove duplicate tags",
}
POSITIONS = ("At the end", "At the start", "At position")
PREVIEW_LIMIT = 200  # captions drawn in the preview (all of them are counted and applied)
MATCH_BACKGROUND = "#fff0a8"


class BatchEditDialog(QDialog):
    """Plan a batch edit of captions (see the module docstring).

    Args:
        selected: the selected images' captions (path -> text), in row order.
        shown: every shown image's caption (the grid's filter applied).
        tags: the dataset's tags, most frequent first (for completion).
        trigger: the training config's trigger word.
        kind: the operation to show first.
    """

    def __init__(
        self,
        selected: dict[Path, str],
        shown: dict[Path, str],
        tags: list[str],
        trigger: str = "",
        kind: BatchKind = BatchKind.ADD,
        parent: QWidget | None = None,
    ) -> None:
        super().__init__(parent)
        self.setWindowTitle("Batch edit captions")
        self.setObjectName("batch_edit_dialog")
        self._selected = selected
        self._shown = shown
        self.changes: dict[Path, tuple[str, str]] = {}
        self.edit: BatchEdit | None = None

        self.operation = QComboBox()
        for op, label in OPERATIONS.items():
            self.operation.addItem(label, op)
        self.selected_radio = QRadioButton(f"Selected images ({len(selected)})")
        self.shown_radio = QRadioButton(f"All shown images ({len(shown)})")
        (self.selected_radio if selected else self.shown_radio).setChecked(True)
        self.selected_radio.setEnabled(bool(selected))
        scope = QHBoxLayout()
        scope.addWidget(self.selected_radio)
        scope.addWidget(self.shown_radio)
        scope.addStretch(1)

        completer = QCompleter(QStringListModel(tags, self), self)
        completer.setCaseSensitivity(Qt.CaseSensitivity.CaseInsensitive)
        completer.setFilterMode(Qt.MatchFlag.MatchContains)

        # Add / remove: the tag; add: where.
        self.tag_edit = QLineEdit()
        self.tag_edit.setPlaceholderText("e.g. red hair")
        self.tag_edit.setCompleter(completer)
        self.position_box = QComboBox()
        self.position_box.addItems(list(POSITIONS))
        self.position_spin = QSpinBox()
        self.position_spin.setRange(1, 999)
        self.position_spin.setValue(2)
        self.position_spin.setToolTip("Before the N-th tag (1: first); past the last tag: last")
        self.position_spin.setEnabled(False)
        where = QHBoxLayout()
        where.addWidget(self.position_box)
        where.addWidget(self.position_spin)
        where.addStretch(1)
        tag_page = QWidget()
        tag_form = QFormLayout(tag_page)
        tag_form.setContentsMargins(0, 0, 0, 0)
        tag_form.addRow("Tag", self.tag_edit)
        self.where_label = QLabel("Where")
        tag_form.addRow(self.where_label, where)

        # Find and replace.
        self.find_edit = QLineEdit()
        self.find_edit.setPlaceholderText(r"text, or a regular expression such as (\w+) hair")
        self.replace_edit = QLineEdit()
        self.replace_edit.setPlaceholderText(r"replacement (\1 for a group with regex)")
        self.regex_box = QCheckBox("Regular expression")
        self.case_box = QCheckBox("Match case")
        flags = QHBoxLayout()
        flags.addWidget(self.regex_box)
        flags.addWidget(self.case_box)
        flags.addStretch(1)
        replace_page = QWidget()
        replace_form = QFormLayout(replace_page)
        replace_form.setContentsMargins(0, 0, 0, 0)
        replace_form.addRow("Find", self.find_edit)
        replace_form.addRow("Replace with", self.replace_edit)
        replace_form.addRow("", flags)

        # Trigger word first; sort (keeps the trigger word first).
        self.trigger_edit = QLineEdit(trigger)
        self.trigger_edit.setPlaceholderText("the trigger word")
        trigger_page = QWidget()
        trigger_form = QFormLayout(trigger_page)
        trigger_form.setContentsMargins(0, 0, 0, 0)
        trigger_form.addRow("Trigger word", self.trigger_edit)
        self.keep_trigger_box = QCheckBox(
            f"Keep the trigger word \u201c{trigger}\u201d first" if trigger else "Keep first"
        )
        self.keep_trigger_box.setChecked(bool(trigger))
        self.keep_trigger_box.setEnabled(bool(trigger))
        self._trigger = trigger
        sort_page = QWidget()
        sort_layout = QVBoxLayout(sort_page)
        sort_layout.setContentsMargins(0, 0, 0, 0)
        sort_layout.addWidget(self.keep_trigger_box)
        dedupe_page = QLabel(
            "Each tag once (compared without case); the first one stays where it is."
        )
        dedupe_page.setWordWrap(True)

        self.pages = QStackedWidget()
        self._page_of = {
            BatchKind.ADD: self.pages.addWidget(tag_page),
            BatchKind.REMOVE: self.pages.indexOf(tag_page),
            BatchKind.REPLACE: self.pages.addWidget(replace_page),
            BatchKind.TRIGGER_FIRST: self.pages.addWidget(trigger_page),
            BatchKind.SORT: self.pages.addWidget(sort_page),
            BatchKind.DEDUPE: self.pages.addWidget(dedupe_page),
        }

        self.error_label = QLabel()
        self.error_label.setObjectName("batch_error")
        self.error_label.setWordWrap(True)
        self.error_label.setStyleSheet(f"color: {artwork.ERROR.name()};")
        self.summary = QLabel()
        self.summary.setObjectName("batch_summary")
        self.preview = QTextBrowser()
        self.preview.setObjectName("batch_preview")
        self.preview.setOpenLinks(False)
        self.preview.setMinimumHeight(180)

        self.buttons = QDialogButtonBox(
            QDialogButtonBox.StandardButton.Ok | QDialogButtonBox.StandardButton.Cancel
        )
        self.apply_button = self.buttons.button(QDialogButtonBox.StandardButton.Ok)
        self.apply_button.setText("Apply")
        self.buttons.accepted.connect(self.accept)
        self.buttons.rejected.connect(self.reject)

        form = QFormLayout()
        form.addRow("Operation", self.operation)
        form.addRow("Captions", scope)
        layout = QVBoxLayout(self)
        layout.addLayout(form)
        layout.addWidget(self.pages)
        layout.addWidget(self.error_label)
        layout.addWidget(self.summary)
        layout.addWidget(self.preview, 1)
        layout.addWidget(self.buttons)
        self.resize(640, 520)

        # The preview follows typing, a moment after the last key.
        self._timer = QTimer(self)
        self._timer.setSingleShot(True)
        self._timer.setInterval(150)
        self._timer.timeout.connect(self.update_preview)
        for edit in (self.tag_edit, self.find_edit, self.replace_edit, self.trigger_edit):
            edit.textChanged.connect(self._timer.start)
        for box in (self.regex_box, self.case_box, self.keep_trigger_box):
            box.toggled.connect(self.update_preview)
        self.selected_radio.toggled.connect(self.update_preview)
        self.position_box.currentIndexChanged.connect(self._on_position)
        self.position_spin.valueChanged.connect(self.update_preview)
        self.operation.currentIndexChanged.connect(self._on_operation)
        self.set_operation(kind)
        self._on_operation()

    # ---- the plan -----------------------------------------------------------------------

    def set_operation(self, kind: BatchKind) -> None:
        self.operation.setCurrentIndex(self.operation.findData(kind))

    @property
    def kind(self) -> BatchKind:
        return BatchKind(self.operation.currentData())

    def current_edit(self) -> BatchEdit:
        """The operation as the fields say now."""
        kind = self.kind
        position: int | None = None
        if self.position_box.currentIndex() == 1:
            position = 0
        elif self.position_box.currentIndex() == 2:
            position = self.position_spin.value() - 1
        tag = self.tag_edit.text()
        if kind is BatchKind.TRIGGER_FIRST:
            tag = self.trigger_edit.text()
        elif kind is BatchKind.SORT:
            tag = self._trigger if self.keep_trigger_box.isChecked() else ""
        return BatchEdit(
            kind,
            tag=tag,
            position=position,
            find=self.find_edit.text(),
            replace=self.replace_edit.text(),
            regex=self.regex_box.isChecked(),
            case_sensitive=self.case_box.isChecked(),
        )

    def captions(self) -> dict[Path, str]:
        """The captions the edit runs over (the selection or every shown image)."""
        return self._selected if self.selected_radio.isChecked() else self._shown

    def update_preview(self) -> None:
        """Plan the edit and show what it changes (or why it cannot run)."""
        self._timer.stop()
        edit = self.current_edit()
        captions = self.captions()
        try:
            self.changes = edit.plan(captions)
        except TagPatternError as exc:
            self.changes = {}
            self.edit = None
            self.error_label.setText(str(exc))
            self.error_label.setVisible(True)
            self.summary.setText("")
            self.preview.setHtml("")
            self.apply_button.setEnabled(False)
            return
        self.edit = edit
        self.error_label.setVisible(False)
        matches = 0
        pattern = edit.pattern() if edit.kind is BatchKind.REPLACE else None
        if pattern is not None:
            matches = sum(len(find_matches(text, pattern)) for text in captions.values())
        count = len(self.changes)
        what = f"{count} of {len(captions)} caption{'s' if len(captions) != 1 else ''} change"
        if pattern is not None:
            what += f" ({matches} match{'es' if matches != 1 else ''})"
        self.summary.setText(what + ("." if count else " \u2014 nothing to apply."))
        self.preview.setHtml(self._preview_html(pattern))
        self.apply_button.setEnabled(bool(count))

    def _preview_html(self, pattern: object | None) -> str:
        rows = []
        muted = artwork.MUTED.name()
        for path, (before, after) in list(self.changes.items())[:PREVIEW_LIMIT]:
            ops = word_diff(before, after)
            old = _highlight(before, pattern) if pattern is not None else diff_html(ops, "old")
            rows.append(
                f'<tr><td style="color:{muted}; padding-right:8px;">{html.escape(path.name)}</td>'
                f"<td>{old or '<i>(empty)</i>'}<br>\u2192 {diff_html(ops, 'new')}</td></tr>"
            )
        more = len(self.changes) - PREVIEW_LIMIT
        tail = f'<p style="color:{muted};">\u2026 and {more} more</p>' if more > 0 else ""
        return f'<table cellspacing="0" cellpadding="3">{"".join(rows)}</table>{tail}'

    def _on_position(self) -> None:
        self.position_spin.setEnabled(self.position_box.currentIndex() == 2)
        self.update_preview()

    def _on_operation(self) -> None:
        kind = self.kind
        self.pages.setCurrentIndex(self._page_of[kind])
        adding = kind is BatchKind.ADD
        self.where_label.setVisible(adding)
        self.position_box.setVisible(adding)
        self.position_spin.setVisible(adding)
        self.update_preview()


def _highlight(text: str, pattern: object) -> str:
    """``text`` as HTML with each match of ``pattern`` on a yellow background."""
    import re

    assert isinstance(pattern, re.Pattern)
    parts, last = [], 0
    for match in find_matches(text, pattern):
        parts.append(html.escape(text[last : match.start]))
        parts.append(
            f'<span style="background-color:{MATCH_BACKGROUND}; color:#000000;">{html.escape(match.text)}</span>'
        )
        last = match.end
    parts.append(html.escape(text[last:]))
    return "".join(parts)
