"""The job monitor and the jobs list, driven by a stream of real ``Progress`` snapshots.

The snapshots go through the controller's own signals (``training_active_changed``,
``job_started``, ``job_progress``, ``job_updated``, ``job_finished``), so the window's
slots do exactly what they do in a run; the histories come from a real ``JobStore``.
Nothing of ours is replaced: a test only feeds data and reads what the widgets show.
"""

from __future__ import annotations

import asyncio
import math
import time
from pathlib import Path

import numpy as np
from gui_helpers import run
from PIL import Image
from PySide6.QtCore import QObject, QPoint, Qt, QUrl, Slot
from PySide6.QtGui import QDesktopServices
from PySide6.QtTest import QTest
from PySide6.QtWidgets import QScrollBar

from lora_studio.core.jobs import (
    BackendType,
    Job,
    JobSpec,
    JobStatus,
    JobStore,
    Progress,
    ProgressRecorder,
)
from lora_studio.core.paths import job_db_path
from lora_studio.gui.async_signals import signal_future, wait_until
from lora_studio.gui.job_monitor import MonitorState
from lora_studio.gui.jobs_model import JobColumn
from lora_studio.gui.loss_curve import LossCurve, TrainingCharts, decimate, format_lr

TOTAL = 40


def _job(name: str = "papercut_v1", backend: BackendType = BackendType.LOCAL, **kw) -> Job:
    spec = JobSpec(
        dataset_dir="/data/papercut",
        config={"name": name},
        base_model="builtin:tiny-sd15",
        output_dir="/data/out",
        backend=backend,
    )
    values = {
        "id": Job.new_id(),
        "backend": backend,
        "name": name,
        "base_model": "builtin:tiny-sd15",
        "output_dir": "/data/out",
        "spec": spec,
        "started_at": time.time() - 65,
    }
    values.update(kw)
    return Job(**values)


def _stream(total: int = TOTAL) -> list[Progress]:
    """What a local run reports: preparing, then a step at a time with its loss and LR."""
    out = [Progress(status=JobStatus.PREPARING, message="Caching latents 3/12")]
    losses: list[float] = []
    rates: list[float] = []
    for step in range(1, total + 1):
        losses.append(0.2 + 0.1 * math.exp(-step / 10) + 0.03 * math.sin(step * 1.7))
        rates.append(1e-4 * min(1.0, step / 5))
        out.append(
            Progress(
                status=JobStatus.RUNNING,
                step=step,
                total_steps=total,
                epoch=1 + step // 20,
                total_epochs=2,
                loss=losses[-1],
                loss_history=tuple(losses),
                learning_rate=rates[-1],
                lr_history=tuple(rates),
                elapsed_s=step * 0.5,
                eta_s=(total - step) * 0.5,
                samples_per_s=8.0,
                log_tail=tuple(f"step {s}/{total}" for s in range(max(1, step - 49), step + 1)),
                message="Training: epoch 1",
            )
        )
    return out


def _feed(window, job: Job, stream: list[Progress]) -> None:
    controller = window.controller
    for progress in stream:
        controller.job_progress.emit(progress)
        controller.job_updated.emit(job, progress)


def _cell(window, job: Job, column: JobColumn) -> str:
    model = window.job_monitor.jobs.model
    return model.index(model.row_of(job.id), column).data() or ""


def test_a_run_shows_status_progress_speed_eta_and_a_ticking_clock(make_window, qloop):
    window = make_window()
    run(qloop, _a_run(window))


