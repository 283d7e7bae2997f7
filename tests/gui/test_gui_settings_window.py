"""The window's side of the settings: Edit › Settings applies and remembers what the
dialog says (never a token in the settings file), the status bar, and the layout that
persists between runs."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import keyring
import pytest
from gui_helpers import close_window, open_and_wait, run
from memory_keyring import MemoryKeyring
from PySide6.QtCore import QSettings

from lora_studio.core import secrets
from lora_studio.core.jobs import BackendType
from lora_studio.gui import settings as app_settings
from lora_studio.gui.async_signals import signal_future, wait_until
from lora_studio.gui.settings_dialog import REPLICATE, SettingsValues

TOKEN = "r8_WindowSettingsToken0123456789"


@pytest.fixture
def memory_keyring(monkeypatch: pytest.MonkeyPatch) -> Iterator[MemoryKeyring]:
    for source in (secrets.REPLICATE, secrets.HUGGINGFACE, secrets.OPENAI):
        monkeypatch.delenv(source.env_var, raising=False)
    monkeypatch.delenv("LORA_STUDIO_DEVICE", raising=False)
    previous = keyring.get_keyring()
    backend = MemoryKeyring()
    keyring.set_keyring(backend)
    yield backend
    keyring.set_keyring(previous)
    os.environ.pop("LORA_STUDIO_DEVICE", None)


def test_settings_are_applied_and_remembered_but_tokens_stay_in_the_keyring(
    make_window, qloop, gui_home, tmp_path, memory_keyring
) -> None:
    window = make_window()
    action = window.settings_action
    assert action.text().replace("&", "") == "Settings\u2026"
    assert action in window.menuBar().actions()[1].menu().actions()  # File, Edit, ...
    dialog = window.open_settings_dialog()
    assert dialog.values().output_dir == str(window.controller.output_dir)
    dialog.comfyui_edit.setText("http://127.0.0.1:8190")
    dialog.openai_url_edit.setText("http://127.0.0.1:8080/v1")
    dialog.openai_model_box.setEditText("llava-1.6")
    dialog.output_edit.setText(str(tmp_path / "loras"))
    dialog.device_box.setCurrentIndex(dialog.device_box.findData("cpu"))
    dialog.token_edits[REPLICATE].setText(TOKEN)

    async def scenario() -> None:
        saved = signal_future(dialog.service.token_saved)
        dialog.ok_button.click()  # OK saves a token that was typed but not saved yet
        await saved

    run(qloop, scenario())
    assert memory_keyring.passwords[(secrets.KEYRING_SERVICE, "replicate")] == TOKEN
    assert window.backend_panel.choice.comfyui_url == "http://127.0.0.1:8190"
    assert window.controller.backend_choice.comfyui_url == "http://127.0.0.1:8190"
    assert window.controller.output_dir == tmp_path / "loras"
    assert os.environ["LORA_STUDIO_DEVICE"] == "cpu"
    caption = app_settings.read_caption_choices(window.settings)
    assert caption["openai/url"] == "http://127.0.0.1:8080/v1"  # the caption dialog's default
    assert caption["openai/model"] == "llava-1.6"

    window.settings.sync()
    settings_file = Path(window.settings.fileName())
    assert TOKEN not in settings_file.read_text(encoding="utf-8")
    # The next dialog (and the next start) shows what was chosen.
    again = window.open_settings_dialog()
    assert again is not dialog
    values = again.values()
    assert values == SettingsValues(
        comfyui_url="http://127.0.0.1:8190",
        replicate_url="",
        hf_endpoint="",
        openai_url="http://127.0.0.1:8080/v1",
        openai_model="llava-1.6",
        output_dir=str(tmp_path / "loras"),
        device="cpu",
    )
    assert window.backend_panel.choice.kind is BackendType.LOCAL  # only the URL changed
    again.reject()


def test_status_bar_counts_images_and_captions(make_window, qloop, papercut) -> None:
    window = make_window()
    assert window.status_dataset.text() == "No dataset"
    open_and_wait(qloop, window, papercut)
    assert window.status_dataset.text() == "papercut: 12 images, 10 captioned"
    uncaptioned = next(i.path for i in window.controller.dataset.images if not i.caption)

    async def scenario() -> None:
        saved = signal_future(window.controller.caption_saved)
        window.controller.save_caption(uncaptioned, "papercut style, a new caption")
        await saved
        await wait_until(lambda: "11 captioned" in window.status_dataset.text(), 10)

    run(qloop, scenario())
    window.controller.gpu_detected.emit("", 0.0)
    assert window.status_device.text() == "No CUDA GPU: CPU"
    window.controller.gpu_detected.emit("NVIDIA RTX 4090", 23.6)
    assert window.status_device.text() == "NVIDIA RTX 4090, 24 GB"
    window.show_message("info", "Saved the settings.\nSecond line")
    assert window.statusBar().currentMessage() == "Saved the settings."


def test_window_geometry_splitters_and_open_sections_persist(make_window, qloop, gui_home) -> None:
    settings_file = gui_home / "layout.ini"
    window = make_window(settings_file=settings_file)
    window.resize(1320, 780)
    window.preset_form.advanced.set_expanded_sections(["advanced", "network"])
    close_window(qloop, window)
    saved = QSettings(str(settings_file), QSettings.Format.IniFormat)
    geometry = saved.value(app_settings.KEY_GEOMETRY)
    assert geometry is not None

    again = make_window(settings_file=settings_file)
    assert again.restoreGeometry(geometry)  # (offscreen, the size is clamped to its screen)
    assert len(saved.value(app_settings.KEY_SPLITTERS)) == 2  # both splitters
    assert again.preset_form.advanced.expanded_sections() == ["advanced", "network"]
