"""The preset form: base model, output, preset and every training setting, plus the
live estimate and the Train button.

Labels, tooltips and ranges come from :class:`~lora_studio.core.config.LoraConfig`'s field
metadata (``field_label``/``field_help``/``field_range``), the same source the CLI's
``--help`` uses. The everyday settings are on one grid; every other field is under
"Advanced settings" (:mod:`lora_studio.gui.advanced_settings`), collapsed by default, in
sections whose headers say what differs from the preset. The form validates by building
the config the way the CLI does
(:meth:`LoraConfig.replace`, i.e. ``coerce_config``): a value it rejects is outlined in red,
explained under the form, and Train stays disabled until it is fixed. Valid edits go to
the controller at once, which answers with a new estimate.
"""

from __future__ import annotations

import functools
from typing import Any

from PySide6.QtCore import QPoint, Qt, QTimer, Signal
from PySide6.QtWidgets import (
    QAbstractSpinBox,
    QApplication,
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFileDialog,
    QFrame,
    QGridLayout,
    QHBoxLayout,
    QInputDialog,
    QLabel,
    QLineEdit,
    QMessageBox,
    QPushButton,
    QScrollArea,
    QSizePolicy,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from lora_studio.core.config import (
    PRESETS,
    LoraConfig,
    MixedPrecision,
    field_help,
    field_label,
    field_range,
)
from lora_studio.core.errors import ConfigError
from lora_studio.core.estimates import Estimate
from lora_studio.core.user_presets import USER_PREFIX, is_user_key, user_key
from lora_studio.gui import artwork
from lora_studio.gui.advanced_settings import (
    AdvancedSettings,
    changed_fields,
    field_error_label,
    preset_defaults,
)
from lora_studio.gui.estimate_panel import (  # noqa: F401 - the form's helpers live there
    EstimatePanel,
    GpuInfo,
    cache_note,
    cost_text,
    steps_formula,
)
from lora_studio.gui.preset_changes import PresetChangesView, preset_changes


def _invalid_style(widget: QWidget) -> str:
    return f"border: 1px solid {artwork.error_color(widget.palette()).name()}; border-radius: 2px;"


_PRECISION_LABELS = {
    MixedPrecision.NO: "no (fp32)",
    MixedPrecision.FP16: "fp16",
    MixedPrecision.BF16: "bf16",
}
_SPIN_LIMIT = 2_000_000_000  # QSpinBox holds a C int


def format_learning_rate(value: float) -> str:
    """``2e-4`` rather than ``0.0002``: how learning rates are usually written."""
    if value == 0 or 1e-2 <= abs(value) < 1e4:
        return f"{value:g}"
    mantissa, exponent = f"{value:e}".split("e")
    mantissa = mantissa.rstrip("0").rstrip(".")
    return f"{mantissa}e{int(exponent)}"


# The fields a preset decides; name and trigger word are the user's own.
_PRESET_FIELDS = (
    "rank",
    "alpha",
    "resolution",
    "epochs",
    "max_steps",
    "repeats",
    "learning_rate",
    "batch_size",
    "gradient_accumulation_steps",
    "mixed_precision",
    "train_text_encoder",
)


#: The fields on the main grid (everything else is under "Advanced settings").
MAIN_FIELDS = ("name", "trigger_word", *_PRESET_FIELDS)


def preset_description(config: LoraConfig, base: LoraConfig | None = None) -> str:
    """The preset's description, plus which of its values were changed here (``base``: a
    user preset's values)."""
    preset = PRESETS.get(config.preset)
    if preset is not None:
        description = preset.description
    elif base is not None and is_user_key(config.preset):
        description = "Your preset."
    else:
        return ""
    changed = [field_label(name).lower() for name in changed_fields(config, _PRESET_FIELDS, base)]
    if not changed:
        return description
    return f"{description} Changed here: {', '.join(changed)}."


def device_choices(cuda_count: int | None, cpu_processes: int = 1) -> list[tuple[str, int]]:
    """The GPUs box's entries: (label, processes).

    ``cuda_count`` ``None`` means not detected yet; 0 means no CUDA GPU, where training runs
    on the CPU in-process, and ``cpu_processes`` > 1 (an explicit opt-in) also offers
    several CPU processes under ``accelerate launch``.
    """
    if cuda_count is None:
        return [("1", 1)]
    if cuda_count == 0:
        return [("CPU", 1)] + [(f"{n} CPU processes", n) for n in range(2, cpu_processes + 1)]
    return [(f"{n} GPU{'s' if n > 1 else ''}", n) for n in range(1, cuda_count + 1)]


def _int_range(name: str, low_default: int = 0) -> tuple[int, int]:
    lo, hi = field_range(name)
    low = int(lo) if lo is not None else low_default
    high = int(min(hi, _SPIN_LIMIT)) if hi is not None else _SPIN_LIMIT
    return low, high


class PresetForm(QWidget):
    """Training settings, estimate and the Train button.

    Signals:
        config_edited(LoraConfig): the user changed a setting to a valid config.
        preset_selected(str): the user picked a preset (its key).
        base_model_edited(str): the user chose another base model.
        output_dir_edited(str): the user chose another output folder.
        train_requested(): Train was pressed.
        save_config_requested(), load_config_requested(): the Save/Load buttons.
        processes_edited(int): the user chose how many GPUs (processes) to train on.
    """

    config_edited = Signal(object)
    preset_selected = Signal(str)
    base_model_edited = Signal(str)
    output_dir_edited = Signal(str)
    train_requested = Signal()
    save_config_requested = Signal()
    load_config_requested = Signal()
    processes_edited = Signal(int)
    save_preset_requested = Signal(str)
    delete_preset_requested = Signal(str)

    def __init__(self, config: LoraConfig, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self._config = config
        self._loading = False
        self._errors: dict[str, str] = {}
        self._valid = True
        self._training = False
        self._images = 0
        self._base_model_error = ""
        self._estimate: Estimate | None = None
        self._fields: dict[str, QWidget] = {}
        self._labels: dict[str, QLabel] = {}
        self._error_labels: dict[str, QLabel] = {}

        # ---- base model and output ----
        self.base_model_edit = QLineEdit()
        self.base_model_edit.setPlaceholderText(
            "builtin:tiny-sd15, a diffusers folder, a .safetensors file or org/name"
        )
        self.base_model_edit.setToolTip(
            "The model the LoRA is trained for: builtin:tiny-sd15 (tiny, for trying the app), "
            "a diffusers folder, a single .safetensors checkpoint, or a Hugging Face id "
            "already in your cache."
        )
        self.base_model_edit.editingFinished.connect(self._on_base_model_edited)
        self.base_folder_button = QPushButton("Folder\u2026")
        self.base_folder_button.setToolTip(
            "Choose a diffusers model folder (with model_index.json)"
        )
        self.base_folder_button.clicked.connect(self._choose_base_folder)
        self.base_file_button = QPushButton("File\u2026")
        self.base_file_button.setToolTip("Choose a single-file checkpoint (.safetensors)")
        self.base_file_button.clicked.connect(self._choose_base_file)
        self.base_model_status = QLabel()
        self.base_model_status.setWordWrap(True)
        self.output_edit = QLineEdit()
        self.output_edit.setToolTip(
            "The folder the .safetensors LoRA (and its .toml settings) is written to"
        )
        self.output_edit.editingFinished.connect(self._on_output_edited)
        self.output_button = QPushButton("Choose\u2026")
        self.output_button.clicked.connect(self._choose_output)

        # ---- preset and settings ----
        self.preset_box = QComboBox()
        for key, preset in PRESETS.items():
            self.preset_box.addItem(preset.label, key)
        self.preset_box.setToolTip(
            "Load a preset's settings (your output name and trigger word are kept)"
        )
        self.preset_box.activated.connect(self._on_preset_activated)
        self.user_presets: dict[str, LoraConfig] = {}
        self.save_preset_button = QPushButton("Save as preset\u2026")
        self.save_preset_button.setToolTip(
            "Keep these settings as a preset of your own (your output name and trigger word "
            "are not part of it)"
        )
        self.save_preset_button.clicked.connect(self._ask_preset_name)
        self.delete_preset_button = QPushButton("Delete preset")
        self.delete_preset_button.setToolTip("Delete this preset of yours (built-in ones stay)")
        self.delete_preset_button.clicked.connect(self._confirm_delete_preset)
        self.changes_button = QPushButton("What changed?")
        self.changes_button.setToolTip(
            "Every setting that differs from the preset: its value and yours, with a reset"
        )
        self.changes_button.clicked.connect(self.show_changes)
        self.changes_view: PresetChangesView | None = None
        self.preset_description = QLabel()
        self.preset_description.setWordWrap(True)
        self.preset_description.setStyleSheet(
            f"color: {artwork.muted_color(self.palette()).name()};"
        )

        self.name_edit = self._line("name")
        self.trigger_edit = self._line("trigger_word")
        self.trigger_edit.setPlaceholderText("e.g. papercut style")
        self.rank_spin = self._spin("rank")
        self.alpha_spin = QDoubleSpinBox()
        lo, hi = field_range("alpha")
        self.alpha_spin.setRange(lo or 0.0, hi or 1e6)
        self.alpha_spin.setDecimals(1)
        self._register("alpha", self.alpha_spin)
        self.alpha_spin.valueChanged.connect(self._on_edited)
        self.resolution_spin = self._spin("resolution")
        self.resolution_spin.setSingleStep(64)
        self.resolution_spin.setSuffix(" px")
        self.repeats_spin = self._spin("repeats")
        self.epochs_spin = self._spin("epochs")
        self.max_steps_spin = self._spin("max_steps")
        self.max_steps_spin.setMinimum(0)  # 0 = off: train for the epochs instead
        self.max_steps_spin.setSpecialValueText("off (use epochs)")
        self.lr_edit = self._line("learning_rate")
        self.batch_spin = self._spin("batch_size")
        self.accum_spin = self._spin("gradient_accumulation_steps")
        self.precision_box = QComboBox()
        for value, label in _PRECISION_LABELS.items():
            self.precision_box.addItem(label, value.value)
        self._register("mixed_precision", self.precision_box)
        self.precision_box.currentIndexChanged.connect(self._on_edited)
        self.text_encoder_check = QCheckBox(field_label("train_text_encoder"))
        self.text_encoder_check.setToolTip(field_help("train_text_encoder"))
        self._fields["train_text_encoder"] = self.text_encoder_check
        self.text_encoder_check.toggled.connect(self._on_edited)
        self.gpu_box = QComboBox()
        self._wanted_processes = 1
        self.gpu_label = _caption("GPUs", self.gpu_box)
        self.set_devices(None)
        self.gpu_box.activated.connect(self._on_gpus_activated)

        self.advanced = AdvancedSettings(MAIN_FIELDS, self._on_edited)
        for name, editor in self.advanced.editors.items():
            self._fields[name] = editor.widget
        self._labels.update(self.advanced.labels)
        self._error_labels.update(self.advanced.error_labels)

        self.error_label = QLabel()
        self.error_label.setWordWrap(True)
        self.error_label.setStyleSheet(f"color: {artwork.error_color(self.palette()).name()};")
        self.error_label.hide()

        # One grid for everything, no group boxes: the whole form fits without scrolling
        # next to the caption grid on a 1440x900 screen.
        inner = QWidget()
        grid = QGridLayout(inner)
        grid.setContentsMargins(0, 0, 4, 0)
        grid.setHorizontalSpacing(8)
        grid.setVerticalSpacing(6)
        base_row = QHBoxLayout()
        base_row.addWidget(self.base_model_edit, 1)
        base_row.addWidget(self.base_folder_button)
        base_row.addWidget(self.base_file_button)
        grid.addWidget(_caption("Base model", self.base_model_edit), 0, 0)
        grid.addLayout(base_row, 0, 1, 1, 3)
        grid.addWidget(self.base_model_status, 1, 1, 1, 3)
        out_row = QHBoxLayout()
        out_row.addWidget(self.output_edit, 1)
        out_row.addWidget(self.output_button)
        grid.addWidget(_caption("Output folder", self.output_edit), 2, 0)
        grid.addLayout(out_row, 2, 1, 1, 3)
        grid.addWidget(_rule(), 3, 0, 1, 4)
        grid.addWidget(_caption("Preset", self.preset_box), 4, 0)
        grid.addWidget(self.preset_box, 4, 1)
        grid.addWidget(self.preset_description, 4, 2, 1, 2)
        preset_buttons = QHBoxLayout()
        preset_buttons.setSpacing(6)
        preset_buttons.addWidget(self.save_preset_button)
        preset_buttons.addWidget(self.delete_preset_button)
        preset_buttons.addWidget(self.changes_button)
        preset_buttons.addStretch(1)
        grid.addLayout(preset_buttons, 5, 1, 1, 3)
        rows: list[tuple[str, str]] = [
            ("name", "trigger_word"),
            ("rank", "alpha"),
            ("resolution", "repeats"),
            ("epochs", "max_steps"),
            ("learning_rate", "batch_size"),
            ("gradient_accumulation_steps", "mixed_precision"),
        ]
        for r, (left, right) in enumerate(rows, start=6):
            for column, name in ((0, left), (2, right)):
                label = self._labels[name]
                # As tall as its field, at the top: it stays level with the field when the
                # reason for a refused value shows under it.
                label.setMinimumHeight(self._fields[name].sizeHint().height())
                label.setAlignment(Qt.AlignmentFlag.AlignLeft | Qt.AlignmentFlag.AlignVCenter)
                grid.addWidget(label, r, column, Qt.AlignmentFlag.AlignTop)
                grid.addWidget(self._field_box(name), r, column + 1)
        last = 6 + len(rows)
        grid.addWidget(self.gpu_label, last, 0)
        grid.addWidget(self.gpu_box, last, 1)
        grid.addWidget(self.text_encoder_check, last, 2, 1, 2)
        grid.addWidget(_rule(), last + 1, 0, 1, 4)
        grid.addWidget(self.advanced, last + 2, 0, 1, 4)
        grid.setRowStretch(last + 3, 1)
        grid.setColumnStretch(1, 1)
        grid.setColumnStretch(3, 1)

        self.load_button = QPushButton("Load\u2026")
        self.load_button.setToolTip("Load training settings from a .toml file")
        self.load_button.clicked.connect(self.load_config_requested)
        self.save_button = QPushButton("Save\u2026")
        self.save_button.setToolTip("Save these training settings as a .toml file")
        self.save_button.clicked.connect(self.save_config_requested)

        scroll = QScrollArea()
        scroll.setWidget(inner)
        scroll.setWidgetResizable(True)
        scroll.setFrameShape(QFrame.Shape.NoFrame)
        scroll.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAsNeeded)
        self.scroll = scroll
        for disclosure in (self.advanced.outer, *self.advanced.disclosures.values()):
            disclosure.opened.connect(functools.partial(self._scroll_to_soon, disclosure))
        # Narrow windows take width from the caption grid, not from these fields.
        self.setMinimumWidth(
            inner.minimumSizeHint().width() + scroll.verticalScrollBar().sizeHint().width() + 16
        )

        # ---- estimate and Train ----
        self.estimate_panel = EstimatePanel()
        self.estimate_panel.apply_requested.connect(self.apply_changes)
        estimate_box = self.estimate_panel
        self.steps_label = self.estimate_panel.steps_label
        self.cost_label = self.estimate_panel.cost_label
        self.cache_label = self.estimate_panel.cache_label

        self.train_button = QPushButton("Train")
        self.train_button.setObjectName("trainButton")
        self.train_button.setMinimumHeight(46)
        self.train_button.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Fixed)
        self.train_button.setStyleSheet(
            "#trainButton { background: #3f51b5; color: white; font-size: 15pt; font-weight: bold;"
            " border: none; border-radius: 6px; }"
            "#trainButton:hover { background: #5c6bc0; }"
            + (
                "#trainButton:disabled { background: #3a3f5c; color: #8f93a8; }"
                if artwork.is_dark(QApplication.palette())
                else "#trainButton:disabled { background: #c5cae9; color: #f5f5f5; }"
            )
        )
        self.train_button.clicked.connect(self.train_requested)

        head = QHBoxLayout()
        head.addWidget(QLabel("<b>Preset and settings</b>"))
        head.addStretch(1)
        head.addWidget(self.load_button)
        head.addWidget(self.save_button)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(6, 6, 6, 6)
        layout.addLayout(head)
        layout.addWidget(scroll, 1)
        layout.addWidget(self.error_label)
        layout.addWidget(estimate_box)
        layout.addWidget(self.train_button)
        self._layout = layout
        self._base_model_required = True

        self.set_config(config)

    # ---- building --------------------------------------------------------------------

    def _register(self, name: str, widget: QWidget) -> None:
        label = QLabel(field_label(name))
        help_text = field_help(name)
        label.setToolTip(help_text)
        widget.setToolTip(help_text)
        label.setBuddy(widget)
        self._labels[name] = label
        self._fields[name] = widget

    def _field_box(self, name: str) -> QWidget:
        """The field with the reason its value is refused right under it (hidden while
        the value is fine)."""
        box = QWidget()
        layout = QVBoxLayout(box)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.setSpacing(2)
        layout.addWidget(self._fields[name])
        error = field_error_label(name)
        layout.addWidget(error)
        self._error_labels[name] = error
        return box

    def _line(self, name: str) -> QLineEdit:
        edit = QLineEdit()
        self._register(name, edit)
        edit.textEdited.connect(self._on_edited)
        return edit

    def _spin(self, name: str) -> QSpinBox:
        spin = QSpinBox()
        low, high = _int_range(name, 1)
        spin.setRange(low, high)
        spin.setButtonSymbols(QAbstractSpinBox.ButtonSymbols.UpDownArrows)
        spin.setAccelerated(True)
        self._register(name, spin)
        spin.valueChanged.connect(self._on_edited)
        return spin

    # ---- from the controller ------------------------------------------------------------

    @property
    def config(self) -> LoraConfig:
        """The last valid config the controller accepted."""
        return self._config

    @property
    def errors(self) -> dict[str, str]:
        """Invalid fields: name -> message."""
        return dict(self._errors)

    def field(self, name: str) -> QWidget:
        """The input widget of config field ``name``."""
        return self._fields[name]

    def set_config(self, config: LoraConfig) -> None:
        """Show ``config`` (leaves fields the user is typing in alone if they match)."""
        self._config = config
        self._loading = True
        try:
            _set_text(self.name_edit, config.name)
            _set_text(self.trigger_edit, config.trigger_word)
            _set_value(self.rank_spin, config.rank)
            _set_value(self.alpha_spin, config.alpha)
            _set_value(self.resolution_spin, config.resolution)
            _set_value(self.repeats_spin, config.repeats)
            _set_value(self.epochs_spin, config.epochs)
            _set_value(self.max_steps_spin, config.max_steps or 0)
            try:
                shown = float(self.lr_edit.text())
            except ValueError:
                shown = None
            if shown != config.learning_rate:
                self.lr_edit.setText(format_learning_rate(config.learning_rate))
            _set_value(self.batch_spin, config.batch_size)
            _set_value(self.accum_spin, config.gradient_accumulation_steps)
            index = self.precision_box.findData(config.mixed_precision.value)
            if index >= 0 and index != self.precision_box.currentIndex():
                self.precision_box.setCurrentIndex(index)
            if self.text_encoder_check.isChecked() != config.train_text_encoder:
                self.text_encoder_check.setChecked(config.train_text_encoder)
            base = self.preset_base()
            self.advanced.show_config(config, base)
            preset_index = self.preset_box.findData(config.preset)
            if preset_index >= 0:
                self.preset_box.setCurrentIndex(preset_index)
            self.preset_description.setText(preset_description(config, base))
            self._show_preset_state()
        finally:
            self._loading = False
        self._validate()
        self._show_estimate()

    def set_devices(self, cuda_count: int | None, cpu_processes: int = 1) -> None:
        """Offer 1 … ``cuda_count`` GPUs (see :func:`device_choices`); keeps the choice
        when it is still offered."""
        choices = device_choices(cuda_count, cpu_processes)
        self.gpu_box.clear()
        for label, processes in choices:
            self.gpu_box.addItem(label, processes)
        index = self.gpu_box.findData(self._wanted_processes)
        self.gpu_box.setCurrentIndex(max(0, index))
        self.gpu_box.setEnabled(len(choices) > 1)
        if cuda_count is None:
            tip = "Looking for GPUs\u2026"
        elif cuda_count == 0 and len(choices) == 1:
            tip = "No CUDA GPU found: training runs on the CPU, in this process."
        elif cuda_count == 0:
            tip = (
                "No CUDA GPU found. More than one CPU process runs the data-parallel path "
                "(accelerate launch, gloo): for trying it out, not for speed."
            )
        else:
            tip = (
                f"{cuda_count} CUDA GPU{'s' if cuda_count > 1 else ''} found. With more than "
                "one, training runs under accelerate launch, one process per GPU (each step "
                "trains a batch on every GPU); pausing needs a single GPU."
            )
        self.gpu_box.setToolTip(tip)
        self.gpu_label.setToolTip(tip)

    @property
    def processes(self) -> int:
        """How many GPUs (training processes) are chosen."""
        return int(self.gpu_box.currentData() or 1)

    def set_processes(self, processes: int) -> None:
        """Choose ``processes`` GPUs, now or once that many are found."""
        self._wanted_processes = processes
        index = self.gpu_box.findData(processes)
        if index >= 0:
            self.gpu_box.setCurrentIndex(index)

    def set_base_model(self, ref: str, description: str = "", error: str = "") -> None:
        """Show the base model and what checking it found."""
        if self.base_model_edit.text().strip() != ref:
            self.base_model_edit.setText(ref)
        self._base_model_error = error
        if error:
            self.base_model_status.setText(f"\u26a0 {error}")
            self.base_model_status.setStyleSheet(
                f"color: {artwork.error_color(self.palette()).name()};"
            )
            self.base_model_edit.setStyleSheet(_invalid_style(self))
        else:
            self.base_model_status.setText(description)
            self.base_model_status.setStyleSheet(
                f"color: {artwork.muted_color(self.palette()).name()};"
            )
            self.base_model_edit.setStyleSheet("")
        self._update_train_button()

    def add_backend_panel(self, panel: QWidget) -> None:
        """Put the "train on" chooser between the settings and the estimate."""
        self._layout.insertWidget(self._layout.indexOf(self.error_label), panel)

    def set_base_model_required(self, required: bool) -> None:
        """Whether Train needs a base model that exists here (not for remote runs: the
        model is on the server)."""
        self._base_model_required = required
        self._update_train_button()

    def set_output_dir(self, folder: str) -> None:
        if self.output_edit.text().strip() != folder:
            self.output_edit.setText(folder)

    def set_estimate(self, estimate: Estimate) -> None:
        self._estimate = estimate
        self._show_estimate()

    def set_image_count(self, images: int) -> None:
        self._images = images
        self._show_estimate()
        self._update_train_button()

    def set_training_active(self, active: bool) -> None:
        self._training = active
        self._update_train_button()

    # ---- user edits ------------------------------------------------------------------------

    def values(self) -> dict[str, Any]:
        """The form's values as config fields (strings are coerced by the config)."""
        return {
            "name": self.name_edit.text().strip(),
            "trigger_word": self.trigger_edit.text().strip(),
            "rank": self.rank_spin.value(),
            "alpha": self.alpha_spin.value(),
            "resolution": self.resolution_spin.value(),
            "repeats": self.repeats_spin.value(),
            "epochs": self.epochs_spin.value(),
            "max_steps": self.max_steps_spin.value() or None,
            "learning_rate": self.lr_edit.text().strip(),
            "batch_size": self.batch_spin.value(),
            "gradient_accumulation_steps": self.accum_spin.value(),
            "mixed_precision": self.precision_box.currentData(),
            "train_text_encoder": self.text_encoder_check.isChecked(),
            **self.advanced.values(),
        }

    def _on_edited(self, *_: object) -> None:
        if self._loading:
            return
        config = self._validate()
        if config is not None and config != self._config:
            self.config_edited.emit(config)

    def _validate(self) -> LoraConfig | None:
        values = self.values()
        errors: dict[str, str] = {}
        config: LoraConfig | None = None
        overall = ""
        try:
            config = self._config.replace(**values)
        except ConfigError as exc:
            overall = str(exc)
            # Which fields are to blame: each one tried on its own.
            for name, value in values.items():
                try:
                    self._config.replace(**{name: value})
                except ConfigError as field_exc:
                    errors[name] = str(field_exc)
        previous, self._errors = self._errors, errors
        for name in errors.keys() - previous.keys():
            if name in self.advanced.editors:
                self.advanced.reveal(name)  # an error nobody can see cannot be fixed
                self._scroll_to_soon(self._fields[name])
        self.advanced.update_applicable(config or self._config)
        for name, widget in self._fields.items():
            if (name in errors) == (name in previous):
                continue  # restyling every field on every keystroke would flicker
            widget.setStyleSheet(_invalid_style(self) if name in errors else "")
            label = self._labels.get(name)
            if label is not None:
                label.setStyleSheet(
                    f"color: {artwork.error_color(self.palette()).name()};"
                    if name in errors
                    else ""
                )
        for name, error_label in self._error_labels.items():
            error_label.setText(errors.get(name, ""))
            error_label.setVisible(name in errors)
        messages = list(dict.fromkeys(errors.values())) or ([overall] if overall else [])
        if messages:
            self.error_label.setText(
                "\u26a0 " + "\n\u26a0 ".join(messages) + "\nFix this to train."
            )
            self.error_label.show()
        else:
            self.error_label.hide()
        self._valid = config is not None
        self._update_train_button()
        return config

    def _scroll_to_soon(self, widget: QWidget) -> None:
        """Scroll ``widget`` into view once the layout has made room for it."""
        QTimer.singleShot(0, self, functools.partial(self._scroll_to, widget))

    def _scroll_to(self, widget: QWidget) -> None:
        inner = self.scroll.widget()
        top = widget.mapTo(inner, QPoint(0, 0)).y() - 4
        bottom = top + widget.height() + 8
        bar = self.scroll.verticalScrollBar()
        view = self.scroll.viewport().height()
        if bottom > bar.value() + view:
            bar.setValue(min(top, bottom - view))  # all of it if it fits, else its top
        elif top < bar.value():
            bar.setValue(top)

    def _on_gpus_activated(self, index: int) -> None:
        processes = self.gpu_box.itemData(index)
        if processes:
            self._wanted_processes = int(processes)
            self.processes_edited.emit(int(processes))

    # ---- presets ---------------------------------------------------------------------------

    def preset_base(self) -> LoraConfig:
        """The values of the current config's preset (built-in or the user's own)."""
        return preset_defaults(self._config, self.user_presets)

    def preset_label(self) -> str:
        index = self.preset_box.findData(self._config.preset)
        return self.preset_box.itemText(index) if index >= 0 else "the defaults"

    def set_user_presets(self, presets: dict[str, LoraConfig]) -> None:
        """Offer the user's saved presets after the built-in ones."""
        self.user_presets = dict(presets)
        self._loading = True
        try:
            self.preset_box.clear()
            for key, preset in PRESETS.items():
                self.preset_box.addItem(preset.label, key)
            if presets:
                self.preset_box.insertSeparator(self.preset_box.count())
            for name in presets:
                self.preset_box.addItem(name, user_key(name))
        finally:
            self._loading = False
        self.set_config(self._config)

    def save_preset_as(self, name: str) -> None:
        """Ask for the current settings to be saved as the preset ``name``."""
        if name.strip():
            self.save_preset_requested.emit(name.strip())

    def delete_preset(self) -> None:
        """Ask for the current user preset to be deleted."""
        if is_user_key(self._config.preset):
            self.delete_preset_requested.emit(self._config.preset.removeprefix(USER_PREFIX))

    def show_changes(self) -> PresetChangesView:
        """Open the "what changed from the preset" list."""
        if self.changes_view is None:
            self.changes_view = PresetChangesView(self)
            self.changes_view.reset_requested.connect(self.apply_changes)
        self.changes_view.set_config(self._config, self.preset_base(), self.preset_label())
        self.changes_view.show()
        self.changes_view.raise_()
        return self.changes_view

    def _show_preset_state(self) -> None:
        changed = preset_changes(self._config, self.preset_base())
        self.changes_button.setText(
            f"What changed? ({len(changed)})" if changed else "What changed?"
        )
        self.changes_button.setEnabled(bool(changed) or self.changes_view is not None)
        self.delete_preset_button.setEnabled(is_user_key(self._config.preset))
        if self.changes_view is not None and self.changes_view.isVisible():
            self.changes_view.set_config(self._config, self.preset_base(), self.preset_label())

    def _ask_preset_name(self) -> None:
        current = self._config.preset
        suggestion = current.removeprefix(USER_PREFIX) if is_user_key(current) else ""
        name, ok = QInputDialog.getText(
            self, "Save as preset", "Name of the preset:", text=suggestion
        )
        if ok:
            self.save_preset_as(name)

    def _confirm_delete_preset(self) -> None:
        name = self._config.preset.removeprefix(USER_PREFIX)
        answer = QMessageBox.question(
            self,
            "Delete preset",
            f"Delete your preset {name!r}? Your current settings stay as they are.",
        )
        if answer == QMessageBox.StandardButton.Yes:
            self.delete_preset()

    def _on_preset_activated(self, index: int) -> None:
        key = self.preset_box.itemData(index)
        if key and not self._loading:
            self.preset_selected.emit(str(key))

    def _on_base_model_edited(self) -> None:
        self.base_model_edited.emit(self.base_model_edit.text().strip())

    def _on_output_edited(self) -> None:
        text = self.output_edit.text().strip()
        if text:
            self.output_dir_edited.emit(text)

    def _choose_base_folder(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Choose a diffusers model folder")
        if folder:
            self.base_model_edit.setText(folder)
            self._on_base_model_edited()

    def _choose_base_file(self) -> None:
        path, _ = QFileDialog.getOpenFileName(
            self, "Choose a checkpoint", "", "Checkpoints (*.safetensors *.ckpt);;All files (*)"
        )
        if path:
            self.base_model_edit.setText(path)
            self._on_base_model_edited()

    def _choose_output(self) -> None:
        folder = QFileDialog.getExistingDirectory(
            self, "Choose the output folder", self.output_edit.text()
        )
        if folder:
            self.output_edit.setText(folder)
            self._on_output_edited()

    # ---- display -------------------------------------------------------------------------

    def _show_estimate(self) -> None:
        self.estimate_panel.set_image_count(self._images)
        if self._estimate is None:
            self.estimate_panel.set_config(self._config)
        else:
            self.estimate_panel.set_estimate(self._estimate, self._config)

    def apply_changes(self, changes: dict[str, Any]) -> None:
        """Set config fields (from the estimate's "make it fit" buttons, or a reset to the
        preset): the form shows them and reports the new config as an edit."""
        try:
            config = self._config.replace(**changes)
        except ConfigError as exc:
            self.error_label.setText(f"\u26a0 {exc}")
            self.error_label.show()
            return
        self.set_config(config)
        self.config_edited.emit(config)

    @property
    def valid(self) -> bool:
        """The form's values make a valid config."""
        return self._valid

    def _update_train_button(self) -> None:
        reason = ""
        if self._training:
            reason = "A training run is going."
        elif not self._images:
            reason = "Open a dataset first."
        elif not self._valid:
            reason = "Fix the settings marked in red first."
        elif self._base_model_error and self._base_model_required:
            reason = "Choose a base model that exists first."
        self.train_button.setEnabled(not reason)
        self.train_button.setText("Training\u2026" if self._training else "Train")
        self.train_button.setToolTip(reason or "Train a LoRA with these settings")


def _caption(text: str, buddy: QWidget) -> QLabel:
    label = QLabel(text)
    label.setBuddy(buddy)
    return label


def _rule() -> QFrame:
    line = QFrame()
    line.setFrameShape(QFrame.Shape.HLine)
    dark = artwork.is_dark(QApplication.palette())
    line.setStyleSheet(f"color: {'#4a4a4e' if dark else '#dddddd'};")
    return line


def _set_text(edit: QLineEdit, value: str) -> None:
    if edit.text().strip() != value.strip():
        edit.setText(value)


def _set_value(spin: QSpinBox | QDoubleSpinBox, value: float) -> None:
    if spin.value() != value:
        spin.setValue(value)  # type: ignore[arg-type]
