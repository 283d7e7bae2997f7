"""The preset form's advanced settings: every :class:`LoraConfig` field that is not on the
main grid, in collapsible sections, with widgets generated from the field metadata.

Which widget a field gets follows its type (``bool`` → check box, an enum → combo box,
``int``/``float`` → spin box with the field's ``min``/``max``, ``str`` → line edit, the
sample prompts → a multi-line box); labels and tooltips are ``field_label``/``field_help``,
the same text the CLI's ``--help`` prints. Sections follow ``metadata["group"]``; the few
``basic`` fields that are not on the main grid go where a user looks for them (the LR
schedule beside the optimizer), and a field added to the config later shows up in its
group's section without a change here.

Each section header says what differs from the preset (``Network — DoRA · Conv rank: 8``),
so the collapsed form still tells the whole story.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from PySide6.QtCore import Qt, Signal
from PySide6.QtGui import QFontMetrics, QMouseEvent
from PySide6.QtWidgets import (
    QAbstractSpinBox,
    QApplication,
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QGridLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPlainTextEdit,
    QSpinBox,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

from lora_studio.core.config import (
    FIELDS,
    PRESETS,
    LoraConfig,
    ModelFamily,
    enum_for_field,
    field_help,
    field_label,
    field_range,
)
from lora_studio.core.user_presets import USER_PREFIX, is_user_key
from lora_studio.gui import artwork
from lora_studio.gui.elided_label import ElidedLabel

SPIN_LIMIT = 2_000_000_000  # QSpinBox holds a C int
FIELD_WIDTH = 190  # numbers and choices; text boxes take the whole row

# Not settings a user edits: the file format and which preset the values came from.
NOT_EDITABLE = frozenset(name for name, f in FIELDS.items() if not f.metadata.get("flag", True))


@dataclass(frozen=True)
class Section:
    key: str
    title: str
    fields: tuple[str, ...]


# Section order and titles; a group not listed here gets a section of its own at the end.
_TITLES = {
    "network": "Network",
    "optimizer": "Optimizer and schedule",
    "data": "Data and buckets",
    "samples": "Samples",
    "checkpoints": "Checkpoints",
    "objective": "Noise and timesteps",
    "performance": "Memory and speed",
    "output": "Output",
    "basic": "Model and seed",
}
# Where the basic-group fields that are not on the main grid are looked for.
_HOME = {
    "text_encoder_lr": "optimizer",
    "lr_scheduler": "optimizer",
    "lr_warmup_steps": "optimizer",
}
# Fields in the order they read best; fields not named keep the config's order, after these.
_ORDER = (
    "optimizer",
    "lr_scheduler",
    "lr_warmup_steps",
    "lr_cycles",
    "lr_power",
    "text_encoder_lr",
    "weight_decay",
    "max_grad_norm",
    "use_dora",
    "conv_rank",
    "conv_alpha",
    "target_modules",
)


def advanced_sections(on_form: Iterable[str]) -> list[Section]:
    """The sections of every editable field not in ``on_form``, in display order."""
    shown = set(on_form) | NOT_EDITABLE
    groups: dict[str, list[str]] = {}
    for name, f in FIELDS.items():
        if name in shown:
            continue
        group = _HOME.get(name, str(f.metadata.get("group", "basic")))
        groups.setdefault(group, []).append(name)
    rank = {name: i for i, name in enumerate(_ORDER)}
    keys = [k for k in _TITLES if k in groups] + [k for k in groups if k not in _TITLES]
    return [
        Section(
            key,
            _TITLES.get(key, key.replace("_", " ").capitalize()),
            tuple(sorted(groups[key], key=lambda n: rank.get(n, len(rank)))),
        )
        for key in keys
    ]


# ---- how values read ----------------------------------------------------------------------

_CHOICE_LABELS = {
    "adamw": "AdamW",
    "adamw8bit": "AdamW 8-bit (CUDA)",
    "prodigy": "Prodigy",
    "adafactor": "Adafactor",
    "logit_normal": "logit-normal",
}
# What 0 means for the fields where it switches something off.
_ZERO_TEXT = {
    "conv_rank": "off",
    "lr_warmup_steps": "none",
    "keep_tokens": "none",
    "sample_every_n_steps": "only at the end",
    "save_every_n_steps": "off",
    "save_every_n_epochs": "off",
    "min_snr_gamma": "off",
    "noise_offset": "off",
    "max_grad_norm": "no clipping",
}
_STEPS = {"caption_dropout": 0.05, "max_grad_norm": 0.1, "guidance_scale": 0.5}
_PLACEHOLDERS = {
    "target_modules": "the family's default (attention projections)",
    "text_encoder_lr": "half the learning rate",
    "sample_prompts": "one prompt per line, e.g.\n[trigger], a fox in the snow",
}


def choice_label(value: enum.Enum) -> str:
    """How an enum value reads in a combo box."""
    if isinstance(value, ModelFamily):
        return value.label
    text = str(value.value)
    return _CHOICE_LABELS.get(text, text.replace("_", " "))


def format_number(value: float) -> str:
    """``0.05``, ``1``, ``2e-4``: short, exact enough to read back."""
    if value == 0:
        return "0"
    if 1e-3 <= abs(value) < 1e6:
        return f"{value:.6g}"
    mantissa, exponent = f"{value:.4e}".split("e")
    return f"{mantissa.rstrip('0').rstrip('.')}e{int(exponent)}"


def describe_value(name: str, value: Any) -> str:
    """A setting as one short phrase for a section summary: ``DoRA``, ``Conv rank: 8``."""
    label = field_label(name)
    if name == "sample_prompts":
        count = len([line for line in str(value).splitlines() if line.strip()])
        return f"{count} sample prompt{'s' if count != 1 else ''}"
    if isinstance(value, bool):
        return label if value else f"{label} off"
    if isinstance(value, enum.Enum):
        text = choice_label(value)
    elif value is None or value == "":
        text = "default"
    elif isinstance(value, float):
        text = _ZERO_TEXT.get(name, "0") if value == 0 else format_number(value)
    elif isinstance(value, int) and value == 0:
        text = _ZERO_TEXT.get(name, "0")
    else:
        text = str(value)
    if len(text) > 24:
        text = text[:22] + "\u2026"
    return f"{label}: {text}"


def preset_defaults(
    config: LoraConfig, user_presets: Mapping[str, LoraConfig] | None = None
) -> LoraConfig:
    """What ``config``'s preset sets: a built-in one, one of ``user_presets`` (name ->
    config, for ``user:<name>`` keys), or plain defaults when the preset is unknown."""
    preset = PRESETS.get(config.preset)
    if preset is not None:
        return preset.factory()
    if user_presets and is_user_key(config.preset):
        found = user_presets.get(config.preset.removeprefix(USER_PREFIX))
        if found is not None:
            return found
    return LoraConfig()


def changed_fields(
    config: LoraConfig, names: Iterable[str], base: LoraConfig | None = None
) -> list[str]:
    """The fields among ``names`` whose value differs from ``base`` (default: ``config``'s
    preset)."""
    defaults = base if base is not None else preset_defaults(config)
    return [n for n in names if getattr(config, n) != getattr(defaults, n)]


# A field is greyed out while it has no effect (its value is kept and saved all the same).
ENABLED_WHEN: dict[str, Callable[[LoraConfig], bool]] = {
    "text_encoder_lr": lambda c: c.train_text_encoder,
    "lr_warmup_steps": lambda c: c.lr_scheduler.value != "constant",
    "lr_cycles": lambda c: c.lr_scheduler.value == "cosine_with_restarts",
    "lr_power": lambda c: c.lr_scheduler.value == "polynomial",
    "conv_alpha": lambda c: c.conv_rank > 0,
    "min_bucket_side": lambda c: c.enable_bucket,
    "max_bucket_side": lambda c: c.enable_bucket,
    "keep_tokens": lambda c: c.shuffle_tags,
    "logit_mean": lambda c: c.timestep_sampling.value == "logit_normal",
    "logit_std": lambda c: c.timestep_sampling.value == "logit_normal",
    "sample_every_n_steps": lambda c: bool(c.sample_prompt_list),
    "sample_inference_steps": lambda c: bool(c.sample_prompt_list),
    "cuda_graphs": lambda c: c.graph_blocker is None,
}


# ---- widgets ------------------------------------------------------------------------------


class NumberSpin(QDoubleSpinBox):
    """A spin box for floats that shows ``0.05`` rather than ``0.050000`` and keeps the
    value it was given (no rounding to a fixed number of decimals)."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setDecimals(12)

    def textFromValue(self, value: float) -> str:  # noqa: N802 - Qt override
        return format_number(value)

    def valueFromText(self, text: str) -> float:  # noqa: N802 - Qt override
        cleaned = text.strip().removesuffix(self.suffix()).strip()
        try:
            return float(cleaned)
        except ValueError:
            return self.value()

    def validate(self, text: str, pos: int) -> object:  # Qt override
        from PySide6.QtGui import QValidator

        cleaned = text.strip().removesuffix(self.suffix().strip()).strip()
        if cleaned == self.specialValueText():
            return QValidator.State.Acceptable, text, pos
        if cleaned in ("", "-", ".", "-.") or cleaned.lower().endswith(("e", "e-", "e+")):
            return QValidator.State.Intermediate, text, pos
        try:
            number = float(cleaned)
        except ValueError:
            return QValidator.State.Invalid, text, pos
        if math.isfinite(number) and self.minimum() <= number <= self.maximum():
            return QValidator.State.Acceptable, text, pos
        return QValidator.State.Intermediate, text, pos


