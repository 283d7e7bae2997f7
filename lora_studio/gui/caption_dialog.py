"""The "Caption images" dialog: choose a captioner, run it, watch it, see what failed.

Layout::

    Captioner      [ OpenAI-compatible server (LLaVA, vLLM, llama.cpp, LM Studio) v ]
    Model          [ llava                                   ] [Choose folder…]
    Server URL     [ http://127.0.0.1:8080/v1                ]
    API key        [ ••••••••   ] [x] Remember in the OS keyring
    Prompt         [ (the captioner's own)                   ]
    Captions       (•) Fill empty  ( ) Overwrite  ( ) Append
    Trigger word   [ papercut style ]
    Images         (•) All 12 images  ( ) The 3 selected images
    At once / time limit / retries   [Default] [120 s] [3]
    ───────────────────────────────────────────────
    [██████████░░░░░░] 7 / 12 · 1.4 images/s · about 4 s left
    Failed: name — reason (the list, when some failed)
                                    [Start] [Cancel] [Close]

The choices except the token are remembered in QSettings (per captioner: model, URL,
prompt); a token typed here is saved in the OS keyring when asked, never in a file.
The run itself belongs to :class:`~lora_studio.gui.caption_controller.CaptionController`;
this dialog only asks and shows. States: idle → running → stopping → idle; Cancel stops
at once (in-flight requests are dropped; a model still loading is left behind), and what
was captioned so far stays as proposals. Closing the dialog does not stop a run: the
window's status bar shows it going on (and, once it has ended, its result until the
dialog is seen again), and clicking it (or **Caption images…**) brings this same dialog
back, its progress and failures up to date.
"""

from __future__ import annotations

from pathlib import Path

