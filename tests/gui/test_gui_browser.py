"""The dataset browser's filters, search and sort; its selection shared with the caption
grid while filtered; the progress bar of an opening folder."""

from __future__ import annotations

from pathlib import Path

import pytest
from gui_helpers import fast_config, open_and_wait, open_validated, run
from image_factory import picture, tile_folder
from PySide6.QtCore import QItemSelectionModel

import lora_studio.gui.controller as controller_module
from lora_studio.gui.async_signals import signal_future, wait_until
from lora_studio.gui.browser_filters import NO_BUCKET, BrowserFilter
from lora_studio.gui.bucket_preview import bucket_text
from lora_studio.gui.dataset_model import Column
from lora_studio.gui.main_window import MainWindow

pytestmark = pytest.mark.usefixtures("built_tiny_model")


def shown_names(window: MainWindow) -> list[str]:
    proxy = window.browser.proxy
    return [
        window.dataset_model.item(proxy.mapToSource(proxy.index(row, 0)).row()).name
        for row in range(proxy.rowCount())
    ]


@pytest.fixture
def shapes(tmp_path: Path) -> Path:
    """Five images of different shapes and file sizes, four captioned, one broken."""
    folder = tmp_path / "shapes"
    folder.mkdir()
    sizes = {"a_wide": (192, 96), "b_square": (128, 128), "c_tall": (96, 192), "d_big": (256, 256)}
    for seed, (name, (w, h)) in enumerate(sizes.items()):
        picture(w, h, seed).save(folder / f"{name}.png")
    (folder / "a_wide.txt").write_text("papercut style, red hair, blue sky", "utf-8")
    (folder / "b_square.txt").write_text("papercut style, red, sunset", "utf-8")
    (folder / "c_tall.txt").write_text("a tall tower under a red sky", "utf-8")
    (folder / "e_broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not a PNG at all")
    (folder / "e_broken.txt").write_text("papercut style, broken", "utf-8")
    return folder


def test_show_filters_missing_caption_and_problems(make_window, qloop, shapes):
    window = make_window()
    open_validated(qloop, window, shapes)
    browser = window.browser
    assert browser.filters.isVisible()
    assert len(shown_names(window)) == 5

    browser.show_box.setCurrentText(BrowserFilter.UNCAPTIONED)
    assert shown_names(window) == ["d_big.png"]
    assert browser.shown_label.isVisible()
    assert "Showing 1 of 5" in browser.shown_label.text()

    browser.show_box.setCurrentText(BrowserFilter.ERRORS)
    assert shown_names(window) == ["e_broken.png"]
    browser.show_box.setCurrentText(BrowserFilter.PROBLEMS)
    # The broken image (an error) and the uncaptioned one (a warning).
    assert shown_names(window) == ["d_big.png", "e_broken.png"]

    browser._on_link("clear-filters")  # the "Show all" link
    assert browser.show_box.currentText() == BrowserFilter.ALL
    assert len(shown_names(window)) == 5
    assert not browser.shown_label.isVisible()


def test_a_caption_written_leaves_the_missing_caption_filter(make_window, qloop, shapes):
    window = make_window()
    open_validated(qloop, window, shapes)
    window.browser.show_box.setCurrentText(BrowserFilter.UNCAPTIONED)
    assert shown_names(window) == ["d_big.png"]

    row = window.dataset_model.row_of(shapes / "d_big.png")
    window.dataset_model.setData(window.dataset_model.index(row, Column.CAPTION), "a big one")
    run(qloop, wait_until(lambda: shown_names(window) == [], 10, what="the filter to follow"))


def test_search_text_and_whole_tags(make_window, qloop, shapes):
    window = make_window()
    open_validated(qloop, window, shapes)
    browser = window.browser

    browser.search_box.setText("red")
    browser.apply_search()
    assert shown_names(window) == ["a_wide.png", "b_square.png", "c_tall.png"]
    browser.search_box.setText("TALL")  # case does not matter; file names count too
    browser.apply_search()
    assert shown_names(window) == ["c_tall.png"]

    browser.search_mode.setCurrentIndex(browser.search_mode.findData(BrowserFilter.TAGS))
    browser.search_box.setText("red")
    browser.apply_search()
    assert shown_names(window) == ["b_square.png"]  # "red hair" is another tag
    browser.search_box.setText("papercut style, red hair")
    browser.apply_search()
    assert shown_names(window) == ["a_wide.png"]

    # Typing filters by itself shortly after the last key.
    browser.search_box.setText("sunset")
    run(qloop, wait_until(lambda: shown_names(window) == ["b_square.png"], 5, what="search"))


def test_bucket_filter_and_sorting(make_window, qloop, shapes):
    window = make_window(config=fast_config(resolution=256, min_bucket_side=64))
    open_validated(qloop, window, shapes)
    browser = window.browser

    buckets = [browser.bucket_box.itemData(i) for i in range(browser.bucket_box.count())]
    assert buckets[0] is None and NO_BUCKET in buckets
    wide = bucket_text(window.dataset_model.placement(shapes / "a_wide.png").bucket)
    assert wide in buckets
    browser.bucket_box.setCurrentIndex(browser.bucket_box.findData(wide))
    assert shown_names(window) == ["a_wide.png"]
    browser.bucket_box.setCurrentIndex(browser.bucket_box.findData(NO_BUCKET))
    assert shown_names(window) == ["e_broken.png"]
    browser.bucket_box.setCurrentIndex(0)
    assert len(shown_names(window)) == 5

    browser.sort_box.setCurrentIndex(browser.sort_box.findData(BrowserFilter.ASPECT))
    assert shown_names(window)[1:] == ["c_tall.png", "b_square.png", "d_big.png", "a_wide.png"]
    browser.order_button.setChecked(True)  # descending
    assert shown_names(window)[0] == "a_wide.png"

    browser.sort_box.setCurrentIndex(browser.sort_box.findData(BrowserFilter.SIZE))
    sizes = [(shapes / name).stat().st_size for name in shown_names(window)]
    assert sizes == sorted(sizes, reverse=True)

    browser.order_button.setChecked(False)
    browser.sort_box.setCurrentIndex(browser.sort_box.findData(BrowserFilter.NAME))
    assert shown_names(window) == sorted(shown_names(window))


