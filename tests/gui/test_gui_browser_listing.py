"""Opening a folder shows its first page before the dataset is in: the browser lists the
first files with their thumbnails (made on every core) while the folder waits to be
indexed, and the dataset's grid takes those thumbnails over."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import pytest
from gui_helpers import open_and_wait, run, small_pngs, spy_decodes
from image_factory import tile_folder
from PIL import Image

import lora_studio.gui.controller as controller_module
import lora_studio.gui.thumbnail_loader as loader_module
from lora_studio.core.dataset import Dataset
from lora_studio.gui.async_signals import signal_future, wait_until
from lora_studio.gui.browser_filters import BrowserFilter
from lora_studio.gui.controller import StudioController
from lora_studio.gui.thumbnail_loader import ThumbnailLoader

pytestmark = pytest.mark.usefixtures("built_tiny_model")


def test_the_first_page_is_shown_before_the_dataset_and_handed_over(
    make_window, qloop, tmp_path: Path, monkeypatch
):
    folder = tile_folder(tmp_path / "big", 150, captions=True)
    decoded = spy_decodes(monkeypatch)
    window = make_window()
    browser, model = window.browser, window.dataset_model
    seen: dict[str, object] = {}

    def on_preview(paths: list[Path]) -> None:  # connected after the window's own slot
        seen["listed"] = [browser.listing.index(r).data() for r in range(3)]
        seen["page"] = browser.stack.currentWidget()
        seen["dataset"] = model.dataset
        seen["counts"] = browser.counts_label.text()

    window.controller.dataset_preview.connect(on_preview)

    in_listing: list[Path] = []  # thumbnails that arrived while the listing was shown

    def on_thumbnail(path: Path, _image: object) -> None:
        if browser.stack.currentWidget() is browser.listing_view:
            in_listing.append(path)

    window.thumbnails.thumbnail_ready.connect(on_thumbnail)

    async def scenario() -> Dataset:
        loaded = signal_future(window.controller.dataset_loaded)
        window.controller.open_dataset(folder)
        (dataset,) = await loaded
        return dataset

    dataset = run(qloop, scenario())
    # While the folder was being indexed: its first files, in the dataset's order.
    assert seen["listed"] == ["0000.png", "0001.png", "0002.png"]
    assert seen["page"] is browser.listing_view
    assert seen["dataset"] is None
    assert seen["counts"] == "Reading the folder\u2026"
    # The window said when its visible page was in, and only then was the folder indexed:
    # each of those thumbnails is in the grid at once, without a second decode.
    assert browser.stack.currentWidget() is browser.view
    assert browser.listing.rowCount() == 0
    assert in_listing, "the listing showed thumbnails"
    assert all(model.has_thumbnail(p) for p in in_listing), "and they were taken over"
    shown = [p for p in (item.path for item in dataset.images) if model.has_thumbnail(p)]
    assert all(decoded.count(p) == 1 for p in shown)
    assert browser.folder_label.text() == str(folder)


def test_no_listing_while_the_grid_is_filtered(make_window, qloop, tmp_path: Path):
    first = tile_folder(tmp_path / "first", 4, captions=True)
    second = tile_folder(tmp_path / "second", 40)
    window = make_window()
    browser = window.browser
    open_and_wait(qloop, window, first)
    browser.proxy.set_show(BrowserFilter.UNCAPTIONED)
    pages: list[object] = []
    window.controller.dataset_preview.connect(
        lambda _paths: pages.append(browser.stack.currentWidget())
    )
    open_and_wait(qloop, window, second)
    # The filtered grid would not show the folder's first files first: no listing.
    assert pages == [browser.view]
    assert browser.listing.rowCount() == 0


def test_the_index_waits_for_the_window_s_first_page(qloop, tmp_path: Path, monkeypatch):
    folder = tile_folder(tmp_path / "folder", 12, captions=True)
    indexed: list[Path] = []
    real_index = controller_module._open_and_count

    def recorded(path: Path) -> tuple[Dataset, int]:
        indexed.append(path)
        return real_index(path)

    monkeypatch.setattr(controller_module, "_open_and_count", recorded)
    monkeypatch.setattr(controller_module, "PREVIEW_WAIT_S", 60.0)
    controller = StudioController(loop=qloop)
    controller.waits_for_previews = True

    async def scenario() -> None:
        preview = signal_future(controller.dataset_preview)
        loaded = signal_future(controller.dataset_loaded)
        controller.open_dataset(folder)
        (paths,) = await preview
        assert [p.name for p in paths[:2]] == ["0000.png", "0001.png"]
        await asyncio.sleep(0.3)
        assert indexed == [], "the index waits while the window makes the first page"
        controller.preview_shown()
        (dataset,) = await loaded
        assert indexed == [folder] and len(dataset) == 12

    run(qloop, scenario())


def test_the_index_waits_a_moment_at_most(qloop, tmp_path: Path, monkeypatch):
    folder = tile_folder(tmp_path / "folder", 3)
    monkeypatch.setattr(controller_module, "PREVIEW_WAIT_S", 0.05)
    controller = StudioController(loop=qloop)
    controller.waits_for_previews = True  # and nobody ever says the page is shown

    async def scenario() -> None:
        loaded = signal_future(controller.dataset_loaded)
        controller.open_dataset(folder)
        (dataset,) = await loaded
        assert len(dataset) == 3

    run(qloop, scenario())


def test_end_prefetch_gives_up_the_rest_of_the_page(qapp, qloop, tmp_path: Path, monkeypatch):
    paths = small_pngs(tmp_path, 6)
    entered, release = threading.Event(), threading.Event()
    decoded: list[Path] = []
    original = loader_module._decode

    def gated(path: Path, size: int, *args: object) -> Image.Image:
        decoded.append(path)
        if path == paths[0]:
            entered.set()
            release.wait(10)
        return original(path, size, *args)

    monkeypatch.setattr(loader_module, "_decode", gated)
    monkeypatch.setattr(loader_module, "PREFETCH_THREADS", 1)
    loader = ThumbnailLoader(cache_dir=None, max_threads=1)
    finished: list[bool] = []
    loader.prefetch_finished.connect(lambda: finished.append(True))
    try:
        loader.prefetch(paths[:3])
        assert entered.wait(10)
        loader.end_prefetch()  # the page is shown: the two waiting ones are given up
        release.set()
        run(qloop, wait_until(lambda: not loader.is_pending(paths[0]), 20, what="the decode"))
        assert decoded == [paths[0]] and loader.given_up == 2
        # A prefetch that runs to its end says so.
        finished.clear()
        loader.prefetch(paths[3:])
        run(qloop, wait_until(lambda: bool(finished), 20, what="prefetch_finished"))
        assert decoded[0] == paths[0] and sorted(decoded[1:]) == paths[3:]
    finally:
        release.set()
        loader.shutdown()


def test_reopening_watches_the_new_folder_only(make_window, qloop, tmp_path: Path):
    first = tile_folder(tmp_path / "first", 3, captions=True)
    second = tile_folder(tmp_path / "second", 3, captions=True)
    window = make_window()
    model = window.dataset_model
    open_and_wait(qloop, window, first)
    open_and_wait(qloop, window, second)
    (first / "0001.txt").write_text("changed in the folder closed before", "utf-8")
    (second / "0002.txt").write_text("changed in the open folder", "utf-8")
    run(
        qloop,
        wait_until(lambda: second / "0002.png" in model.changed_on_disk(), 10, what="watcher"),
    )
    assert list(model.changed_on_disk()) == [second / "0002.png"]
