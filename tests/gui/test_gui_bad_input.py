"""Bad input in the window: each case gives a clear message, no traceback, and loses
nothing the user had."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from gui_helpers import drop_on, fast_config, run
from PySide6.QtCore import Qt
from PySide6.QtTest import QTest

from lora_studio.core.jobs import JobStatus, Progress
from lora_studio.gui.async_signals import signal_future, wait_until
from lora_studio.gui.controller import ERROR, WARNING
from lora_studio.gui.dataset_model import CaptionState, Column, Role
from lora_studio.gui.main_window import MainWindow

pytestmark = pytest.mark.usefixtures("built_tiny_model")

REPO = Path(__file__).resolve().parents[2]


def open_folder(qloop, window: MainWindow, folder: Path) -> None:
    async def scenario() -> None:
        loaded = signal_future(window.controller.dataset_loaded)
        window.controller.open_dataset(folder)
        await loaded

    run(qloop, scenario())


def train(qloop, window: MainWindow) -> Progress:
    async def scenario() -> Progress:
        finished = signal_future(window.controller.job_finished)
        window.preset_form.train_button.click()
        (final,) = await finished
        return final

    return run(qloop, scenario())


def errors(window: MainWindow) -> list[str]:
    return [text for level, text in window.messages if level == ERROR]


def test_folder_without_images_keeps_the_open_dataset(make_window, qloop, papercut, tmp_path):
    window = make_window()
    open_folder(qloop, window, papercut)
    empty = tmp_path / "notes"
    empty.mkdir()
    (empty / "readme.txt").write_text("no pictures here")

    async def scenario() -> str:
        failed = signal_future(window.controller.dataset_failed)
        drop_on(window, empty)
        (message,) = await failed
        return message

    message = run(qloop, scenario())
    assert "No images found" in message and str(empty) in message
    assert "papercut stays open" in message
    assert window.message_bar.isVisible() and "No images found" in window.message_bar.text()
    assert window.controller.dataset is not None and window.controller.dataset.root == papercut
    assert window.dataset_model.rowCount() == 12
    assert window.browser.counts_label.text() == "12 images \u00b7 10 captioned \u00b7 2 problems"


def test_dropping_something_else_says_what_to_drop(make_window, qloop, tmp_path):
    window = make_window()
    note = tmp_path / "notes.pdf"
    note.write_bytes(b"%PDF-1.4")
    accepted, _ = drop_on(window, note)
    assert accepted  # local files are welcome; the drop says why this one cannot be used
    assert window.message_bar.isVisible()
    assert "Drop a folder of images" in window.message_bar.text()
    assert window.controller.dataset is None


def test_dropping_image_files_opens_their_folder(make_window, qloop, papercut):
    window = make_window()

    async def scenario() -> None:
        loaded = signal_future(window.controller.dataset_loaded)
        drop_on(window, papercut / "papercut_03.png", papercut / "papercut_04.png")
        (dataset,) = await loaded
        assert dataset.root == papercut

    run(qloop, scenario())


def test_corrupt_image_gets_a_placeholder_and_is_skipped(make_window, qloop, papercut):
    broken = papercut / "aaa_broken.png"  # sorts first: visible without scrolling
    broken.write_bytes(b"\x89PNG\r\n\x1a\n this is not really a PNG")
    window = make_window(config=fast_config(max_steps=2))
    model = window.dataset_model

    async def scenario() -> dict[Path, str]:
        checked = signal_future(window.controller.images_checked)
        loaded = signal_future(window.controller.dataset_loaded)
        window.controller.open_dataset(papercut)
        await loaded
        (bad,) = await checked
        await wait_until(lambda: model.has_thumbnail(broken), 30, what="the placeholder")
        return bad

    bad = run(qloop, scenario())
    assert list(bad) == [broken]
    row = model.row_of(broken)
    assert row == 0
    status = model.index(row, Column.STATUS)
    assert status.data() == "\u26a0 Unreadable"
    tooltip = model.index(row, Column.IMAGE).data(Qt.ItemDataRole.ToolTipRole)
    assert "corrupt" in tooltip or "cannot be decoded" in tooltip
    assert model.index(row, Column.IMAGE).data(Role.PROBLEM)
    warnings = [text for level, text in window.messages if level == WARNING]
    assert any("aaa_broken.png" in w and "skipped in training" in w for w in warnings)
    assert window.browser.problems_label.isVisible()
    assert "aaa_broken.png" in window.browser.problems_label.text()

    final = train(qloop, window)
    assert final.status is JobStatus.SUCCEEDED, final.error
    assert any("Skipping aaa_broken.png" in line for line in window.job_monitor.log_lines())
    assert broken.read_bytes().startswith(b"\x89PNG"), "the broken file must not be touched"


def test_non_utf8_caption_is_shown_flagged_and_backed_up_on_edit(make_window, qloop, papercut):
    caption = papercut / "papercut_02.txt"
    original = "papercut style, caf\u00e9 au lait, cr\u00e8me sky".encode("cp1252")
    caption.write_bytes(original)
    window = make_window()
    open_folder(qloop, window, papercut)
    model = window.dataset_model
    row = model.row_of(papercut / "papercut_02.png")
    assert row is not None
    text = model.index(row, Column.CAPTION).data()
    assert text == "papercut style, caf\u00e9 au lait, cr\u00e8me sky"
    assert model.index(row, Column.STATUS).data() == "\u26a0 Not UTF-8"
    assert "not UTF-8" in model.index(row, Column.STATUS).data(Qt.ItemDataRole.ToolTipRole)
    assert any("not UTF-8" in text for _, text in window.messages)

    async def edit() -> None:
        saved = signal_future(window.controller.caption_saved)
        model.setData(model.index(row, Column.CAPTION), text + ", warm light")
        await saved

    run(qloop, edit())
    backup = papercut / "papercut_02.txt.orig"
    assert backup.read_bytes() == original, "the original bytes must be kept"
    assert caption.read_text("utf-8") == text + ", warm light\n"
    assert model.index(row, Column.STATUS).data() == "Saved \u2713"


def test_failed_caption_save_keeps_the_text_and_retries(make_window, qloop, papercut):
    window = make_window()
    open_folder(qloop, window, papercut)
    model = window.dataset_model
    path = papercut / "papercut_05.png"
    row = model.row_of(path)
    assert row is not None
    target = papercut / "papercut_05.txt"
    target.unlink()
    target.mkdir()  # a folder where the caption file should go: the write must fail
    (target / "keep").write_text("x")

    async def first_try() -> str:
        failed = signal_future(window.controller.caption_failed)
        model.setData(model.index(row, Column.CAPTION), "papercut style, dunes at dusk")
        (_, _, message) = await failed
        return message

    message = run(qloop, first_try())
    assert "Could not save the caption of papercut_05.png" in message
    assert model.index(row, Column.CAPTION).data() == "papercut style, dunes at dusk"
    assert model.caption_state(path) is CaptionState.FAILED
    assert model.index(row, Column.STATUS).data() == "\u26a0 Not saved"
    assert "not saved" in window.caption_grid.state_label.text().lower()
    assert any("Could not save the caption" in e for e in errors(window))
    assert model.unsaved() == {path: "papercut style, dunes at dusk"}
    assert not [p for p in papercut.iterdir() if p.name.endswith(".tmp")]

    shutil.rmtree(target)

    async def retry() -> None:
        saved = signal_future(window.controller.caption_saved)
        model.setData(model.index(row, Column.CAPTION), "papercut style, dunes at dusk")
        await saved

    run(qloop, retry())
    assert target.read_text("utf-8") == "papercut style, dunes at dusk\n"
    assert model.caption_state(path) is CaptionState.SAVED
    assert model.unsaved() == {}


def test_output_path_under_a_file_fails_cleanly(make_window, qloop, papercut, tmp_path):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the output folder should be")
    window = make_window(output_dir=blocker / "loras")
    open_folder(qloop, window, papercut)
    final = train(qloop, window)
    assert final.status is JobStatus.FAILED
    assert "Cannot write to the output folder" in (final.error or "")
    assert any("Cannot write to the output folder" in e for e in errors(window))
    monitor = window.job_monitor
    assert monitor.error_label.isVisible() and "output folder" in monitor.error_label.text()
    assert monitor.status_label.text() == "Failed"
    assert "Traceback" not in monitor.error_label.text()
    assert window.preset_form.train_button.isEnabled()  # fix the folder and try again
    assert window.controller.dataset is not None


@pytest.mark.skipif(
    hasattr(os, "geteuid") and os.geteuid() == 0, reason="root can write to read-only folders"
)
def test_read_only_output_folder_fails_cleanly(make_window, qloop, papercut, tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        window = make_window(output_dir=locked)
        open_folder(qloop, window, papercut)
        final = train(qloop, window)
    finally:
        locked.chmod(0o700)
    assert final.status is JobStatus.FAILED
    assert "Cannot write to the output folder" in (final.error or "")
    assert any("Permission denied" in e for e in errors(window))


def test_missing_base_model_is_reported_in_the_form(make_window, qloop, papercut, tmp_path):
    window = make_window()
    open_folder(qloop, window, papercut)
    form = window.preset_form
    missing = tmp_path / "no-such-model"

    async def scenario() -> str:
        checked = signal_future(window.controller.base_model_checked, lambda r, d, e: bool(e))
        form.base_model_edit.setText(str(missing))
        QTest.keyClick(form.base_model_edit, Qt.Key.Key_Return)  # editingFinished
        (_, _, error) = await checked
        return error

    error = run(qloop, scenario())
    assert "does not exist" in error
    assert "does not exist" in form.base_model_status.text()
    assert not form.train_button.isEnabled()
    assert "base model" in form.train_button.toolTip().lower()
    assert any("does not exist" in e for e in errors(window))

    # Pressing Train anyway (e.g. Ctrl+Return raced the check) fails with the same words.
    async def start() -> Progress:
        finished = signal_future(window.controller.job_finished)
        window.controller.start_training()
        (final,) = await finished
        return final

    final = run(qloop, start())
    assert final.status is JobStatus.FAILED and "does not exist" in (final.error or "")
    assert window.controller.dataset is not None and len(window.controller.dataset) == 12


def test_invalid_setting_is_marked_and_blocks_training(make_window, qloop, papercut):
    window = make_window()
    open_folder(qloop, window, papercut)
    form = window.preset_form
    assert form.train_button.isEnabled()

    form.resolution_spin.setValue(100)  # not a multiple of 8
    assert "resolution" in form.errors
    assert form.error_label.isVisible() and "multiple of 8" in form.error_label.text()
    assert not form.train_button.isEnabled()
    assert window.controller.config.resolution == 64, "an invalid value must not be used"

    form.lr_edit.setText("fast please")
    form.lr_edit.textEdited.emit("fast please")
    assert "learning_rate" in form.errors

    form.resolution_spin.setValue(96)
    form.lr_edit.setText("3e-4")
    form.lr_edit.textEdited.emit("3e-4")
    assert form.errors == {}
    assert form.train_button.isEnabled()
    assert window.controller.config.resolution == 96
    assert window.controller.config.learning_rate == pytest.approx(3e-4)


def test_run_gui_without_a_display_says_so_in_one_line(tmp_path):
    env = {
        "PATH": os.environ.get("PATH", ""),
        "HOME": str(tmp_path),
        "LORA_STUDIO_HOME": str(tmp_path / "home"),
        "PYTHONPATH": str(REPO),
    }
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; from lora_studio.gui.app import run_gui; sys.exit(run_gui())",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("lora-studio: no display found")
    assert "lora-studio train" in lines[0]
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "home").exists(), "nothing should be created before the check"


@pytest.mark.skipif(
    not sys.platform.startswith("linux") or shutil.which("gcc") is None,
    reason="needs Linux and gcc to build a plugin with a missing dependency",
)
def test_a_missing_qt_system_library_is_named_with_its_package(tmp_path):
    from lora_studio.gui.app import debian_package_for, missing_qt_library

    # A stand-in for Qt's xcb plugin, linked against a library that is then removed.
    (tmp_path / "dep.c").write_text("int dep(void) { return 1; }\n", encoding="utf-8")
    (tmp_path / "plugin.c").write_text(
        "int dep(void);\nint plugin(void) { return dep(); }\n", encoding="utf-8"
    )
    subprocess.run(
        [
            "gcc",
            "-shared",
            "-fPIC",
            "-Wl,-soname,libxcb-fake.so.4",
            "-o",
            str(tmp_path / "libxcb-fake.so"),
            str(tmp_path / "dep.c"),
        ],
        check=True,
    )
    subprocess.run(
        [
            "gcc",
            "-shared",
            "-fPIC",
            "-o",
            str(tmp_path / "libqxcb.so"),
            str(tmp_path / "plugin.c"),
            f"-L{tmp_path}",
            "-lxcb-fake",
        ],
        check=True,
    )
    (tmp_path / "libxcb-fake.so").unlink()

    plugin = tmp_path / "libqxcb.so"
    assert missing_qt_library({"DISPLAY": ":0"}, plugin) == "libxcb-fake.so.4"
    assert debian_package_for("libxcb-fake.so.4") == "libxcb-fake4"
    # Not on X11 (offscreen, Wayland session): the xcb plugin is not used, nothing to check.
    assert missing_qt_library({"DISPLAY": ":0", "QT_QPA_PLATFORM": "offscreen"}, plugin) is None
    assert (
        missing_qt_library(
            {"DISPLAY": ":0", "WAYLAND_DISPLAY": "wayland-0", "XDG_SESSION_TYPE": "wayland"}, plugin
        )
        is None
    )
