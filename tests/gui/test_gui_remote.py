"""Remote training from the window: Replicate and ComfyUI stand-ins on loopback, the jobs
list, restarts with a remote run going, and an interrupted local run resumed.

Every server here listens on 127.0.0.1 (tests/backends/replicate_server.py and
comfyui_server.py). The only test adjustment to the real backends is a shorter polling
interval; tokens live in an in-memory keyring (a real keyring backend, set as the
keyring for the test).
"""

from __future__ import annotations

import asyncio
import gc
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import keyring
import pytest
from aiohttp import web_app
from gui_helpers import close_window, fast_config, run
from memory_keyring import MemoryKeyring
from PySide6.QtCore import QEvent
from PySide6.QtWidgets import QApplication

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "backends"))

from comfyui_server import FakeComfyUI  # noqa: E402
from replicate_server import ACCOUNT, TOKEN, ReplicateStandIn, closed_port  # noqa: E402

from lora_studio.backends.base import TrainingBackend  # noqa: E402
from lora_studio.backends.comfyui import ComfyUIBackend  # noqa: E402
from lora_studio.backends.factory import backend_for_spec  # noqa: E402
from lora_studio.backends.replicate import ReplicateBackend  # noqa: E402
from lora_studio.core.config import LoraConfig  # noqa: E402
from lora_studio.core.jobs import BackendType, Job, JobSpec, JobStatus, JobStore  # noqa: E402
from lora_studio.core.paths import job_db_path  # noqa: E402
from lora_studio.core.secrets import KEYRING_SERVICE  # noqa: E402
from lora_studio.gui.async_signals import signal_future, wait_until  # noqa: E402
from lora_studio.gui.controller import StudioController  # noqa: E402
from lora_studio.gui.main_window import MainWindow  # noqa: E402
from lora_studio.gui.settings import open_settings  # noqa: E402


def quick_backends(spec: JobSpec) -> TrainingBackend:
    """The real backend for ``spec``, polling faster (the stand-ins answer at once)."""
    backend = backend_for_spec(spec)
    if isinstance(backend, ReplicateBackend):
        backend.poll_interval, backend.max_poll_interval = 0.02, 0.1
        backend.retry_backoff_s = 0.01
    if isinstance(backend, ComfyUIBackend):
        backend.poll_interval_s = 0.05
    return backend


WindowFactory = Callable[..., MainWindow]


@pytest.fixture
def remote_window(
    qloop: asyncio.AbstractEventLoop, gui_home: Path, memory_keyring: MemoryKeyring
) -> Iterator[WindowFactory]:
    made: list[MainWindow] = []

    def make(config: LoraConfig | None = None) -> MainWindow:
        controller = StudioController(
            config=config or fast_config(),
            output_dir=gui_home / "outputs",
            backend_factory=quick_backends,
            loop=qloop,
        )
        window = MainWindow(
            controller, open_settings(gui_home / "settings.ini"), confirm_close=False
        )
        window.resize(1280, 860)
        window.show()
        made.append(window)
        return window

    yield make
    for window in made:
        close_window(qloop, window)
    made.clear()
    # aiohttp caches its middleware chains per Application (a module-level lru_cache), and
    # an Application holds its event loop: the stand-ins' apps would keep this test's qasync
    # loop (QObjects, QThreads) alive until some later collection on some other thread.
    cached = getattr(web_app, "_cached_build_middleware", None)
    if cached is not None:
        cached.cache_clear()
    # Qt objects die here, on the GUI thread, not in whichever thread collects next.
    QApplication.sendPostedEvents(None, QEvent.Type.DeferredDelete)
    gc.collect()


async def open_dataset(window: MainWindow, folder: Path) -> None:
    loaded = signal_future(window.controller.dataset_loaded)
    window.controller.open_dataset(folder)
    await loaded


def choose(window: MainWindow, kind: BackendType) -> None:
    box = window.backend_panel.kind_box
    index = box.findData(kind.value)
    box.setCurrentIndex(index)
    box.activated.emit(index)


def type_into(edit, text: str) -> None:  # noqa: ANN001
    edit.setText(text)
    edit.editingFinished.emit()


