"""Thumbnails decoded off the GUI thread, with a disk cache.

Views ask for a thumbnail when a row becomes visible (the dataset model calls
:meth:`ThumbnailLoader.request` from ``data(DecorationRole)``, which Qt only calls for
visible rows), so opening a folder of thousands of images decodes nothing up front.
Each request is made on the loader's own ``QThreadPool``: a worker looks in the
disk cache (keyed by path, mtime and size, so an edited image gets a new thumbnail), and
otherwise decodes with PIL using ``draft()`` (JPEG DCT scaling) and ``thumbnail()``, and
converts it as training does (upright by its EXIF orientation, then
:func:`lora_studio.core.imaging.to_rgb`: transparency flattened onto white, 16-bit scaled,
CMYK through its profile), so a thumbnail shows what the LoRA learns from.

Results cross to the GUI thread as ``QImage`` through a queued signal; only the GUI
thread turns them into ``QPixmap``/``QIcon``. Newer requests run first, so the rows the
user is looking at now win over rows scrolled past; and only the newest
:data:`MAX_WAITING` requests that have not started are kept: older ones are given up, so
scrolling quickly through 10,000 images does not leave thousands of decodes queued behind
the page the user stopped at. A row given up is asked for again when it is painted again.
The requests wait in the loader's own queue; the pool holds only a worker job per thread,
each making the most wanted thumbnail, then the next (:class:`_Queue`).

While a folder is being indexed, the window asks for its first page ahead of time
(:meth:`ThumbnailLoader.prefetch`, from the listing alone); those thumbnails wait in memory
until the grid asks for them, and a new dataset's waiting requests survive the switch
(:meth:`ThumbnailLoader.cancel_pending` with ``keep``). A new thumbnail goes to the view
straight from its pixels, before its cache file is written.
"""

from __future__ import annotations

import functools
import hashlib
import heapq
import io
import logging
import os
import threading
from collections import OrderedDict
from collections.abc import Callable, Container, Iterable
from pathlib import Path

from PIL import Image, ImageOps, UnidentifiedImageError
from PySide6.QtCore import QObject, QRunnable, QThreadPool, QTimer, Signal
from PySide6.QtGui import QImage

from lora_studio.core.atomic import atomic_write_bytes
from lora_studio.core.imaging import WHITE, Color, resizable, to_rgb
from lora_studio.core.paths import thumbnails_cache_dir

log = logging.getLogger(__name__)

THUMBNAIL_SIZE = 128
# Bump when the way thumbnails are made changes, so old cache files are not reused.
# 2: converted as training converts (16-bit greyscale was clipped white, alpha kept).
_CACHE_REVISION = 2
#: Requests waiting to start that are kept; older ones are given up (see the docstring).
MAX_WAITING = 512
#: Threads that make a prefetched page (see ThumbnailLoader.prefetch), cores allowing.
PREFETCH_THREADS = 2


class ThumbnailError(Exception):
    """An image could not be turned into a thumbnail; ``str()`` says why, for the user."""


def cache_key(path: Path, size: int, background: Color = WHITE) -> str | None:
    """The cache file name of ``path``'s thumbnail, or ``None`` if the file is gone."""
    try:
        st = path.stat()
    except OSError:
        return None
    text = (
        f"{_CACHE_REVISION}\0{path.resolve()}\0{st.st_mtime_ns}\0{st.st_size}\0{size}\0{background}"
    )
    return hashlib.sha1(text.encode("utf-8", "surrogatepass")).hexdigest()