def test_selection_is_shared_with_the_grid_while_filtered(make_window, qloop, papercut):
    window = make_window()
    open_and_wait(qloop, window, papercut)
    browser, grid, model = window.browser, window.caption_grid, window.dataset_model
    browser.search_box.setText("desert")
    browser.apply_search()
    assert shown_names(window) == ["papercut_05.png"]

    browser.view.selectionModel().select(
        browser.proxy.index(0, 0), QItemSelectionModel.SelectionFlag.ClearAndSelect
    )
    rows = {grid.source_index(i).row() for i in grid.table.selectionModel().selectedRows()}
    assert rows == {model.row_of(papercut / "papercut_05.png")}
    assert browser.selected_paths() == [papercut / "papercut_05.png"]

    # Selecting in the grid an image the browser hides selects nothing there...
    target = grid.proxy_index(model.index(0, Column.CAPTION))
    grid.table.selectionModel().select(
        target,
        QItemSelectionModel.SelectionFlag.ClearAndSelect | QItemSelectionModel.SelectionFlag.Rows,
    )
    assert browser.selected_paths() == []
    # ...and select_image() shows every image again to select it.
    window.select_image(7)
    assert not browser.proxy.is_filtering
    assert browser.selected_paths() == [model.item(7).path]


def test_a_progress_bar_while_the_folder_opens_and_is_checked(make_window, qloop, papercut):
    window = make_window()
    browser = window.browser
    seen: list[tuple[int, int]] = []

    async def scenario() -> None:
        loading = signal_future(window.controller.dataset_loading)
        loaded = signal_future(window.controller.dataset_loaded)
        validated = signal_future(window.controller.dataset_validated)
        window.controller.open_dataset(papercut)
        await loading
        # The busy bar shows while the folder is indexed.
        seen.append((browser.progress.minimum(), browser.progress.maximum()))
        assert browser.progress.isVisible()
        await loaded
        seen.append((browser.progress.minimum(), browser.progress.maximum()))
        await validated

    run(qloop, scenario())
    assert seen[0] == (0, 0)
    assert seen[1] == (0, 12)  # checking the images: done / 12
    assert not browser.progress.isVisible()


def test_a_folder_that_fails_to_open_leaves_no_busy_bar(make_window, qloop, tmp_path):
    window = make_window()

    async def scenario() -> None:
        failed = signal_future(window.controller.dataset_failed)
        window.controller.open_dataset(tmp_path / "not here")
        await failed

    run(qloop, scenario())
    assert not window.browser.progress.isVisible()


def test_scrolling_holds_the_image_check(make_window, qloop, papercut):
    """While the user scrolls the browser, the background check starts no new image."""
    import time

    window = make_window()
    held_until: list[float] = []

    async def scenario() -> float:
        loading = signal_future(window.controller.dataset_loading)
        validated = signal_future(window.controller.dataset_validated)
        window.controller.open_dataset(papercut)
        await loading
        window.controller.hold_background_work(1.0)  # as a scroll does, for 1 s
        held_until.append(time.monotonic() + 1.0)
        await validated
        return time.monotonic()

    validated_at = run(qloop, scenario())
    assert validated_at >= held_until[0] - 0.05
    # The browser's scroll bar is what asks for it.
    before = window.controller._background_hold_until
    window.browser.view.verticalScrollBar().valueChanged.emit(1)
    assert window.controller._background_hold_until > before


def test_a_big_folder_holds_the_helper_process_as_it_opens_and_scrolls(
    make_window, qloop, papercut, monkeypatch
):
    """A big folder's check runs in the helper process: it waits a moment after the
    folder opens (the window paints it) and while the user scrolls."""
    import time

    from lora_studio.core import background

    monkeypatch.setattr(background, "PROCESS_THRESHOLD", 5)  # papercut's 12 count as big
    monkeypatch.setattr(background, "_held_until", 0.0)
    window = make_window()
    opened = time.monotonic()
    open_and_wait(qloop, window, papercut)
    assert background._held_until >= opened + 0.9 * controller_module.OPEN_HOLD_S
    monkeypatch.setattr(background, "_held_until", 0.0)
    window.browser.view.verticalScrollBar().valueChanged.emit(1)
    assert background._held_until > time.monotonic()


def test_the_first_page_is_prefetched_while_the_folder_is_indexed(make_window, qloop, tmp_path):
    folder = tile_folder(tmp_path / "many", 150)
    window = make_window()
    previews: list[list[Path]] = []
    window.controller.dataset_preview.connect(previews.append)
    dataset = open_and_wait(qloop, window, folder)
    run(qloop, wait_until(lambda: bool(previews), 10, what="the preview"))
    first = previews[0]
    # The grid's first rows, listed before the index was done, and their thumbnails made.
    assert first == [item.path for item in dataset.images[: len(first)]]
    assert 50 <= len(first) < len(dataset.images)
    model = window.dataset_model
    run(qloop, wait_until(lambda: model.has_thumbnail(first[0]), 20, what="a thumbnail"))