async def set_up_replicate(window: MainWindow, url: str, token: str) -> None:
    panel = window.backend_panel
    choose(window, BackendType.REPLICATE)
    type_into(panel.api_url_edit, url)
    type_into(panel.destination_edit, f"{ACCOUNT}/papercut")
    panel.token_edit.setText(token)
    panel.save_token_button.click()
    await wait_until(lambda: "keyring" in panel.token_state.text(), 10, what="the token saved")


async def press_train_and_confirm(window: MainWindow) -> str:
    """Press Train, read the cost the dialog shows, and confirm it."""
    window.preset_form.train_button.click()
    await wait_until(
        lambda: window.cost_dialog is not None and window.cost_dialog.isVisible(),
        20,
        what="the cost dialog",
    )
    dialog = window.cost_dialog
    assert dialog is not None
    text = dialog.text()
    (start,) = [b for b in dialog.buttons() if b.text() == "Train on Replicate"]
    start.click()
    return text


def listed(window: MainWindow, backend: BackendType) -> list[Job]:
    return [j for j in window.job_monitor.jobs.model.jobs() if j.backend is backend]


def current(window: MainWindow, job_id: str) -> Job:
    """The jobs list's latest copy of job ``job_id``."""
    model = window.job_monitor.jobs.model
    job = model.job(model.row_of(job_id))
    assert job is not None
    return job


async def until_finished(window: MainWindow, job_id: str, timeout: float = 60) -> Job:
    await wait_until(
        lambda: current(window, job_id).status.is_finished, timeout, what="the run to end"
    )
    return current(window, job_id)


def test_train_on_replicate_from_the_window(remote_window, papercut, qloop, gui_home) -> None:
    window = remote_window()
    updates: list[tuple[str, JobStatus, int]] = []
    window.controller.job_updated.connect(
        lambda job, progress: updates.append((job.id, progress.status, progress.step))
    )

    async def scenario() -> Job:
        stand_in = await ReplicateStandIn(steps_per_poll=2).start()
        try:
            window.controller.start()
            await open_dataset(window, papercut)
            await set_up_replicate(window, stand_in.api_url, TOKEN)
            panel = window.preset_form.estimate_panel  # the cost is shown with the estimate
            await wait_until(lambda: "$" in panel.remote_cost_label.text(), 20, what="the cost")
            assert panel.remote_cost_label.isVisible()
            text = await press_train_and_confirm(window)
            assert "$" in text and "Nvidia" in text
            await wait_until(lambda: listed(window, BackendType.REPLICATE), 20, what="the job")
            (job,) = listed(window, BackendType.REPLICATE)
            return await until_finished(window, job.id)
        finally:
            await stand_in.close()

    job = run(qloop, scenario())
    assert job.status is JobStatus.SUCCEEDED, job.error
    assert any(status is JobStatus.RUNNING and step > 0 for _, status, step in updates)
    assert job.output_path and Path(job.output_path).is_file()
    assert job.output_path.startswith(str(gui_home / "outputs"))
    monitor = window.job_monitor
    assert monitor.shown_job is not None and monitor.shown_job.id == job.id
    assert monitor.status_label.text() == "Succeeded"
    assert monitor.output_edit.text() == job.output_path
    assert monitor.log_lines()  # the trainer's log streamed into the monitor
    assert not monitor.cancel_button.isVisible()  # the list's Cancel applies to remote jobs
    model = monitor.jobs.model
    row = model.row_of(job.id)
    assert model.index(row, 0).data() == "Replicate"
    assert model.index(row, 3).data() == "100%"
    # The token went to the keyring and nowhere else.
    assert keyring.get_keyring().get_password(KEYRING_SERVICE, "replicate") == TOKEN
    settings_text = (gui_home / "settings.ini").read_text(encoding="utf-8")
    assert TOKEN not in settings_text and "papercut" in settings_text
    assert all(TOKEN not in text for _level, text in window.messages)
    stored = JobStore(job_db_path())
    try:
        recorded = stored.get(job.id)
        assert recorded is not None and recorded.cost is not None and recorded.cost > 0
        assert TOKEN not in "".join(stored.logs(job.id))
    finally:
        stored.close()


