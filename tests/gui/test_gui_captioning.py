"""Automatic captions in the window: the "Caption images" dialog runs a real captioner
(a loopback OpenAI-compatible server, or a tiny random BLIP on the CPU), the proposals
appear in the caption grid beside the captions, and accepting / rejecting them writes /
leaves the caption files, with a caption edited since its proposal never overwritten
without Overwrite."""

from __future__ import annotations

import asyncio
import json
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from gui_helpers import open_and_wait, run
from memory_keyring import MemoryKeyring
from PySide6.QtCore import QPoint, Qt
from PySide6.QtTest import QTest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "captioning"))
from caption_servers import (  # noqa: E402
    HF_TOKEN,
    OPENAI_KEY,
    LoopbackServer,
    Reply,
    closed_port,
    hf_inference,
    openai_chat,
    write_images,
)

from lora_studio.captioning.runner import RunState  # noqa: E402
from lora_studio.core.dataset import Dataset  # noqa: E402
from lora_studio.core.proposals import Proposal, ProposalState, ProposalStore  # noqa: E402
from lora_studio.gui.async_signals import signal_future, wait_until  # noqa: E402
from lora_studio.gui.caption_dialog import CaptionRunDialog  # noqa: E402
from lora_studio.gui.dataset_model import Column, Role  # noqa: E402
from lora_studio.gui.main_window import MainWindow  # noqa: E402
from lora_studio.gui.proposal_review import ACCEPT, OVERWRITE  # noqa: E402


@pytest.fixture
def serve() -> Iterator[Callable[..., LoopbackServer]]:
    started: list[LoopbackServer] = []

    def start(handler: Callable[..., Reply]) -> LoopbackServer:
        server = LoopbackServer(handler).start()
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


@pytest.fixture
def colours(tmp_path: Path) -> Path:
    """Red, green and blue squares; green has the user's caption."""
    return write_images(
        tmp_path / "colours",
        {"red.png": "red", "green.png": "green", "blue.png": "blue"},
        {"green.png": "my own green caption"},
    )


def _dialog(window: MainWindow, kind: str, **fields: str) -> CaptionRunDialog:
    window.caption_action.trigger()
    dialog = window.caption_dialog
    assert dialog is not None and dialog.isVisible()
    dialog.set_provider(kind)
    for name, value in fields.items():
        getattr(dialog, f"{name}_edit").setText(value)
    return dialog


def _run_dialog(qloop: asyncio.AbstractEventLoop, window: MainWindow, dialog: CaptionRunDialog):
    async def scenario():
        finished = signal_future(window.captions.run_finished)
        QTest.mouseClick(dialog.start_button, Qt.MouseButton.LeftButton)
        (report,) = await finished
        await window.captions.wait_idle()  # the proposals are read back
        return report

    return run(qloop, scenario())


def _row(window: MainWindow, folder: Path, name: str) -> int:
    row = window.dataset_model.row_of(folder / name)
    assert row is not None
    return row


def _click_row_button(window: MainWindow, row: int, action: str) -> None:
    grid = window.caption_grid
    index = grid.proxy_index(window.dataset_model.index(row, Column.PROPOSAL))
    grid.table.scrollTo(index)
    view = index.data(Role.PROPOSAL)
    rect = grid.table.visualRect(index)
    button = grid.proposal_delegate.button_rects(rect, view)[action]
    QTest.mouseClick(
        grid.table.viewport(),
        Qt.MouseButton.LeftButton,
        Qt.KeyboardModifier.NoModifier,
        QPoint(button.center()),
    )


def _resolved(qloop: asyncio.AbstractEventLoop, window: MainWindow, act: Callable[[], None]):
    async def scenario():
        done = signal_future(window.captions.proposals_resolved)
        act()
        return await done

    return run(qloop, scenario())


