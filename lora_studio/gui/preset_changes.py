"""What changed from the preset: each setting whose value differs, the preset's value
beside yours, and a reset per setting or for all of them.

::

    Changed from SDXL (3)
    Setting          Preset      Yours
    Rank             32       →  64       [Reset]
    Batch size       1        →  2        [Reset]
    Optimizer        AdamW    →  Prodigy  [Reset]
                                      [Reset all]  [Close]

The dialog edits nothing itself: a reset is :attr:`PresetChangesView.reset_requested`
with the fields and the preset's values, which the form applies like any other edit.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
from typing import Any

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import (
    QDialog,
    QDialogButtonBox,
    QGridLayout,
    QLabel,
    QPushButton,
    QScrollArea,
    QVBoxLayout,
    QWidget,
)

from lora_studio.core.config import LoraConfig, field_help, field_label
from lora_studio.gui import artwork
from lora_studio.gui.advanced_settings import NOT_EDITABLE, choice_label, format_number

#: Never "changed from the preset": they are the user's own (a preset leaves them).
PERSONAL = frozenset({"name", "trigger_word", "sample_prompts"})


def preset_changes(config: LoraConfig, base: LoraConfig) -> list[str]:
    """The settings of ``config`` that differ from ``base``, in the config's order."""
    return [
        f.name
        for f in dataclasses.fields(LoraConfig)
        if f.name not in NOT_EDITABLE
        and f.name not in PERSONAL
        and getattr(config, f.name) != getattr(base, f.name)
    ]


def show_value(value: Any) -> str:
    """A setting's value as it reads in the table."""
    if value is None or value == "":
        return "default"
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, enum.Enum):
        return choice_label(value)
    if isinstance(value, float):
        return format_number(value)
    text = str(value)
    return text if len(text) <= 28 else text[:26] + "\u2026"


class PresetChangesView(QDialog):
    """The "what changed from the preset" list (see the module docstring).

    Signals:
        reset_requested(dict): set these fields back to the preset's values.
    """

    reset_requested = Signal(object)

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setWindowTitle("Changed from the preset")
        self.setObjectName("presetChanges")
        self._base: LoraConfig | None = None
        self.changed: list[str] = []
        self.reset_buttons: dict[str, QPushButton] = {}
        self.title = QLabel()
        self.title.setWordWrap(True)
        self.table = QWidget()
        self.grid = QGridLayout(self.table)
        self.grid.setHorizontalSpacing(14)
        self.grid.setVerticalSpacing(4)
        scroll = QScrollArea()
        scroll.setWidget(self.table)
        scroll.setWidgetResizable(True)
        scroll.setFrameShape(QScrollArea.Shape.NoFrame)
        self.reset_all_button = QPushButton("Reset all")
        self.reset_all_button.setToolTip("Set every setting listed back to the preset's value")
        self.reset_all_button.clicked.connect(self._reset_all)
        buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Close)
        buttons.addButton(self.reset_all_button, QDialogButtonBox.ButtonRole.ResetRole)
        buttons.rejected.connect(self.reject)
        layout = QVBoxLayout(self)
        layout.addWidget(self.title)
        layout.addWidget(scroll, 1)
        layout.addWidget(buttons)
        self.resize(480, 320)

    def set_config(self, config: LoraConfig, base: LoraConfig, preset_label: str) -> None:
        """Show how ``config`` differs from ``base`` (the preset ``preset_label``)."""
        self._base = base
        self.changed = preset_changes(config, base)
        while self.grid.count():
            item = self.grid.takeAt(0)
            widget = item.widget() if item is not None else None
            if widget is not None:
                widget.deleteLater()
        self.reset_buttons = {}
        count = len(self.changed)
        self.title.setText(
            f"<b>{count} setting{'s' if count != 1 else ''} changed from {preset_label}</b>"
            if count
            else f"Every setting is as {preset_label} sets it."
        )
        self.reset_all_button.setEnabled(bool(count))
        if not count:
            return
        muted = artwork.muted_color(self.palette()).name()
        for column, text in enumerate(("Setting", "Preset", "", "Yours")):
            head = QLabel(text)
            head.setStyleSheet(f"color: {muted};")
            self.grid.addWidget(head, 0, column)
        for row, name in enumerate(self.changed, start=1):
            label = QLabel(field_label(name))
            label.setToolTip(field_help(name))
            before = QLabel(show_value(getattr(base, name)))
            before.setStyleSheet(f"color: {muted};")
            after = QLabel(f"<b>{show_value(getattr(config, name))}</b>")
            after.setTextFormat(Qt.TextFormat.RichText)
            reset = QPushButton("Reset")
            reset.setObjectName(f"reset_{name}")
            reset.setToolTip(f"Back to {show_value(getattr(base, name))}, the preset's value")
            reset.clicked.connect(functools.partial(self._reset, [name]))
            self.reset_buttons[name] = reset
            arrow = QLabel("\u2192")
            arrow.setStyleSheet(f"color: {muted};")
            for column, widget in enumerate((label, before, arrow, after, reset)):
                self.grid.addWidget(widget, row, column)
        self.grid.setColumnStretch(5, 1)
        self.grid.setRowStretch(len(self.changed) + 1, 1)

    def _reset(self, names: list[str]) -> None:
        if self._base is not None and names:
            self.reset_requested.emit({n: _plain(getattr(self._base, n)) for n in names})

    def _reset_all(self) -> None:
        self._reset(list(self.changed))


def _plain(value: Any) -> Any:
    return value.value if isinstance(value, enum.Enum) else value
