"""The pieces on their own: thumbnails, the trainer's QThread host, the form, the caption
editor keys, the shared selection, the job monitor's formatting and the Qt binding fix."""

from __future__ import annotations

import sys
import threading
from pathlib import Path

import pytest
from gui_helpers import fast_config, open_and_wait, run
from PIL import Image
from PySide6.QtCore import QIdentityProxyModel, QItemSelectionModel, Qt
from PySide6.QtTest import QTest

from lora_studio.core.config import PRESETS
from lora_studio.core.estimates import estimate
from lora_studio.core.jobs import BackendType, JobStatus, Progress
from lora_studio.gui import qt_compat
from lora_studio.gui.async_signals import signal_future
from lora_studio.gui.caption_grid import CaptionEditor
from lora_studio.gui.dataset_model import Column
from lora_studio.gui.job_monitor import (
    JobMonitor,
    MonitorState,
    format_clock,
    new_log_lines,
    stats_text,
    status_text,
)
from lora_studio.gui.loss_curve import LossCurve, smooth
from lora_studio.gui.preset_form import format_learning_rate, steps_formula
from lora_studio.gui.thumbnail_loader import ThumbnailError, ThumbnailLoader, make_thumbnail
from lora_studio.gui.trainer_thread import QtWorkerStarter

# ---- thumbnails ------------------------------------------------------------------------


def test_thumbnail_is_cached_on_disk_by_path_mtime_and_size(qapp, tmp_path: Path):
    image = tmp_path / "photo.jpg"
    Image.new("RGB", (800, 400), (200, 30, 30)).save(image, quality=90)
    cache = tmp_path / "cache"
    thumb = make_thumbnail(image, 128, cache)
    assert (thumb.width(), thumb.height()) == (128, 64)
    cached = list(cache.rglob("*.png"))
    assert len(cached) == 1
    # Served from the cache: the same file, not a new one.
    make_thumbnail(image, 128, cache)
    assert list(cache.rglob("*.png")) == cached
    # A changed image (new size/mtime) gets a new cache entry.
    Image.new("RGB", (300, 600), (30, 30, 200)).save(image, quality=80)
    again = make_thumbnail(image, 128, cache)
    assert (again.width(), again.height()) == (64, 128)
    assert len(list(cache.rglob("*.png"))) == 2


def test_broken_image_raises_a_readable_reason(qapp, tmp_path: Path):
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not a jpeg at all")
    with pytest.raises(ThumbnailError, match="corrupt or not an image"):
        make_thumbnail(broken, 96, None)


def test_loader_decodes_off_the_gui_thread(qloop, tmp_path: Path, monkeypatch):
    image = tmp_path / "a.png"
    Image.new("RGB", (64, 64), (0, 128, 0)).save(image)
    broken = tmp_path / "b.png"
    broken.write_bytes(b"garbage")
    loader = ThumbnailLoader(cache_dir=tmp_path / "cache")
    decoded_on: list[str] = []
    import lora_studio.gui.thumbnail_loader as module

    original = module._decode

    def spy(path: Path, size: int, *args: object) -> bytes:
        decoded_on.append(threading.current_thread().name)
        return original(path, size, *args)

    # A spy around the real decoder, to see which thread it runs on.
    monkeypatch.setattr(module, "_decode", spy)
    try:

        async def scenario():
            ready = signal_future(loader.thumbnail_ready)
            failed = signal_future(loader.thumbnail_failed)
            loader.request(image)
            loader.request(image)  # deduplicated while pending
            loader.request(broken)
            return await ready, await failed

        (path, thumb), (bad, reason) = run(qloop, scenario())
    finally:
        loader.shutdown()
    assert path == image and not thumb.isNull()
    assert bad == broken and "not an image" in reason
    assert decoded_on and threading.main_thread().name not in decoded_on
    assert len(decoded_on) == 2


# ---- the trainer's QThread host -------------------------------------------------------


def test_worker_starter_runs_on_a_qthread_and_joins(qloop):
    starter = QtWorkerStarter()
    seen: list[str] = []
    release = threading.Event()

    def work() -> None:
        seen.append(threading.current_thread().name)
        release.wait(10)

    handle = starter(work, "train-test")
    assert handle.is_alive()
    assert starter.running == [handle]
    release.set()
    handle.join(10)
    assert not handle.is_alive()
    assert starter.join_all(10)
    assert seen and seen[0] != threading.main_thread().name
    assert starter.running == []


# ---- preset form ----------------------------------------------------------------------