def test_a_run_against_an_openai_server_proposes_captions_and_accept_reject_work(
    make_window, qloop, colours: Path, serve, memory_keyring: MemoryKeyring, gui_home: Path
) -> None:
    server = serve(openai_chat(api_key=OPENAI_KEY))
    window = make_window()
    open_and_wait(qloop, window, colours)
    dialog = _dialog(window, "openai", url=f"{server.url}/v1", model="llava", token=OPENAI_KEY)
    assert dialog.trigger_edit.text() == "papercut style"  # the config's trigger word
    dialog.trigger_edit.setText("sks")
    dialog.remember_token.setChecked(True)
    live: list[Path] = []  # proposals reach the grid while the run goes
    window.captions.proposals_added.connect(lambda added: live.extend(added))

    report = _run_dialog(qloop, window, dialog)

    assert report.state is RunState.FINISHED
    assert {r.name for r in report.captioned} == {"red.png", "blue.png"}
    assert [r.name for r in report.skipped] == ["green.png"]  # fill: it has a caption
    assert sorted(live) == [colours / "blue.png", colours / "red.png"]
    # The token went to the keyring, never into the settings file.
    assert memory_keyring.passwords == {("lora-studio", "openai"): OPENAI_KEY}
    settings_text = (gui_home / "settings.ini").read_text(encoding="utf-8")
    assert OPENAI_KEY not in settings_text and "openai" in settings_text
    assert dialog.progress_label.text() == "Done: 2 / 2"
    assert dialog.failures.isHidden()

    # Proposals, not captions: no caption file was written; dataset.json holds them.
    assert not (colours / "red.txt").exists() and not (colours / "blue.txt").exists()
    stored = json.loads((colours / "dataset.json").read_text(encoding="utf-8"))["proposals"]
    assert stored["red.png"]["text"] == "sks, A red square."
    assert stored["red.png"]["provider"] == "openai" and stored["red.png"]["model"] == "llava"

    model, grid = window.dataset_model, window.caption_grid
    red, blue, green = (_row(window, colours, n) for n in ("red.png", "blue.png", "green.png"))
    assert not grid.table.isColumnHidden(Column.PROPOSAL)
    assert grid.review_bar.isVisible() and "2" in grid.review_bar.label.text()
    view = model.index(red, Column.CAPTION).data(Role.PROPOSAL)
    assert view.state is ProposalState.READY and view.proposal.text == "sks, A red square."
    assert model.index(green, Column.CAPTION).data(Role.PROPOSAL) is None
    tooltip = model.index(red, Column.PROPOSAL).data(Qt.ItemDataRole.ToolTipRole)
    assert "Proposed by openai \u00b7 llava" in tooltip
    grid.filter_box.setCurrentText("Has proposal")
    assert grid.proxy.rowCount() == 2

    # Accept red with its row's button: the file is written, the grid shows it.
    accepted, rejected, provenance = _resolved(
        qloop, window, lambda: _click_row_button(window, red, ACCEPT)
    )
    assert accepted == {colours / "red.png": "sks, A red square."} and rejected == []
    assert (colours / "red.txt").read_text(encoding="utf-8").strip() == "sks, A red square."
    assert model.index(red, Column.CAPTION).data() == "sks, A red square."
    assert model.index(red, Column.CAPTION).data(Role.PROPOSAL) is None
    record = model.index(red, Column.CAPTION).data(Role.PROVENANCE)
    assert (record.provider, record.model) == ("openai", "llava")
    assert "Caption by openai" in model.index(red, Column.CAPTION).data(Qt.ItemDataRole.ToolTipRole)
    assert grid.proxy.rowCount() == 1  # the filter follows

    # Reject blue for the selection: the file stays absent, the proposal is gone.
    window.select_image(blue)
    accepted, rejected, _ = _resolved(qloop, window, grid.review_bar.reject_selected_button.click)
    assert accepted == {} and rejected == [colours / "blue.png"]
    assert not (colours / "blue.txt").exists()
    assert "proposals" not in json.loads((colours / "dataset.json").read_text(encoding="utf-8"))
    assert grid.review_bar.isHidden() and grid.table.isColumnHidden(Column.PROPOSAL)
    assert (colours / "green.txt").read_text(encoding="utf-8").strip() == "my own green caption"

    # The dialog remembers the choices (not the key) the next time it opens.
    dialog.close()
    again = _dialog(window, "blip")
    again.close()
    reopened = window.open_caption_dialog()
    assert reopened is not None and reopened is not dialog
    assert reopened.kind == "openai" and reopened.url_edit.text() == f"{server.url}/v1"
    assert reopened.trigger_edit.text() == "papercut style" and reopened.token_edit.text() == ""


