"""The thumbnail loader gives up requests that waited behind newer ones (fast scrolling),
and a row given up is made when it is asked for again."""

from __future__ import annotations

import threading
from pathlib import Path

from gui_helpers import run
from PIL import Image

import lora_studio.gui.thumbnail_loader as module
from lora_studio.gui.async_signals import wait_until
from lora_studio.gui.thumbnail_loader import ThumbnailLoader


def test_old_waiting_requests_are_given_up(qapp, qloop, tmp_path: Path, monkeypatch):
    paths = []
    for i in range(6):
        path = tmp_path / f"img{i}.png"
        Image.new("RGB", (64, 48), (i * 40, 90, 120)).save(path)
        paths.append(path)
    entered, release = threading.Event(), threading.Event()
    original = module._decode

    def gated(path: Path, size: int, *args: object) -> bytes:
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
