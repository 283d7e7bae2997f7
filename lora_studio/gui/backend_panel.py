"""Where to train: this machine, a ComfyUI server, or Replicate.

:class:`BackendChoice` is the plain value the window remembers (in QSettings, never a
token) and the controller turns into a :class:`~lora_studio.core.jobs.JobSpec`'s backend
options. :class:`BackendPanel` edits it::

    Train on [Replicate (cloud GPUs)     v]
    Trainer  [Flux dev LoRA v]   Version [latest       ]
    Model    [you/my-lora    ]   GPU     [Nvidia H100  v]
    Token    [••••••••••] [Save]   saved in the keyring
    [Test connection]  Signed in to Replicate as you; ...
    Estimated cost: about $0.42 ...

The panel never talks to a server itself: "Test connection" and "Save token" are signals
the controller answers (:meth:`BackendPanel.set_check_result`,
:meth:`BackendPanel.set_token_state`).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import (
    QComboBox,
    QFrame,
    QGridLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from lora_studio.backends.replicate import PRICE_PER_SECOND, TRAINERS
from lora_studio.core.jobs import BackendType
from lora_studio.gui import artwork

#: QSettings key of the remembered :class:`BackendChoice` (JSON; never a token)
KEY_BACKEND = "training/backend"
DEFAULT_COMFYUI_URL = "http://127.0.0.1:8188"
DEFAULT_TRAINER = "ostris/flux-dev-lora-trainer"

BACKEND_LABELS = {
    BackendType.LOCAL: "This computer",
    BackendType.COMFYUI: "ComfyUI server",
    BackendType.REPLICATE: "Replicate (cloud GPUs, paid)",
}


@dataclass(frozen=True)
class BackendChoice:
    """Where the next run trains, and that backend's non-secret options."""

    kind: BackendType = BackendType.LOCAL
    comfyui_url: str = DEFAULT_COMFYUI_URL
    comfyui_checkpoint: str = ""
    replicate_trainer: str = DEFAULT_TRAINER
    replicate_version: str = ""
    replicate_destination: str = ""
    replicate_hardware: str = ""
    replicate_url: str = ""  # empty: api.replicate.com

    @property
    def is_remote(self) -> bool:
        return self.kind is not BackendType.LOCAL

    def backend_options(self) -> dict[str, Any]:
        """The JobSpec ``backend_options`` of this choice (see backends/factory.py)."""
        if self.kind is BackendType.COMFYUI:
            options = {"url": self.comfyui_url.strip()}
            if self.comfyui_checkpoint:
                options["checkpoint"] = self.comfyui_checkpoint
            return options
        if self.kind is BackendType.REPLICATE:
            values = {
                "url": self.replicate_url.strip(),
                "trainer": self.replicate_trainer,
                "trainer_version": self.replicate_version.strip(),
                "destination": self.replicate_destination.strip(),
                "hardware": self.replicate_hardware,
            }
            return {key: value for key, value in values.items() if value}
        return {}

    def problem(self) -> str | None:
        """What must be filled in before a run can start (``None``: nothing)."""
        if self.kind is BackendType.COMFYUI and not self.comfyui_url.strip():
            return "Enter the ComfyUI server's address, e.g. http://127.0.0.1:8188."
        if self.kind is BackendType.COMFYUI and not self.comfyui_checkpoint:
            return "Press Test connection and pick one of the server's checkpoints."
        return None

    def to_json(self) -> str:
        data = asdict(self)
        data["kind"] = self.kind.value
        return json.dumps(data)

    @classmethod
    def from_json(cls, text: str | None) -> BackendChoice:
        """The remembered choice; anything unreadable gives the default (train here)."""
        try:
            data = json.loads(text or "{}")
            known = {f.name for f in fields(cls)}
            values = {k: str(v) for k, v in data.items() if k in known}
            values["kind"] = BackendType(values.get("kind", "local"))  # type: ignore[assignment]
            return cls(**values)  # type: ignore[arg-type]
        except (ValueError, TypeError, AttributeError):
            return cls()


