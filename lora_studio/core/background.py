"""A low-priority helper process for the window's long checks of big folders.

Opening a folder starts two passes over every image: the image check (decode, hashes)
and the bucket preview (header reads). Pillow releases the GIL while it decodes, but the
Python around each image does not, and with 10,000 images on worker threads of the
window's own process the GUI thread waited behind them: scrolling the browser stalled
for 120-170 ms at a time. Here they run in **another process** instead, so they share no
GIL with the window, and at a lower CPU priority (``os.nice``), so the window's thread
and its thumbnail decodes get the cores first when both want them.

The process is started on first use (``spawn``: safe next to Qt's threads, and the same
on Linux, macOS and Windows) and kept for the life of the app; work goes to it in small
chunks, so a caller can report progress and stop between chunks. Small folders never
pay for the start-up: :func:`wants_process` says when a folder is big enough.

The functions sent to the process (:func:`check_images`, :func:`read_and_place`) are plain
module functions of ``lora_studio.core``: no Qt is imported there.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import multiprocessing
import multiprocessing.connection
import os
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Executor, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any, TypeVar

log = logging.getLogger(__name__)

#: Folders with at least this many images are checked in the helper process; smaller
#: ones on a thread, where the work is over before a process would have started.
PROCESS_THRESHOLD = 1000
#: Images per chunk sent to the process: small enough to stop and report progress
#: promptly, large enough that pickling costs nothing next to the work.
CHUNK = 32
#: How much lower the helper's CPU priority is (``nice`` increment, POSIX only).
NICENESS = 10

T = TypeVar("T")
R = TypeVar("R")

_lock = threading.Lock()
_executor: ProcessPoolExecutor | None = None


def wants_process(count: int) -> bool:
    """Whether ``count`` images are worth the helper process (see :data:`PROCESS_THRESHOLD`)."""
    return count >= PROCESS_THRESHOLD


def _start_helper() -> None:
    # In the helper process, before any work. It ends with the app, even when the app
    # is killed: a thread waits on the parent's sentinel (closed when the parent dies).
    parent = multiprocessing.parent_process()
    if parent is not None:
        threading.Thread(
            target=_exit_with, args=(parent.sentinel,), name="parent-watch", daemon=True
        ).start()
    # The window comes first.
    if hasattr(os, "nice"):
        # Not allowed here: work at the normal priority.
        with contextlib.suppress(OSError):
            os.nice(NICENESS)


def _exit_with(sentinel: int) -> None:
    multiprocessing.connection.wait([sentinel])
    os._exit(0)


def background_executor() -> ProcessPoolExecutor:
    """The app's helper process (started on first call, shut down at exit)."""
    global _executor
    with _lock:
        if _executor is None:
            workers = max(1, min(4, (os.cpu_count() or 2) - 1))
            _executor = ProcessPoolExecutor(
                max_workers=workers,
                mp_context=multiprocessing.get_context("spawn"),
                initializer=_start_helper,
            )
        return _executor


def shutdown_background() -> None:
    """Stop the helper process (waiting chunks are dropped, a running one ends first);
    the next use starts another."""
    global _executor
    with _lock:
        executor, _executor = _executor, None
    if executor is not None:
        executor.shutdown(wait=True, cancel_futures=True)


atexit.register(shutdown_background)


def _chunks(items: Sequence[T], size: int) -> Iterator[Sequence[T]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def map_chunks(
    function: Callable[[Sequence[T]], list[R]],
    items: Sequence[T],
    *,
    executor: Executor | None = None,
    chunk: int = CHUNK,
    in_flight: int = 2,
    should_stop: Callable[[], bool] | None = None,
    done: Callable[[Sequence[T], list[R]], None] | None = None,
) -> bool:
    """Run ``function`` over ``items`` a chunk at a time on ``executor`` (default: the
    helper process), calling ``done(chunk, results)`` in the calling thread as each
    chunk ends, in the order they end. At most ``in_flight`` chunks per worker are
    queued, so stopping is prompt and memory flat.

    Returns ``False`` if ``should_stop()`` stopped it early (chunks not yet started are
    cancelled). If the helper process dies (killed, out of memory), the chunks it had
    are run here in the calling thread instead, so the work still completes.
    """
    pool = executor if executor is not None else background_executor()
    workers = getattr(pool, "_max_workers", 1)
    queue = iter(_chunks(items, chunk))
    pending: dict[Future[list[R]], Sequence[T]] = {}

    def refill() -> None:
        while len(pending) < workers * in_flight:
            part = next(queue, None)
            if part is None:
                return
            try:
                pending[pool.submit(function, part)] = part
            except (BrokenProcessPool, RuntimeError) as exc:
                _lost(exc)
                results = function(part)
                if done is not None:
                    done(part, results)

    refill()
    while pending:
        if should_stop is not None and should_stop():
            for future in pending:
                future.cancel()
            return False
        finished, _ = wait(list(pending), timeout=0.1, return_when=FIRST_COMPLETED)
        for future in finished:
            part = pending.pop(future)
            try:
                results = future.result()
            except BrokenProcessPool as exc:
                _lost(exc)
                results = function(part)
            if done is not None:
                done(part, results)
        refill()
    return True


def _lost(exc: BaseException) -> None:
    # A dead helper breaks its executor for good: the next use starts a fresh one.
    log.warning("The background process stopped (%s); finishing the work here.", exc)
    global _executor
    with _lock:
        broken = _executor
        if broken is not None and getattr(broken, "_broken", False):
            _executor = None


# ---- work that runs in the helper process ------------------------------------------------


def check_images(paths: Sequence[Path], options: dict[str, Any]) -> list[Any]:
    """:func:`lora_studio.core.validate.check_image_file` of each path (in the helper)."""
    from lora_studio.core.validate import check_image_file

    return [check_image_file(path, **options) for path in paths]


def read_and_place(paths: Iterable[Path], config: Any) -> list[tuple[Any, Any]]:
    """Each image's displayed size from its header (or why it cannot be used) and its
    bucket placement under ``config`` (a :class:`~lora_studio.core.config.LoraConfig`)."""
    from lora_studio.core.buckets import placement_for
    from lora_studio.core.imaging import read_size

    found = []
    for path in paths:
        size = read_size(path)
        found.append((size, size if isinstance(size, str) else placement_for(*size, config)))
    return found


__all__ = [
    "CHUNK",
    "PROCESS_THRESHOLD",
    "background_executor",
    "check_images",
    "map_chunks",
    "read_and_place",
    "shutdown_background",
    "wants_process",
]