class FieldEditor:
    """One config field's input widget: read it, show a value without disturbing an equal
    one the user is typing, and report edits."""

    def __init__(self, name: str, widget: QWidget) -> None:
        self.name = name
        self.widget = widget

    def value(self) -> Any:
        raise NotImplementedError

    def show(self, value: Any) -> None:
        raise NotImplementedError


class _Check(FieldEditor):
    widget: QCheckBox

    def value(self) -> bool:
        return self.widget.isChecked()

    def show(self, value: Any) -> None:
        if self.widget.isChecked() != bool(value):
            self.widget.setChecked(bool(value))


class _Choice(FieldEditor):
    widget: QComboBox

    def value(self) -> Any:
        return self.widget.currentData()

    def show(self, value: Any) -> None:
        index = self.widget.findData(value.value if isinstance(value, enum.Enum) else value)
        if index >= 0 and index != self.widget.currentIndex():
            self.widget.setCurrentIndex(index)


class _Spin(FieldEditor):
    widget: QSpinBox | NumberSpin

    def value(self) -> Any:
        return self.widget.value()

    def show(self, value: Any) -> None:
        if self.widget.value() != value:
            self.widget.setValue(value)


class _Line(FieldEditor):
    """Free text, or a number whose range a spin box cannot hold (empty means "unset" for
    optional fields)."""

    widget: QLineEdit

    def __init__(self, name: str, widget: QLineEdit, numeric: bool) -> None:
        super().__init__(name, widget)
        self.numeric = numeric

    def value(self) -> Any:
        return self.widget.text().strip()

    def show(self, value: Any) -> None:
        if value is None:
            text = ""
        elif isinstance(value, float):
            text = format_number(value)
        else:
            text = str(value)
        current = self.widget.text().strip()
        if self.numeric:
            try:
                if value is not None and current and float(current) == float(value):
                    return
            except ValueError:
                pass
        if current != text.strip():
            self.widget.setText(text)


