"""The caption editor grid in the window: batch edits with a preview and undo, typing with
autosave, keyboard navigation, zoom, tag list and completion, the token counter, and caption
files changed by another program. Real window, real controller, real files."""

from __future__ import annotations

import time
from pathlib import Path

from gui_helpers import open_and_wait, run
from PySide6.QtCore import QPoint, Qt
from PySide6.QtTest import QTest
from PySide6.QtWidgets import QApplication

from lora_studio.core.tags import BatchKind
from lora_studio.gui.async_signals import wait_until
from lora_studio.gui.caption_grid import AUTOSAVE_MS, CaptionEditor
from lora_studio.gui.dataset_model import CaptionState, Column, Role
from lora_studio.gui.main_window import MainWindow


def _caption(folder: Path, n: int) -> str:
    return (folder / f"papercut_{n:02d}.txt").read_text(encoding="utf-8").strip()


def _captions(folder: Path) -> dict[str, str]:
    return {p.name: p.read_text(encoding="utf-8").strip() for p in sorted(folder.glob("*.txt"))}


def _row(window: MainWindow, folder: Path, n: int) -> int:
    row = window.dataset_model.row_of(folder / f"papercut_{n:02d}.png")
    assert row is not None
    return row


def _settled(window: MainWindow) -> bool:
    counts = window.dataset_model.state_counts()
    return not counts.get(CaptionState.SAVING) and not window.controller._caption_tasks


def _wait(qloop, condition, what: str, timeout: float = 30.0) -> None:
    run(qloop, wait_until(condition, timeout=timeout, what=what))


def _select_rows(window: MainWindow, rows: list[int]) -> None:
    grid = window.caption_grid
    grid.table.clearSelection()
    selection = grid.table.selectionModel()
    for row in rows:
        index = grid.proxy_index(window.dataset_model.index(row, Column.CAPTION))
        selection.select(index, selection.SelectionFlag.Select | selection.SelectionFlag.Rows)


def _activate(window: MainWindow) -> None:
    """Shortcuts only reach the active window."""
    window.activateWindow()
    window.raise_()
    QTest.qWaitForWindowActive(window, 2000)


def _editor(window: MainWindow) -> CaptionEditor:
    editor = window.caption_grid.delegate.editor
    assert editor is not None
    return editor


def test_a_batch_edit_previews_applies_as_one_undo_step_and_undo_rewrites_the_files(
    make_window, qloop, papercut: Path
) -> None:
    window = make_window()
    open_and_wait(qloop, window, papercut)
    grid = window.caption_grid
    before = _captions(papercut)
    rows = [_row(window, papercut, n) for n in (1, 2, 3)]
    _select_rows(window, rows)

    dialog = grid.open_batch_dialog(BatchKind.ADD)
    assert dialog.selected_radio.isChecked() and "(3)" in dialog.selected_radio.text()
    dialog.tag_edit.setText("masterpiece")
    dialog.position_box.setCurrentIndex(2)  # at position N
    dialog.position_spin.setValue(2)
    dialog.update_preview()
    assert dialog.summary.text().startswith("3 of 3 captions change")
    assert "papercut_01.png" in dialog.preview.toPlainText()
    dialog.apply_button.click()
    _wait(qloop, lambda: _settled(window), "the batch to be saved")

    for n in (1, 2, 3):
        assert _caption(papercut, n).startswith("papercut style, masterpiece, ")
    assert _caption(papercut, 4) == before["papercut_04.txt"]
    assert grid.undo_stack.count() == 1
    assert "add a tag (3 captions)" in grid.undo_action.text().lower()

    grid.undo_action.trigger()
    _wait(qloop, lambda: _settled(window) and _captions(papercut) == before, "undo on disk")
    assert (
        window.dataset_model.caption_text(papercut / "papercut_01.png") == before["papercut_01.txt"]
    )
    grid.redo_action.trigger()
    _wait(
        qloop,
        lambda: _settled(window) and "masterpiece" in _caption(papercut, 2),
        "redo on disk",
    )

    # Every other operation over all shown images, each one step.
    grid.table.clearSelection()
    for kind, setup in [
        (BatchKind.REMOVE, lambda d: d.tag_edit.setText("masterpiece")),
        (BatchKind.SORT, lambda d: None),
        (BatchKind.TRIGGER_FIRST, lambda d: None),
        (BatchKind.DEDUPE, lambda d: None),
    ]:
        dialog = grid.open_batch_dialog(kind)
        assert dialog.shown_radio.isChecked()
        setup(dialog)
        dialog.update_preview()
        if dialog.changes:
            dialog.apply_button.click()
        else:
            dialog.reject()
        _wait(qloop, lambda: _settled(window), f"{kind} saved")
    sorted_first = _caption(papercut, 1).split(", ")
    assert sorted_first[0] == "papercut style"  # the trigger stays first when sorting
    assert sorted_first[1:] == sorted(sorted_first[1:], key=str.casefold)
    assert "masterpiece" not in _caption(papercut, 1)
    # Undo all the way back: the files are as they were.
    while grid.undo_stack.canUndo():
        grid.undo_stack.undo()
    # Exactly: the two images without a caption have no caption file again.
    _wait(qloop, lambda: _settled(window) and _captions(papercut) == before, "all undone")
    assert not (papercut / "papercut_11.txt").exists()
    row = _row(window, papercut, 11)
    assert not window.dataset_model.index(row, Column.CAPTION).data(Role.HAS_CAPTION)


