"""macOS hands a folder dropped on the Dock icon to the running app as a ``QFileOpenEvent``;
the app's filter opens it as the dataset (an image: its folder)."""

from __future__ import annotations

from PySide6.QtGui import QFileOpenEvent
from PySide6.QtWidgets import QApplication

from lora_studio.gui import app as app_module


def test_a_file_open_event_opens_the_folder(qapp: QApplication, papercut) -> None:
    opened: list[str] = []
    event_filter = app_module._file_open_filter(opened.append, qapp)
    qapp.installEventFilter(event_filter)
    try:
        QApplication.sendEvent(qapp, QFileOpenEvent(str(papercut)))
        QApplication.sendEvent(qapp, QFileOpenEvent(str(papercut / "papercut_01.png")))
        QApplication.sendEvent(qapp, QFileOpenEvent(str(papercut / "gone")))  # ignored
    finally:
        qapp.removeEventFilter(event_filter)
    assert opened == [str(papercut), str(papercut)]