def test_proposals_in_dataset_json_show_when_the_folder_opens_and_edits_are_not_overwritten(
    make_window, qloop, colours: Path
) -> None:
    # Proposals made earlier (as `lora-studio caption` does) for green and red.
    store = ProposalStore(Dataset.open(colours))
    store.add(
        [
            Proposal(
                "green.png", "a green square", "ollama", "llava", previous="my own green caption"
            ),
            Proposal("red.png", "a red square", "ollama", "llava", previous=None),
        ]
    )
    window = make_window()

    async def open_folder() -> None:
        loaded = signal_future(window.captions.proposals_loaded)
        window.controller.open_dataset(colours)
        await loaded

    run(qloop, open_folder())
    model = window.dataset_model
    green, red = _row(window, colours, "green.png"), _row(window, colours, "red.png")
    assert model.proposal_counts() == (2, 0)

    # The user edits green's caption in the grid: its proposal is now a conflict.
    async def edit() -> None:
        saved = signal_future(window.controller.caption_saved)
        model.setData(model.index(green, Column.CAPTION), "my better green caption")
        await saved

    run(qloop, edit())
    assert model.index(green, Column.CAPTION).data(Role.PROPOSAL).state is ProposalState.CONFLICT
    tooltip = model.index(green, Column.PROPOSAL).data(Qt.ItemDataRole.ToolTipRole)
    assert "Overwrite" in tooltip
    assert "1 conflict" in window.caption_grid.review_bar.label.text()

    # Accept all: red is written; green is left alone and stays a conflict.
    accepted, _, _ = _resolved(
        qloop, window, window.caption_grid.review_bar.accept_all_button.click
    )
    assert accepted == {colours / "red.png": "a red square"}
    assert (colours / "green.txt").read_text(encoding="utf-8").strip() == "my better green caption"
    assert any("left alone" in text for _, text in window.messages)
    assert model.index(green, Column.CAPTION).data(Role.PROPOSAL).state is ProposalState.CONFLICT

    # Overwrite is explicit, per row.
    accepted, _, _ = _resolved(qloop, window, lambda: _click_row_button(window, green, OVERWRITE))
    assert accepted == {colours / "green.png": "a green square"}
    assert (colours / "green.txt").read_text(encoding="utf-8").strip() == "a green square"
    assert model.proposal_counts() == (0, 0)
    assert red != green


def test_a_dead_server_says_so_in_one_line_and_changes_nothing(
    make_window, qloop, colours: Path, memory_keyring: MemoryKeyring
) -> None:
    window = make_window()
    open_and_wait(qloop, window, colours)
    dialog = _dialog(window, "ollama", url=f"http://127.0.0.1:{closed_port()}", model="llava")
    dialog.retries_spin.setValue(0)
    before = sorted(p.name for p in colours.iterdir())

    report = _run_dialog(qloop, window, dialog)

    assert report.captioned == [] and len(report.failed) == 2
    line = dialog.result_label.text()
    assert line.startswith("No image could be captioned:") and "\n" not in line
    assert "Traceback" not in line and "refused" in line.lower()
    assert dialog.failures.count() == 2
    assert "red.png \u2014 " in dialog.failures.item(0).text() + dialog.failures.item(1).text()
    assert window.message_bar.isVisible() and window.message_bar.text() == line
    assert sorted(p.name for p in colours.iterdir()) == before  # no dataset.json either
    assert dialog.start_button.isEnabled() and not dialog.cancel_button.isEnabled()
    assert window.dataset_model.proposal_counts() == (0, 0)