def test_preset_change_loads_values_but_keeps_name_and_trigger(make_window, qloop, papercut):
    window = make_window(
        config=fast_config(
            name="my_style", trigger_word="zxq style", sample_prompts="[trigger], a fox"
        )
    )
    form = window.preset_form
    controller = window.controller
    index = form.preset_box.findData("sdxl")
    form.preset_box.setCurrentIndex(index)
    form.preset_box.activated.emit(index)  # what a user's pick emits
    config = controller.config
    assert (config.preset, config.rank, config.resolution, config.epochs) == ("sdxl", 32, 1024, 10)
    assert config.max_steps is None
    assert (config.name, config.trigger_word) == ("my_style", "zxq style")
    assert config.sample_prompts == "[trigger], a fox"  # the concept's, not the preset's
    assert form.rank_spin.value() == 32 and form.resolution_spin.value() == 1024
    assert form.max_steps_spin.text() == "off (use epochs)"
    assert form.preset_description.text() == PRESETS["sdxl"].description
    form.resolution_spin.setValue(768)
    assert form.preset_description.text().endswith("Changed here: resolution.")
    assert form.name_edit.text() == "my_style"


def test_form_tooltips_and_ranges_come_from_the_config_fields(make_window):
    from lora_studio.core.config import field_help, field_range

    form = make_window().preset_form
    assert form.field("rank").toolTip() == field_help("rank")
    assert form.field("trigger_word").toolTip() == field_help("trigger_word")
    lo, hi = field_range("resolution")
    assert (form.resolution_spin.minimum(), form.resolution_spin.maximum()) == (lo, hi)
    assert form.max_steps_spin.minimum() == 0  # 0 means "off"


def test_steps_formula_spells_out_the_arithmetic():
    config = fast_config(max_steps=None, epochs=5, batch_size=2, gradient_accumulation_steps=3)
    est = estimate(12, config)
    assert steps_formula(est, config, 12) == (
        "12 images \u00d7 1 repeat \u00d7 5 epochs \u00f7 (batch 2 \u00d7 accumulation 3) "
        f"= {est.plan.total_steps} steps"
    )
    capped = fast_config(max_steps=30)
    text = steps_formula(estimate(12, capped), capped, 12)
    assert text.startswith("30 steps (max steps)")
    assert format_learning_rate(2e-4) == "2e-4"
    assert format_learning_rate(0.05) == "0.05"


# ---- caption editor and shared selection -----------------------------------------------


def test_escape_cancels_an_edit_and_placeholder_is_shown(make_window, qloop, papercut):
    window = make_window()

    open_and_wait(qloop, window, papercut)
    grid = window.caption_grid
    model = window.dataset_model
    index = grid.proxy_index(model.index(11, Column.CAPTION))  # papercut_12: no caption
    grid.table.scrollTo(index)
    grid.table.edit(index)
    editor = grid.table.indexWidget(index)
    assert isinstance(editor, CaptionEditor)
    QTest.keyClicks(editor, "typed then abandoned")
    QTest.keyClick(editor, Qt.Key.Key_Escape)
    assert model.data(model.index(11, Column.CAPTION)) == ""
    assert not (papercut / "papercut_12.txt").exists()

    from PySide6.QtWidgets import QStyleOptionViewItem

    style_option = QStyleOptionViewItem()
    grid.delegate.initStyleOption(style_option, index)
    assert style_option.text == "(no caption)"

    grid.filter_box.setCurrentText("Uncaptioned")
    assert grid.proxy.rowCount() == 2
    grid.filter_box.setCurrentText("All")
    assert grid.proxy.rowCount() == 12


def test_browser_and_grid_share_the_selection(make_window, qloop, papercut):
    window = make_window()

    open_and_wait(qloop, window, papercut)
    window.select_image(4)
    grid = window.caption_grid
    rows = {grid.source_index(i).row() for i in grid.table.selectionModel().selectedRows()}
    assert rows == {4}

    target = grid.proxy_index(window.dataset_model.index(7, Column.CAPTION))
    grid.table.selectionModel().select(
        target,
        QItemSelectionModel.SelectionFlag.ClearAndSelect | QItemSelectionModel.SelectionFlag.Rows,
    )
    browser_rows = {i.row() for i in window.browser.view.selectionModel().selectedIndexes()}
    assert browser_rows == {7}


# ---- job monitor ----------------------------------------------------------------------


def test_log_tail_overlap_is_not_repeated():
    shown = ["a", "b", "c"]
    assert new_log_lines(shown, ("b", "c", "d", "e")) == ["d", "e"]
    assert new_log_lines(shown, ("c",)) == []
    assert new_log_lines(shown, ("x", "y")) == ["x", "y"]
    assert new_log_lines([], ("a",)) == ["a"]


