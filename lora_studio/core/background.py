"""A low-priority helper process for the window's long checks of big folders.

Opening a folder starts two passes over every image: the image check (decode, hashes)
and the bucket preview (header reads). Pillow releases the GIL while it decodes, but the
Python around each image does not, and with 10,000 images on worker threads of the
window's own process the GUI thread waited behind them: scrolling the browser stalled
for 120-170 ms at a time. Here they run in **another process** instead, so they share no
GIL with the window, and at the lowest CPU priority (on Linux ``SCHED_IDLE``: it runs
on a core nothing else wants; elsewhere ``os.nice``), so the window's thread and its
thumbnail decodes get the cores first. Niced by 10 only, the check (a full decode per
image) still took a share of the two cores while the browser scrolled: scroll stalls of
57-113 ms, 27-44 ms with the helper stopped.

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
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import (
    FIRST_COMPLETED,
    CancelledError,
    Executor,
    Future,
    ProcessPoolExecutor,
    wait,
)
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
#: Paths per chunk for the cheap per-file calls (:func:`file_sizes`, :func:`existing`).
PATH_CHUNK = 2000
#: How much lower the helper's CPU priority is (``nice`` increment, POSIX only).
NICENESS = 19

T = TypeVar("T")
R = TypeVar("R")

_lock = threading.Lock()
_executor: ProcessPoolExecutor | None = None
#: Shared with the helper: until when (``time.monotonic()``, the same clock in every
#: process) it starts no new image. The window sets it while the user scrolls (:func:`hold`).
_shared_hold: Any = None
#: The latest hold asked for, kept for a helper not started yet.
_held_until = 0.0
#: The same value, in the helper process (None in the window's: work run there is held by
#: its caller's ``should_stop`` instead).
_helper_hold: Any = None


def wants_process(count: int) -> bool:
    """Whether ``count`` images are worth the helper process (see :data:`PROCESS_THRESHOLD`)."""
    return count >= PROCESS_THRESHOLD


def _start_helper(hold_until: Any) -> None:
    # In the helper process, before any work. It ends with the app, even when the app
    # is killed: a thread waits on the parent's sentinel (closed when the parent dies).
    global _helper_hold
    _helper_hold = hold_until
    parent = multiprocessing.parent_process()
    if parent is not None:
        threading.Thread(
            target=_exit_with, args=(parent.sentinel,), name="parent-watch", daemon=True
        ).start()
    # The window comes first. Where a priority cannot be lowered, work at the normal one.
    if hasattr(os, "sched_setscheduler") and hasattr(os, "SCHED_IDLE"):
        with contextlib.suppress(OSError):
            os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
    if hasattr(os, "nice"):
        with contextlib.suppress(OSError):
            os.nice(NICENESS)


def _exit_with(sentinel: int) -> None:
    multiprocessing.connection.wait([sentinel])
    os._exit(0)


def background_executor() -> ProcessPoolExecutor:
    """The app's helper process (started on first call, shut down at exit)."""
    global _executor, _shared_hold
    with _lock:
        if _executor is None:
            workers = max(1, min(4, (os.cpu_count() or 2) - 1))
            context = multiprocessing.get_context("spawn")
            _shared_hold = context.RawValue("d", _held_until)
            _executor = ProcessPoolExecutor(
                max_workers=workers,
                mp_context=context,
                initializer=_start_helper,
                initargs=(_shared_hold,),
            )
        return _executor


def hold(seconds: float) -> None:
    """The user is scrolling: the helper starts no new image for ``seconds``.

    Even at the lowest priority, the helper's full-size decodes running beside the window
    made scrolling a 10,000-image grid stall 60-110 ms (28-44 ms with the helper stopped):
    the scheduler still preempted the window's thread hundreds of times per stall.
    """
    global _held_until
    _held_until = max(_held_until, time.monotonic() + seconds)
    shared = _shared_hold
    if shared is not None:
        shared.value = _held_until


def _wait_while_held() -> None:
    # In the helper, between images (a no-op where the work runs in the window's process).
    shared = _helper_hold
    while shared is not None and (left := shared.value - time.monotonic()) > 0:
        time.sleep(min(left, 0.05))


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
    cancelled), or the pool was shut down (the app is closing). If the helper process
    dies (killed, out of memory), the chunks it had are run here in the calling thread
    instead, so the work still completes.
    """
    pool = executor if executor is not None else background_executor()
    workers = getattr(pool, "_max_workers", 1)
    queue = iter(_chunks(items, chunk))
    pending: dict[Future[list[R]], Sequence[T]] = {}

    def refill() -> bool:
        """Queue more chunks; ``False`` once the pool has been shut down."""
        while len(pending) < workers * in_flight:
            part = next(queue, None)
            if part is None:
                return True
            try:
                pending[pool.submit(function, part)] = part
            except BrokenProcessPool as exc:
                _lost(exc)
                results = function(part)
                if done is not None:
                    done(part, results)
            except RuntimeError:  # shut down: the app is closing, the rest is not wanted
                return False
        return True

    def stop() -> bool:
        for future in pending:
            future.cancel()
        return False

    if not refill():
        return stop()
    while pending:
        if should_stop is not None and should_stop():
            return stop()
        finished, _ = wait(list(pending), timeout=0.1, return_when=FIRST_COMPLETED)
        for future in finished:
            part = pending.pop(future)
            try:
                results = future.result()
            except BrokenProcessPool as exc:
                _lost(exc)
                results = function(part)
            except CancelledError:  # cancelled by the pool's shutdown
                return stop()
            if done is not None:
                done(part, results)
        if not refill():
            return stop()
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

    found = []
    for path in paths:
        _wait_while_held()
        found.append(check_image_file(path, **options))
    return found


def file_sizes(paths: Sequence[str]) -> list[int]:
    """Each file's size in bytes, -1 where it cannot be read (gone since indexing)."""
    sizes = []
    for n, path in enumerate(paths):
        if n % 256 == 0:
            _wait_while_held()
        try:
            sizes.append(os.stat(path).st_size)
        except OSError:
            sizes.append(-1)
    return sizes


def existing(paths: Sequence[str]) -> list[bool]:
    """Whether each path exists."""
    return [os.path.exists(path) for path in paths]


def map_paths(function: Callable[[Sequence[str]], list[R]], paths: Sequence[str]) -> dict[str, R]:
    """``function`` (:func:`file_sizes`, :func:`existing`) over ``paths``, by path: in the
    helper process for a big folder, where its system calls and the Python around them
    share no GIL with the window (10,000 ``stat()`` calls on a thread of the window's
    process stalled its scrolling by up to ~90 ms), else here."""
    if not wants_process(len(paths)):
        return dict(zip(paths, function(paths), strict=True))
    found: dict[str, R] = {}

    def collect(part: Sequence[str], results: list[R]) -> None:
        found.update(zip(part, results, strict=True))

    map_chunks(function, paths, chunk=PATH_CHUNK, done=collect)
    return found


def read_and_place(paths: Iterable[Path], config: Any) -> list[tuple[Any, Any]]:
    """Each image's displayed size from its header (or why it cannot be used) and its
    bucket placement under ``config`` (a :class:`~lora_studio.core.config.LoraConfig`)."""
    from lora_studio.core.buckets import placement_for
    from lora_studio.core.imaging import read_size

    found = []
    for path in paths:
        _wait_while_held()
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
