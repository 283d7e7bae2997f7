"""File › Open Recent: the dataset folders opened last, remembered in ``QSettings``.

The list holds at most :data:`LIMIT` folders, the newest first, each once. When the menu
is about to show, folders that no longer exist (moved, deleted, an unplugged disk) are
dropped from it, and the menu says so in a line of its own.
"""

from __future__ import annotations

import os
from pathlib import Path

from PySide6.QtCore import QSettings, Signal
from PySide6.QtGui import QAction
from PySide6.QtWidgets import QMenu, QWidget

KEY_RECENT = "dataset/recent"
LIMIT = 10


def read_recent(settings: QSettings) -> list[str]:
    """The remembered folders, newest first."""
    value = settings.value(KEY_RECENT)
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list):
        return []
    return [str(v) for v in value if v][:LIMIT]


def remember_recent(settings: QSettings, folder: str | os.PathLike[str]) -> list[str]:
    """Put ``folder`` first in the list (once); returns the new list."""
    text = str(folder)
    folders = [text] + [f for f in read_recent(settings) if f != text]
    settings.setValue(KEY_RECENT, folders[:LIMIT])
    return folders[:LIMIT]


def forget_recent(settings: QSettings, folders: list[str] | None = None) -> None:
    """Drop ``folders`` from the list (``None``: all of them)."""
    kept = [] if folders is None else [f for f in read_recent(settings) if f not in folders]
    settings.setValue(KEY_RECENT, kept)


class RecentMenu(QMenu):
    """The Open Recent submenu.

    Signals:
        folder_chosen(str): the user picked a folder.
    """

    folder_chosen = Signal(str)

    def __init__(self, settings: QSettings, parent: QWidget | None = None) -> None:
        super().__init__("Open &Recent", parent)
        self.settings = settings
        self.pruned: list[str] = []
        self.aboutToShow.connect(self.rebuild)
        self.rebuild()

    def rebuild(self) -> None:
        """Fill the menu, dropping folders that are gone (a few ``stat`` calls)."""
        folders = read_recent(self.settings)
        gone = [f for f in folders if not Path(f).is_dir()]
        if gone:
            forget_recent(self.settings, gone)
            self.pruned = gone
        self.clear()
        shown = [f for f in folders if f not in gone]
        for number, folder in enumerate(shown, 1):
            escaped = folder.replace("&", "&&")  # a lone & would mark a shortcut key
            action = QAction(f"&{number} {escaped}" if number < 10 else escaped, self)
            action.setToolTip(folder)
            action.triggered.connect(lambda _=False, f=folder: self.folder_chosen.emit(f))
            self.addAction(action)
        if not shown:
            empty = self.addAction("No recent datasets")
            empty.setEnabled(False)
        if self.pruned:
            self.addSeparator()
            n = len(self.pruned)
            note = self.addAction(
                f"{n} folder{'s' if n != 1 else ''} no longer found, removed from this list"
            )
            note.setToolTip("\n".join(self.pruned))
            note.setEnabled(False)
        if shown:
            self.addSeparator()
            clear = self.addAction("Clear the list")
            clear.triggered.connect(self._clear)

    def _clear(self) -> None:
        forget_recent(self.settings)
        self.pruned = []
        self.rebuild()
