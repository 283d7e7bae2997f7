"""Validation in the window: badges on thumbnails, tooltips, the problem count, the
Problems filter, cancellation when another folder opens, and thumbnails converted as
training converts them."""

from __future__ import annotations

import shutil
import threading
from pathlib import Path

import pytest
from gui_helpers import run
from image_factory import gray16, picture, transparent_rgba
from PySide6.QtCore import QPointF, Qt
from PySide6.QtGui import QColor

import lora_studio.gui.controller as controller_module
from lora_studio.core.validate import Severity, ValidationReport
from lora_studio.gui import artwork
from lora_studio.gui.async_signals import signal_future, wait_until
from lora_studio.gui.caption_grid import CaptionFilter
from lora_studio.gui.dataset_model import Column, Role
from lora_studio.gui.main_window import MainWindow
from lora_studio.gui.thumbnail_loader import make_thumbnail

pytestmark = pytest.mark.usefixtures("built_tiny_model")


def open_and_validate(qloop, window: MainWindow, folder: Path) -> ValidationReport:
    async def scenario() -> ValidationReport:
        validated = signal_future(
            window.controller.dataset_validated, lambda report: report.root == folder
        )
        window.controller.open_dataset(folder)
        (report,) = await validated
        return report

    return run(qloop, scenario())


@pytest.fixture
def troubled(papercut: Path) -> Path:
    """The sample dataset (12 images, 10 captions) plus a broken image, one too small for
    the 64 px test resolution, and an exact copy of papercut_01.png (they sort first, so
    they are visible), and a GIF, which is not used for training."""
    (papercut / "aaa_broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a PNG")
    picture(40, 40, 1).save(papercut / "aab_small.png")
    (papercut / "aab_small.txt").write_text("papercut style, tiny", "utf-8")
    shutil.copy(papercut / "papercut_01.png", papercut / "aac_copy.png")
    (papercut / "aac_copy.txt").write_text("papercut style, a copy", "utf-8")
    picture(64, 64, 2).save(papercut / "zzz_animation.gif")  # not part of the dataset
    return papercut


def test_badges_tooltips_counts_and_the_problems_filter(make_window, qloop, troubled, monkeypatch):
    badges: list[tuple[str, QPointF, float]] = []
    real_draw = artwork.draw_badge

    def spy(painter, rect, severity):
        drawn = real_draw(painter, rect, severity)
        if drawn is not None:
            badges.append((severity, drawn.center(), drawn.width() / 2))
        return drawn

    monkeypatch.setattr(artwork, "draw_badge", spy)
    window = make_window()
    model = window.dataset_model
    report = open_and_validate(qloop, window, troubled)
    assert not report.cancelled and len(report.files) == 16

    def severity(name: str) -> str | None:
        return model.index(model.row_of(troubled / name), Column.IMAGE).data(Role.SEVERITY)

    assert severity("aaa_broken.png") == "error"
    assert severity("aab_small.png") == "warning"
    assert severity("aac_copy.png") is None  # the first of two copies is kept
    assert severity("papercut_01.png") == "warning"  # ... the second is flagged
    assert severity("papercut_11.png") == "warning"  # no caption
    assert severity("papercut_02.png") is None
    small = model.index(model.row_of(troubled / "aab_small.png"), Column.IMAGE)
    tooltip = small.data(Qt.ItemDataRole.ToolTipRole)
    assert "40\u00d740" in tooltip and "short side" in tooltip
    assert "palette" in model.index(model.row_of(troubled / "papercut_02.png"), 0).data(
        Qt.ItemDataRole.ToolTipRole
    ), "notes are in the tooltip too"
    copy = model.index(model.row_of(troubled / "papercut_01.png"), Column.STATUS)
    assert copy.data() == "\u26a0 Duplicate"
    assert "aac_copy.png" in copy.data(Qt.ItemDataRole.ToolTipRole)
    issues = small.data(Role.ISSUES)
    assert [i.code for i in issues] == ["too_small"] and issues[0].severity is Severity.WARNING

    browser = window.browser
    assert browser.counts_label.text() == "15 images \u00b7 12 captioned \u00b7 6 problems"
    assert not browser.checking_label.isVisible()
    assert browser.problems_label.isVisible()
    lines = browser.problems_label.text().split("<br>")
    assert "aaa_broken.png" in lines[0] and "zzz_animation.gif" in lines[1], "errors first"
    assert "GIF" in lines[1]

    # The badges are painted where the thumbnails are, red for errors, amber for warnings.
    run(qloop, wait_until(lambda: model.has_thumbnail(troubled / "aaa_broken.png"), 30))
    browser.view.viewport().repaint()
    image = browser.view.viewport().grab().toImage()
    colours = {}
    for level, centre, radius in badges:
        point = (centre - QPointF(radius * 0.55, 0)).toPoint()
        colours.setdefault(level, set()).add(QColor(image.pixel(point)).name())
    assert artwork.ERROR.name() in colours["error"]
    assert artwork.BADGE_WARNING.name() in colours["warning"]

    # "Show all problems" filters the caption grid to them.
    browser.problems_label.linkActivated.emit("show-problems")
    grid = window.caption_grid
    assert grid.filter_box.currentText() == CaptionFilter.PROBLEMS
    shown = {
        grid.proxy.index(r, Column.IMAGE).data(Role.PATH).name for r in range(grid.proxy.rowCount())
    }
    assert shown == {
        "aaa_broken.png",
        "aab_small.png",
        "papercut_01.png",
        "papercut_11.png",
        "papercut_12.png",
    }
    grid.grab()  # the grid's own badges paint without error

    # Writing a caption clears that image's warning at once (no new validation needed).
    async def caption_it() -> None:
        saved = signal_future(window.controller.caption_saved)
        index = model.index(model.row_of(troubled / "papercut_11.png"), Column.CAPTION)
        model.setData(index, "papercut style, a harbour")
        assert severity("papercut_11.png") is None  # pending text counts already
        await saved

    run(qloop, caption_it())
    assert browser.counts_label.text() == "15 images \u00b7 13 captioned \u00b7 5 problems"
    assert grid.proxy.rowCount() == 4