class _Prompts(FieldEditor):
    widget: QPlainTextEdit

    def value(self) -> str:
        return self.widget.toPlainText()

    def show(self, value: Any) -> None:
        if self.widget.toPlainText() != str(value):
            self.widget.setPlainText(str(value))


def _kind(name: str) -> tuple[str, bool]:
    """The field's base type name and whether it is optional."""
    f = FIELDS[name]
    kind = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))
    return kind.replace("| None", "").strip(), "None" in kind


def make_editor(name: str, on_edit: Callable[[], None]) -> FieldEditor:
    """The widget of config field ``name``, generated from its type and metadata."""
    kind, optional = _kind(name)
    meta = FIELDS[name].metadata
    lo, hi = field_range(name)
    editor: FieldEditor
    enum_type = enum_for_field(name)
    if kind == "bool":
        box = QCheckBox(field_label(name))
        box.toggled.connect(on_edit)
        editor = _Check(name, box)
    elif enum_type is not None:
        combo = QComboBox()
        for member in enum_type:
            combo.addItem(choice_label(member), member.value)
        combo.currentIndexChanged.connect(on_edit)
        editor = _Choice(name, combo)
    elif name == "sample_prompts":
        text = QPlainTextEdit()
        text.setTabChangesFocus(True)
        text.setPlaceholderText(_PLACEHOLDERS[name])
        text.setFixedHeight(QFontMetrics(text.font()).lineSpacing() * 4 + 14)
        text.textChanged.connect(on_edit)
        editor = _Prompts(name, text)
    elif kind == "int" and not optional and (hi is None or hi <= SPIN_LIMIT):
        spin = QSpinBox()
        spin.setRange(int(lo) if lo is not None else 0, int(hi) if hi is not None else SPIN_LIMIT)
        _spin_style(spin, name, meta.get("unit", ""))
        spin.valueChanged.connect(on_edit)
        editor = _Spin(name, spin)
    elif kind == "float" and not optional:
        number = NumberSpin()
        number.setRange(lo if lo is not None else -1e12, hi if hi is not None else 1e12)
        span = (hi if hi is not None else 100.0) - (lo if lo is not None else 0.0)
        number.setSingleStep(_STEPS.get(name, 0.01 if span <= 1 else 0.1 if span <= 20 else 1.0))
        _spin_style(number, name, meta.get("unit", ""))
        number.valueChanged.connect(on_edit)
        editor = _Spin(name, number)
    else:
        line = QLineEdit()
        line.setPlaceholderText(_PLACEHOLDERS.get(name, "default" if optional else ""))
        line.textEdited.connect(on_edit)
        editor = _Line(name, line, numeric=kind in ("int", "float"))
    editor.widget.setToolTip(field_help(name))
    editor.widget.setObjectName(f"field_{name}")
    return editor