class BackendPanel(QFrame):
    """Choose where to train (see the module docstring).

    Signals:
        choice_changed(BackendChoice): the user changed the backend or one of its options.
        test_requested(): "Test connection" was pressed.
        token_save_requested(str): save this Replicate token in the OS keyring.
    """

    choice_changed = Signal(object)
    test_requested = Signal()
    token_save_requested = Signal(str)

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("backendPanel")
        self.setStyleSheet(
            "#backendPanel { border: 1px solid #d6d9e6; border-radius: 6px; }"
            " QLabel#backendStatus { padding-left: 4px; }"
        )
        self._choice = BackendChoice()
        self._updating = False

        self.kind_box = QComboBox()
        for kind, label in BACKEND_LABELS.items():
            self.kind_box.addItem(label, kind.value)
        self.kind_box.setToolTip(
            "Where the run trains: on this computer's GPU (or CPU), on a ComfyUI server "
            "with its training nodes, or on Replicate's GPUs (billed per second)"
        )
        self.kind_box.activated.connect(self._on_edited)
        self.local_note = QLabel("Uses the GPUs chosen above.")
        self.local_note.setStyleSheet(f"color: {artwork.MUTED.name()};")
        head = QHBoxLayout()
        head.addWidget(QLabel("<b>Train on</b>"))
        head.addWidget(self.kind_box, 1)

        # ComfyUI
        self.comfy_url_edit = QLineEdit()
        self.comfy_url_edit.setPlaceholderText(DEFAULT_COMFYUI_URL)
        self.comfy_url_edit.setToolTip("The ComfyUI server's address (a trailing /api is fine)")
        self.comfy_url_edit.editingFinished.connect(self._on_edited)
        self.checkpoint_box = QComboBox()
        self.checkpoint_box.setMinimumContentsLength(16)
        self.checkpoint_box.setSizeAdjustPolicy(
            QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon
        )
        self.checkpoint_box.setPlaceholderText("Test connection to list them")
        self.checkpoint_box.setToolTip("The server's checkpoint to train the LoRA on")
        self.checkpoint_box.activated.connect(self._on_edited)
        self.comfy_page = QWidget()
        comfy = QGridLayout(self.comfy_page)
        comfy.setContentsMargins(0, 0, 0, 0)
        comfy.addWidget(QLabel("Server"), 0, 0)
        comfy.addWidget(self.comfy_url_edit, 0, 1)
        comfy.addWidget(QLabel("Checkpoint"), 1, 0)
        comfy.addWidget(self.checkpoint_box, 1, 1)
        comfy.setColumnStretch(1, 1)

        # Replicate
        self.trainer_box = QComboBox()
        for model, profile in TRAINERS.items():
            self.trainer_box.addItem(profile.label, model)
            self.trainer_box.setItemData(
                self.trainer_box.count() - 1, model, Qt.ItemDataRole.ToolTipRole
            )
        self.trainer_box.setToolTip("The Replicate model that trains the LoRA")
        self.trainer_box.activated.connect(self._on_edited)
        self.version_edit = QLineEdit()
        self.version_edit.setPlaceholderText("latest")
        self.version_edit.setToolTip("Pin a trainer version id (empty: its latest version)")
        self.version_edit.editingFinished.connect(self._on_edited)
        self.destination_edit = QLineEdit()
        self.destination_edit.setPlaceholderText("you/model-name")
        self.destination_edit.setToolTip(
            "The Replicate model (owner/name) the trained version goes to; created (private) "
            "when it does not exist. Empty: <your user name>/<the LoRA's name>"
        )
        self.destination_edit.editingFinished.connect(self._on_edited)
        self.hardware_box = QComboBox()
        self.hardware_box.addItem("Trainer default", "")
        for sku, price in PRICE_PER_SECOND.items():
            self.hardware_box.addItem(f"{price.label} (${price.dollars_per_second:g}/s)", sku)
        self.hardware_box.setToolTip("The hardware the cost estimate assumes")
        self.hardware_box.activated.connect(self._on_edited)
        self.api_url_edit = QLineEdit()
        self.api_url_edit.setPlaceholderText("https://api.replicate.com")
        self.api_url_edit.setToolTip("Replicate's API address (change it only for a proxy)")
        self.api_url_edit.editingFinished.connect(self._on_edited)
        self.token_edit = QLineEdit()
        self.token_edit.setEchoMode(QLineEdit.EchoMode.Password)
        self.token_edit.setPlaceholderText("r8_\u2026 from replicate.com/account/api-tokens")
        self.token_edit.setToolTip(
            "Your Replicate API token. It is kept in the OS keyring, never in a file or a log."
        )
        self.token_edit.returnPressed.connect(self._save_token)
        self.save_token_button = QPushButton("Save token")
        self.save_token_button.setToolTip("Keep the token in the OS keyring")
        self.save_token_button.clicked.connect(self._save_token)
        self.token_state = QLabel()
        self.token_state.setStyleSheet(f"color: {artwork.MUTED.name()};")
        token_row = QHBoxLayout()
        token_row.addWidget(self.token_edit, 1)
        token_row.addWidget(self.save_token_button)
        token_row.addWidget(self.token_state)
        self.replicate_page = QWidget()
        rep = QGridLayout(self.replicate_page)
        rep.setContentsMargins(0, 0, 0, 0)
        rep.addWidget(QLabel("Trainer"), 0, 0)
        rep.addWidget(self.trainer_box, 0, 1)
        rep.addWidget(QLabel("Version"), 0, 2)
        rep.addWidget(self.version_edit, 0, 3)
        rep.addWidget(QLabel("Model"), 1, 0)
        rep.addWidget(self.destination_edit, 1, 1)
        rep.addWidget(QLabel("GPU"), 1, 2)
        rep.addWidget(self.hardware_box, 1, 3)
        rep.addWidget(QLabel("Token"), 2, 0)
        rep.addLayout(token_row, 2, 1, 1, 3)
        rep.addWidget(QLabel("API"), 3, 0)
        rep.addWidget(self.api_url_edit, 3, 1, 1, 3)
        rep.setColumnStretch(1, 3)
        rep.setColumnStretch(3, 2)

        self.test_button = QPushButton("Test connection")
        self.test_button.setToolTip("Ask the server whether it can train, and with what")
        self.test_button.clicked.connect(self._on_test)
        self.status_label = QLabel()
        self.status_label.setObjectName("backendStatus")
        self.status_label.setWordWrap(True)
        self.status_label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.test_row = QWidget()
        test = QHBoxLayout(self.test_row)
        test.setContentsMargins(0, 0, 0, 0)
        test.addWidget(self.test_button, 0, Qt.AlignmentFlag.AlignTop)
        test.addWidget(self.status_label, 1)
        self.cost_label = QLabel()
        self.cost_label.setWordWrap(True)
        self.cost_label.setToolTip(
            "Replicate bills the seconds the trainer runs; the estimate uses the trainer's "
            "typical speed and the published price per second"
        )

        layout = QVBoxLayout(self)
        layout.setContentsMargins(8, 6, 8, 6)
        layout.setSpacing(4)
        layout.addLayout(head)
        layout.addWidget(self.local_note)
        layout.addWidget(self.comfy_page)
        layout.addWidget(self.replicate_page)
        layout.addWidget(self.test_row)
        layout.addWidget(self.cost_label)
        self.set_choice(BackendChoice())

    # ---- state -----------------------------------------------------------------------

    @property
    def choice(self) -> BackendChoice:
        return self._choice

    def set_choice(self, choice: BackendChoice) -> None:
        """Show ``choice`` (emits nothing)."""
        self._updating = True
        try:
            self._choice = choice
            self.kind_box.setCurrentIndex(max(0, self.kind_box.findData(choice.kind.value)))
            self.comfy_url_edit.setText(choice.comfyui_url)
            if (
                choice.comfyui_checkpoint
                and self.checkpoint_box.findText(choice.comfyui_checkpoint) < 0
            ):
                self.checkpoint_box.addItem(choice.comfyui_checkpoint)
            self.checkpoint_box.setCurrentIndex(
                self.checkpoint_box.findText(choice.comfyui_checkpoint)
            )
            trainer = self.trainer_box.findData(choice.replicate_trainer)
            self.trainer_box.setCurrentIndex(max(0, trainer))
            self.version_edit.setText(choice.replicate_version)
            self.destination_edit.setText(choice.replicate_destination)
            self.hardware_box.setCurrentIndex(
                max(0, self.hardware_box.findData(choice.replicate_hardware))
            )
            self.api_url_edit.setText(choice.replicate_url)
        finally:
            self._updating = False
        self._show_page()

    def set_checkpoints(self, names: list[str] | tuple[str, ...]) -> None:
        """Offer the server's checkpoints (keeping the chosen one when it is still there)."""
        current = self._choice.comfyui_checkpoint
        self._updating = True
        try:
            self.checkpoint_box.clear()
            self.checkpoint_box.addItems(list(names))
            index = self.checkpoint_box.findText(current) if current else -1
            self.checkpoint_box.setCurrentIndex(index if index >= 0 else (0 if names else -1))
        finally:
            self._updating = False
        self._on_edited()

    def set_check_result(self, ok: bool, message: str) -> None:
        """Show what "Test connection" found (``ok=False``: why it cannot train)."""
        self.test_button.setEnabled(True)
        self.test_button.setText("Test connection")
        color = artwork.SUCCESS if ok else artwork.ERROR
        mark = "\u2714" if ok else "\u26a0"
        self.status_label.setStyleSheet(f"color: {color.name()};")
        self.status_label.setText(f"{mark} {message}")

    def set_token_state(self, text: str) -> None:
        """Where the Replicate token comes from (never the token itself): a few words
        beside the token field, the whole sentence in its tooltip."""
        short = "no token"
        if "keyring" in text:
            short = "\u2714 in keyring"
        elif "REPLICATE_API_TOKEN" in text or "environment" in text:
            short = "\u2714 from environment"
        self.token_state.setText(short)
        self.token_state.setToolTip(text)

    def set_cost(self, text: str) -> None:
        """The estimated cost of the run on Replicate ("" hides it)."""
        self.cost_label.setText(text)
        self.cost_label.setVisible(bool(text) and self._choice.kind is BackendType.REPLICATE)

    # ---- internals ---------------------------------------------------------------------

    def _read(self) -> BackendChoice:
        kind = BackendType(self.kind_box.currentData() or BackendType.LOCAL.value)
        return replace(
            self._choice,
            kind=kind,
            comfyui_url=self.comfy_url_edit.text().strip() or DEFAULT_COMFYUI_URL,
            comfyui_checkpoint=self.checkpoint_box.currentText(),
            replicate_trainer=str(self.trainer_box.currentData() or DEFAULT_TRAINER),
            replicate_version=self.version_edit.text().strip(),
            replicate_destination=self.destination_edit.text().strip(),
            replicate_hardware=str(self.hardware_box.currentData() or ""),
            replicate_url=self.api_url_edit.text().strip(),
        )

    def _on_edited(self, *_: object) -> None:
        if self._updating:
            return
        choice = self._read()
        kind_changed = choice.kind is not self._choice.kind
        if choice == self._choice:
            return
        self._choice = choice
        if kind_changed:
            self.status_label.clear()
        self._show_page()
        self.choice_changed.emit(choice)

    def _show_page(self) -> None:
        kind = self._choice.kind
        self.local_note.setVisible(kind is BackendType.LOCAL)
        self.comfy_page.setVisible(kind is BackendType.COMFYUI)
        self.replicate_page.setVisible(kind is BackendType.REPLICATE)
        self.test_row.setVisible(kind is not BackendType.LOCAL)
        self.cost_label.setVisible(kind is BackendType.REPLICATE and bool(self.cost_label.text()))

    def _on_test(self) -> None:
        self._on_edited()  # a field still being typed in counts
        self.test_button.setEnabled(False)
        self.test_button.setText("Testing\u2026")
        self.status_label.setStyleSheet(f"color: {artwork.MUTED.name()};")
        self.status_label.setText("Asking the server\u2026")
        self.test_requested.emit()

    def _save_token(self) -> None:
        token = self.token_edit.text().strip()
        if not token:
            return
        self.token_edit.clear()  # the widget does not keep it
        self.token_save_requested.emit(token)