def make_thumbnail(
    path: Path,
    size: int,
    cache_dir: Path | None,
    background: Color = WHITE,
    deliver: Callable[[QImage], None] | None = None,
) -> QImage:
    """Load ``path``'s thumbnail from the cache, or decode it and fill the cache.

    Transparent areas are shown on ``background``, as training sees them. ``deliver``,
    if given, gets a freshly decoded thumbnail before it is written to the cache (the
    user sees it a disk write sooner).

    Runs on a worker thread (``QImage`` may be used off the GUI thread; ``QPixmap`` may
    not).

    Raises:
        ThumbnailError: the image cannot be decoded; the message is for the user.
    """
    key = cache_key(path, size, background)
    if key is None:
        raise ThumbnailError("The image file is missing.")
    cached = cache_dir / key[:2] / f"{key}.png" if cache_dir is not None else None
    if cached is not None and cached.is_file():
        image = QImage(str(cached))
        if not image.isNull():
            return image
        log.info("Ignoring an unreadable cached thumbnail %s", cached)
    rgb = _decode(path, size, background)
    # Straight from the pixels: no PNG encode and decode between the user and the image.
    image = QImage(
        rgb.tobytes(), rgb.width, rgb.height, rgb.width * 3, QImage.Format.Format_RGB888
    ).copy()
    if image.isNull():  # pragma: no cover - the bytes were just made
        raise ThumbnailError("The thumbnail could not be made.")
    if deliver is not None:
        deliver(image)
    if cached is not None:
        try:
            cached.parent.mkdir(parents=True, exist_ok=True)
            out = io.BytesIO()
            # compress_level 1: a third of the default's time, the file barely larger.
            rgb.save(out, format="PNG", compress_level=1)
            # No fsync: a cache file cut short by a power loss reads as unreadable
            # above and is made again.
            atomic_write_bytes(cached, out.getvalue(), durable=False)
        except OSError as exc:
            # The cache only saves time; a read-only or full cache must not break
            # browsing, but say so once per file in the log.
            log.warning("Cannot write thumbnail cache %s: %s", cached, exc)
    return image


def _decode(path: Path, size: int, background: Color = WHITE) -> Image.Image:
    try:
        with Image.open(path) as img:
            # For JPEG, draft() decodes at 1/2, 1/4 or 1/8 scale: much faster for photos.
            img.draft("RGB", (size * 2, size * 2))
            img.load()
            if img.width < 1 or img.height < 1:
                raise ThumbnailError("The image is empty.")
            # Palette and 16-bit images become resizable first; flattening after the
            # (premultiplied) resize of RGBA is exact and much cheaper.
            small = resizable(ImageOps.exif_transpose(img))
            small.thumbnail((size, size), Image.Resampling.LANCZOS)
            rgb = to_rgb(small, background)
    except ThumbnailError:
        raise
    except FileNotFoundError:
        raise ThumbnailError("The image file is missing.") from None
    except UnidentifiedImageError:
        raise ThumbnailError(
            "Not a readable image (the file is corrupt or not an image)."
        ) from None
    except Image.DecompressionBombError:
        raise ThumbnailError("The image is too large to decode safely.") from None
    except (OSError, ValueError, SyntaxError) as exc:
        raise ThumbnailError(f"The image cannot be decoded ({exc}).") from None
    return rgb


class _Relay(QObject):
    """Carries results from pool threads to the GUI thread (it lives on the GUI thread)."""

    done = Signal(object, QImage)
    failed = Signal(object, str)


