"""Errors are one readable line in the window, with the details (the traceback) on request."""

from __future__ import annotations

from gui_helpers import run

from lora_studio.gui.async_signals import signal_future


def test_an_unexpected_error_offers_its_details(make_window, qloop) -> None:
    window = make_window()
    controller = window.controller
    bar = window.message_bar

    async def broken() -> None:
        raise RuntimeError("the disk said no")

    async def scenario() -> None:
        detailed = signal_future(controller.error_details)
        controller._spawn(broken(), "read the thing")
        await detailed

    run(qloop, scenario())
    assert bar.isVisible() and "Unexpected error while trying to read the thing" in bar.text()
    assert "Traceback" not in bar.text()  # one line in the window...
    assert bar.details_button.isVisible()
    assert "RuntimeError: the disk said no" in bar.details and "Traceback" in bar.details
    bar.details_button.click()  # ...and the traceback behind Details
    box = bar.details_box
    assert box.isVisible() and "RuntimeError" in box.detailedText()
    box.close()

    # the next message has no details of its own
    controller._say("warning", "A plain warning.")
    assert bar.text() == "A plain warning." and not bar.details_button.isVisible()