def test_monitor_text_and_button_states(qapp):
    running = Progress(
        status=JobStatus.RUNNING,
        step=12,
        total_steps=60,
        epoch=1,
        total_epochs=5,
        loss=0.10434,
        elapsed_s=5.0,
        eta_s=25.0,
    )
    assert (
        stats_text(running)
        == "step 12/60 \u00b7 epoch 1/5 \u00b7 loss 0.1043 \u00b7 2.4 it/s \u00b7 ETA 0:25"
    )
    preparing = Progress(status=JobStatus.PREPARING, message="Caching latents 3/12")
    assert status_text(preparing) == "Preparing: Caching latents 3/12"
    assert status_text(None) == "Idle"
    assert format_clock(3725) == "1:02:05"

    monitor = JobMonitor()
    assert monitor.state is MonitorState.IDLE and not monitor.cancel_button.isEnabled()
    monitor.set_training_active(True)
    assert monitor.cancel_button.isEnabled()
    monitor.on_progress(running.evolve(log_tail=("one", "two")))
    monitor.on_progress(running.evolve(log_tail=("one", "two", "three")))
    assert monitor.log_lines() == ["one", "two", "three"]
    assert monitor.log_view.toPlainText() == "one\ntwo\nthree"
    failed = running.evolve(status=JobStatus.FAILED, error="The GPU ran out of memory.")
    monitor.on_finished(failed)
    assert monitor.error_label.text() == "Failed: The GPU ran out of memory."
    assert monitor.state is MonitorState.IDLE
    monitor.deleteLater()


def test_loss_curve_paints_history(qapp):
    curve = LossCurve()
    curve.resize(300, 120)
    curve.set_values([1.0, 0.8, 0.9, 0.5, 0.4], last_step=5)
    assert not curve.grab().isNull()
    curve.set_values([float("nan"), 1.0])
    assert curve.values == (1.0,)
    assert smooth([1.0, 0.0], weight=0.5) == [1.0, 0.5]
    curve.deleteLater()


# ---- the Qt binding work-around ------------------------------------------------------------


def test_many_signals_and_empty_model_answers_do_not_crash(qapp):
    # With PySide6 6.12 on Python < 3.12 each of these drops a reference to True/None;
    # without qt_compat the interpreter aborts long before 20000 (see qt_compat).
    probe = qt_compat._EmitProbe()
    probe.ping.connect(lambda: None)
    for _ in range(20_000):
        probe.ping.emit()
    proxy = QIdentityProxyModel()
    model = qt_compat._NoneProbe()
    proxy.setSourceModel(model)
    index = proxy.index(0, 0)
    for _ in range(20_000):
        assert proxy.data(index) is None
    assert sys.getrefcount(True) > 1_000 and sys.getrefcount(None) > 1_000


# ---- settings files and the empty state ---------------------------------------------------


def test_settings_save_and_load_round_trip(make_window, qloop, tmp_path: Path):
    window = make_window(config=fast_config(rank=12, trigger_word="ink wash"))
    controller = window.controller
    saved_file = tmp_path / "run.toml"

    async def save_then_load() -> None:
        await controller.save_config(saved_file)
        controller.apply_preset("high_quality")
        assert controller.config.rank == 64
        changed = signal_future(controller.config_changed)
        controller.load_config(saved_file)
        await changed

    run(qloop, save_then_load())
    assert controller.config.rank == 12 and controller.config.trigger_word == "ink wash"
    assert window.preset_form.rank_spin.value() == 12

    broken = tmp_path / "broken.toml"
    broken.write_text("[lora]\nrank = 'lots'\n")

    async def load_broken() -> None:
        await controller.load_config(broken)

    run(qloop, load_broken())
    assert controller.config.rank == 12, "a bad file must not change the settings"
    assert window.message_bar.isVisible() and "Rank" in window.message_bar.text()


def test_empty_window_offers_the_sample_dataset(make_window, qloop):
    window = make_window()
    assert window.browser.stack.currentWidget() is window.browser.empty
    assert not window.preset_form.train_button.isEnabled()
    assert "dataset" in window.preset_form.train_button.toolTip().lower()

    async def scenario() -> None:
        loaded = signal_future(window.controller.dataset_loaded)
        window.browser.sample_button.click()
        await loaded

    run(qloop, scenario())
    assert window.browser.stack.currentWidget() is window.browser.view
    assert window.preset_form.train_button.isEnabled()


# ---- training features: pieces on their own -------------------------------------------------