def test_find_and_replace_shows_matches_and_a_bad_regex_says_why(
    make_window, qloop, papercut: Path
) -> None:
    window = make_window()
    open_and_wait(qloop, window, papercut)
    grid = window.caption_grid
    grid.table.clearSelection()
    dialog = grid.open_batch_dialog(BatchKind.REPLACE)
    dialog.regex_box.setChecked(True)
    dialog.find_edit.setText("(pine|palm")
    dialog.update_preview()
    assert dialog.error_label.isVisible()
    assert "Not a valid regular expression" in dialog.error_label.text()
    assert not dialog.apply_button.isEnabled()

    dialog.find_edit.setText(r"(pine|palm) (trees|forest)")
    dialog.replace_edit.setText(r"\2 of \1")
    dialog.update_preview()
    assert not dialog.error_label.isVisible()
    assert dialog.summary.text() == "5 of 12 captions change (5 matches)."
    assert "background-color:#fff0a8" in dialog.preview.toHtml().replace(" ", "")
    assert dialog.apply_button.isEnabled()
    dialog.apply_button.click()
    _wait(qloop, lambda: _settled(window), "replacements saved")
    assert "trees of pine" in _caption(papercut, 1)
    assert "forest of pine" in _caption(papercut, 2)
    assert "palm trees" not in _caption(papercut, 8) and "trees of palm" in _caption(papercut, 8)
    assert grid.undo_stack.count() == 1


def test_typing_autosaves_within_a_second_as_one_undo_step_and_esc_undoes_it(
    make_window, qloop, papercut: Path
) -> None:
    window = make_window()
    open_and_wait(qloop, window, papercut)
    grid = window.caption_grid
    original = _caption(papercut, 5)
    grid.edit_caption(_row(window, papercut, 5))
    editor = _editor(window)
    QTest.keyClicks(editor, ", tumbleweed")
    assert grid.state_label.text() == "Not saved yet\u2026"
    started = time.monotonic()
    _wait(qloop, lambda: _caption(papercut, 5).endswith("tumbleweed"), "the autosave", 5)
    assert time.monotonic() - started < 1.0 + AUTOSAVE_MS / 1000
    # "ca" pops up completions ("calm lake at sunset"), "ctus" closes them: the editor
    # stays open through that and goes on saving.
    QTest.keyClicks(editor, ", ca")
    assert grid.completer.popup().isVisible()
    QTest.keyClicks(editor, "ctus")
    assert not grid.completer.popup().isVisible()
    assert grid.delegate.editor is editor
    _wait(qloop, lambda: _caption(papercut, 5).endswith("cactus"), "the second autosave", 5)
    assert grid.undo_stack.count() == 1  # one step for one editing session
    _wait(qloop, lambda: _settled(window), "saved")
    assert window.dataset_model.index(_row(window, papercut, 5), Column.STATUS).data() == (
        "Saved \u2713"
    )
    # Esc cancels the whole session, what autosave wrote included.
    QTest.keyClick(editor, Qt.Key.Key_Escape)
    _wait(qloop, lambda: _settled(window) and _caption(papercut, 5) == original, "Esc undone")
    # Typed, then Enter: saved at once; Ctrl+Z outside the editor undoes it.
    grid.edit_caption(_row(window, papercut, 6))
    QTest.keyClicks(_editor(window), ", owls")
    QTest.keyClick(_editor(window), Qt.Key.Key_Return)
    _wait(qloop, lambda: _caption(papercut, 6).endswith("owls"), "Enter saves")
    _activate(window)
    grid.table.setFocus()
    QTest.keyClick(grid.table, Qt.Key.Key_Z, Qt.KeyboardModifier.ControlModifier)
    _wait(qloop, lambda: not _caption(papercut, 6).endswith("owls"), "Ctrl+Z")
    QTest.keyClick(
        grid.table,
        Qt.Key.Key_Z,
        Qt.KeyboardModifier.ControlModifier | Qt.KeyboardModifier.ShiftModifier,
    )
    _wait(qloop, lambda: _caption(papercut, 6).endswith("owls"), "Ctrl+Shift+Z")


