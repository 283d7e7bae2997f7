"""After a run, "Check compatibility" loads the new LoRA into diffusers (off the GUI
thread) and checks its key names against ComfyUI, Automatic1111 and Forge."""

from __future__ import annotations

from pathlib import Path

from gui_helpers import fast_config, open_and_wait, run
from PySide6.QtCore import Qt

from lora_studio.gui.async_signals import signal_future


def test_check_compatibility_of_the_trained_lora(make_window, qloop, qtbot, papercut: Path):
    window = make_window(config=fast_config(resolution=64, max_steps=2))
    open_and_wait(qloop, window, papercut)
    controller, monitor = window.controller, window.job_monitor

    async def scenario():
        finished = signal_future(controller.job_finished)
        controller.start_training()
        (final,) = await finished
        checked = signal_future(controller.compatibility_checked)
        qtbot.mouseClick(monitor.check_button, Qt.MouseButton.LeftButton)
        assert not monitor.check_button.isEnabled()  # "Checking..." while it runs
        return final, await checked

    final, (text, ok, path) = run(qloop, scenario())
    assert Path(path) == Path(final.output_path)
    assert ok, text
    for target in ("diffusers", "ComfyUI", "Automatic1111", "Forge"):
        assert target in text
    assert "load_lora_weights: all" in text  # really loaded, not names only
    box = window.compatibility_box
    assert box.isVisible() and box.text().endswith("loads in every tool checked.")
    assert "ComfyUI" in box.informativeText() and "all 384 keys load" in box.informativeText()
    assert monitor.check_button.isEnabled() and monitor.check_button.text() == "Check compatibility"
    box.close()