class _Queue:
    """The wanted thumbnails and the workers making them (shared by the GUI thread and the
    pool's threads).

    The requests wait here, not in the pool: the pool only ever holds the few
    :class:`_Worker` jobs that take the most wanted path, one after another, until
    nothing is waiting. (One pool job per request left thousands of given-up jobs queued
    after a fast scroll through a big folder, and ``QThreadPool.start`` scans its whole
    queue: 2 us a request with 1,000 queued, 121 us with 50,000.)
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.lock = threading.Lock()
        # path -> its priority (set by its first request); the oldest request first
        self.waiting: OrderedDict[Path, int] = OrderedDict()
        self._heap: list[tuple[int, int, Path]] = []  # (-priority, order, path); lazily cleaned
        self._order = 0
        self.running: set[Path] = set()
        self.given_up = 0
        #: Workers started and not yet ended; at most ``max_workers`` run at once.
        self.workers = 0
        self.max_workers = 1

    def add(self, path: Path, priority: int) -> int:
        """Want ``path`` (at ``priority``: higher is made sooner; a path already waiting
        keeps its place in that order) and return how many workers to start for it."""
        with self.lock:
            if path in self.running:
                return 0
            if path in self.waiting:
                self.waiting.move_to_end(path)  # (it is newer now: not given up first)
            else:
                self.waiting[path] = priority
                self._order += 1
                heapq.heappush(self._heap, (-priority, self._order, path))
                while len(self.waiting) > self.limit:
                    self.waiting.popitem(last=False)
                    self.given_up += 1
                if len(self._heap) > 4 * self.limit:  # forget the given-up entries
                    self._heap = [e for e in self._heap if self.waiting.get(e[2]) == -e[0]]
                    heapq.heapify(self._heap)
            return self._workers_wanted()

    def _workers_wanted(self) -> int:
        more = max(0, min(self.max_workers, len(self.waiting)) - self.workers)
        self.workers += more
        return more

    def set_max_workers(self, count: int) -> int:
        """Allow ``count`` workers at once; returns how many to start now."""
        with self.lock:
            self.max_workers = count
            return self._workers_wanted()

    def take(self) -> Path | None:
        """The most wanted waiting path, for a worker (now running); ``None``: that worker
        ends (nothing is waiting, or more workers run than are allowed now)."""
        with self.lock:
            if self.workers <= self.max_workers:
                while self._heap:
                    negative, _order, path = heapq.heappop(self._heap)
                    if self.waiting.get(path) == -negative:
                        del self.waiting[path]
                        self.running.add(path)
                        return path
            self.workers -= 1
            return None

    def finished(self, path: Path) -> None:
        with self.lock:
            self.running.discard(path)

    def waiting_paths(self) -> list[Path]:
        """The paths of requests not started yet, oldest first."""
        with self.lock:
            return list(self.waiting)

    def __contains__(self, path: Path) -> bool:
        with self.lock:
            return path in self.waiting or path in self.running

    def drop(self, paths: Iterable[Path], *, given_up: bool = True) -> set[Path]:
        """Give up the waiting requests of ``paths`` (counted in :attr:`given_up` unless
        ``given_up`` is false: not wanted any more rather than overtaken); the ones that
        went."""
        with self.lock:
            dropped = {path for path in paths if self.waiting.pop(path, None) is not None}
            if given_up:
                self.given_up += len(dropped)
            return dropped

    def clear(self) -> None:
        with self.lock:
            self.waiting.clear()
            self._heap.clear()
            self.running.clear()


class _Worker(QRunnable):
    """Makes the most wanted thumbnail, then the next, until none is waiting."""

    def __init__(
        self, size: int, cache_dir: Path | None, relay: _Relay, background: Color, queue: _Queue
    ) -> None:
        super().__init__()
        self.size = size
        self.cache_dir = cache_dir
        self.relay = relay
        self.background = background
        self.queue = queue

    def run(self) -> None:
        while (path := self.queue.take()) is not None:
            self._make(path)

    def _make(self, path: Path) -> None:
        delivered = False

        def deliver(image: QImage) -> None:
            nonlocal delivered
            delivered = True
            self.relay.done.emit(path, image)

        try:
            image = make_thumbnail(
                path, self.size, self.cache_dir, self.background, deliver=deliver
            )
        except ThumbnailError as exc:
            self.relay.failed.emit(path, str(exc))
        except Exception as exc:  # a bug; show a placeholder and keep the details
            log.exception("Thumbnail of %s failed", path)
            if not delivered:  # (after it was shown, only its cache file is missing)
                reason = f"Unexpected error: {type(exc).__name__}: {exc}"
                self.relay.failed.emit(path, reason)
        else:
            if not delivered:
                self.relay.done.emit(path, image)


class ThumbnailLoader(QObject):
    """Makes thumbnails on a thread pool and delivers them as ``QImage`` signals.

    Signals:
        thumbnail_ready(path, QImage): a thumbnail, on the GUI thread.
        thumbnail_failed(path, reason): the image cannot be read; ``reason`` is for the user.
        prefetch_finished(): every thumbnail of the last :meth:`prefetch` is made (or failed).
    """

    thumbnail_ready = Signal(object, QImage)
    thumbnail_failed = Signal(object, str)
    prefetch_finished = Signal()

    def __init__(
        self,
        *,
        size: int = THUMBNAIL_SIZE,
        cache_dir: Path | None = None,
        use_cache: bool = True,
        max_threads: int | None = None,
        background: Color = WHITE,
        parent: QObject | None = None,
    ) -> None:
        super().__init__(parent)
        self.size = size
        self.background = background
        self.cache_dir = (cache_dir or thumbnails_cache_dir()) if use_cache else None
        self._pool = QThreadPool(self)
        self._threads = max_threads or max(1, min(4, (os.cpu_count() or 2) - 1))
        self._pool.setMaxThreadCount(self._threads)
        self._relay = _Relay(self)
        self._relay.done.connect(self._on_done)
        self._relay.failed.connect(self._on_failed)
        self._queue = _Queue(MAX_WAITING)
        self._queue.max_workers = self._threads
        self._priority = 0
        self._closed = False
        # Prefetched thumbnails nobody has asked for yet (see prefetch()).
        self._prefetching: set[Path] = set()
        self._prefetched: dict[Path, QImage] = {}
        self._handing_over: set[Path] = set()

    def request(self, path: Path) -> None:
        """Ask for ``path``'s thumbnail; a request already under way is not repeated."""
        if self._closed:
            return
        if path in self._prefetched:
            # Made before anyone asked: delivered from the event loop, as a decode is
            # (views ask from inside their paint, where models must not change).
            if path not in self._handing_over:
                self._handing_over.add(path)
                QTimer.singleShot(0, self, functools.partial(self._hand_over, path))
            return
        self._submit(path)

    def _hand_over(self, path: Path) -> None:
        self._handing_over.discard(path)
        image = self._prefetched.pop(path, None)
        if image is not None and not self._closed:
            self.thumbnail_ready.emit(path, image)

    def prefetch(self, paths: Iterable[Path]) -> None:
        """Make the thumbnails of ``paths`` now, before anyone asks, and keep them until
        :meth:`request` does (the window prefetches a folder's first page while it is
        indexed). Replaces the last prefetch's unclaimed thumbnails."""
        if self._closed:
            return
        wanted = list(dict.fromkeys(paths))
        self._prefetched.clear()
        self._prefetching = set(wanted)
        # Nothing else runs while a folder's first page is made: every core takes part
        # (until end_prefetch()).
        self._set_threads(max(self._threads, min(PREFETCH_THREADS, os.cpu_count() or 1)))
        # In the order given (the grid's), all before requests made until now.
        top = self._priority + len(wanted)
        for offset, path in enumerate(wanted):
            self._submit(path, priority=top - offset)
        self._priority = top

    def end_prefetch(self) -> None:
        """The page the prefetch was for is shown: its requests not started yet are
        given up (a row is asked for again when it is painted), and the pool goes back to
        its own number of threads."""
        self._prefetching -= self._queue.drop(self._prefetching)
        self._set_threads(self._threads)

    def discard_prefetched(self, paths: Iterable[Path]) -> None:
        """Forget the prefetched thumbnails of ``paths``: they were taken from
        :attr:`thumbnail_ready` as they arrived (the window's listing of the folder)."""
        for path in paths:
            self._prefetched.pop(path, None)
            self._prefetching.discard(path)

    def _submit(self, path: Path, priority: int | None = None) -> None:
        if priority is None:
            # Rising priority: the most recent request is made first.
            self._priority += 1
            priority = self._priority
        self._start_workers(self._queue.add(path, priority))

    def _set_threads(self, count: int) -> None:
        self._pool.setMaxThreadCount(count)
        self._start_workers(self._queue.set_max_workers(count))

    def _start_workers(self, count: int) -> None:
        for _ in range(count):
            worker = _Worker(self.size, self.cache_dir, self._relay, self.background, self._queue)
            self._pool.start(worker)

    def is_pending(self, path: Path) -> bool:
        return path in self._queue

    @property
    def given_up(self) -> int:
        """Requests given up so far because newer ones came (see the module docstring)."""
        return self._queue.given_up

    def cancel_pending(self, keep: Container[Path] = ()) -> None:
        """Drop requests that have not started (e.g. when another dataset is opened),
        except those for paths in ``keep`` (the new dataset's, prefetched); decodes under
        way finish."""
        self._queue.drop(
            [path for path in self._queue.waiting_paths() if path not in keep], given_up=False
        )
        self._set_threads(self._threads)

    def shutdown(self, timeout_ms: int = 10_000) -> bool:
        """Stop taking requests and wait for running decodes; ``True`` if all ended."""
        self._closed = True
        self._queue.clear()  # each worker ends after its current thumbnail
        self._pool.clear()  # (workers not started yet)
        finished = self._pool.waitForDone(timeout_ms)
        return bool(finished)

    def _on_done(self, path: Path, image: QImage) -> None:
        self._queue.finished(path)
        prefetched = path in self._prefetching
        if prefetched:
            self._prefetching.discard(path)
            self._prefetched[path] = image
        self.thumbnail_ready.emit(path, image)
        if prefetched and not self._prefetching:
            self.prefetch_finished.emit()

    def _on_failed(self, path: Path, reason: str) -> None:
        self._queue.finished(path)
        prefetched = path in self._prefetching
        self._prefetching.discard(path)
        self.thumbnail_failed.emit(path, reason)
        if prefetched and not self._prefetching:
            self.prefetch_finished.emit()