def test_comfyui_run_with_a_checkpoint_from_the_server(
    remote_window, papercut, qloop, tmp_path
) -> None:
    window = remote_window(fast_config(max_steps=6))

    async def scenario() -> Job:
        server = FakeComfyUI(tmp_path / "comfy", generation="new", step_delay=0.01)
        await server.start()
        try:
            window.controller.start()
            await open_dataset(window, papercut)
            panel = window.backend_panel
            choose(window, BackendType.COMFYUI)
            type_into(panel.comfy_url_edit, server.url)
            panel.test_button.click()
            await wait_until(lambda: panel.test_button.isEnabled(), 20, what="the test")
            assert panel.status_label.text().startswith("\u2714"), panel.status_label.text()
            assert "ComfyUI" in panel.status_label.text()
            assert panel.checkpoint_box.count() == 2
            assert window.controller.backend_choice.comfyui_checkpoint
            window.preset_form.train_button.click()
            await wait_until(lambda: listed(window, BackendType.COMFYUI), 20, what="the job")
            (job,) = listed(window, BackendType.COMFYUI)
            return await until_finished(window, job.id)
        finally:
            await server.stop()

    job = run(qloop, scenario())
    assert job.status is JobStatus.SUCCEEDED, job.error
    assert job.output_path and Path(job.output_path).is_file()
    assert window.job_monitor.output_edit.text() == job.output_path


def test_a_rejected_token_says_to_check_it_without_a_traceback(
    remote_window, papercut, qloop
) -> None:
    window = remote_window()

    async def scenario() -> None:
        stand_in = await ReplicateStandIn().start()
        try:
            window.controller.start()
            await open_dataset(window, papercut)
            await set_up_replicate(window, stand_in.api_url, "r8_not-the-right-token")
            panel = window.backend_panel
            panel.test_button.click()
            await wait_until(lambda: panel.test_button.isEnabled(), 20, what="the test")
            assert "check your Replicate token" in panel.status_label.text()
            await press_train_and_confirm(window)
            await wait_until(
                lambda: any(
                    j.status is JobStatus.FAILED for j in listed(window, BackendType.REPLICATE)
                ),
                20,
                what="the job to fail",
            )
        finally:
            await stand_in.close()

    run(qloop, scenario())
    errors = [text for level, text in window.messages if level == "error"]
    assert any("check your Replicate token" in text for text in errors), errors
    assert window.message_bar.isVisible() and "Replicate token" in window.message_bar.text()
    assert all("Traceback" not in text for _level, text in window.messages)
    assert "r8_not-the-right-token" not in " ".join(text for _l, text in window.messages)


def test_a_dead_address_is_reported_clearly(remote_window, papercut, qloop) -> None:
    window = remote_window()
    port = closed_port()

    async def scenario() -> None:
        window.controller.start()
        await open_dataset(window, papercut)
        panel = window.backend_panel
        choose(window, BackendType.COMFYUI)
        type_into(panel.comfy_url_edit, f"http://127.0.0.1:{port}")
        panel.test_button.click()
        await wait_until(lambda: panel.test_button.isEnabled(), 20, what="the test")
        text = panel.status_label.text()
        assert text.startswith("\u26a0") and f"127.0.0.1:{port}" in text
        assert "Cannot reach ComfyUI" in text and "server running" in text
        # No checkpoint could be listed: Train says what to do instead of failing later.
        window.preset_form.train_button.click()
        await wait_until(lambda: window.message_bar.isVisible(), 10, what="the message")
        assert "Test connection" in window.message_bar.text()

        await set_up_replicate(window, f"http://127.0.0.1:{port}", TOKEN)
        panel.test_button.click()
        await wait_until(lambda: panel.test_button.isEnabled(), 20, what="the test")
        assert "cannot be reached" in panel.status_label.text()
        assert "could not connect" in panel.status_label.text()

    run(qloop, scenario())
    assert not listed(window, BackendType.COMFYUI)


