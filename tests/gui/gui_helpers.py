"""Helpers for the window tests (scenario runner, drag and drop, tidy closing)."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

import pytest
import shiboken6
from PIL import Image
from PySide6.QtCore import QMimeData, QPoint, QPointF, Qt, QUrl
from PySide6.QtGui import QDragEnterEvent, QDropEvent
from PySide6.QtWidgets import QApplication

from lora_studio.core.config import LoraConfig
from lora_studio.gui import thumbnail_loader
from lora_studio.gui.async_signals import wait_until
from lora_studio.gui.main_window import MainWindow

T = TypeVar("T")

# Generous: the machine running the suite may be a loaded 2-core box.
SCENARIO_TIMEOUT = 180.0
TEST_TRIGGER = "papercut style"


def fast_config(**changes: Any) -> LoraConfig:
    """Seconds-long runs: 64 px, a few steps."""
    base = LoraConfig.fast_preset().replace(
        resolution=64, max_steps=4, name="gui_test", trigger_word=TEST_TRIGGER
    )
    return base.replace(**changes) if changes else base


def run(
    loop: asyncio.AbstractEventLoop, coro: Coroutine[Any, Any, T], timeout: float = SCENARIO_TIMEOUT
) -> T:
    """Run ``coro`` on the qasync loop (the Qt event loop spins meanwhile)."""
    return loop.run_until_complete(asyncio.wait_for(coro, timeout))


def open_and_wait(loop: asyncio.AbstractEventLoop, window: MainWindow, folder: Path) -> Any:
    """Open ``folder`` through the controller and wait until the dataset is loaded."""

    async def scenario() -> Any:
        from lora_studio.gui.async_signals import signal_future

        loaded = signal_future(window.controller.dataset_loaded)
        window.controller.open_dataset(folder)
        (dataset,) = await loaded
        return dataset

    return run(loop, scenario())


def open_validated(loop: asyncio.AbstractEventLoop, window: MainWindow, folder: Path) -> None:
    """Open ``folder`` and wait for the work that follows: the image check and the
    bucket placement."""

    async def scenario() -> None:
        from lora_studio.gui.async_signals import signal_future

        validated = signal_future(window.controller.dataset_validated)
        placed = signal_future(window.controller.buckets_changed)
        window.controller.open_dataset(folder)
        await validated
        await placed

    run(loop, scenario())


def drop_on(window: MainWindow, *paths: Path) -> tuple[bool, bool]:
    """Drag ``paths`` over the window and drop them, as a file manager would.

    Returns whether the drag was accepted and whether the drop hint showed meanwhile.
    """
    mime = QMimeData()
    mime.setUrls([QUrl.fromLocalFile(str(p)) for p in paths])
    centre = window.rect().center()
    args = (
        Qt.DropAction.CopyAction,
        mime,
        Qt.MouseButton.LeftButton,
        Qt.KeyboardModifier.NoModifier,
    )
    try:
        enter = QDragEnterEvent(QPointF(centre), *args)  # Qt >= 6.12
    except TypeError:  # pragma: no cover - older Qt takes an integer point
        enter = QDragEnterEvent(QPoint(centre), *args)
    QApplication.sendEvent(window, enter)
    accepted = enter.isAccepted()
    hint_shown = window.drop_hint.isVisible()
    drop = QDropEvent(
        QPointF(centre),
        Qt.DropAction.CopyAction,
        mime,
        Qt.MouseButton.LeftButton,
        Qt.KeyboardModifier.NoModifier,
    )
    QApplication.sendEvent(window, drop)
    return accepted, hint_shown


def close_window(loop: asyncio.AbstractEventLoop, window: MainWindow) -> None:
    """Close like a user would: a running job is cancelled and waited for first."""
    if not shiboken6.isValid(window) or getattr(window, "_test_closed", False):
        return
    window._test_closed = True  # type: ignore[attr-defined]
    controller = window.controller
    if window.isVisible():
        window.close()
        if controller.is_training:
            run(loop, wait_until(lambda: not window.isVisible(), 120, what="the window to close"))
    assert controller.shutdown(timeout=60), "a training thread was still running"
    window.thumbnails.shutdown()
    window.deleteLater()


def spy_decodes(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """Record each thumbnail decode, in the order they start (the real decoder runs)."""
    decoded: list[Path] = []
    original = thumbnail_loader._decode

    def counted(path: Path, size: int, *args: object) -> Image.Image:
        decoded.append(path)
        return original(path, size, *args)

    monkeypatch.setattr(thumbnail_loader, "_decode", counted)
    return decoded


def small_pngs(folder: Path, count: int, size: tuple[int, int] = (64, 48)) -> list[Path]:
    """``img0.png`` ... in ``folder``, each its own colour."""
    paths = []
    for i in range(count):
        path = folder / f"img{i}.png"
        Image.new("RGB", size, (i * 40 % 256, 90, 120)).save(path)
        paths.append(path)
    return paths
