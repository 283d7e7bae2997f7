"""Edit → Settings: the servers, tokens, output folder and training device.

::

    ComfyUI server   [http://127.0.0.1:8188        ]  [Test connection]  ✔ ComfyUI 0.3 on …
                     token [••••••] [Save]  (only for a proxy that asks for one)
    Replicate        token [••••••] [Save]  ✔ in keyring [Test connection]  ✔ Signed in as …
    Hugging Face     token [••••••] [Save]  endpoint [https://huggingface.co] [Test] …
    Caption server   URL [http://127.0.0.1:8080/v1] model [llava ▾] key [••] [Test] …
    Output folder    [~/LoRA Studio/outputs] [Choose…]
    Training device  [Automatic ▾]

Tokens go to the OS keyring (:mod:`lora_studio.core.secrets`), never into QSettings; on a
system without a keyring the fallback file's warning is shown beside the token. The
dialog itself does no I/O: :class:`SettingsService` runs the connection tests
(:mod:`lora_studio.gui.connection_checks`) and the keyring calls on the event loop and in
worker threads, and answers with signals.
"""

from __future__ import annotations

import asyncio
import functools
import os
from collections.abc import Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PySide6.QtCore import QObject, Qt, Signal
from PySide6.QtWidgets import (
    QComboBox,
    QDialog,
    QDialogButtonBox,
    QFileDialog,
    QGridLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QLayout,
    QLineEdit,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from lora_studio.core import secrets
from lora_studio.gui import artwork
from lora_studio.gui.connection_checks import (
    DEFAULT_HF_ENDPOINT,
    CheckResult,
    check_comfyui,
    check_huggingface,
    check_openai,
    check_replicate,
)
from lora_studio.gui.settings import DEVICES

COMFYUI, REPLICATE, HUGGINGFACE, OPENAI = "comfyui", "replicate", "huggingface", "openai"
TOKEN_SOURCES = {
    COMFYUI: secrets.COMFYUI,
    REPLICATE: secrets.REPLICATE,
    HUGGINGFACE: secrets.HUGGINGFACE,
    OPENAI: secrets.OPENAI,
}
DEVICE_LABELS = {
    "auto": "Automatic (CUDA, then Apple MPS, then the CPU)",
    "cuda": "CUDA GPU",
    "mps": "Apple GPU (MPS)",
    "cpu": "CPU (slow; fine for the built-in tiny model)",
}


@dataclass(frozen=True)
class SettingsValues:
    """Everything the dialog edits except tokens."""

    comfyui_url: str = ""
    replicate_url: str = ""
    hf_endpoint: str = ""
    openai_url: str = ""
    openai_model: str = ""
    output_dir: str = ""
    device: str = "auto"


class SettingsService(QObject):
    """Runs the dialog's I/O: connection tests and the keyring (see the module docstring).

    Signals:
        checked(str, CheckResult): a service's "Test connection" answered.
        token_saved(str, str): a token was saved; the warning to show ("" when the
            keyring took it).
        token_failed(str, str): a token could not be saved, and why.
        token_states(dict[str, str]): where each service's token comes from (never the
            token itself).
    """

    checked = Signal(str, object)
    token_saved = Signal(str, str)
    token_failed = Signal(str, str)
    token_states = Signal(object)

    def __init__(self, output_dir: Path, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.output_dir = output_dir
        self._tasks: set[asyncio.Task[Any]] = set()

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def test(self, service: str, values: SettingsValues, token: str = "") -> asyncio.Task[None]:
        """Test ``service`` with the dialog's ``values`` (a ``token`` typed but not saved
        yet wins over the stored one)."""
        return self._spawn(self._test(service, values, token))

    async def _test(self, service: str, values: SettingsValues, token: str) -> None:
        source = TOKEN_SOURCES.get(service)
        if source is not None and not token:
            token = await asyncio.to_thread(secrets.get_token, source) or ""
        if service == COMFYUI:
            result = await check_comfyui(values.comfyui_url, self.output_dir, token or None)
        elif service == REPLICATE:
            result = await check_replicate(token, values.replicate_url)
        elif service == HUGGINGFACE:
            result = await check_huggingface(token, values.hf_endpoint)
        else:
            result = await check_openai(values.openai_url, token or None)
        self.checked.emit(service, result)

    def save_token(self, service: str, token: str) -> asyncio.Task[None]:
        return self._spawn(self._save_token(service, token))

    async def _save_token(self, service: str, token: str) -> None:
        source = TOKEN_SOURCES[service]
        try:
            warning = await asyncio.to_thread(secrets.save_token, source, token)
        except secrets.SecretError as exc:
            self.token_failed.emit(service, str(exc))
            return
        self.token_saved.emit(service, warning or "")
        await self._token_states()

    def refresh_token_states(self) -> asyncio.Task[None]:
        return self._spawn(self._token_states())

    async def _token_states(self) -> None:
        def look() -> dict[str, str]:
            states = {}
            for service, source in TOKEN_SOURCES.items():
                if os.environ.get(source.env_var, "").strip():
                    states[service] = f"from {source.env_var}"
                elif secrets.file_token(source):
                    states[service] = "in tokens.json (no keyring)"
                elif secrets.get_token(source):
                    states[service] = "in the keyring"
                else:
                    states[service] = "not set"
            return states

        self.token_states.emit(await asyncio.to_thread(look))


class _ServiceRow:
    """A "Test connection" button and the sentence it answered with."""

    def __init__(self, service: str, on_test: Any) -> None:
        self.button = QPushButton("Test connection")
        self.button.setObjectName(f"test_{service}")
        self.button.clicked.connect(functools.partial(on_test, service))
        self.result = QLabel()
        self.result.setObjectName(f"result_{service}")
        self.result.setWordWrap(True)
        self.result.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)


class SettingsDialog(QDialog):
    """The Settings dialog (see the module docstring). ``accepted`` means: apply
    :meth:`values`; tokens are saved by the service as they are entered."""

    def __init__(
        self,
        values: SettingsValues,
        service: SettingsService,
        parent: QWidget | None = None,
    ) -> None:
        super().__init__(parent)
        self.setWindowTitle("Settings")
        self.setObjectName("settingsDialog")
        self.service = service
        self.rows: dict[str, _ServiceRow] = {}
        self.token_edits: dict[str, QLineEdit] = {}
        self.token_labels: dict[str, QLabel] = {}
        self.results: dict[str, CheckResult] = {}

        # ---- ComfyUI
        self.comfyui_edit = QLineEdit(values.comfyui_url)
        self.comfyui_edit.setPlaceholderText("http://127.0.0.1:8188")
        self.comfyui_edit.setToolTip(
            "The ComfyUI server that trains when you choose it under Train on "
            "(a trailing /api is fine)"
        )
        comfy = self._group(
            "ComfyUI server",
            COMFYUI,
            [
                ("Address", self.comfyui_edit),
                ("Token", self._token_row(COMFYUI, "only if a proxy in front asks for one")),
            ],
        )

        # ---- Replicate
        self.replicate_url = values.replicate_url
        replicate = self._group(
            "Replicate",
            REPLICATE,
            [("API token", self._token_row(REPLICATE, "r8_\u2026 from replicate.com/account"))],
        )

        # ---- Hugging Face
        self.hf_endpoint_edit = QLineEdit(values.hf_endpoint)
        self.hf_endpoint_edit.setPlaceholderText(DEFAULT_HF_ENDPOINT)
        self.hf_endpoint_edit.setToolTip(
            "The Hugging Face endpoint the token is checked against (a mirror or a "
            "private hub; empty: huggingface.co)"
        )
        hf = self._group(
            "Hugging Face",
            HUGGINGFACE,
            [
                ("Access token", self._token_row(HUGGINGFACE, "hf_\u2026 (read access)")),
                ("Endpoint", self.hf_endpoint_edit),
            ],
        )

        # ---- OpenAI-compatible caption server
        self.openai_url_edit = QLineEdit(values.openai_url)
        self.openai_url_edit.setPlaceholderText("http://127.0.0.1:8080/v1")
        self.openai_url_edit.setToolTip(
            "A vision LLM (LLaVA, Qwen-VL...) behind an OpenAI-compatible API: vLLM, "
            "llama.cpp llama-server, LM Studio, Ollama's /v1. Captions images."
        )
        self.openai_model_box = QComboBox()
        self.openai_model_box.setEditable(True)
        self.openai_model_box.setMinimumContentsLength(18)
        self.openai_model_box.setSizeAdjustPolicy(
            QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon
        )
        self.openai_model_box.setEditText(values.openai_model)
        self.openai_model_box.lineEdit().setPlaceholderText("Test connection to list them")
        self.openai_model_box.setToolTip("The model that captions (the server's model id)")
        openai = self._group(
            "Caption server (LLaVA, OpenAI-compatible)",
            OPENAI,
            [
                ("Address", self.openai_url_edit),
                ("Model", self.openai_model_box),
                ("API key", self._token_row(OPENAI, "only if the server asks for one")),
            ],
        )

        # ---- output and device
        self.output_edit = QLineEdit(values.output_dir)
        self.output_edit.setToolTip("Where new LoRAs (and their .toml settings) are written")
        choose = QPushButton("Choose\u2026")
        choose.clicked.connect(self._choose_output)
        out_row = QHBoxLayout()
        out_row.setContentsMargins(0, 0, 0, 0)
        out_row.addWidget(self.output_edit, 1)
        out_row.addWidget(choose)
        out_widget = QWidget()
        out_widget.setLayout(out_row)
        self.device_box = QComboBox()
        for key in DEVICES:
            self.device_box.addItem(DEVICE_LABELS[key], key)
        self.device_box.setCurrentIndex(max(0, self.device_box.findData(values.device)))
        self.device_box.setToolTip(
            "Where local training runs. Automatic picks a CUDA GPU, then an Apple GPU, then "
            "the CPU; the environment variable LORA_STUDIO_DEVICE does the same."
        )
        training = QGroupBox("Training on this computer")
        grid = QGridLayout(training)
        grid.addWidget(_label("Output folder", self.output_edit), 0, 0)
        grid.addWidget(out_widget, 0, 1)
        grid.addWidget(_label("Device", self.device_box), 1, 0)
        grid.addWidget(self.device_box, 1, 1)
        grid.setColumnStretch(1, 1)
        self._label_column(grid)

        self.note = QLabel(
            "Tokens are kept in your system's keyring, never in the settings file or a log."
        )
        self.note.setWordWrap(True)
        self.note.setObjectName("settingsNote")

        buttons = QDialogButtonBox(
            QDialogButtonBox.StandardButton.Ok | QDialogButtonBox.StandardButton.Cancel
        )
        buttons.accepted.connect(self.accept)
        buttons.rejected.connect(self.reject)
        self.ok_button = buttons.button(QDialogButtonBox.StandardButton.Ok)

        layout = QVBoxLayout(self)
        layout.setSpacing(10)
        # Grows with the test results rather than clipping them.
        layout.setSizeConstraint(QLayout.SizeConstraint.SetMinimumSize)
        for box in (comfy, replicate, hf, openai, training):
            layout.addWidget(box)
        layout.addWidget(self.note)
        layout.addStretch(1)
        layout.addWidget(buttons)
        self.setMinimumWidth(600)
        self.resize(660, self.sizeHint().height())

        service.checked.connect(self._on_checked)
        service.token_saved.connect(self._on_token_saved)
        service.token_failed.connect(self._on_token_failed)
        service.token_states.connect(self._on_token_states)
        service.refresh_token_states()
        self._restyle()

    # ---- building --------------------------------------------------------------------

    def _token_row(self, service: str, placeholder: str) -> QWidget:
        source = TOKEN_SOURCES[service]
        edit = QLineEdit()
        edit.setObjectName(f"token_{service}")
        edit.setEchoMode(QLineEdit.EchoMode.Password)
        edit.setPlaceholderText(placeholder)
        edit.setToolTip(
            f"Your {source.label} token. Saved in the OS keyring (or {source.env_var}); it "
            "is never shown again, written to the settings file or logged."
        )
        edit.returnPressed.connect(functools.partial(self._save_token, service))
        save = QPushButton("Save")
        save.setObjectName(f"save_{service}")
        save.setToolTip("Keep the token in the OS keyring")
        save.clicked.connect(functools.partial(self._save_token, service))
        state = QLabel("\u2026")
        state.setObjectName(f"state_{service}")
        state.setMinimumWidth(state.fontMetrics().horizontalAdvance("in the keyring \u2714") + 8)
        self.token_edits[service] = edit
        self.token_labels[service] = state
        row = QHBoxLayout()
        row.setContentsMargins(0, 0, 0, 0)
        row.addWidget(edit, 1)
        row.addWidget(save)
        row.addWidget(state)
        widget = QWidget()
        widget.setLayout(row)
        widget.setFocusProxy(edit)
        return widget

    def _group(self, title: str, service: str, fields: list[tuple[str, QWidget]]) -> QGroupBox:
        box = QGroupBox(title)
        grid = QGridLayout(box)
        grid.setHorizontalSpacing(8)
        for row, (text, widget) in enumerate(fields):
            grid.addWidget(_label(text, widget), row, 0)
            grid.addWidget(widget, row, 1)
        test = _ServiceRow(service, self._test)
        self.rows[service] = test
        grid.addWidget(test.button, len(fields), 1, Qt.AlignmentFlag.AlignLeft)
        grid.addWidget(test.result, len(fields) + 1, 1)
        test.result.hide()
        grid.setColumnStretch(1, 1)
        self._label_column(grid)
        return box

    def _label_column(self, grid: QGridLayout) -> None:
        # One label width in every group, so the fields line up down the dialog.
        grid.setColumnMinimumWidth(0, self.fontMetrics().horizontalAdvance("Access token") + 16)

    # ---- values ----------------------------------------------------------------------

    def values(self) -> SettingsValues:
        return SettingsValues(
            comfyui_url=self.comfyui_edit.text().strip(),
            replicate_url=self.replicate_url,
            hf_endpoint=self.hf_endpoint_edit.text().strip(),
            openai_url=self.openai_url_edit.text().strip(),
            openai_model=self.openai_model_box.currentText().strip(),
            output_dir=self.output_edit.text().strip(),
            device=str(self.device_box.currentData() or "auto"),
        )

    def accept(self) -> None:
        for service, edit in self.token_edits.items():
            if edit.text().strip():  # typed but not saved: saving is what OK means
                self._save_token(service)
        super().accept()

    # ---- actions ---------------------------------------------------------------------

    def _test(self, service: str) -> None:
        row = self.rows[service]
        row.button.setEnabled(False)
        row.button.setText("Testing\u2026")
        row.result.show()
        row.result.setStyleSheet(f"color: {artwork.muted_color(self.palette()).name()};")
        row.result.setText("Asking the server\u2026")
        edit = self.token_edits.get(service)
        token = edit.text().strip() if edit is not None else ""
        self.service.test(service, self.values(), token)

    def _save_token(self, service: str) -> None:
        edit = self.token_edits[service]
        token = edit.text().strip()
        if not token:
            return
        edit.clear()  # the widget does not keep it
        self.token_labels[service].setText("saving\u2026")
        self.service.save_token(service, token)

    def _choose_output(self) -> None:
        folder = QFileDialog.getExistingDirectory(
            self, "Choose the output folder", self.output_edit.text()
        )
        if folder:
            self.output_edit.setText(folder)

    # ---- answers ---------------------------------------------------------------------

    def _on_checked(self, service: str, result: CheckResult) -> None:
        row = self.rows.get(service)
        if row is None:
            return
        self.results[service] = result
        row.button.setEnabled(True)
        row.button.setText("Test connection")
        color = artwork.success_color if result.ok else artwork.error_color
        row.result.setStyleSheet(f"color: {color(self.palette()).name()};")
        row.result.setText(("\u2714 " if result.ok else "\u26a0 ") + result.message)
        row.result.show()
        # A wrapped label in a group box does not ask for its height by itself.
        width = max(self.comfyui_edit.width(), 360)
        row.result.setMinimumHeight(row.result.heightForWidth(width))
        self.resize(self.width(), max(self.height(), self.sizeHint().height()))
        if service == OPENAI and result.items:
            current = self.openai_model_box.currentText()
            self.openai_model_box.clear()
            self.openai_model_box.addItems(list(result.items))
            self.openai_model_box.setEditText(current or result.items[0])

    def _on_token_saved(self, service: str, warning: str) -> None:
        label = self.token_labels.get(service)
        if label is None:
            return
        if warning:
            label.setText("\u26a0 in tokens.json")
            label.setToolTip(warning)
            self.note.setText(warning)
            self.note.setStyleSheet(f"color: {artwork.error_color(self.palette()).name()};")

    def _on_token_failed(self, service: str, message: str) -> None:
        label = self.token_labels.get(service)
        if label is not None:
            label.setText("\u26a0 not saved")
            label.setToolTip(message)
        self.note.setText(message)
        self.note.setStyleSheet(f"color: {artwork.error_color(self.palette()).name()};")

    def _on_token_states(self, states: dict[str, str]) -> None:
        for service, text in states.items():
            label = self.token_labels.get(service)
            if label is None or label.text().startswith("\u26a0"):
                continue
            mark = "" if text == "not set" else " \u2714"
            label.setText(text + mark)
            label.setToolTip(f"The {TOKEN_SOURCES[service].label} token: {text}.")

    def _restyle(self) -> None:
        muted = artwork.muted_color(self.palette()).name()
        for label in self.token_labels.values():
            label.setStyleSheet(f"color: {muted};")
        if not self.note.styleSheet():
            self.note.setStyleSheet(f"color: {muted};")


def _label(text: str, buddy: QWidget) -> QLabel:
    label = QLabel(text)
    label.setBuddy(buddy)
    return label