def test_a_remote_job_is_reattached_after_a_restart(
    remote_window, papercut, qloop, gui_home
) -> None:
    first = remote_window(fast_config(max_steps=40))

    async def scenario() -> tuple[Job, Job]:
        stand_in = await ReplicateStandIn(steps_per_poll=1).start()
        try:
            first.controller.start()
            await open_dataset(first, papercut)
            await set_up_replicate(first, stand_in.api_url, TOKEN)
            await press_train_and_confirm(first)
            await wait_until(lambda: listed(first, BackendType.REPLICATE), 20, what="the job")
            (job,) = listed(first, BackendType.REPLICATE)
            model = first.job_monitor.jobs.model
            await wait_until(
                lambda: (model.progress(job.id) or Job).__dict__.get("step", 0) >= 2,
                30,
                what="the run to train a few steps",
            )
            close_window(qloop, first)  # the app quits while the run goes on at Replicate
            await asyncio.sleep(0.1)
            store = JobStore(job_db_path())
            try:
                left = store.get(job.id)
            finally:
                store.close()
            assert left is not None and not left.status.is_finished and left.remote_id

            second = remote_window(fast_config(max_steps=40))
            second.controller.start()
            await wait_until(lambda: listed(second, BackendType.REPLICATE), 20, what="the list")
            (again,) = listed(second, BackendType.REPLICATE)
            assert again.id == job.id
            again = await until_finished(second, job.id)
            messages = " ".join(text for _level, text in second.messages)
            assert "Following 1 remote job(s) again" in messages
            return left, again
        finally:
            await stand_in.close()

    left, done = run(qloop, scenario())
    assert done.status is JobStatus.SUCCEEDED, done.error
    assert done.output_path and Path(done.output_path).is_file()


def test_an_interrupted_local_run_offers_resume_from_its_checkpoint(
    make_window, papercut, qloop, built_tiny_model, gui_home
) -> None:
    from lora_studio.core.dataset import Dataset
    from lora_studio.core.request import TrainingRequest
    from lora_studio.training.trainer import Trainer

    config = fast_config(max_steps=4, save_every_n_steps=2, name="cut_short")
    out = gui_home / "outputs"
    spec = JobSpec(
        dataset_dir=str(papercut),
        config=config.to_dict(),
        base_model="builtin:tiny-sd15",
        output_dir=str(out),
    )
    # The run got to its step-2 checkpoint, then the app died with it "running".
    Trainer(
        TrainingRequest(
            Dataset.from_directory(papercut), config.replace(max_steps=2), spec.base_model, out
        )
    ).train()
    store = JobStore(job_db_path())
    dead = Job(
        id=Job.new_id(), backend=BackendType.LOCAL, name="cut_short", base_model=spec.base_model,
        output_dir=spec.output_dir, dataset_dir=spec.dataset_dir, config=spec.config,
        spec=spec, status=JobStatus.RUNNING, started_at=time.time() - 30,
    )  # fmt: skip
    store.save(dead)
    store.close()

    window = make_window()

    async def scenario() -> None:
        window.controller.start()
        jobs = window.job_monitor.jobs
        await wait_until(lambda: jobs.model.row_of(dead.id) >= 0, 20, what="the job listed")
        row = jobs.model.row_of(dead.id)
        assert jobs.model.index(row, 2).data() == "Interrupted"
        assert jobs.select_job(dead.id)
        await wait_until(lambda: jobs.resume_button.isEnabled(), 20, what="Resume enabled")
        monitor = window.job_monitor
        assert "Resume it from step-000002" in monitor.error_label.text()
        assert monitor.shown_job is not None and monitor.shown_job.id == dead.id
        finished = signal_future(window.controller.job_finished)
        jobs.resume_button.click()
        (final,) = await finished
        assert final.status is JobStatus.SUCCEEDED, final.error
        assert final.step == 4

    run(qloop, scenario())
    messages = " ".join(text for _level, text in window.messages)
    assert "interrupted when the app closed" in messages
    assert "Resuming cut_short from step-000002" in messages


