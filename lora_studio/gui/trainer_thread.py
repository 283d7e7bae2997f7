"""The QThread host of the local trainer.

:class:`~lora_studio.backends.local.LocalBackend` takes a ``start_worker`` callable (a
:data:`~lora_studio.backends.local.WorkerStarter`); :class:`QtWorkerStarter` is the GUI's:
it runs each worker in a :class:`TrainerThread` and keeps the ``QThread`` object alive
until the thread has finished, so Qt never destroys a running thread.

The worker only ever calls the backend's callbacks, which hand :class:`Progress` values to
the asyncio loop (``call_soon_threadsafe``); it never touches a widget.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from PySide6.QtCore import QObject, QThread, Slot

log = logging.getLogger(__name__)


class TrainerThread(QThread):
    """Runs one callable on its own ``QThread``.

    It also satisfies :class:`~lora_studio.backends.local.WorkerHandle`
    (``join(timeout)``/``is_alive()``), so the backend can wait for it like a
    ``threading.Thread``.
    """

    def __init__(self, target: Callable[[], None], name: str) -> None:
        super().__init__()
        self._target = target
        self.setObjectName(name)

    def run(self) -> None:  # noqa: D102 - Qt override, runs on the new thread
        try:
            self._target()
        except BaseException:
            # The backend catches everything itself; reaching here is a bug. Log it
            # rather than let Qt print it to a stderr nobody reads.
            log.exception("Worker thread %s crashed", self.objectName())

    def join(self, timeout: float | None = None) -> None:
        """Wait for the thread to end, at most ``timeout`` seconds (``None``: forever)."""
        if timeout is None:
            self.wait()
        else:
            self.wait(max(0, int(timeout * 1000)))

    def is_alive(self) -> bool:
        """``True`` from :meth:`start` until the callable has returned."""
        return self.isRunning()


class QtWorkerStarter(QObject):
    """A :data:`~lora_studio.backends.local.WorkerStarter` that uses ``QThread``.

    Call it like a function: ``starter(target, name)`` starts ``target`` on a new
    :class:`TrainerThread` and returns the thread.
    """

    def __init__(self, parent: QObject | None = None) -> None:
        super().__init__(parent)
        # Strong references: a QThread whose Python wrapper is collected while it runs
        # aborts the process ("QThread: Destroyed while thread is still running").
        self._threads: list[TrainerThread] = []

    def __call__(self, target: Callable[[], None], name: str) -> TrainerThread:
        thread = TrainerThread(target, name)
        # Queued to this object's (the GUI) thread, after the worker has ended.
        thread.finished.connect(self._forget_finished)
        self._threads.append(thread)
        thread.start()
        log.info("Started worker thread %s", name)
        return thread

    @property
    def running(self) -> list[TrainerThread]:
        """Threads that have not finished yet."""
        return [t for t in self._threads if t.isRunning()]

    def join_all(self, timeout: float | None = None) -> bool:
        """Wait for every thread; ``True`` when none is left running.

        Used when the app quits; it blocks, so call it only once the window is gone or
        the threads are known to be stopping.
        """
        for thread in list(self._threads):
            thread.join(timeout)
        self._forget_finished()
        return not self.running

    @Slot()
    def _forget_finished(self) -> None:
        still: list[TrainerThread] = []
        for thread in self._threads:
            if thread.isFinished():
                thread.wait()  # returns at once; makes sure the native thread has exited
            else:
                still.append(thread)
        self._threads = still