async def _a_run(window) -> None:
    monitor, controller = window.job_monitor, window.controller
    job = _job()
    controller.training_active_changed.emit(True)
    controller.job_started.emit(job)
    stream = _stream()
    _feed(window, job, stream[:1])
    assert monitor.status_label.text() == "Preparing: Caching latents 3/12"
    assert _cell(window, job, JobColumn.STATUS) == "Preparing: Caching latents 3/12"
    _feed(window, job, stream[1:21])

    assert monitor.state is MonitorState.RUNNING and monitor.status_label.text() == "Running"
    bar = monitor.progress_bar
    assert (bar.value(), bar.maximum()) == (20, TOTAL)
    assert bar.text().startswith("20 / 40 steps")
    stats = monitor.stats_label.text()
    assert "step 20/40" in stats and "8.0 samples/s" in stats and "ETA 0:10" in stats
    # The clock counts from the job's start (65 s ago) and ticks on its own.
    assert monitor.clock_running and monitor.elapsed_label.text() == "Elapsed 1:05"
    shown = monitor.elapsed_label.text()
    await wait_until(lambda: monitor.elapsed_label.text() != shown, 5, what="the clock to tick")
    # The same job in the list: step/total on its bar, speed, ETA, elapsed.
    assert _cell(window, job, JobColumn.PROGRESS) == "20/40"
    assert _cell(window, job, JobColumn.SPEED) == "8.0/s"
    assert _cell(window, job, JobColumn.ETA) == "0:10"
    assert _cell(window, job, JobColumn.ELAPSED) in ("1:05", "1:06", "1:07")

    _feed(window, job, stream[21:])
    final = stream[-1].evolve(status=JobStatus.SUCCEEDED, output_path="/data/out/p.safetensors")
    job.finished_at = time.time()
    controller.job_finished.emit(final)
    controller.training_active_changed.emit(False)
    controller.job_updated.emit(job, final)
    assert monitor.state is MonitorState.IDLE and monitor.status_label.text() == "Succeeded"
    assert not monitor.clock_running
    stopped = monitor.elapsed_s()
    assert stopped is not None and monitor.elapsed_s() == stopped  # no longer ticking
    assert "took" in monitor.stats_label.text() and "ETA" not in monitor.stats_label.text()
    assert _cell(window, job, JobColumn.PROGRESS) == "100%"
    assert _cell(window, job, JobColumn.ETA) == "" and _cell(window, job, JobColumn.SPEED) == ""
    assert monitor.output_edit.text() == "/data/out/p.safetensors"


def test_loss_chart_smoothing_and_the_learning_rate_curve(make_window, qloop):
    window = make_window()
    run(qloop, _charts(window))


async def _charts(window) -> None:
    monitor, controller = window.job_monitor, window.controller
    charts = monitor.charts
    job = _job()
    controller.training_active_changed.emit(True)
    controller.job_started.emit(job)
    assert charts.lr.isHidden()  # nothing reported yet
    _feed(window, job, _stream())

    loss = charts.loss
    assert loss.steps == tuple(float(s) for s in range(1, TOTAL + 1))
    assert len(loss.values) == TOTAL and not charts.lr.isHidden()
    assert charts.lr.values[0] == 2e-5 and charts.lr.values[-1] == 1e-4
    assert "LR <b>1e-4</b>" in charts.title.text() and "Loss <b>0." in charts.title.text()
    raw_spread = max(loss.values) - min(loss.values)
    charts.smoothing_slider.setValue(90)
    assert loss.smoothing == 0.9 and charts.smoothing_value.text() == "0.90"
    smooth_90 = loss.smoothed()
    assert max(smooth_90) - min(smooth_90) < raw_spread  # the trend, without the noise
    charts.smoothing_slider.setValue(0)
    assert loss.smoothed() == ()  # raw values only
    assert not monitor.grab().isNull()


def test_a_remote_run_without_an_lr_series_still_gets_its_curve(make_window, qloop):
    window = make_window()
    run(qloop, _remote_lr(window))