def _spin_style(spin: QAbstractSpinBox, name: str, unit: str) -> None:
    spin.setAccelerated(True)
    spin.setKeyboardTracking(True)
    if unit:
        spin.setSuffix(f" {unit}")  # type: ignore[attr-defined]
    if name in _ZERO_TEXT:
        spin.setSpecialValueText(_ZERO_TEXT[name])


def is_wide(editor: FieldEditor) -> bool:
    """Text boxes take the whole row; numbers and choices keep a readable width."""
    return isinstance(editor, _Prompts) or (isinstance(editor, _Line) and not editor.numeric)


def field_error_label(name: str) -> QLabel:
    """The (hidden) label that shows why field ``name``'s value is refused."""
    label = QLabel()
    label.setObjectName(f"error_{name}")
    label.setWordWrap(True)
    label.setStyleSheet(f"color: {artwork.error_color(QApplication.palette()).name()};")
    label.hide()
    return label


# ---- collapsible sections ------------------------------------------------------------------


class Disclosure(QWidget):
    """A header (arrow, title, muted summary) that shows or hides a body when clicked.

    Signals:
        toggled(bool): the body was shown (``True``) or hidden.
        opened(): the user opened it (not emitted when opened from code).
    """

    toggled = Signal(bool)
    opened = Signal()

    def __init__(
        self, title: str, body: QWidget, *, bold: bool = True, parent: QWidget | None = None
    ) -> None:
        super().__init__(parent)
        self.body = body
        self.button = QToolButton()
        self.button.setText(title)
        self.button.setCheckable(True)
        self.button.setAutoRaise(True)
        self.button.setArrowType(Qt.ArrowType.RightArrow)
        self.button.setToolButtonStyle(Qt.ToolButtonStyle.ToolButtonTextBesideIcon)
        self.button.setStyleSheet(
            "QToolButton { border: none; padding: 1px 2px;"
            + (" font-weight: bold;" if bold else "")
            + " }"
        )
        self.button.toggled.connect(self._on_toggled)
        self.button.clicked.connect(self._on_clicked)
        self.summary = ElidedLabel()
        self.summary.setStyleSheet(f"color: {artwork.muted_color(self.palette()).name()};")
        head = QHBoxLayout()
        head.setContentsMargins(0, 0, 0, 0)
        head.setSpacing(6)
        head.addWidget(self.button)
        head.addWidget(self.summary, 1)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.setSpacing(4)
        layout.addLayout(head)
        layout.addWidget(body)
        body.hide()

    @property
    def expanded(self) -> bool:
        return self.button.isChecked()

    def set_expanded(self, expanded: bool) -> None:
        self.button.setChecked(expanded)

    def set_summary(self, text: str, tooltip: str = "") -> None:
        self.summary.setText(text)
        self.summary.setToolTip(tooltip or text)
        self.summary.update()

    def mousePressEvent(self, event: QMouseEvent) -> None:  # noqa: N802 - Qt override
        # The summary is part of the header: clicking it toggles too.
        if event.position().y() <= self.button.geometry().bottom():
            self.button.toggle()
            self._on_clicked()
            event.accept()
            return
        super().mousePressEvent(event)

    def _on_clicked(self) -> None:
        if self.expanded:
            self.opened.emit()

    def _on_toggled(self, expanded: bool) -> None:
        self.button.setArrowType(Qt.ArrowType.DownArrow if expanded else Qt.ArrowType.RightArrow)
        self.body.setVisible(expanded)
        self.toggled.emit(expanded)