def test_a_missing_local_model_is_one_clear_line(
    make_window, qloop, colours: Path, tmp_path: Path
) -> None:
    window = make_window()
    open_and_wait(qloop, window, colours)
    dialog = _dialog(window, "blip", model=str(tmp_path / "no-such-model"))
    report = _run_dialog(qloop, window, dialog)
    assert report.state is RunState.FAILED
    assert "does not exist" in dialog.result_label.text()
    assert window.message_bar.text() == dialog.result_label.text()


def test_cancel_stops_a_run_at_once(make_window, qloop, colours: Path, serve) -> None:
    server = serve(lambda request: Reply(hang=True))  # never answers
    window = make_window()
    open_and_wait(qloop, window, colours)
    dialog = _dialog(window, "openai", url=f"{server.url}/v1", model="llava")
    dialog.set_mode("overwrite")
    dialog.timeout_spin.setValue(0)  # no time limit: only Cancel ends it

    async def scenario():
        finished = signal_future(window.captions.run_finished)
        dialog.start_button.click()
        # Two in flight (the OpenAI provider's default), both hanging.
        await wait_until(lambda: len(server.requests) >= 2, 30, what="the requests")
        assert dialog.cancel_button.isEnabled() and not dialog.start_button.isEnabled()
        started = asyncio.get_running_loop().time()
        dialog.cancel_button.click()
        (report,) = await finished
        return report, asyncio.get_running_loop().time() - started

    report, took = run(qloop, scenario())
    assert report.state is RunState.CANCELLED and took < 3
    assert dialog.progress_label.text().startswith("Stopped at 0 / 3")
    assert dialog.start_button.isEnabled()
    assert not (colours / "red.txt").exists()


def test_closing_the_dialog_leaves_the_run_going_in_the_status_bar(
    make_window, qloop, colours: Path, serve
) -> None:
    """A long run need not keep its dialog open: closed, the run goes on, the status bar
    shows it, and a click there brings back the same dialog, up to date."""
    answer = openai_chat()
    release = threading.Event()
    answered = [0]

    def gated(request):  # the first image at once, the others when released
        answered[0] += 1
        if answered[0] > 1:
            release.wait(30)
        return answer(request)

    server = serve(gated)
    window = make_window()
    open_and_wait(qloop, window, colours)
    dialog = _dialog(window, "openai", url=f"{server.url}/v1", model="llava")
    dialog.set_mode("overwrite")
    status = window.status_captioning
    assert status.isHidden()

    async def scenario():
        finished = signal_future(window.captions.run_finished)
        dialog.start_button.click()
        await wait_until(lambda: "1 / 3" in status.text(), 30, what="the first caption")
        dialog.close()
        await asyncio.sleep(0.2)
        assert window.captions.running and not dialog.isVisible()
        assert status.isVisible() and status.text().startswith("Captioning: 1 / 3")
        status.click()
        assert window.caption_dialog is dialog and dialog.isVisible()
        assert dialog.progress_label.text().startswith("1 / 3")
        assert dialog.cancel_button.isEnabled() and not dialog.start_button.isEnabled()
        dialog.close()
        release.set()
        (report,) = await finished
        await window.captions.wait_idle()
        return report

    report = run(qloop, scenario())
    assert report.state is RunState.FINISHED and len(report.captioned) == 3
    # The end is said in the window, as the dialog is closed, and the result stays in
    # the status bar until it is seen.
    assert window.statusBar().currentMessage().startswith("3 caption(s) proposed by openai")
    assert status.isVisible() and status.text() == "Captioning: Done: 3 / 3"
    status.click()
    assert window.caption_dialog is dialog and dialog.isVisible() and status.isHidden()
    assert dialog.progress_label.text() == "Done: 3 / 3"
    dialog.close()
    assert status.isHidden()
    assert window.open_caption_dialog() is not dialog  # seen and idle: a fresh one


