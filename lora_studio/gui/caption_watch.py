"""Notices caption files changed by another program while a dataset is open.

A ``QFileSystemWatcher`` watches the open dataset's folders (a folder's entry changes when
a caption is saved atomically, by this app or another), its caption files (up to
:data:`MAX_FILES`: an editor that saves in place changes only the file) and its
``metadata.jsonl``. A change
asks the controller, a moment later (:data:`SETTLE_MS`, so a burst of writes is one check),
to compare the captions on disk with the ones it knows
(:meth:`StudioController.check_captions_on_disk`, off the GUI thread); what differs arrives
as ``captions_changed_on_disk``. The app's own saves are no change: the controller already
knows their text. The window also checks when it becomes active again (the user may have
been editing in another program). A save never overwrites an outside change either way:
the controller checks the file again right before writing.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from PySide6.QtCore import QFileSystemWatcher, QObject, QTimer

from lora_studio.core.background import existing, map_paths
from lora_studio.core.dataset import Dataset
from lora_studio.gui.controller import StudioController

#: Wait this long after the last change before checking.
SETTLE_MS = 400
#: Folders watched at most (a watch is an OS handle; repeat folders are few).
MAX_FOLDERS = 256
#: Caption files watched at most (beyond, the folders' changes and the check before each
#: save still catch outside edits).
MAX_FILES = 4000
#: Paths handed to the watcher at a time (each is an OS call).
ADD_CHUNK = 500


class CaptionWatcher(QObject):
    """Watches the open dataset's folders for the controller (see the module docstring)."""

    def __init__(self, controller: StudioController, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.controller = controller
        self.watcher = self._new_watcher()
        self.timer = QTimer(self)
        self.timer.setSingleShot(True)
        self.timer.setInterval(SETTLE_MS)
        self.timer.timeout.connect(controller.check_captions_on_disk)
        self._captions: list[str] = []
        self._generation = 0
        controller.dataset_loaded.connect(self.watch)

    def _new_watcher(self) -> QFileSystemWatcher:
        watcher = QFileSystemWatcher(self)
        watcher.directoryChanged.connect(self._on_directory_changed)
        watcher.fileChanged.connect(self._on_file_changed)
        return watcher

    def watch(self, dataset: Dataset) -> asyncio.Task[None]:
        """Watch ``dataset``'s folders (and ``metadata.jsonl``) instead of the last one's.

        The lists are made on a worker thread (10,000 path names and ``exists()`` calls
        took ~0.1 s of the GUI thread) and handed to the watcher in chunks, so the window
        paints the new dataset meanwhile."""
        self._generation += 1
        # A new watcher: deleting the old one drops its 4,000 watches in ~10 ms, where
        # removePaths() took ~0.15 s of the GUI thread.
        old, self.watcher = self.watcher, self._new_watcher()
        old.blockSignals(True)
        old.deleteLater()
        self._captions = []
        return self.controller.spawn(
            self._watch(dataset, self._generation), "watch the caption files"
        )

    async def _watch(self, dataset: Dataset, generation: int) -> None:
        folders, files, captions = await asyncio.to_thread(_paths_to_watch, dataset)
        if generation != self._generation:
            return  # another dataset was opened meanwhile
        self._captions = captions
        paths = folders + files
        for start in range(0, len(paths), ADD_CHUNK):
            self.watcher.addPaths(paths[start : start + ADD_CHUNK])
            await asyncio.sleep(0)  # let the window paint between chunks
            if generation != self._generation:
                return

    def _on_file_changed(self, path: str) -> None:
        # An atomic rewrite replaces the file: watch the new one.
        if Path(path).exists() and path not in self.watcher.files():
            self.watcher.addPath(path)
        self.timer.start()

    def _on_directory_changed(self, _path: str) -> None:
        # New caption files (written by any program) are watched from now on.
        watched = set(self.watcher.files())
        new = [p for p in self._captions if p not in watched and Path(p).exists()]
        if new:
            self.watcher.addPaths(new)
        self.timer.start()

    def check_soon(self) -> None:
        """Check the captions on disk a moment from now."""
        self.timer.start()


def _paths_to_watch(dataset: Dataset) -> tuple[list[str], list[str], list[str]]:
    """``(folders, files, caption files)`` to watch for ``dataset`` (on a worker thread):
    its folders, its ``metadata.jsonl`` files and the caption files that exist, and every
    sidecar caption path (up to :data:`MAX_FILES`: new ones are watched once they exist)."""
    folders = sorted({str(item.path.parent) for item in dataset.images})[:MAX_FOLDERS]
    files = sorted(
        {str(item.metadata.file) for item in dataset.images if item.metadata is not None}
    )
    captions = [str(item.caption_path) for item in dataset.images if item.metadata is None][
        :MAX_FILES
    ]
    # A big folder's 10,000 exists() calls go to the helper process (see map_paths).
    found = map_paths(existing, captions)
    files += [path for path in captions if found.get(path)]
    return folders, files, captions