def test_keyboard_navigation_and_zoom(make_window, qloop, papercut: Path) -> None:
    window = make_window()
    open_and_wait(qloop, window, papercut)
    grid = window.caption_grid
    model = window.dataset_model
    assert "Ctrl+Down" in grid.next_action.toolTip().replace("\u2193", "Down")
    menus = [a.text() for a in window.menuBar().actions()]
    assert "&Edit" in menus
    _activate(window)
    grid.table.setFocus()
    grid.table.setCurrentIndex(grid.proxy.index(0, Column.CAPTION))
    QTest.keyClick(grid.table, Qt.Key.Key_Down, Qt.KeyboardModifier.ControlModifier)
    assert grid.table.currentIndex().row() == 1
    QTest.keyClick(grid.table, Qt.Key.Key_Up, Qt.KeyboardModifier.ControlModifier)
    assert grid.table.currentIndex().row() == 0

    # Ctrl+U: the next image without a caption, its editor open.
    QTest.keyClick(grid.table, Qt.Key.Key_U, Qt.KeyboardModifier.ControlModifier)
    row = grid.current_source_row()
    assert not model.index(row, Column.CAPTION).data(Role.HAS_CAPTION)
    assert model.item(row).name in ("papercut_11.png", "papercut_12.png")
    editor = _editor(window)
    QTest.keyClicks(editor, "papercut style, night sky")
    # From the editor, Ctrl+Down keeps the caption and edits the next image.
    QTest.keyClick(editor, Qt.Key.Key_Down, Qt.KeyboardModifier.ControlModifier)
    _wait(qloop, lambda: grid.delegate.editor not in (None, editor), "the next editor")
    assert grid.current_source_row() == row + 1
    _wait(qloop, lambda: _settled(window), "saved")
    assert (model.item(row).path.with_suffix(".txt")).read_text().strip() == (
        "papercut style, night sky"
    )
    QTest.keyClick(_editor(window), Qt.Key.Key_Escape)

    # A click on the thumbnail zooms the image, decoded off the GUI thread, full size.
    first = grid.proxy.index(0, Column.IMAGE)
    rect = grid.table.visualRect(first)
    QTest.mouseClick(
        grid.table.viewport(),
        Qt.MouseButton.LeftButton,
        Qt.KeyboardModifier.NoModifier,
        QPoint(rect.left() + 20, rect.center().y()),
    )
    zoom = grid.zoom
    assert zoom is not None and zoom.isVisible()
    _wait(qloop, lambda: zoom.image is not None, "the full image")
    from PIL import Image

    with Image.open(model.item(grid.proxy.mapToSource(first).row()).path) as img:
        assert (zoom.image.width(), zoom.image.height()) == img.size
    zoom.close()
    _activate(window)
    grid.table.setFocus()
    QTest.keyClick(grid.table, Qt.Key.Key_Space)  # Space in the table zooms too
    assert zoom.isVisible()
    QTest.keyClick(zoom, Qt.Key.Key_Right)
    _wait(qloop, lambda: zoom.path == model.item(1).path and zoom.image is not None, "next")
    zoom.close()


