"""Fixtures for the window tests.

The window runs on a real qasync loop: a test builds a scenario coroutine and runs it with
``run(qloop, scenario())``, which spins the Qt event loop (so ``asyncio.to_thread``, the
trainer's QThread and queued signals all work) until the scenario ends. Scenarios wait on
signals (``signal_future``) or on conditions (``wait_until``), never on fixed sleeps.

Every test gets its own ``LORA_STUDIO_HOME`` (settings, data, outputs); the built-in tiny
model is built once per session into a shared cache.
"""

from __future__ import annotations

import asyncio
import gc
import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

import qasync  # noqa: E402
from gui_helpers import close_window, fast_config  # noqa: E402
from PySide6.QtCore import QEvent  # noqa: E402
from PySide6.QtWidgets import QApplication  # noqa: E402

import lora_studio.gui  # noqa: E402,F401 - applies qt_compat before the first signal
from lora_studio.core.config import LoraConfig  # noqa: E402
from lora_studio.core.paths import sample_dataset_dir  # noqa: E402
from lora_studio.gui.controller import StudioController  # noqa: E402
from lora_studio.gui.main_window import MainWindow  # noqa: E402
from lora_studio.gui.settings import open_settings  # noqa: E402


@pytest.fixture(scope="session", autouse=True)
def _gui_session_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    # The root conftest shares one model cache per session; keep that, but never fall
    # back to the real user cache if it is not set.
    with pytest.MonkeyPatch.context() as patch:
        if not os.environ.get("LORA_STUDIO_CACHE"):
            patch.setenv("LORA_STUDIO_CACHE", str(tmp_path_factory.mktemp("gui-cache")))
        yield


@pytest.fixture(autouse=True)
def gui_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """This test's app home: settings, data (jobs, sample copy), outputs."""
    home = tmp_path / "home"
    monkeypatch.setenv("LORA_STUDIO_HOME", str(home))
    return home


@pytest.fixture(scope="session")
def built_tiny_model(_gui_session_cache: None) -> Path:
    """The built-in tiny model, built once per session (a few seconds)."""
    from lora_studio.training.tiny import ensure_builtin_model

    folder = ensure_builtin_model("tiny-sd15")
    # torch & co. are loaded now: keep their objects out of the gc.collect() calls that the
    # fixtures make between tests (a full collection of them costs ~0.3 s each time).
    gc.freeze()
    return folder


@pytest.fixture
def papercut(tmp_path: Path) -> Path:
    """A private copy of the sample dataset: 12 images, 10 captions."""
    target = tmp_path / "papercut"
    shutil.copytree(sample_dataset_dir(), target, ignore=shutil.ignore_patterns("README.md"))
    return target


@pytest.fixture
def qloop(qapp: QApplication) -> Iterator[asyncio.AbstractEventLoop]:
    # Closing a test's last window must not quit the app (that would stop the loop).
    qapp.setQuitOnLastWindowClosed(False)
    # Free the previous test's loop and windows here, on the GUI thread. Left to chance,
    # the collector runs in whatever thread allocates next - e.g. the trainer's, where
    # accelerate calls gc.collect() - and Qt objects must die on their own thread.
    gc.collect()
    loop = qasync.QEventLoop(qapp)
    asyncio.set_event_loop(loop)
    yield loop
    pending = [t for t in asyncio.all_tasks(loop) if not t.done()]
    for task in pending:
        task.cancel()
    if pending:
        loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
    loop.close()
    asyncio.set_event_loop(None)
    # The closed loop's QObjects (its timer, its call_soon signaller, its executor's
    # QThreads) must die here, on the GUI thread. Left to the collector, they die in
    # whichever thread collects next - a worker thread of a later test without Qt, where
    # aiohttp's cache of Applications (which hold their loop) or a reference cycle lets go
    # of them - and Qt then crashes in its next event processing.
    _delete_qt_parts(loop)
    del pending, loop
    gc.collect()


def _delete_qt_parts(loop: asyncio.AbstractEventLoop) -> None:
    import shiboken6

    executor = getattr(loop, "_QEventLoop__default_executor", None)
    parts = [
        getattr(loop, "_timer", None),
        getattr(loop, "_QEventLoop__call_soon_signaller", None),
        *(getattr(executor, "_QThreadExecutor__workers", None) or ()),
    ]
    for part in parts:
        if part is not None and shiboken6.isValid(part):
            shiboken6.delete(part)


WindowFactory = Callable[..., MainWindow]


@pytest.fixture
def make_window(qloop: asyncio.AbstractEventLoop, gui_home: Path) -> Iterator[WindowFactory]:
    """Build windows (each with its own controller) that are closed cleanly afterwards."""
    made: list[MainWindow] = []

    def make(
        *,
        config: LoraConfig | None = None,
        output_dir: Path | None = None,
        base_model: str | None = None,
        settings_file: Path | None = None,
    ) -> MainWindow:
        controller = StudioController(
            config=config or fast_config(),
            output_dir=output_dir or gui_home / "outputs",
            base_model=base_model,
            loop=qloop,
        )
        window = MainWindow(
            controller,
            open_settings(settings_file or gui_home / "settings.ini"),
            confirm_close=False,
        )
        window.resize(1280, 820)
        window.show()
        made.append(window)
        return window

    yield make
    for window in made:
        close_window(qloop, window)
    made.clear()
    QApplication.sendPostedEvents(None, QEvent.Type.DeferredDelete)
    gc.collect()