async def _remote_lr(window) -> None:
    monitor = window.job_monitor
    job = _job("on_replicate", BackendType.REPLICATE)
    window.controller.job_updated.emit(job, Progress(status=JobStatus.QUEUED))
    monitor.jobs.select_job(job.id)
    monitor.show_job(job, Progress(status=JobStatus.RUNNING))
    for step in (10, 20, 30):
        progress = Progress(
            status=JobStatus.RUNNING,
            step=step,
            total_steps=100,
            loss=0.3,
            loss_history=(0.5, 0.4, 0.3)[: step // 10],
            learning_rate=4e-4 * (1 - step / 100),
        )
        window.controller.job_updated.emit(job, progress)
    assert monitor.charts.lr.steps == (10.0, 20.0, 30.0)
    assert monitor.charts.lr.values[-1] == 4e-4 * 0.7
    assert format_lr(2.5e-4) == "2.5e-4" and format_lr(1e-3) == "1e-3"


def test_charts_stay_fast_with_tens_of_thousands_of_points(qapp):
    n = 30_000
    steps = list(range(1, n + 1))
    losses = [0.2 + 0.1 * math.sin(i / 50) + 0.05 * math.sin(i * 1.3) for i in steps]
    spike = 12_345
    losses[spike] = 3.0  # one diverging step must survive the decimation
    xs, ys = decimate(np.asarray(steps, float), np.asarray(losses), 400)
    assert len(xs) <= 800 and max(ys) == 3.0
    charts = TrainingCharts()
    charts.resize(700, 300)
    charts.show()
    started = time.perf_counter()
    charts.set_points(list(zip(steps, losses, strict=True)), [(s, 1e-4) for s in steps])
    charts.loss.set_smoothing(0.95)
    for _ in range(5):
        assert not charts.grab().isNull()
    per_frame = (time.perf_counter() - started) / 5
    assert per_frame < 0.25, f"{per_frame * 1000:.0f} ms a frame with {n} points"
    curve = LossCurve()
    curve.set_values([1.0, 0.5, 0.25], last_step=3000)  # a thinned history
    assert curve.steps == (1.0, 1500.5, 3000.0)
    charts.deleteLater()
    curve.deleteLater()


def test_the_log_follows_its_end_unless_scrolled_up(make_window, qloop):
    window = make_window()
    run(qloop, _log_follows(window))


async def _log_follows(window) -> None:
    monitor, controller = window.job_monitor, window.controller
    job = _job()
    controller.training_active_changed.emit(True)
    controller.job_started.emit(job)

    def lines(upto: int) -> Progress:
        return Progress(
            status=JobStatus.RUNNING,
            step=upto,
            total_steps=400,
            log_tail=tuple(f"12:00:00 step {i}/400  loss 0.1" for i in range(upto - 49, upto + 1)),
        )

    for upto in range(50, 201, 10):
        _feed(window, job, [lines(upto)])
    bar = monitor.log_view.verticalScrollBar()
    await wait_until(lambda: bar.maximum() > 0 and bar.value() == bar.maximum(), 5, what="end")
    assert (
        monitor.log_view.font().fixedPitch() or "mono" in monitor.log_view.font().family().lower()
    )
    bar.triggerAction(QScrollBar.SliderAction.SliderToMinimum)  # the user scrolls up to read
    await asyncio.sleep(0.05)
    assert not monitor.log_follows()
    _feed(window, job, [lines(260)])
    await asyncio.sleep(0.05)
    assert bar.value() == 0 and monitor.log_lines()[-1].startswith("12:00:00 step 260")
    bar.triggerAction(QScrollBar.SliderAction.SliderToMaximum)  # back at the end
    await wait_until(monitor.log_follows, 5, what="following again")
    _feed(window, job, [lines(300)])
    await wait_until(lambda: bar.value() == bar.maximum(), 5, what="the log to follow")
    assert monitor.log_view.toPlainText().splitlines()[-1].startswith("12:00:00 step 300")


class _UrlCatcher(QObject):
    """What ``QDesktopServices.openUrl`` was asked to open (Qt's own URL handler hook)."""

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[QUrl] = []

    @Slot(QUrl)
    def open(self, url: QUrl) -> None:
        self.urls.append(url)


def test_samples_enlarge_on_click_and_step_with_the_arrow_keys(make_window, qloop, tmp_path):
    window = make_window()
    run(qloop, _samples(window, tmp_path))


async def _samples(window, tmp_path: Path) -> None:
    monitor, controller = window.job_monitor, window.controller
    job = _job()
    controller.training_active_changed.emit(True)
    controller.job_started.emit(job)
    paths = []
    for step in (10, 20):
        for index in (0, 1):
            path = tmp_path / "papercut_v1-samples" / f"step{step:06d}-{index:02d}.png"
            path.parent.mkdir(exist_ok=True)
            Image.new("RGB", (64, 64), (step * 10, index * 120, 90)).save(path)
            paths.append(str(path))
    base = Progress(status=JobStatus.RUNNING, step=10, total_steps=40)
    _feed(window, job, [base.evolve(sample_paths=tuple(paths[:2]))])
    _feed(window, job, [base.evolve(step=20, sample_paths=tuple(paths))])
    gallery = monitor.samples
    assert not gallery.isHidden() and gallery.title.text() == "Samples (4) \u00b7 latest: step 20"
    rect = gallery.list.visualItemRect(gallery.list.item(0))
    QTest.mouseClick(gallery.list.viewport(), Qt.MouseButton.LeftButton, pos=rect.center())
    preview = gallery.preview
    assert preview is not None and preview.isVisible()
    assert preview.path == Path(paths[2])  # newest first: step 20, prompt 1
    await wait_until(preview.has_image, 10, what="the enlarged sample")
    assert preview.image.pixmap().width() == 512  # a 64 px sample, enlarged
    QTest.keyClick(preview, Qt.Key.Key_Right)
    assert preview.path == Path(paths[3]) and "Step 20 \u00b7 prompt 2" in preview.caption.text()
    QTest.keyClick(preview, Qt.Key.Key_Left)
    assert preview.path == Path(paths[2])
    catcher = _UrlCatcher()
    QDesktopServices.setUrlHandler("file", catcher, "open")
    try:
        preview.folder_button.click()
    finally:
        QDesktopServices.unsetUrlHandler("file")
    assert [u.toLocalFile() for u in catcher.urls] == [str(Path(paths[2]).parent)]
    preview.close()


def test_a_finished_job_shows_its_history_and_its_actions(make_window, qloop, gui_home):
    # The history as the app records it: a long local run, and a Replicate one.
    store = JobStore(job_db_path())
    done = _job(
        "papercut_long",
        status=JobStatus.SUCCEEDED,
        started_at=time.time() - 3600,
        finished_at=time.time() - 3600 + 754,
        output_path=str(gui_home / "outputs" / "papercut_long.safetensors"),
    )
    done.spec = JobSpec(  # a run whose dataset folder has since been deleted
        dataset_dir=str(gui_home / "gone"),
        config={"name": "papercut_long"},
        base_model="builtin:tiny-sd15",
        output_dir=str(gui_home / "outputs"),
    )
    store.save(done)
    store.record_losses(done.id, [(s, 0.3 - s * 1e-5) for s in range(1, 12_001)])
    store.append_logs(done.id, [f"10:00:00 step {s}/12000" for s in range(1, 301)])
    remote = _job(
        "on_replicate", BackendType.REPLICATE, status=JobStatus.FAILED, error="Out of credit."
    )
    remote.finished_at = remote.started_at + 30
    store.save(remote)
    store.close()
    window = make_window()
    run(qloop, _history(window, done, remote, gui_home))


async def _history(window, done: Job, remote: Job, gui_home: Path) -> None:
    monitor, jobs = window.job_monitor, window.job_monitor.jobs
    window.controller.start()
    await wait_until(lambda: jobs.model.row_of(done.id) >= 0, 20, what="the history listed")
    await _select(window, done)
    await wait_until(lambda: len(monitor.charts.loss.steps) == 12_000, 20, what="the losses")
    assert monitor.status_label.text() == "Succeeded" and not monitor.clock_running
    assert monitor.elapsed_label.text() == "Elapsed 12:34"
    assert monitor.log_lines()[-1] == "10:00:00 step 300/12000"
    assert monitor.output_edit.text().endswith("papercut_long.safetensors")
    assert monitor.charts.loss.steps[-1] == 12_000.0
    assert _cell(window, done, JobColumn.ELAPSED) == "12:34"
    # Its actions: Open folder (the jobs list's and the monitor's), Retry; nothing to cancel.
    assert jobs.retry_button.isEnabled() and jobs.folder_button.isEnabled()
    assert not jobs.cancel_button.isEnabled()
    catcher = _UrlCatcher()
    QDesktopServices.setUrlHandler("file", catcher, "open")
    try:
        jobs.folder_button.click()
        monitor.open_folder_button.click()
    finally:
        QDesktopServices.unsetUrlHandler("file")
    folder = str(gui_home / "outputs")
    assert [u.toLocalFile() for u in catcher.urls] == [folder, folder]
    # Retry reaches the controller, which finds the dataset gone and says so.
    failed = signal_future(window.controller.job_finished)
    jobs.retry_button.click()
    (progress,) = await failed
    assert progress.status is JobStatus.FAILED and "gone" in (progress.error or "")

    # The failed remote job: its error, Retry, but no Resume (not a local run).
    await _select(window, remote)
    assert monitor.error_label.text() == "Failed: Out of credit."
    assert jobs.retry_button.isEnabled() and not jobs.resume_button.isEnabled()
    assert monitor.elapsed_label.text() == "Elapsed 0:30"


async def _select(window, job: Job) -> None:
    monitor = window.job_monitor
    assert monitor.jobs.select_job(job.id)
    await wait_until(
        lambda: monitor.shown_job is not None and monitor.shown_job.id == job.id,
        20,
        what="the job shown",
    )


def _record_run(store: JobStore, name: str) -> tuple[Job, list[float]]:
    """A finished local run recorded as the job queue records one (step by step, through a
    ProgressRecorder); returns the job and its learning rate at each step."""
    job = _job(name, status=JobStatus.RUNNING)
    store.save(job)
    recorder = ProgressRecorder(store)
    stream = _stream()[1:]
    stream[-1] = stream[-1].evolve(status=JobStatus.SUCCEEDED)
    for progress in stream:
        recorder.record(job, progress)
    rates = [p.learning_rate for p in stream]
    assert all(rate is not None for rate in rates)
    return job, [float(rate) for rate in rates if rate is not None]


def test_a_job_from_the_history_shows_its_learning_rate_curve(make_window, qloop, tmp_path):
    db = tmp_path / "jobs.sqlite3"
    store = JobStore(db)
    job, rates = _record_run(store, "papercut_lr")
    store.close()
    store = JobStore(db)  # what the app reads after a restart
    window = make_window()
    monitor, charts = window.job_monitor, window.job_monitor.charts
    monitor.show_job(
        job, None, store.logs(job.id), store.losses(job.id), store.learning_rates(job.id)
    )
    store.close()
    steps = tuple(float(s) for s in range(1, TOTAL + 1))
    assert charts.loss.steps == steps and charts.lr.steps == steps
    assert charts.lr.values == tuple(rates) and not charts.lr.isHidden()
    assert "LR <b>1e-4</b>" in charts.title.text()
    # A job recorded without rates (an older history, a backend that does not say): no curve.
    monitor.show_job(job, None, [], [(1, 0.5), (2, 0.4)], [])
    assert charts.loss.steps == (1.0, 2.0) and charts.lr.steps == () and charts.lr.isHidden()


def test_the_window_shows_a_history_jobs_learning_rate_curve(make_window, qloop, gui_home):
    store = JobStore(job_db_path())
    job, rates = _record_run(store, "papercut_lr")
    store.close()
    window = make_window()
    run(qloop, _history_lr(window, job, rates))


async def _history_lr(window, job: Job, rates: list[float]) -> None:
    monitor, charts = window.job_monitor, window.job_monitor.charts
    window.controller.start()
    await wait_until(lambda: monitor.jobs.model.row_of(job.id) >= 0, 20, what="the history")
    await _select(window, job)
    await wait_until(lambda: len(charts.loss.steps) == TOTAL, 20, what="the losses")
    # The rates come with the losses (one read of the history), so no wait here.
    assert charts.lr.values == tuple(rates) and not charts.lr.isHidden()


def test_cancel_and_resume_from_the_monitor_reach_the_controller(make_window, qloop):
    window = make_window()
    run(qloop, _cancel_and_resume(window))


async def _cancel_and_resume(window) -> None:
    from lora_studio.gui.controller import ResumePoint

    monitor, controller = window.job_monitor, window.controller
    job = _job()
    controller.training_active_changed.emit(True)
    controller.job_started.emit(job)
    _feed(window, job, _stream()[:5])
    asked: list[str] = []
    monitor.cancel_requested.connect(lambda: asked.append("cancel"))
    monitor.resume_checkpoint_requested.connect(lambda path: asked.append(str(path)))
    monitor.cancel_button.click()
    assert asked == ["cancel"] and monitor.state is MonitorState.STOPPING
    assert (
        not monitor.cancel_button.isEnabled() and monitor.cancel_button.text() == "Stopping\u2026"
    )
    cancelled = _stream()[4].evolve(status=JobStatus.CANCELLED)
    controller.job_finished.emit(cancelled)
    controller.training_active_changed.emit(False)
    point = ResumePoint(Path("/data/out/papercut_v1-checkpoints/step-000004"), 4, cancelled.status)
    controller.resume_available.emit(point)
    assert monitor.status_label.text() == "Cancelled" and not monitor.clock_running
    assert monitor.resume_button.isVisible()
    assert monitor.resume_button.text() == "Resume from step 4"
    # The controller starts the run from that checkpoint (here: with no dataset open, it
    # says so and the run ends at once).
    finished = signal_future(controller.job_finished)
    QTest.mouseClick(monitor.resume_button, Qt.MouseButton.LeftButton, pos=QPoint(5, 5))
    assert asked == ["cancel", str(point.path)]
    (progress,) = await finished
    assert progress.status is JobStatus.FAILED
