"""Awaiting Qt signals from asyncio code (qasync), for scripts and tests that drive the
window: ``await signal_future(controller.job_finished)``.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from typing import Any

from PySide6.QtCore import SignalInstance


def signal_future(
    signal: SignalInstance, predicate: Callable[..., bool] | None = None
) -> asyncio.Future[tuple[Any, ...]]:
    """A future resolved with the arguments of the next emission of ``signal``.

    Connects *now*, so an emission caused by the very next statement is not missed. With
    ``predicate``, only an emission whose arguments satisfy it resolves the future.
    """
    loop = asyncio.get_event_loop()
    future: asyncio.Future[tuple[Any, ...]] = loop.create_future()

    def on_emit(*args: Any) -> None:
        if future.done():
            return
        if predicate is None or predicate(*args):
            future.set_result(args)

    def disconnect(_: asyncio.Future[tuple[Any, ...]]) -> None:
        # RuntimeError: the sender is already gone, and its connections with it.
        with contextlib.suppress(RuntimeError):
            signal.disconnect(on_emit)

    signal.connect(on_emit)
    future.add_done_callback(disconnect)
    return future


async def wait_until(
    condition: Callable[[], bool], timeout: float = 30.0, interval: float = 0.02, what: str = ""
) -> None:
    """Poll ``condition`` on the event loop until it is true.

    Raises:
        TimeoutError: it did not become true within ``timeout`` seconds.
    """
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"Timed out after {timeout:.0f} s waiting for {what or condition}")
        await asyncio.sleep(interval)