from PySide6.QtCore import QSettings, Qt
from PySide6.QtGui import QShowEvent
from PySide6.QtWidgets import (
    QButtonGroup,
    QCheckBox,
    QComboBox,
    QDialog,
    QDoubleSpinBox,
    QFileDialog,
    QFormLayout,
    QFrame,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QListWidget,
    QProgressBar,
    QPushButton,
    QRadioButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from lora_studio.captioning.credentials import SOURCES
from lora_studio.captioning.openai_chat import DEFAULT_VISION_PROMPT
from lora_studio.captioning.postprocess import CaptionMode
from lora_studio.captioning.registry import provider_spec
from lora_studio.captioning.request import CaptionRequest
from lora_studio.captioning.runner import CaptionProgress, ResultStatus, RunReport, RunState
from lora_studio.gui import artwork
from lora_studio.gui import settings as app_settings
from lora_studio.gui.caption_controller import CaptionController, summary
from lora_studio.gui.controller import ERROR, INFO, WARNING

#: The captioners, in the order offered, with the names users know them by.
PROVIDERS: tuple[tuple[str, str], ...] = (
    ("blip", "BLIP (on this computer)"),
    ("blip2", "BLIP-2 (on this computer)"),
    ("hf-api", "Hugging Face Inference API (BLIP, BLIP-2)"),
    ("openai", "OpenAI-compatible server (LLaVA, vLLM, llama.cpp, LM Studio)"),
    ("ollama", "Ollama"),
)
PROMPT_HINTS = {
    "blip": "optional start of every caption, e.g. \u201ca photo of\u201d",
    "blip2": "optional question, e.g. \u201cQuestion: what is in the picture? Answer:\u201d",
    "hf-api": "this API takes no prompt",
    "openai": "empty: ask for one or two plain sentences (hover for the full text)",
    "ollama": "empty: ask for one or two plain sentences (hover for the full text)",
}
MODE_LABELS = (
    (CaptionMode.FILL, "Fill empty captions", "Caption only the images without a caption"),
    (CaptionMode.OVERWRITE, "Replace all", "Propose a new caption for every image"),
    (CaptionMode.APPEND, "Append", "Add the new caption's tags after the caption"),
)
DEFAULT_TIMEOUT_S = 120.0
SCOPE_ALL, SCOPE_SELECTED = "all", "selected"


def eta_text(seconds: float | None) -> str:
    """``about 4 s left``, ``about 2 min 05 s left``; empty when unknown."""
    if seconds is None:
        return ""
    whole = int(round(seconds))
    if whole < 1:
        return "about a second left"
    if whole < 60:
        return f"about {whole} s left"
    minutes, secs = divmod(whole, 60)
    if minutes < 60:
        return f"about {minutes} min {secs:02d} s left"
    hours, minutes = divmod(minutes, 60)
    return f"about {hours} h {minutes:02d} min left"


def progress_text(progress: CaptionProgress) -> str:
    """``7 / 12 · 1.4 images/s · about 4 s left`` (and failures, when there are some)."""
    if progress.state is RunState.LOADING:
        return progress.message or "Loading the model\u2026"
    if progress.state is RunState.STOPPING:
        return "Stopping\u2026"
    parts = [f"{progress.done} / {progress.total}"]
    if progress.images_per_s:
        parts.append(f"{progress.images_per_s:.2g} images/s")
    if progress.failed:
        parts.append(f"{progress.failed} failed")
    eta = eta_text(progress.eta_s) if progress.done < progress.total else ""
    if eta:
        parts.append(eta)
    return " \u00b7 ".join(parts)


class CaptionRunDialog(QDialog):
    """Choose a captioner and caption the open dataset (see the module docstring).

    Args:
        captions: the caption controller that runs it.
        settings: where the choices are remembered.
        trigger_word: the default trigger word (the training config's).
        image_count: images in the dataset.
        selected: the images selected in the window (the "selected images" scope).
    """

    def __init__(
        self,
        captions: CaptionController,
        settings: QSettings,
        *,
        trigger_word: str = "",
        image_count: int = 0,
        selected: list[Path] | None = None,
        parent: QWidget | None = None,
    ) -> None:
        super().__init__(parent)
        self.setWindowTitle("Caption images")
        self.setObjectName("captionRunDialog")
        self.captions = captions
        self.settings = settings
        self.selected = list(selected or [])
        self.image_count = image_count
        self.report: RunReport | None = None
        self._kind = ""
        self._choices = app_settings.read_caption_choices(settings)

        self.provider_box = QComboBox()
        for kind, label in PROVIDERS:
            self.provider_box.addItem(label, kind)
        self.model_edit = QLineEdit()
        self.browse_button = QPushButton("Choose folder\u2026")
        self.browse_button.setToolTip("A local BLIP / BLIP-2 model folder (with config.json)")
        self.browse_button.clicked.connect(self._choose_model_folder)
        model_row = QHBoxLayout()
        model_row.setContentsMargins(0, 0, 0, 0)
        model_row.addWidget(self.model_edit, 1)
        model_row.addWidget(self.browse_button)
        self.url_edit = QLineEdit()
        self.token_edit = QLineEdit()
        self.token_edit.setEchoMode(QLineEdit.EchoMode.Password)
        self.remember_token = QCheckBox("Remember in the OS keyring")
        self.remember_token.setChecked(True)
        self.remember_token.setToolTip(
            "Saved in your system's keyring (never in a settings file); next time, leave "
            "the field empty to use it"
        )
        token_row = QHBoxLayout()
        token_row.setContentsMargins(0, 0, 0, 0)
        token_row.addWidget(self.token_edit, 1)
        token_row.addWidget(self.remember_token)
        self.token_label = QLabel("Token")
        self.prompt_edit = QLineEdit()

        self.mode_group = QButtonGroup(self)
        mode_row = QHBoxLayout()
        mode_row.setContentsMargins(0, 0, 0, 0)
        self.mode_buttons: dict[CaptionMode, QRadioButton] = {}
        for number, (mode, label, tip) in enumerate(MODE_LABELS):
            button = QRadioButton(label)
            button.setToolTip(tip)
            self.mode_group.addButton(button, number)
            self.mode_buttons[mode] = button
            mode_row.addWidget(button)
        mode_row.addStretch(1)
        self.trigger_edit = QLineEdit(trigger_word)
        self.trigger_edit.setPlaceholderText("none")
        self.trigger_edit.setToolTip("Put first in every caption (never doubled)")

        self.scope_all = QRadioButton(f"All {image_count} images")
        count = len(self.selected)
        self.scope_selected = QRadioButton(
            f"The {count} selected image{'' if count == 1 else 's'}"
            if count
            else "Selected images (none selected)"
        )
        self.scope_selected.setEnabled(count > 0)
        scope_row = QHBoxLayout()
        scope_row.setContentsMargins(0, 0, 0, 0)
        scope_row.addWidget(self.scope_all)
        scope_row.addWidget(self.scope_selected)
        scope_row.addStretch(1)

        self.concurrency_spin = QSpinBox()
        self.concurrency_spin.setRange(0, 64)
        self.concurrency_spin.setSpecialValueText("Default")
        self.concurrency_spin.setToolTip(
            "Images in flight at once (Default: 4 for servers, 1 for a local model)"
        )
        self.timeout_spin = QDoubleSpinBox()
        self.timeout_spin.setRange(0, 3600)
        self.timeout_spin.setDecimals(0)
        self.timeout_spin.setSuffix(" s")
        self.timeout_spin.setSpecialValueText("No limit")
        self.timeout_spin.setToolTip("Seconds one attempt at one image may take")
        self.retries_spin = QSpinBox()
        self.retries_spin.setRange(0, 10)
        self.retries_spin.setToolTip(
            "Retries of an image after a busy server (429), a server error (5xx), a time-out "
            "or a refused connection"
        )
        limits_row = QHBoxLayout()
        limits_row.setContentsMargins(0, 0, 0, 0)
        for label, widget in (
            ("At once", self.concurrency_spin),
            ("Time limit", self.timeout_spin),
            ("Retries", self.retries_spin),
        ):
            limits_row.addWidget(QLabel(label))
            limits_row.addWidget(widget)
            limits_row.addSpacing(10)
        limits_row.addStretch(1)

        form = QFormLayout()
        form.setFieldGrowthPolicy(QFormLayout.FieldGrowthPolicy.AllNonFixedFieldsGrow)
        form.addRow("Captioner", self.provider_box)
        form.addRow("Model", model_row)
        self.url_label = QLabel("Server URL")
        form.addRow(self.url_label, self.url_edit)
        self.token_row = QWidget()
        self.token_row.setLayout(token_row)
        form.addRow(self.token_label, self.token_row)
        form.addRow("Prompt", self.prompt_edit)
        form.addRow("Captions", mode_row)
        form.addRow("Trigger word", self.trigger_edit)
        form.addRow("Images", scope_row)
        form.addRow("Limits", limits_row)
        self.form = form
        self.form_box = QWidget()
        self.form_box.setLayout(form)

        note = QLabel(
            "The captions arrive as proposals beside the current ones in the caption grid; "
            "no caption file changes until you accept them."
        )
        note.setWordWrap(True)
        note.setStyleSheet(f"color: {artwork.MUTED.name()};")

        line = QFrame()
        line.setFrameShape(QFrame.Shape.HLine)
        line.setFrameShadow(QFrame.Shadow.Sunken)
        self.progress_bar = QProgressBar()
        self.progress_bar.setTextVisible(False)
        self.progress_label = QLabel("Not started.")
        self.progress_label.setWordWrap(True)
        self.result_label = QLabel()
        self.result_label.setWordWrap(True)
        self.result_label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.result_label.hide()
        self.failures_label = QLabel("Images that could not be captioned:")
        self.failures = QListWidget()
        self.failures.setMaximumHeight(110)
        self.failures.setAlternatingRowColors(True)
        self.failures.setWordWrap(True)
        self.failures.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        self.failures_label.hide()
        self.failures.hide()

        self.start_button = QPushButton("Start")
        self.start_button.setDefault(True)
        self.start_button.clicked.connect(self.start)
        self.cancel_button = QPushButton("Cancel run")
        self.cancel_button.setToolTip("Stop now; the captions made so far stay as proposals")
        self.cancel_button.setEnabled(False)
        self.cancel_button.clicked.connect(self.cancel)
        self.close_button = QPushButton("Close")
        self.close_button.setToolTip(
            "Close this window; a run goes on (the status bar shows it, click there to come back)"
        )
        self.close_button.clicked.connect(self.close)
        buttons = QHBoxLayout()
        buttons.addStretch(1)
        buttons.addWidget(self.start_button)
        buttons.addWidget(self.cancel_button)
        buttons.addWidget(self.close_button)

        layout = QVBoxLayout(self)
        layout.addWidget(self.form_box)
        layout.addWidget(note)
        layout.addWidget(line)
        progress_row = QHBoxLayout()
        progress_row.addWidget(self.progress_bar, 2)
        progress_row.addWidget(self.progress_label, 3)
        layout.addLayout(progress_row)
        layout.addWidget(self.result_label)
        layout.addWidget(self.failures_label)
        layout.addWidget(self.failures)
        layout.addLayout(buttons)
        self.resize(680, self.sizeHint().height())

        self._restore()
        self.provider_box.currentIndexChanged.connect(self._on_provider_changed)
        self._on_provider_changed()
        #: A run ended while this dialog was closed: its result (and failures) not seen yet.
        self.unseen = False
        captions.run_progress.connect(self._on_progress)
        captions.run_finished.connect(self._on_finished)
        captions.running_changed.connect(self._on_running)
        self._on_running(captions.running)

    # ---- choices ---------------------------------------------------------------------------

    @property
    def kind(self) -> str:
        return str(self.provider_box.currentData())

    def set_provider(self, kind: str) -> None:
        index = self.provider_box.findData(kind)
        if index >= 0:
            self.provider_box.setCurrentIndex(index)

    def set_mode(self, mode: CaptionMode | str) -> None:
        self.mode_buttons[CaptionMode(mode)].setChecked(True)

    @property
    def mode(self) -> CaptionMode:
        for mode, button in self.mode_buttons.items():
            if button.isChecked():
                return mode
        return CaptionMode.FILL

    def request(self) -> CaptionRequest:
        """The run the form describes."""
        spec = provider_spec(self.kind)
        timeout = self.timeout_spin.value()
        return CaptionRequest(
            self.kind,
            model=self.model_edit.text().strip() or None,
            url=None if spec.local else (self.url_edit.text().strip() or None),
            prompt=(self.prompt_edit.text().strip() or None) if spec.takes_prompt else None,
            mode=self.mode,
            trigger_word=self.trigger_edit.text().strip(),
            concurrency=self.concurrency_spin.value() or None,
            timeout_s=float(timeout) if timeout > 0 else None,
            retries=self.retries_spin.value(),
        )

    def _restore(self) -> None:
        c = self._choices
        self.set_provider(c.get("provider", "blip"))
        try:
            self.set_mode(c.get("mode", CaptionMode.FILL))
        except ValueError:
            self.set_mode(CaptionMode.FILL)
        scope_selected = c.get("scope") == SCOPE_SELECTED and self.scope_selected.isEnabled()
        (self.scope_selected if scope_selected else self.scope_all).setChecked(True)
        self.concurrency_spin.setValue(_int(c.get("concurrency"), 0))
        self.timeout_spin.setValue(_float(c.get("timeout"), DEFAULT_TIMEOUT_S))
        self.retries_spin.setValue(_int(c.get("retries"), 3))

    def _remember(self) -> None:
        kind = self.kind
        app_settings.remember_caption_choices(
            self.settings,
            {
                "provider": kind,
                f"{kind}/model": self.model_edit.text().strip(),
                f"{kind}/url": self.url_edit.text().strip(),
                f"{kind}/prompt": self.prompt_edit.text().strip(),
                "mode": str(self.mode),
                "scope": SCOPE_SELECTED if self.scope_selected.isChecked() else SCOPE_ALL,
                "concurrency": str(self.concurrency_spin.value()),
                "timeout": str(int(self.timeout_spin.value())),
                "retries": str(self.retries_spin.value()),
            },
        )
        self.settings.sync()

    def _on_provider_changed(self, *_: object) -> None:
        if self._kind:  # keep what was typed for the captioner left
            self._choices[f"{self._kind}/model"] = self.model_edit.text().strip()
            self._choices[f"{self._kind}/url"] = self.url_edit.text().strip()
            self._choices[f"{self._kind}/prompt"] = self.prompt_edit.text().strip()
        kind = self.kind
        self._kind = kind
        spec = provider_spec(kind)
        self.model_edit.setText(self._choices.get(f"{kind}/model", ""))
        self.model_edit.setPlaceholderText(spec.default_model)
        self.model_edit.setToolTip(
            "A model folder, or a Hugging Face id already in your cache (nothing is downloaded)"
            if spec.local
            else "The model name the server knows"
        )
        self.browse_button.setVisible(spec.local)
        self.url_edit.setText(self._choices.get(f"{kind}/url", ""))
        self.url_edit.setPlaceholderText(spec.default_url or "")
        self.url_label.setVisible(not spec.local)
        self.url_edit.setVisible(not spec.local)
        uses_token = kind in SOURCES
        self.token_label.setText("API key" if kind == "openai" else "Token")
        self.token_label.setVisible(uses_token)
        self.token_row.setVisible(uses_token)
        self.token_edit.clear()
        if uses_token:
            env = SOURCES[kind].env_var
            optional = " (optional)" if kind == "openai" else ""
            self.token_edit.setPlaceholderText(f"empty: the saved one, or {env}{optional}")
        self.prompt_edit.setEnabled(spec.takes_prompt)
        self.prompt_edit.setText(
            self._choices.get(f"{kind}/prompt", "") if spec.takes_prompt else ""
        )
        self.prompt_edit.setPlaceholderText(PROMPT_HINTS.get(kind, ""))
        self.prompt_edit.setToolTip(
            f"Empty: \u201c{DEFAULT_VISION_PROMPT}\u201d" if kind in ("openai", "ollama") else ""
        )

    def _choose_model_folder(self) -> None:
        folder = QFileDialog.getExistingDirectory(
            self, "Choose a BLIP / BLIP-2 model folder", self.model_edit.text()
        )
        if folder:
            self.model_edit.setText(folder)

    # ---- running --------------------------------------------------------------------------

    def start(self) -> None:
        """Start the run the form describes."""
        if self.captions.running:
            return
        self._remember()
        self.report = None
        self.failures.clear()
        self.failures.hide()
        self.failures_label.hide()
        self.result_label.hide()
        self.progress_bar.setRange(0, 0)  # busy until the first progress
        self.progress_label.setText("Starting\u2026")
        paths = self.selected if self.scope_selected.isChecked() else None
        token = self.token_edit.text().strip() or None
        self.captions.start_run(
            self.request(),
            paths,
            token=token,
            remember_token=self.remember_token.isChecked(),
        )
        self.token_edit.clear()  # not kept in the widget once it is handed over

    def cancel(self) -> None:
        """Stop the run now."""
        if self.captions.running:
            self.cancel_button.setEnabled(False)
            self.cancel_button.setText("Stopping\u2026")
            self.progress_label.setText("Stopping\u2026")
            self.captions.stop_run()

    def _on_running(self, running: bool) -> None:
        self.form_box.setEnabled(not running)
        self.start_button.setEnabled(not running)
        self.cancel_button.setEnabled(running and not self.captions.stopping)
        if not running:
            self.cancel_button.setText("Cancel run")

    def _on_progress(self, progress: CaptionProgress) -> None:
        if progress.state is RunState.LOADING:
            self.progress_bar.setRange(0, 0)
        else:
            self.progress_bar.setRange(0, max(1, progress.total))
            self.progress_bar.setValue(progress.done)
        self.progress_label.setText(progress_text(progress))
        result = progress.result
        if result is not None and result.status is ResultStatus.FAILED:
            self._add_failure(result.name, result.error or "failed")

    def showEvent(self, event: QShowEvent) -> None:  # noqa: N802
        self.unseen = False
        super().showEvent(event)

    def _on_finished(self, report: RunReport) -> None:
        self.report = report
        self.unseen = not self.isVisible()
        self.progress_bar.setRange(0, 1)
        self.progress_bar.setValue(1 if report.state is RunState.FINISHED else 0)
        done = len(report.results) - len(report.skipped) - len(report.cancelled)
        total = len(report.results) - len(report.skipped)
        self.progress_label.setText(
            {
                RunState.FINISHED: f"Done: {done} / {total}"
                + (f" ({len(report.failed)} failed)" if report.failed else ""),
                RunState.CANCELLED: f"Stopped at {done} / {total}",
            }.get(report.state, "Failed")
        )
        level, line = summary(report)
        color = {INFO: artwork.SUCCESS, WARNING: artwork.WARNING, ERROR: artwork.ERROR}[level]
        if report.state is RunState.CANCELLED:
            color = artwork.MUTED
        self.result_label.setText(line)
        self.result_label.setStyleSheet(f"color: {color.name()};")
        self.result_label.show()
        self.failures.clear()
        for result in report.failed:
            self._add_failure(result.name, result.error or "failed")
        self._on_running(False)

    def _add_failure(self, name: str, reason: str) -> None:
        self.failures.addItem(f"{name} \u2014 {reason}")
        self.failures.item(self.failures.count() - 1).setToolTip(reason)
        self.failures_label.show()
        self.failures.show()


def _int(text: str | None, default: int) -> int:
    try:
        return int(str(text))
    except ValueError:
        return default


def _float(text: str | None, default: float) -> float:
    try:
        return float(str(text))
    except ValueError:
        return default
