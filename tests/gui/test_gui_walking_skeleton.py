"""The whole flow through the window: drop a folder, edit a caption, train, cancel,
restart - with the real controller, the trainer in its QThread and the tiny model."""

from __future__ import annotations

from pathlib import Path

import pytest
from gui_helpers import close_window, drop_on, fast_config, run
from PySide6.QtCore import Qt
from PySide6.QtTest import QTest

from lora_studio.core.jobs import JobStatus, Progress
from lora_studio.core.paths import sample_dataset_dir
from lora_studio.gui.async_signals import signal_future, wait_until
from lora_studio.gui.caption_grid import CaptionEditor
from lora_studio.gui.controller import DEMO_NAME, sample_copy_dir
from lora_studio.gui.dataset_model import CaptionState, Column
from lora_studio.gui.job_monitor import MonitorState
from lora_studio.gui.main_window import MainWindow

pytestmark = pytest.mark.usefixtures("built_tiny_model")


def open_caption_editor(window: MainWindow, row: int) -> CaptionEditor:
    """Open the grid's in-place editor on ``row``'s caption, as a double-click would."""
    grid = window.caption_grid
    index = grid.proxy_index(window.dataset_model.index(row, Column.CAPTION))
    grid.table.scrollTo(index)
    grid.table.setCurrentIndex(index)
    grid.table.edit(index)
    editor = grid.table.indexWidget(index)
    assert isinstance(editor, CaptionEditor), "the caption delegate's editor did not open"
    return editor


def type_caption(editor: CaptionEditor, first_line: str, second_line: str | None = None) -> None:
    """Replace the editor's text by typing; Shift+Enter for a new line, Enter to commit."""
    editor.selectAll()
    QTest.keyClick(editor, Qt.Key.Key_Delete)
    QTest.keyClicks(editor, first_line)
    if second_line is not None:
        QTest.keyClick(editor, Qt.Key.Key_Return, Qt.KeyboardModifier.ShiftModifier)
        QTest.keyClicks(editor, second_line)
    QTest.keyClick(editor, Qt.Key.Key_Return)


def test_drop_edit_caption_train_and_find_the_lora(make_window, qloop, qtbot, papercut: Path):
    window = make_window()
    controller = window.controller
    caption_file = papercut / "papercut_01.txt"
    before = caption_file.read_text(encoding="utf-8")

    async def scenario() -> Progress:
        loaded = signal_future(controller.dataset_loaded)
        accepted, hint_shown = drop_on(window, papercut)
        assert accepted and hint_shown, "the window should accept a dropped folder and say so"
        assert not window.drop_hint.isVisible()
        (dataset,) = await loaded
        assert dataset.root == papercut
        assert window.dataset_model.rowCount() == 12
        assert (
            window.browser.counts_label.text() == "12 images \u00b7 10 captioned \u00b7 2 problems"
        )

        saved = signal_future(controller.caption_saved)
        editor = open_caption_editor(window, 0)
        type_caption(editor, "papercut style, a red fox", "in the snow")
        # Shown at once (pending), written off the GUI thread, then confirmed.
        shown = window.dataset_model.index(0, Column.CAPTION).data()
        assert shown == "papercut style, a red fox\nin the snow"
        await saved
        await wait_until(lambda: caption_file.read_text("utf-8") != before, 30, what="the file")
        assert caption_file.read_text("utf-8") == "papercut style, a red fox\nin the snow\n"
        assert window.dataset_model.caption_state(dataset.images[0].path) is CaptionState.SAVED
        assert "saved" in window.caption_grid.state_label.text().lower()
        leftovers = [p.name for p in papercut.iterdir() if p.name.startswith(".")]
        assert leftovers == [], "the atomic write left temp files behind"

        started = signal_future(controller.job_started)
        finished = signal_future(controller.job_finished)
        assert window.preset_form.train_button.isEnabled()
        qtbot.mouseClick(window.preset_form.train_button, Qt.MouseButton.LeftButton)
        assert not window.preset_form.train_button.isEnabled()
        await started
        (final,) = await finished
        return final

    final = run(qloop, scenario())
    assert final.status is JobStatus.SUCCEEDED, final.error
    output = Path(final.output_path or "")
    assert output.is_file() and output.suffix == ".safetensors"
    assert output.parent == window.controller.output_dir
    assert output.stat().st_size > 0
    monitor = window.job_monitor
    assert monitor.status_label.text() == "Succeeded"
    assert monitor.output_edit.text() == str(output)
    assert monitor.output_row.isVisible()
    assert monitor.state is MonitorState.IDLE
    assert monitor.progress_bar.value() == monitor.progress_bar.maximum()
    assert len(monitor.log_lines()) == len(set(monitor.log_lines())), "log lines repeated"
    assert window.preset_form.train_button.isEnabled()