class AdvancedSettings(QWidget):
    """The "Advanced settings" area: one :class:`Disclosure` per section.

    It holds the editors; :class:`~lora_studio.gui.preset_form.PresetForm` reads and shows
    values through :attr:`editors` and validates them with the rest of the form.
    """

    def __init__(
        self, on_form: Iterable[str], on_edit: Callable[[], None], parent: QWidget | None = None
    ) -> None:
        super().__init__(parent)
        self.sections = advanced_sections(on_form)
        self.editors: dict[str, FieldEditor] = {}
        self.labels: dict[str, QLabel] = {}
        self.section_of: dict[str, str] = {}
        #: beside each field (below a full-width one): why its value is refused
        self.error_labels: dict[str, QLabel] = {}
        self.disclosures: dict[str, Disclosure] = {}
        grids: list[QGridLayout] = []

        inner = QWidget()
        inner_layout = QVBoxLayout(inner)
        inner_layout.setContentsMargins(14, 2, 0, 4)
        inner_layout.setSpacing(2)
        for section in self.sections:
            body = QWidget()
            grid = QGridLayout(body)
            grid.setContentsMargins(18, 2, 0, 8)
            grid.setHorizontalSpacing(8)
            grid.setVerticalSpacing(6)
            row = -1
            for name in section.fields:
                row += 1
                editor = make_editor(name, on_edit)
                self.editors[name] = editor
                self.section_of[name] = section.key
                if isinstance(editor, _Check):
                    # As wide as its text: a click beside it does not toggle it anyway.
                    grid.addWidget(editor.widget, row, 1, 1, 2, Qt.AlignmentFlag.AlignLeft)
                    continue
                label = QLabel(field_label(name))
                label.setToolTip(field_help(name))
                label.setBuddy(editor.widget)
                self.labels[name] = label
                grid.addWidget(label, row, 0)
                error = field_error_label(name)
                self.error_labels[name] = error
                if is_wide(editor):
                    grid.addWidget(editor.widget, row, 1, 1, 2)
                    row += 1
                    grid.addWidget(error, row, 1, 1, 2)
                else:
                    editor.widget.setMaximumWidth(FIELD_WIDTH)
                    grid.addWidget(editor.widget, row, 1)
                    grid.addWidget(error, row, 2)
            grid.setColumnStretch(1, 1)
            grid.setColumnStretch(2, 1)
            grids.append(grid)
            disclosure = Disclosure(section.title, body, bold=False)
            disclosure.setObjectName(f"section_{section.key}")
            self.disclosures[section.key] = disclosure
            inner_layout.addWidget(disclosure)
        # One label column for every section, so the fields line up down the form.
        widest = max((label.sizeHint().width() for label in self.labels.values()), default=0)
        for grid in grids:
            grid.setColumnMinimumWidth(0, widest)

        self.outer = Disclosure("Advanced settings", inner)
        self.outer.setObjectName("advancedSettings")
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.outer)

    # ---- state -------------------------------------------------------------------------

    @property
    def expanded(self) -> bool:
        return self.outer.expanded

    def set_expanded(self, expanded: bool) -> None:
        self.outer.set_expanded(expanded)

    def expanded_sections(self) -> list[str]:
        """Keys of the open sections (plus ``"advanced"`` when the area itself is open)."""
        keys = [key for key, d in self.disclosures.items() if d.expanded]
        return (["advanced"] if self.outer.expanded else []) + keys

    def set_expanded_sections(self, keys: Iterable[str]) -> None:
        wanted = set(keys)
        self.outer.set_expanded("advanced" in wanted)
        for key, disclosure in self.disclosures.items():
            disclosure.set_expanded(key in wanted)

    def reveal(self, name: str) -> None:
        """Open the area and the section that hold field ``name``."""
        self.outer.set_expanded(True)
        self.disclosures[self.section_of[name]].set_expanded(True)

    # ---- values ------------------------------------------------------------------------

    def values(self) -> dict[str, Any]:
        return {name: editor.value() for name, editor in self.editors.items()}

    def show_config(self, config: LoraConfig, base: LoraConfig | None = None) -> None:
        """Show ``config``'s values, which fields apply, and what differs from its preset
        (``base``: the preset's values, when it is not a built-in one)."""
        for name, editor in self.editors.items():
            editor.show(getattr(config, name))
        self.update_applicable(config)
        total: list[str] = []
        for section in self.sections:
            changed = changed_fields(config, section.fields, base)
            total += changed
            phrases = [describe_value(n, getattr(config, n)) for n in changed]
            self.disclosures[section.key].set_summary(
                " \u00b7 ".join(phrases), "\n".join(phrases) or "As the preset sets them"
            )
        if total:
            phrases = [describe_value(n, getattr(config, n)) for n in total]
            text = f"{len(total)} changed: " + " \u00b7 ".join(phrases)
            self.outer.set_summary(text, "Changed from the preset:\n" + "\n".join(phrases))
        else:
            self.outer.set_summary("as the preset sets them")

    def update_applicable(self, config: LoraConfig) -> None:
        """Grey out the fields that have no effect with ``config``."""
        for name, applies in ENABLED_WHEN.items():
            editor = self.editors.get(name)
            if editor is None:
                continue
            enabled = applies(config)
            editor.widget.setEnabled(enabled)
            label = self.labels.get(name)
            if label is not None:
                label.setEnabled(enabled)