def test_tag_list_filters_and_the_editor_completes_the_tag_under_the_cursor(
    make_window, qloop, papercut: Path
) -> None:
    window = make_window()
    open_and_wait(qloop, window, papercut)
    grid = window.caption_grid
    grid.recount_tags()
    counts = grid.tag_model.counts
    assert counts["papercut style"] == 10 and counts["pine trees"] == 3
    grid.tags_button.setChecked(True)
    assert grid.tag_list.isVisible()
    # Sorted by count, most first; a click filters the grid to the images with the tag.
    first = grid.tag_list.proxy.index(0, 0).data()
    assert first == "papercut style"
    grid.tag_list.search.setText("pine t")
    assert grid.tag_list.proxy.rowCount() == 1
    index = grid.tag_list.proxy.index(0, 0)
    grid.tag_list.table.clicked.emit(index)
    assert grid.proxy.tag == "pine trees" and grid.proxy.rowCount() == 3
    grid.tag_list.clear_button.click()
    assert grid.proxy.rowCount() == 12

    # The completer offers the dataset's tags for the tag being typed, not the caption.
    grid.edit_caption(_row(window, papercut, 11))
    editor = _editor(window)
    QTest.keyClicks(editor, "papercut style, sno")
    popup = grid.completer.popup()
    _wait(qloop, popup.isVisible, "the completions")
    shown = [
        grid.completer.completionModel().index(r, 0).data()
        for r in range(grid.completer.completionCount())
    ]
    assert shown == ["snowy mountain peaks", "snowy village at dusk", "snow-covered hills"] or (
        set(shown) == {"snowy mountain peaks", "snowy village at dusk", "snow-covered hills"}
    )
    QTest.keyClick(popup, Qt.Key.Key_Down)
    QTest.keyClick(popup, Qt.Key.Key_Return)
    assert editor.toPlainText().startswith("papercut style, sno")
    assert editor.toPlainText() in {f"papercut style, {tag}, " for tag in shown}, (
        editor.toPlainText()
    )
    QApplication.processEvents()


def test_the_token_counter_warns_when_a_caption_will_be_cut(
    make_window, qloop, papercut: Path
) -> None:
    window = make_window()
    open_and_wait(qloop, window, papercut)
    grid = window.caption_grid
    grid.edit_caption(_row(window, papercut, 1))
    editor = _editor(window)
    assert editor.tokens.text().endswith("/75")
    editor.setPlainText("papercut style, " + ", ".join(f"tag{n}" for n in range(60)))
    count = int(editor.tokens.text().lstrip("\u2248").split("/")[0])
    assert count > 75
    assert "Cut off" in editor.tokens.toolTip() and "tag30" in editor.tokens.toolTip()
    assert "b42" in editor.tokens.styleSheet().replace("#", "").lower() or (
        "font-weight: bold" in editor.tokens.styleSheet()
    )
    QTest.keyClick(editor, Qt.Key.Key_Escape)
    # Flux reads captions through T5: a much longer limit.
    grid.set_training("sks", "flux")
    grid.edit_caption(_row(window, papercut, 2))
    assert _editor(window).tokens.text().endswith("/512")
    QTest.keyClick(_editor(window), Qt.Key.Key_Escape)


def test_a_caption_changed_by_another_program_is_offered_for_reload_never_overwritten(
    make_window, qloop, papercut: Path
) -> None:
    window = make_window()
    open_and_wait(qloop, window, papercut)
    grid, model = window.caption_grid, window.dataset_model
    path = papercut / "papercut_03.png"
    (papercut / "papercut_03.txt").write_text("edited elsewhere, lake\n", encoding="utf-8")
    _wait(qloop, lambda: path in model.changed_on_disk(), "the watcher", 10)
    assert grid.disk_bar.isVisible() and "papercut_03.png" in grid.disk_label.text()
    row = _row(window, papercut, 3)
    assert model.index(row, Column.STATUS).data() == "\u26a0 Changed on disk"

    # An edit of that caption is not written over the other program's text.
    model.setData(model.index(row, Column.CAPTION), "my edit")
    _wait(qloop, lambda: _settled(window), "the refused save")
    assert _caption(papercut, 3) == "edited elsewhere, lake"
    assert model.caption_state(path) is CaptionState.FAILED
    # Reload: the grid shows the other program's caption.
    grid.reload_button.click()
    _wait(qloop, lambda: not model.changed_on_disk(), "reloaded")
    assert model.caption_text(path) == "edited elsewhere, lake"
    assert not grid.disk_bar.isVisible()

    # Keep mine: the text shown is saved over the other program's, on purpose.
    (papercut / "papercut_04.txt").write_text("theirs\n", encoding="utf-8")
    mine = papercut / "papercut_04.png"
    _wait(qloop, lambda: mine in model.changed_on_disk(), "the watcher again", 10)
    grid.keep_button.click()
    _wait(
        qloop,
        lambda: _settled(window) and _caption(papercut, 4).startswith("papercut style"),
        "kept",
    )
    assert not model.changed_on_disk()