def test_waiting_jobs_can_be_reordered_and_cancelled_from_the_list(
    remote_window, papercut, qloop, tmp_path
) -> None:
    window = remote_window(fast_config(max_steps=3))
    controller = window.controller

    async def scenario() -> dict[str, JobStatus]:
        server = FakeComfyUI(tmp_path / "comfy", generation="new", step_delay=0.01)
        await server.start()
        server.hold = True  # the first run waits in ComfyUI's queue until released
        try:
            controller.start()
            await open_dataset(window, papercut)
            panel = window.backend_panel
            choose(window, BackendType.COMFYUI)
            type_into(panel.comfy_url_edit, server.url)
            panel.test_button.click()
            await wait_until(lambda: panel.checkpoint_box.count() > 0, 20, what="checkpoints")
            await wait_until(lambda: controller.queue is not None, 20, what="the queue")
            queue = controller.queue
            assert queue is not None
            queue.remote_limit = 1  # one remote run at a time: the others wait
            for number, name in enumerate(("first", "second", "third"), start=1):
                controller.set_config(controller.config.replace(name=name))
                window.preset_form.train_button.click()
                await wait_until(
                    lambda n=number: len(listed(window, BackendType.COMFYUI)) == n,  # type: ignore[misc]
                    20,
                    what=f"job {name} listed",
                )

            def waiting() -> list[str]:
                return [j.name for j in queue.jobs() if j.status is JobStatus.QUEUED]

            await wait_until(lambda: waiting() == ["second", "third"], 20, what="two waiting")
            jobs = window.job_monitor.jobs
            by_name = {j.name: j.id for j in listed(window, BackendType.COMFYUI)}
            assert jobs.select_job(by_name["third"])
            assert jobs.up_button.isEnabled() and jobs.down_button.isEnabled()
            assert not jobs.retry_button.isEnabled()
            jobs.up_button.click()
            assert waiting() == ["third", "second"]
            await wait_until(lambda: jobs.selected_job() is not None, 10, what="selection")
            selected = jobs.selected_job()
            assert selected is not None and selected.id == by_name["third"]
            jobs.cancel_button.click()
            await wait_until(lambda: waiting() == ["second"], 20, what="third cancelled")
            server.release()
            for name in ("first", "second"):
                await until_finished(window, by_name[name])
            await wait_until(
                lambda: current(window, by_name["third"]).status is JobStatus.CANCELLED,
                20,
                what="the list to show the cancel",
            )
            return {name: current(window, job_id).status for name, job_id in by_name.items()}
        finally:
            await server.stop()

    statuses = run(qloop, scenario())
    assert statuses == {
        "first": JobStatus.SUCCEEDED,
        "second": JobStatus.SUCCEEDED,
        "third": JobStatus.CANCELLED,
    }
    jobs = window.job_monitor.jobs
    assert jobs.select_job(jobs.model.jobs()[-1].id)  # a finished job can be run again
    assert jobs.retry_button.isEnabled() and not jobs.up_button.isEnabled()


def test_the_backend_choice_is_plain_remembered_values() -> None:
    from lora_studio.gui.backend_panel import BackendChoice

    choice = BackendChoice(
        kind=BackendType.REPLICATE,
        replicate_destination="me/flux-lora",
        replicate_hardware="gpu-h100",
        replicate_url="http://127.0.0.1:9",
    )
    assert BackendChoice.from_json(choice.to_json()) == choice
    assert "token" not in choice.to_json().lower()
    assert choice.backend_options() == {
        "url": "http://127.0.0.1:9",
        "trainer": "ostris/flux-dev-lora-trainer",
        "destination": "me/flux-lora",
        "hardware": "gpu-h100",
    }
    comfy = BackendChoice(kind=BackendType.COMFYUI, comfyui_checkpoint="")
    assert "Test connection" in (comfy.problem() or "")
    assert BackendChoice.from_json("{not json") == BackendChoice()
    assert BackendChoice.from_json('{"kind": "mainframe"}') == BackendChoice()


def test_jobs_list_text() -> None:
    from lora_studio.gui.jobs_model import format_cost, format_elapsed, format_started

    job = Job(id="j", backend=BackendType.REPLICATE, name="n", base_model="", output_dir="")
    assert format_cost(job) == ""
    job.estimated_cost = 0.4213
    assert format_cost(job) == "~$0.42"
    job.cost = 0.1426
    assert format_cost(job) == "$0.14"
    local = Job(id="k", backend=BackendType.LOCAL, name="n", base_model="", output_dir="")
    assert format_cost(local) == "\u2013"
    assert format_elapsed(3725) == "1:02:05" and format_elapsed(65) == "1:05"
    now = time.mktime((2026, 3, 3, 14, 5, 0, 0, 0, -1))
    assert format_started(now, now) == "14:05"
    assert format_started(now - 86400 * 2, now) == "Mar 01 14:05"
