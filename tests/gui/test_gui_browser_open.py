"""Ways into a dataset: File › Open Recent (remembered, pruned), dropped image files, and a
dropped video or edit timeline through the frame-extraction dialog."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from frame_media import write_edit, write_video
from gui_helpers import drop_on, open_and_wait, run

from lora_studio.gui.async_signals import signal_future, wait_until
from lora_studio.gui.frames_dialog import FramesDialog, default_output_dir
from lora_studio.gui.recent_datasets import read_recent

pytestmark = pytest.mark.usefixtures("built_tiny_model")


def menu_texts(window) -> list[str]:
    return [a.text() for a in window.recent_menu.actions() if not a.isSeparator()]


def test_recent_datasets_are_remembered_and_missing_ones_pruned(
    make_window, qloop, papercut, tmp_path
):
    other = tmp_path / "other"
    shutil.copytree(papercut, other)
    window = make_window()
    open_and_wait(qloop, window, papercut)
    open_and_wait(qloop, window, other)
    open_and_wait(qloop, window, papercut)
    assert read_recent(window.settings) == [str(papercut), str(other)]  # newest first, once

    window.recent_menu.rebuild()
    assert menu_texts(window)[:2] == [f"&1 {papercut}", f"&2 {other}"]

    shutil.rmtree(other)
    window.recent_menu.rebuild()
    texts = menu_texts(window)
    assert texts[0] == f"&1 {papercut}"
    assert not any(str(other) in t for t in texts)
    assert "1 folder no longer found, removed from this list" in texts
    assert read_recent(window.settings) == [str(papercut)]

    # A second window with the same settings file has the list too (QSettings).
    window.settings.sync()
    again = make_window(settings_file=Path(window.settings.fileName()))
    assert read_recent(again.settings) == [str(papercut)]

    # Picking an entry opens it.
    async def scenario() -> None:
        loaded = signal_future(again.controller.dataset_loaded)
        entry = next(a for a in again.recent_menu.actions() if a.text().startswith("&1"))
        entry.trigger()
        (dataset,) = await loaded
        assert dataset.root == papercut

    run(qloop, scenario())


def test_dropped_image_files_open_their_folder(make_window, qloop, papercut):
    window = make_window()

    async def scenario() -> None:
        loaded = signal_future(window.controller.dataset_loaded)
        accepted, hint = drop_on(window, papercut / "papercut_03.png", papercut / "papercut_04.png")
        assert accepted and hint
        (dataset,) = await loaded
        assert dataset.root == papercut

    run(qloop, scenario())


def test_a_dropped_video_is_extracted_into_a_dataset(make_window, qloop, tmp_path):
    video = write_video(tmp_path / "clips" / "holiday.mp4")
    window = make_window()
    accepted, _ = drop_on(window, video)
    assert accepted
    dialog = window.frames_dialog
    assert isinstance(dialog, FramesDialog) and dialog.isVisible()
    assert dialog.out_dir() == default_output_dir(video) == tmp_path / "clips" / "holiday_frames"

    dialog.sampling.setCurrentIndex(2)  # one frame per scene
    assert dialog.every_label.text() == "Scene threshold"
    progress: list[object] = []
    dialog.worker.progress.connect(progress.append)

    async def scenario() -> None:
        loaded = signal_future(window.controller.dataset_loaded)
        dialog.extract_button.click()
        assert not dialog.extract_button.isEnabled()
        assert not dialog.browse_button.isEnabled()
        assert dialog.cancel_button.text() == "Cancel"
        (dataset,) = await loaded
        assert dataset.root == tmp_path / "clips" / "holiday_frames"
        # Scenes A, B, D (C is blurred; D is a copy of A): two distinct frames.
        assert len(dataset) == 2

    run(qloop, scenario())
    assert progress
    assert not dialog.isVisible()


def test_an_edit_timeline_offers_frames_too(make_window, qloop, tmp_path):
    video = write_video(tmp_path / "media" / "source.mp4")
    edit = write_edit(tmp_path / "edit", video)
    window = make_window()
    drop_on(window, edit)
    dialog = window.frames_dialog
    assert dialog is not None and dialog.source == edit
    assert dialog.out_dir() == edit.with_name(f"{edit.stem}_frames")


def test_cancel_stops_the_extraction_and_keeps_the_dialog(make_window, qloop, tmp_path):
    video = write_video(tmp_path / "long.mp4")
    window = make_window()
    dialog = window.open_frames_dialog(video)
    dialog.sampling.setCurrentIndex(1)  # every N frames: the whole video is decoded
    dialog.every_frames.setValue(1)
    dialog.max_frames.setValue(0)

    async def scenario() -> None:
        done = signal_future(dialog.worker.finished)
        dialog.start()
        dialog.cancel_button.click()
        assert dialog.cancel_button.text() == "Stopping\u2026"
        (result,) = await done
        assert result.cancelled

    run(qloop, scenario())
    assert dialog.isVisible()  # nothing is opened behind the user's back
    assert dialog.extract_button.isEnabled()
    assert dialog.cancel_button.text() == "Close"
    assert "cancelled" in dialog.status.text()
    assert window.controller.dataset is None or window.controller.dataset.root != tmp_path


def test_bad_options_and_a_broken_video_are_said_in_the_dialog(make_window, qloop, tmp_path):
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"not a video at all" * 100)
    window = make_window()
    dialog = window.open_frames_dialog(broken)
    dialog.out_edit.setText("")
    dialog.start()
    assert "Choose a folder" in dialog.status.text()

    dialog.out_edit.setText(str(tmp_path / "out"))

    async def scenario() -> None:
        failed = signal_future(dialog.worker.failed)
        dialog.start()
        (message,) = await failed

    run(qloop, scenario())
    run(qloop, wait_until(lambda: dialog.extract_button.isEnabled(), 5, what="the dialog"))
    assert dialog.status.text()
    assert dialog.isVisible()
