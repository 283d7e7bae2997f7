"""Window shortcuts that must not surprise: Ctrl+Return trains, except while the user is
typing text (a caption, a search), where it belongs to the text."""

from __future__ import annotations

from pathlib import Path

from gui_helpers import fast_config, open_and_wait, run
from PySide6.QtCore import Qt
from PySide6.QtTest import QTest

from lora_studio.gui.async_signals import signal_future


def test_ctrl_return_in_a_text_field_does_not_start_training(make_window, qloop, papercut: Path):
    window = make_window(config=fast_config(resolution=64, max_steps=2))
    open_and_wait(qloop, window, papercut)
    controller = window.controller
    assert window.preset_form.train_button.isEnabled()

    search = window.browser.search_box
    search.setFocus()
    qloop.run_until_complete(_spin())
    QTest.keyClick(search, Qt.Key.Key_Return, Qt.KeyboardModifier.ControlModifier)
    assert not controller.is_training

    # elsewhere (the grid has the focus) it trains, as the menu says
    async def scenario():
        finished = signal_future(controller.job_finished)
        window.caption_grid.table.setFocus()
        await _spin()
        QTest.keyClick(
            window.caption_grid.table, Qt.Key.Key_Return, Qt.KeyboardModifier.ControlModifier
        )
        (final,) = await finished
        return final

    final = run(qloop, scenario())
    assert final.output_path


async def _spin() -> None:
    import asyncio

    await asyncio.sleep(0.05)