def test_quitting_during_a_caption_run_asks_first(
    make_window, qloop, colours: Path, serve, monkeypatch
) -> None:
    """With its dialog closed a run is easy to forget: quitting asks, and says what is kept."""
    from PySide6.QtWidgets import QMessageBox

    server = serve(lambda request: Reply(hang=True))
    window = make_window()
    open_and_wait(qloop, window, colours)
    dialog = _dialog(window, "openai", url=f"{server.url}/v1", model="llava")
    dialog.set_mode("overwrite")
    dialog.timeout_spin.setValue(0)
    asked: list[str] = []
    answer = [QMessageBox.StandardButton.No]

    def question(_parent, _title, text, *_args):
        asked.append(text)
        return answer[0]

    monkeypatch.setattr(QMessageBox, "question", question)
    window.confirm_close = True

    async def scenario():
        dialog.start_button.click()
        await wait_until(lambda: len(server.requests) >= 2, 30, what="the requests")
        dialog.close()
        assert not window.close()  # "No": the window and the run stay
        assert window.captions.running and window.isVisible()
        answer[0] = QMessageBox.StandardButton.Yes
        assert window.close()
        await wait_until(lambda: not window.captions.running, 10, what="the run to stop")

    run(qloop, scenario())
    assert len(asked) == 2 and "A caption run is going" in asked[0]
    assert "kept as proposals" in asked[0]


@pytest.mark.slow
def test_a_tiny_local_blip_captions_in_a_worker_thread(
    make_window, qloop, colours: Path, tmp_path: Path
) -> None:
    from lora_studio.captioning.tiny import make_tiny_blip

    model_dir = make_tiny_blip(tmp_path / "tiny-blip")
    window = make_window()
    open_and_wait(qloop, window, colours)
    dialog = _dialog(window, "blip", model=str(model_dir))
    dialog.set_mode("overwrite")
    ticks = []
    from PySide6.QtCore import QTimer

    timer = QTimer()
    timer.timeout.connect(lambda: ticks.append(1))
    timer.start(20)
    report = _run_dialog(qloop, window, dialog)
    timer.stop()
    assert report.state is RunState.FINISHED, report.error
    assert report.provider == "blip" and report.model == str(model_dir)
    made = {r.name for r in report.captioned}
    assert made, [r.error for r in report.results]
    assert window.dataset_model.proposal_counts()[0] == len(made)
    assert len(ticks) > 5  # the window kept running while the model loaded and captioned


def test_only_the_selected_images_are_captioned_when_asked(
    make_window, qloop, colours: Path, serve
) -> None:
    server = serve(openai_chat())
    window = make_window()
    open_and_wait(qloop, window, colours)
    window.select_image(_row(window, colours, "blue.png"))
    dialog = _dialog(window, "openai", url=f"{server.url}/v1", model="llava")
    assert dialog.scope_selected.isEnabled() and dialog.scope_selected.text() == (
        "The 1 selected image"
    )
    dialog.scope_selected.setChecked(True)
    dialog.set_mode("overwrite")

    report = _run_dialog(qloop, window, dialog)

    assert [r.name for r in report.captioned] == ["blue.png"]
    assert len(server.requests) == 1
    assert window.dataset_model.proposal_paths() == [colours / "blue.png"]


def test_a_refused_token_says_check_your_token_and_is_not_kept(
    make_window, qloop, colours: Path, serve, memory_keyring: MemoryKeyring
) -> None:
    server = serve(hf_inference(token=HF_TOKEN))
    window = make_window()
    open_and_wait(qloop, window, colours)
    dialog = _dialog(window, "hf-api", url=server.url, token="hf_wrong_token_0123456789")
    dialog.remember_token.setChecked(False)

    report = _run_dialog(qloop, window, dialog)

    assert report.state is RunState.FAILED
    line = dialog.result_label.text()
    assert "check your token" in line and "hf_wrong" not in line
    assert memory_keyring.passwords == {}
    # A refused token stops the run at once: the two images in flight, no retries.
    assert len(server.requests) <= 2
    assert not (colours / "dataset.json").exists()


def test_the_time_left_reads_naturally() -> None:
    from lora_studio.gui.caption_dialog import eta_text

    assert eta_text(None) == ""
    assert eta_text(0.2) == "about a second left"  # not "about 0 s" with images to go
    assert eta_text(4.4) == "about 4 s left"
    assert eta_text(125) == "about 2 min 05 s left"
    assert eta_text(3 * 3600 + 7 * 60) == "about 3 h 07 min left"