def test_cancel_stops_within_one_step(make_window, qloop, qtbot, papercut: Path):
    window = make_window(config=fast_config(resolution=128, max_steps=5000))
    controller = window.controller
    monitor = window.job_monitor
    button_states: list[tuple[bool, str]] = []

    def record() -> None:
        button_states.append((monitor.cancel_button.isEnabled(), monitor.cancel_button.text()))

    async def scenario() -> Progress:
        loaded = signal_future(controller.dataset_loaded)
        controller.open_dataset(papercut)
        await loaded
        record()  # idle
        first_step = signal_future(controller.job_progress, lambda p: p.step >= 1)
        finished = signal_future(controller.job_finished)
        qtbot.mouseClick(window.preset_form.train_button, Qt.MouseButton.LeftButton)
        await first_step
        record()  # running
        qtbot.mouseClick(monitor.cancel_button, Qt.MouseButton.LeftButton)
        record()  # stopping
        (final,) = await finished
        record()  # idle again
        return final

    final = run(qloop, scenario())
    assert final.status is JobStatus.CANCELLED
    stop_step = controller.cancel_requested_at_step
    assert stop_step is not None
    assert final.step <= stop_step + 1, "training went on for more than one step after Cancel"
    assert final.step < 5000
    assert button_states == [
        (False, "Cancel"),
        (True, "Cancel"),
        (False, "Stopping\u2026"),
        (False, "Cancel"),
    ]
    assert monitor.status_label.text() == "Cancelled"
    # What was trained so far is kept.
    assert final.output_path and Path(final.output_path).is_file()


def test_closing_while_training_cancels_and_waits(make_window, qloop, papercut: Path):
    window = make_window(config=fast_config(max_steps=5000))
    controller = window.controller

    async def scenario() -> None:
        loaded = signal_future(controller.dataset_loaded)
        controller.open_dataset(papercut)
        await loaded
        running = signal_future(controller.job_progress, lambda p: p.step >= 1)
        controller.start_training()
        await running
        window.close()
        assert window.isVisible(), "the window must wait for the run to stop"
        assert window.job_monitor.state is MonitorState.STOPPING
        await wait_until(lambda: not window.isVisible(), 120, what="the window to close")

    run(qloop, scenario())
    assert not controller.is_training
    assert controller.last_progress is not None
    assert controller.last_progress.status is JobStatus.CANCELLED
    assert controller.threads.join_all(30)
    assert controller.threads.running == []


def test_caption_edit_survives_a_restart(make_window, qloop, papercut: Path, gui_home: Path):
    first = make_window()

    async def edit() -> None:
        loaded = signal_future(first.controller.dataset_loaded)
        first.start_session(papercut)
        await loaded
        saved = signal_future(first.controller.caption_saved)
        # papercut_11 has no caption yet: the grid shows the placeholder.
        index = first.dataset_model.index(10, Column.CAPTION)
        assert first.dataset_model.data(index) == ""
        assert first.dataset_model.setData(index, "papercut style, a quiet harbour")
        await saved

    run(qloop, edit())
    close_window(qloop, first)
    assert (papercut / "papercut_11.txt").read_text("utf-8") == "papercut style, a quiet harbour\n"

    second = make_window()  # a fresh controller and window, same settings file

    async def reopen() -> None:
        loaded = signal_future(second.controller.dataset_loaded)
        second.start_session(None)  # nothing given: the remembered folder
        (dataset,) = await loaded
        assert dataset.root == papercut

    run(qloop, reopen())
    index = second.dataset_model.index(10, Column.CAPTION)
    assert second.dataset_model.data(index) == "papercut style, a quiet harbour"
    assert second.browser.counts_label.text() == "12 images \u00b7 11 captioned \u00b7 1 problem"


def test_first_start_opens_a_copy_of_the_sample_dataset(make_window, qloop, gui_home: Path):
    shipped = sample_dataset_dir()
    shipped_caption = (shipped / "papercut_01.txt").read_bytes()
    window = make_window()

    async def start() -> None:
        loaded = signal_future(window.controller.dataset_loaded)
        window.start_session(None)
        (dataset,) = await loaded
        assert dataset.root == sample_copy_dir()
        assert dataset.root.is_relative_to(gui_home)
        saved = signal_future(window.controller.caption_saved)
        window.dataset_model.setData(window.dataset_model.index(0, Column.CAPTION), "mine")
        await saved

    run(qloop, start())
    assert window.browser.counts_label.text() == "12 images \u00b7 10 captioned \u00b7 2 problems"
    assert (shipped / "papercut_01.txt").read_bytes() == shipped_caption, "edited the repo copy"
    assert (sample_copy_dir() / "papercut_01.txt").read_text("utf-8") == "mine\n"
    close_window(qloop, window)

    # Opening the sample again never overwrites the user's edited copy.
    again = make_window()

    async def reopen() -> None:
        loaded = signal_future(again.controller.dataset_loaded)
        again.controller.open_sample_dataset()
        await loaded

    run(qloop, reopen())
    assert again.dataset_model.data(again.dataset_model.index(0, Column.CAPTION)) == "mine"


def test_default_settings_are_the_demo_run(make_window, qloop, papercut: Path):
    from lora_studio.gui.controller import StudioController

    controller = StudioController(loop=qloop)
    config = controller.config
    assert (config.preset, config.resolution, config.name) == ("fast", 256, DEMO_NAME)
    assert config.trigger_word == "papercut style"
    assert controller.base_model == "builtin:tiny-sd15"
    controller.shutdown()

    window = make_window(config=config)

    async def scenario() -> None:
        estimate = signal_future(window.controller.estimate_changed)
        window.controller.start()
        loaded = signal_future(window.controller.dataset_loaded)
        window.controller.open_dataset(papercut)
        await loaded
        await estimate
        await wait_until(
            lambda: "= 60 steps" in window.preset_form.steps_label.text(), 30, what="estimate"
        )

    run(qloop, scenario())
    assert window.preset_form.steps_label.text() == (
        "12 images \u00d7 1 repeat \u00d7 5 epochs \u00f7 batch 1 = 60 steps"
    )
    assert "2-core CPU" in window.preset_form.cost_label.text()
    assert "GB VRAM" in window.preset_form.cost_label.text()
