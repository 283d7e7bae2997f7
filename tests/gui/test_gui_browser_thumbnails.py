"""The thumbnail loader gives up requests that waited behind newer ones (fast scrolling),
and a row given up is made when it is asked for again."""

from __future__ import annotations

import threading
from pathlib import Path

from gui_helpers import run, small_pngs, spy_decodes
from PIL import Image

import lora_studio.gui.thumbnail_loader as module
from lora_studio.gui.async_signals import wait_until
from lora_studio.gui.thumbnail_loader import ThumbnailLoader


def test_old_waiting_requests_are_given_up(qapp, qloop, tmp_path: Path, monkeypatch):
    paths = small_pngs(tmp_path, 6)
    entered, release = threading.Event(), threading.Event()
    original = module._decode

    def gated(path: Path, size: int, *args: object) -> Image.Image:
        if path == paths[0]:
            entered.set()
            release.wait(10)
        return original(path, size, *args)

    monkeypatch.setattr(module, "_decode", gated)
    loader = ThumbnailLoader(cache_dir=tmp_path / "cache", max_threads=1)
    loader._queue.limit = 2
    ready: list[Path] = []
    loader.thumbnail_ready.connect(lambda path, _image: ready.append(path))
    try:
        loader.request(paths[0])
        assert entered.wait(10)  # the only worker is busy with the first image
        for path in paths[1:]:
            loader.request(path)
        assert loader.given_up == 3  # img1-img3 waited behind img4 and img5
        assert loader.is_pending(paths[5]) and not loader.is_pending(paths[1])
        release.set()
        run(qloop, wait_until(lambda: len(ready) == 3, 20, what="the wanted thumbnails"))
        assert set(ready) == {paths[0], paths[4], paths[5]}
        # Scrolled back to: asked for again, and made.
        loader.request(paths[1])
        run(qloop, wait_until(lambda: paths[1] in ready, 20, what="the re-requested one"))
    finally:
        release.set()
        loader.shutdown()


def test_prefetched_thumbnails_are_handed_over_without_a_second_decode(
    qapp, qloop, tmp_path: Path, monkeypatch
):
    """While a folder is indexed the window prefetches its first page: asked for later,
    those thumbnails come from memory (the file is not read again)."""
    paths = small_pngs(tmp_path, 4)
    decoded = spy_decodes(monkeypatch)
    # One thread, so the order the decodes start in is the order they are recorded in.
    monkeypatch.setattr(module, "PREFETCH_THREADS", 1)
    loader = ThumbnailLoader(cache_dir=None, max_threads=1)
    ready: list[tuple[Path, tuple[int, int]]] = []
    loader.thumbnail_ready.connect(
        lambda path, image: ready.append((path, (image.width(), image.height())))
    )
    try:
        loader.prefetch(paths[:3])
        run(qloop, wait_until(lambda: len(decoded) == 3, 20, what="the prefetch"))
        assert decoded == paths[:3], "made in the order the grid shows them"
        run(qloop, wait_until(lambda: len(ready) == 3, 20, what="the prefetch's signals"))
        ready.clear()
        for path in paths[:3]:
            path.unlink()  # not read again: a second decode would fail now
        for path in [paths[0], paths[0], paths[1], paths[3]]:
            loader.request(path)
        run(qloop, wait_until(lambda: len(ready) == 3, 20, what="the hand-over"))
        assert sorted(p.name for p, _ in ready) == ["img0.png", "img1.png", "img3.png"]
        assert all(size == (64, 48) for _, size in ready)
        assert decoded == [*paths[:3], paths[3]], "only the one not prefetched was decoded"
    finally:
        loader.shutdown()


def test_a_new_datasets_waiting_requests_survive_the_switch(
    qapp, qloop, tmp_path: Path, monkeypatch
):
    """Opening a folder drops the last one's waiting requests, not the prefetched page of
    the one being opened, which is still made first row first."""
    monkeypatch.setattr(module, "PREFETCH_THREADS", 1)  # the one worker stays busy
    paths = small_pngs(tmp_path, 4, (32, 32))
    loader = ThumbnailLoader(cache_dir=None, max_threads=1)
    made: list[Path] = []
    loader.thumbnail_ready.connect(lambda path, _image: made.append(path))
    blocker = threading.Event()
    loader._pool.start(lambda: blocker.wait(10))  # the only worker is busy
    try:
        loader.prefetch(paths[1:])
        loader.request(paths[0])  # the last dataset's
        loader.cancel_pending(keep=set(paths[1:]))
        assert not loader.is_pending(paths[0])
        assert all(loader.is_pending(path) for path in paths[1:])
        blocker.set()
        run(qloop, wait_until(lambda: len(made) == 3, 20, what="the kept requests"))
        assert made == paths[1:], "in the grid's order, as prefetched"
    finally:
        blocker.set()
        loader.shutdown()


def test_a_fast_scroll_leaves_no_pile_of_jobs_in_the_pool(qapp, qloop, tmp_path: Path):
    """Requests wait in the loader's queue; the pool holds one worker job per thread (with
    a job per request, thousands of given-up jobs stayed queued after a fast scroll, and
    each new request scanned them all)."""
    import gc

    paths = small_pngs(tmp_path, 3, (16, 16))
    many = [tmp_path / f"gone{i}.png" for i in range(3000)]  # scrolled past: given up
    loader = ThumbnailLoader(cache_dir=None, max_threads=1)
    made: list[Path] = []
    loader.thumbnail_ready.connect(lambda path, _image: made.append(path))
    blocker = threading.Event()
    loader._pool.start(lambda: blocker.wait(10))  # the only thread is busy
    try:
        for path in [*many, *paths]:
            loader.request(path)
        workers = [o for o in gc.get_objects() if isinstance(o, module._Worker)]
        assert len(workers) == 1
        assert loader.given_up == len(many) + len(paths) - module.MAX_WAITING
        blocker.set()
        run(qloop, wait_until(lambda: len(made) == 3, 20, what="the last page"))
        assert made == paths[::-1], "the newest request first"
    finally:
        blocker.set()
        loader.shutdown()