def test_opening_another_folder_stops_the_check(
    make_window, qloop, papercut, tmp_path, monkeypatch
):
    first = tmp_path / "first"
    first.mkdir()
    for n in range(3):
        picture(64, 64, n).save(first / f"{n}.png")
    real = controller_module.validate_dataset
    saw_stop = threading.Event()

    def slow_for_first(dataset, **kwargs):
        if dataset.root == first:  # hold the first check until it is told to stop
            assert wait_for(kwargs["should_stop"], 30), "the first check was never stopped"
            saw_stop.set()
        return real(dataset, **kwargs)

    def wait_for(condition, timeout: float) -> bool:
        done = threading.Event()
        for _ in range(int(timeout * 50)):
            if condition():
                return True
            done.wait(0.02)
        return False

    monkeypatch.setattr(controller_module, "validate_dataset", slow_for_first)
    window = make_window()
    reports: list[ValidationReport] = []
    window.controller.dataset_validated.connect(reports.append)

    async def scenario() -> None:
        loaded = signal_future(window.controller.dataset_loaded)
        window.controller.open_dataset(first)
        await loaded
        validated = signal_future(
            window.controller.dataset_validated, lambda report: report.root == papercut
        )
        window.controller.open_dataset(papercut)
        await validated
        await wait_until(saw_stop.is_set, 30, what="the first check to stop")
        await wait_until(lambda: window.controller.pending_tasks == 0, 30)

    run(qloop, scenario())
    assert [report.root for report in reports] == [papercut]
    assert window.dataset_model.validation is reports[0]


def test_progress_is_shown_while_checking(make_window, qloop, papercut):
    window = make_window()
    seen: list[str] = []
    window.controller.validation_progress.connect(
        lambda done, total: seen.append(window.browser.checking_label.text())
    )
    open_and_validate(qloop, window, papercut)
    assert seen and seen[0] == "Checking the images\u2026 0/12"
    assert not window.browser.checking_label.isVisible()


def test_thumbnails_are_converted_as_training_sees_them(qapp, tmp_path: Path) -> None:
    cutout = tmp_path / "cutout.png"
    transparent_rgba((128, 128)).save(cutout)
    thumb = make_thumbnail(cutout, 64, None)
    assert QColor(thumb.pixel(10, 32)).name() == "#ff0000"
    assert QColor(thumb.pixel(54, 32)).name() == "#ffffff", "transparent shows white, not black"
    grey = tmp_path / "grey16.png"
    gray16((128, 128), value=128 * 257).save(grey)
    thumb = make_thumbnail(grey, 64, None)
    assert QColor(thumb.pixel(32, 32)).name() == "#808080", "16-bit is scaled, not clipped white"
    on_grey = make_thumbnail(cutout, 64, None, background=(0, 0, 255))
    assert QColor(on_grey.pixel(54, 32)).name() == "#0000ff"