def test_pause_button_follows_the_run_and_ignores_stale_updates(qapp):
    from lora_studio.core.jobs import Job
    from lora_studio.gui.controller import ResumePoint

    monitor = JobMonitor()
    seen: list[str] = []
    monitor.pause_requested.connect(lambda: seen.append("pause"))
    monitor.unpause_requested.connect(lambda: seen.append("unpause"))
    monitor.set_training_active(True)
    assert not monitor.pause_button.isEnabled()  # no job to pause yet
    job = Job(id="j", backend=BackendType.LOCAL, name="n", base_model="m", output_dir="/o")
    monitor.on_job_started(job)
    running = Progress(status=JobStatus.RUNNING, step=3, total_steps=10)
    monitor.pause_button.click()
    assert monitor.state is MonitorState.PAUSING and seen == ["pause"]
    monitor.on_progress(running)  # the step that was under way finishes first
    assert monitor.state is MonitorState.PAUSING
    monitor.on_progress(running.evolve(status=JobStatus.PAUSED, message="Paused"))
    assert monitor.state is MonitorState.PAUSED and monitor.status_label.text() == "Paused"
    assert monitor.pause_button.text() == "Resume" and monitor.cancel_button.isEnabled()
    monitor.pause_button.click()
    assert monitor.state is MonitorState.RESUMING and seen == ["pause", "unpause"]
    monitor.on_progress(running.evolve(status=JobStatus.PAUSED))  # stale
    assert monitor.state is MonitorState.RESUMING
    monitor.on_progress(running.evolve(step=4))
    assert monitor.state is MonitorState.RUNNING and monitor.pause_button.text() == "Pause"
    monitor.set_pause_supported(False)
    assert monitor.pause_button.isHidden()
    monitor.on_finished(running.evolve(status=JobStatus.CANCELLED))
    point = ResumePoint(Path("/o/n-checkpoints/step-000004"), 4, JobStatus.CANCELLED)
    monitor.set_resume_point(point)
    assert not monitor.resume_button.isHidden()
    assert monitor.resume_button.text() == "Resume from step 4"
    monitor.set_resume_point(None)
    assert monitor.resume_button.isHidden()
    monitor.shutdown()
    monitor.deleteLater()


def test_sample_gallery_shows_each_sample_once_newest_first(qapp, tmp_path: Path):
    from lora_studio.gui.sample_gallery import SampleGallery, sample_step

    paths = []
    for step in (2, 4):
        for index in (0, 1):
            path = tmp_path / f"step{step:06d}-{index:02d}.png"
            Image.new("RGB", (64, 64), (step * 40, index * 90, 60)).save(path)
            paths.append(str(path))
    gallery = SampleGallery()
    gallery.set_prompts(["a fox", "a boat"])
    assert gallery.add(paths[:2]) == 2
    assert gallery.add(paths[:2]) == 0  # the same snapshot again: nothing new
    assert gallery.add(paths[2:]) == 2
    assert [p.name for p in gallery.paths()] == [
        "step000004-00.png",
        "step000004-01.png",
        "step000002-00.png",
        "step000002-01.png",
    ]
    assert "prompt 2: a boat" in gallery.list.item(1).toolTip()
    assert sample_step("step000123-04.png") == (123, 4) and sample_step("other.png") is None
    gallery.clear()
    assert gallery.paths() == [] and gallery.title.text() == "Samples"
    gallery.shutdown()
    gallery.deleteLater()


def test_gpu_choices_and_section_summaries():
    from lora_studio.core.config import LoraConfig
    from lora_studio.gui.advanced_settings import advanced_sections, describe_value
    from lora_studio.gui.preset_form import MAIN_FIELDS, cache_note, device_choices

    assert device_choices(None) == [("1", 1)]
    assert device_choices(0) == [("CPU", 1)]
    assert device_choices(0, 2) == [("CPU", 1), ("2 CPU processes", 2)]
    assert device_choices(4) == [("1 GPU", 1), ("2 GPUs", 2), ("3 GPUs", 3), ("4 GPUs", 4)]
    sections = advanced_sections(MAIN_FIELDS)
    placed = [name for section in sections for name in section.fields]
    assert len(placed) == len(set(placed))
    assert "lr_scheduler" in next(s for s in sections if s.key == "optimizer").fields
    assert describe_value("use_dora", True) == "DoRA"
    assert describe_value("cache_to_disk", False) == "Cache to disk off"
    assert describe_value("sample_prompts", "a\n\nb\n") == "2 sample prompts"
    assert describe_value("conv_rank", 8) == "Conv rank: 8"
    assert describe_value("save_every_n_steps", 0) == "Checkpoint every N steps: off"
    assert cache_note(LoraConfig()) == ""
    assert "tag shuffling" in cache_note(LoraConfig(shuffle_tags=True))
    assert cache_note(LoraConfig(train_text_encoder=True)) == (
        "Text cache off: the text encoder is trained."
    )
