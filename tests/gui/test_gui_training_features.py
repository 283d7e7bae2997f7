"""The trainer's features in the window: advanced settings, pause/resume, resuming a
cancelled run from its checkpoint, sample images, buckets and the GPU choice - each through
the real controller, the trainer on its QThread (or an accelerate launch child) and the
tiny model, at 64 px and a few steps."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest
from gui_helpers import fast_config, open_and_wait, run
from PIL import Image
from PySide6.QtCore import QObject, QPoint, Qt, QUrl, Slot
from PySide6.QtGui import QDesktopServices
from PySide6.QtTest import QTest
from PySide6.QtWidgets import QCheckBox, QComboBox, QLineEdit, QPlainTextEdit, QSpinBox

from lora_studio.core.buckets import placement_for
from lora_studio.core.config import (
    FIELDS,
    LoraConfig,
    Optimizer,
    field_help,
    field_range,
)
from lora_studio.core.jobs import JobStatus, Progress
from lora_studio.gui.advanced_settings import NOT_EDITABLE, NumberSpin
from lora_studio.gui.async_signals import signal_future, wait_until
from lora_studio.gui.controller import CPU_PROCESSES_ENV
from lora_studio.gui.dataset_model import Column, Role
from lora_studio.gui.job_monitor import MonitorState
from lora_studio.gui.main_window import MainWindow

pytestmark = pytest.mark.usefixtures("built_tiny_model")


def click(qtbot, widget) -> None:
    qtbot.mouseClick(widget, Qt.MouseButton.LeftButton)


def shown_in_form(form, widget) -> bool:
    """``widget`` is inside the visible part of the form's scroll area."""
    view = form.scroll.viewport()
    top = widget.mapTo(view, QPoint(0, 0)).y()
    return top >= 0 and top + widget.height() <= view.height()


async def click_when_shown(qtbot, widget) -> None:
    """Click ``widget`` once the layout has given it a size (a section that just opened
    is laid out on the next turn of the event loop, as it would be for a user)."""
    await wait_until(lambda: widget.isVisible() and widget.height() > 0, 10, what="layout")
    click(qtbot, widget)


def retype(widget: QLineEdit, text: str) -> None:
    widget.selectAll()
    QTest.keyClick(widget, Qt.Key.Key_Delete)
    QTest.keyClicks(widget, text)


# ---- advanced settings --------------------------------------------------------------------


def test_every_setting_has_a_widget_with_its_help_and_limits(make_window):
    form = make_window().preset_form
    editable = set(FIELDS) - NOT_EDITABLE
    assert set(form._fields) == editable
    for name in editable:
        assert form.field(name).toolTip() == field_help(name), name
    assert isinstance(form.field("use_dora"), QCheckBox)
    assert isinstance(form.field("optimizer"), QComboBox)
    assert isinstance(form.field("sample_prompts"), QPlainTextEdit)
    assert isinstance(form.field("target_modules"), QLineEdit)
    assert isinstance(form.field("caption_dropout"), NumberSpin)
    conv = form.field("conv_rank")
    assert isinstance(conv, QSpinBox)
    assert (conv.minimum(), conv.maximum()) == field_range("conv_rank")
    assert conv.text() == "off"  # 0 switches it off, and says so
    # Uncluttered by default: the advanced area is one closed header.
    advanced = form.advanced
    assert not advanced.expanded and advanced.expanded_sections() == []
    assert not form.field("use_dora").isVisible()
    assert advanced.outer.summary.text() == "as the preset sets them"


def test_advanced_edits_reach_the_config_and_survive_save_and_load(
    make_window, qloop, qtbot, tmp_path: Path
):
    window = make_window()
    controller = window.controller
    form = window.preset_form
    advanced = form.advanced

    async def open_sections() -> None:
        await click_when_shown(qtbot, advanced.outer.button)
        await click_when_shown(qtbot, advanced.disclosures["network"].button)
        await click_when_shown(qtbot, advanced.disclosures["data"].button)
        assert form.field("use_dora").isVisible()
        assert not form.field("sample_prompts").isVisible()  # its section is still closed
        for key in ("samples", "optimizer", "basic"):
            await click_when_shown(qtbot, advanced.disclosures[key].button)
            # The form scrolls to the section the user opened.
            section = advanced.disclosures[key]
            await wait_until(lambda s=section: shown_in_form(form, s.button), 10, what=key)
        await click_when_shown(qtbot, form.field("use_dora"))

    run(qloop, open_sections())
    form.field("conv_rank").setValue(4)
    optimizer = form.field("optimizer")
    optimizer.setCurrentIndex(optimizer.findData("prodigy"))
    prompts = form.field("sample_prompts")
    prompts.setFocus()
    QTest.keyClicks(prompts, "[trigger], a fox in the snow")
    form.field("caption_dropout").setValue(0.1)
    retype(form.field("seed"), "1234")
    assert not form.field("text_encoder_lr").isEnabled()  # no effect until the encoder trains
    form.text_encoder_check.setChecked(True)
    retype(form.field("text_encoder_lr"), "3e-5")

    config = controller.config
    assert config.use_dora and config.conv_rank == 4
    assert config.optimizer is Optimizer.PRODIGY
    assert config.sample_prompts == "[trigger], a fox in the snow"
    assert config.sample_prompt_list == ["papercut style, a fox in the snow"]
    assert config.caption_dropout == 0.1 and config.seed == 1234
    assert config.text_encoder_lr == 3e-5 and config.train_text_encoder
    assert "DoRA" in advanced.disclosures["network"].summary.text()
    assert "Conv rank: 4" in advanced.disclosures["network"].summary.text()
    assert advanced.outer.summary.text().startswith("7 changed")
    # Caption dropout varies the captions: the estimate says the text cache is off.
    assert form.cache_label.isVisible()
    assert "caption dropout" in form.cache_label.text()
    assert "cache off" in form.cache_label.text()
    form.text_encoder_check.setChecked(False)
    assert form.field("text_encoder_lr").text() == "3e-5", "kept while it does nothing"
    config = controller.config

    saved_file = tmp_path / "advanced.toml"

    async def save_then_switch_preset_then_load() -> None:
        await controller.save_config(saved_file)
        form.preset_box.setCurrentIndex(form.preset_box.findData("sdxl"))
        form.preset_box.activated.emit(form.preset_box.currentIndex())
        # The preset sets what it sets; everything else is back to the defaults, except
        # what describes the user's concept (name, trigger word, sample prompts).
        reset = controller.config
        assert (reset.preset, reset.rank, reset.use_dora, reset.conv_rank) == ("sdxl", 32, False, 0)
        assert reset.caption_dropout == 0.0
        assert reset.trigger_word == "papercut style"
        assert reset.sample_prompts == "[trigger], a fox in the snow"
        assert not form.field("use_dora").isChecked()
        assert form.field("optimizer").currentData() == "adamw"
        assert form.field("sample_prompts").toPlainText() == "[trigger], a fox in the snow"
        assert not form.cache_label.isVisible()
        assert advanced.outer.summary.text().startswith("1 changed")
        changed = signal_future(controller.config_changed)
        controller.load_config(saved_file)
        await changed

    run(qloop, save_then_switch_preset_then_load())
    written = tomllib.loads(saved_file.read_text("utf-8"))["lora"]
    assert written["use_dora"] is True and written["optimizer"] == "prodigy"
    loaded = controller.config
    assert loaded == config
    assert form.field("use_dora").isChecked()
    assert form.field("conv_rank").value() == 4
    assert form.field("optimizer").currentData() == "prodigy"
    assert form.field("sample_prompts").toPlainText() == "[trigger], a fox in the snow"
    assert form.field("caption_dropout").value() == 0.1
    assert form.field("seed").text() == "1234"
    assert form.field("text_encoder_lr").text() == "3e-5"
    assert form.errors == {}


def test_advanced_mistakes_are_marked_where_they_are(make_window, qloop):
    window = make_window()
    form = window.preset_form
    open_and_wait(qloop, window, _square_images(window))
    assert form.train_button.isEnabled()
    assert not form.advanced.expanded
    # Both values are in range on their own; together they are not.
    form.field("min_bucket_side").setValue(1024)
    form.field("max_bucket_side").setValue(512)
    assert "max_bucket_side" in form.errors
    assert form.advanced.expanded and form.advanced.disclosures["data"].expanded
    assert form.field("max_bucket_side").isVisible()
    assert "Min bucket side (1024) is larger" in form.error_label.text()
    assert form.error_label.isVisible()
    assert not form.train_button.isEnabled()
    assert window.controller.config.max_bucket_side == 2048  # not taken while invalid
    form.field("max_bucket_side").setValue(2048)
    assert form.errors == {} and form.train_button.isEnabled()

    form.text_encoder_check.setChecked(True)
    retype(form.field("text_encoder_lr"), "fast")
    assert "text_encoder_lr" in form.errors
    retype(form.field("text_encoder_lr"), "")
    assert form.errors == {} and window.controller.config.text_encoder_lr is None
    # Settings that do nothing with the others as they are, are greyed out.
    assert not form.field("keep_tokens").isEnabled()
    click_box = form.field("shuffle_tags")
    assert isinstance(click_box, QCheckBox)
    click_box.setChecked(True)
    assert form.field("keep_tokens").isEnabled()
    assert "tag shuffling" in form.cache_label.text()


# ---- pause, cancel, resume ----------------------------------------------------------------


def start_and_pause(qloop, window: MainWindow, qtbot) -> Progress:
    """Train, press Pause as soon as the job exists, and wait for the run to be Paused."""
    controller = window.controller
    monitor = window.job_monitor

    async def scenario() -> Progress:
        started = signal_future(controller.job_started)
        click(qtbot, window.preset_form.train_button)
        await started
        # The trainer is still loading the model: it pauses after its first step.
        assert monitor.pause_button.isVisible() and monitor.pause_button.isEnabled()
        paused = signal_future(controller.job_progress, lambda p: p.status is JobStatus.PAUSED)
        click(qtbot, monitor.pause_button)
        assert monitor.pause_button.text() == "Pausing\u2026"
        assert not monitor.pause_button.isEnabled()
        (progress,) = await paused
        return progress

    return run(qloop, scenario())


def test_pause_then_resume_a_run_from_the_window(make_window, qloop, qtbot, papercut: Path):
    window = make_window(config=fast_config(max_steps=20))
    controller = window.controller
    monitor = window.job_monitor
    open_and_wait(qloop, window, papercut)

    paused = start_and_pause(qloop, window, qtbot)
    assert 1 <= paused.step < 20
    assert monitor.state is MonitorState.PAUSED
    assert monitor.status_label.text() == "Paused"
    assert monitor.pause_button.text() == "Resume" and monitor.pause_button.isEnabled()
    assert monitor.cancel_button.isEnabled()  # Cancel works while paused
    assert controller.is_training

    async def resume() -> Progress:
        finished = signal_future(controller.job_finished)
        click(qtbot, monitor.pause_button)
        assert monitor.pause_button.text() == "Resuming\u2026"
        (final,) = await finished
        return final

    final = run(qloop, resume())
    assert final.status is JobStatus.SUCCEEDED, final.error
    assert final.step == final.total_steps == 20
    assert monitor.status_label.text() == "Succeeded"
    assert monitor.state is MonitorState.IDLE
    assert monitor.pause_button.text() == "Pause" and not monitor.pause_button.isEnabled()
    lines = monitor.log_lines()
    assert any(f"Paused after step {paused.step}" in line for line in lines)
    assert any(line.endswith("Resumed") for line in lines)


def test_cancel_while_paused_then_resume_from_the_checkpoint(
    make_window, qloop, qtbot, papercut: Path
):
    window = make_window(config=fast_config(max_steps=20))
    controller = window.controller
    monitor = window.job_monitor
    open_and_wait(qloop, window, papercut)
    assert not monitor.resume_button.isVisible()

    paused = start_and_pause(qloop, window, qtbot)

    async def cancel() -> Progress:
        finished = signal_future(controller.job_finished)
        offered = signal_future(controller.resume_available, lambda point: point is not None)
        click(qtbot, monitor.cancel_button)
        (final,) = await finished
        await offered
        return final

    cancelled = run(qloop, cancel())
    assert cancelled.status is JobStatus.CANCELLED
    assert cancelled.step == paused.step, "a paused run must stop where it paused"
    assert cancelled.output_path and Path(cancelled.output_path).is_file()
    point = controller.resume_point
    assert point is not None and point.step == paused.step
    assert point.path == controller.output_dir / "gui_test-checkpoints" / f"step-{paused.step:06d}"
    assert monitor.resume_button.isVisible() and monitor.resume_button.isEnabled()
    assert monitor.resume_button.text() == f"Resume from step {paused.step}"

    async def resume() -> Progress:
        finished = signal_future(controller.job_finished)
        click(qtbot, monitor.resume_button)
        assert not monitor.resume_button.isVisible()  # a run is going
        (final,) = await finished
        return final

    final = run(qloop, resume())
    assert final.status is JobStatus.SUCCEEDED, final.error
    assert final.step == final.total_steps == 20
    assert len(final.loss_history) == 20, "the resumed run carries the earlier losses on"
    assert Path(final.output_path or "").name == "gui_test.safetensors"
    assert any(f"Training resumed at step {paused.step}" in line for line in monitor.log_lines())


# ---- samples ------------------------------------------------------------------------------


class _UrlCatcher(QObject):
    """Receives what QDesktopServices would open (Qt's own hook for this)."""

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[QUrl] = []

    @Slot(QUrl)
    def open(self, url: QUrl) -> None:
        self.urls.append(url)


def test_sample_images_appear_in_the_monitor(make_window, qloop, qtbot, papercut: Path):
    config = fast_config(
        max_steps=4,
        sample_prompts="[trigger], a fox\n[trigger], a boat",
        sample_every_n_steps=2,
        sample_inference_steps=2,
    )
    window = make_window(config=config)
    controller = window.controller
    gallery = window.job_monitor.samples
    open_and_wait(qloop, window, papercut)
    assert not gallery.isVisible()

    async def scenario() -> Progress:
        first = signal_future(controller.job_progress, lambda p: bool(p.sample_paths))
        finished = signal_future(controller.job_finished)
        click(qtbot, window.preset_form.train_button)
        await first
        await wait_until(gallery.isVisible, 30, what="the samples pane")
        (final,) = await finished
        await wait_until(
            lambda: (
                len(gallery.paths()) == 4 and all(gallery.has_thumbnail(p) for p in gallery.paths())
            ),
            60,
            what="four sample thumbnails",
        )
        return final

    final = run(qloop, scenario())
    assert final.status is JobStatus.SUCCEEDED, final.error
    folder = controller.output_dir / "gui_test-samples"
    assert [p.name for p in gallery.paths()] == [
        "step000004-00.png",
        "step000004-01.png",
        "step000002-00.png",
        "step000002-01.png",
    ]
    assert all(p.parent == folder and p.is_file() for p in gallery.paths())
    first_item = gallery.list.item(0)
    assert first_item.text() == "step 4 \u00b7 #1"
    assert "papercut style, a fox" in first_item.toolTip()
    assert not first_item.icon().isNull()
    assert gallery.title.text() == "Samples (4) \u00b7 latest: step 4"

    # A click enlarges the sample; from there it opens in the system's viewer.
    rect = gallery.list.visualItemRect(first_item)
    qtbot.mouseClick(gallery.list.viewport(), Qt.MouseButton.LeftButton, pos=rect.center())
    assert gallery.preview is not None and gallery.preview.path == folder / "step000004-00.png"
    catcher = _UrlCatcher()
    QDesktopServices.setUrlHandler("file", catcher, "open")
    try:
        gallery.preview.open_button.click()
    finally:
        QDesktopServices.unsetUrlHandler("file")
    gallery.preview.close()
    assert [Path(u.toLocalFile()) for u in catcher.urls] == [folder / "step000004-00.png"]


# ---- buckets ------------------------------------------------------------------------------


def _square_images(window: MainWindow) -> Path:
    folder = Path(window.controller.output_dir).parent / "squares"
    folder.mkdir(parents=True, exist_ok=True)
    for n in range(2):
        Image.new("RGB", (96, 96), (40 * n, 90, 160)).save(folder / f"sq{n}.png")
    return folder


def test_bucket_labels_follow_the_image_shapes_and_the_resolution(
    make_window, qloop, tmp_path: Path
):
    folder = tmp_path / "shapes"
    folder.mkdir()
    sizes = {"wide.png": (1280, 768), "tall.png": (384, 640), "square.png": (500, 500)}
    for name, size in sizes.items():
        Image.new("RGB", size, (200, 120, 40)).save(folder / name)
    window = make_window(config=fast_config(resolution=512))
    controller = window.controller
    model = window.dataset_model
    form = window.preset_form

    def labels() -> dict[str, str | None]:
        return {
            model.item(r).name: model.index(r, Column.IMAGE).data(Role.BUCKET)
            for r in range(model.rowCount())
        }

    async def wait_for(expected: dict[str, str]) -> None:
        await wait_until(lambda: labels() == expected, 30, what=f"buckets {expected}")

    async def scenario() -> None:
        loaded = signal_future(controller.dataset_loaded)
        controller.open_dataset(folder)
        await loaded
        await wait_for({"square.png": "512×512", "tall.png": "384×640", "wide.png": "640×384"})
        form.resolution_spin.setValue(768)
        await wait_for({"square.png": "768×768", "tall.png": "576×960", "wide.png": "960×576"})
        form.field("enable_bucket").setChecked(False)
        await wait_for({"square.png": "768×768", "tall.png": "768×768", "wide.png": "768×768"})
        form.field("enable_bucket").setChecked(True)
        await wait_for({"square.png": "768×768", "tall.png": "576×960", "wide.png": "960×576"})

    run(qloop, scenario())
    # Exactly where the trainer puts them.
    config = controller.config
    for row in range(model.rowCount()):
        item = model.item(row)
        expected = placement_for(*sizes[item.name], config)
        assert model.placement(item.path) == expected
    row = model.row_of(folder / "wide.png")
    tooltip = model.index(row, Column.IMAGE).data(Qt.ItemDataRole.ToolTipRole)
    assert "Trained at 960×576 (the image is 1280×768: scaled to 960×576)" in tooltip
    header = model.headerData(Column.IMAGE, Qt.Orientation.Horizontal, Qt.ItemDataRole.ToolTipRole)
    assert "3 buckets: 576×960 (1) · 768×768 (1) · 960×576 (1)" in header
    # The grid draws the label under the file name.
    grid = window.caption_grid
    assert not grid.table.viewport().grab().isNull()


# ---- GPUs ---------------------------------------------------------------------------------


def test_without_cuda_the_gpu_choice_is_the_cpu(make_window, qloop, monkeypatch):
    monkeypatch.delenv(CPU_PROCESSES_ENV, raising=False)
    window = make_window()
    box = window.preset_form.gpu_box

    async def scenario() -> None:
        detected = signal_future(window.controller.devices_detected)
        window.controller.start()
        await detected

    run(qloop, scenario())
    assert window.controller.cuda_count == 0  # this suite runs without CUDA
    assert [box.itemText(i) for i in range(box.count())] == ["CPU"]
    assert not box.isEnabled() and "No CUDA GPU" in box.toolTip()
    assert window.controller.processes == 1


def test_two_cpu_processes_train_through_accelerate_launch(
    make_window, qloop, qtbot, papercut: Path, monkeypatch
):
    monkeypatch.setenv(CPU_PROCESSES_ENV, "2")
    window = make_window(config=fast_config(max_steps=4))
    controller = window.controller
    form = window.preset_form
    monitor = window.job_monitor
    open_and_wait(qloop, window, papercut)

    async def scenario() -> Progress:
        detected = signal_future(controller.devices_detected)
        controller.start()
        await detected
        assert [form.gpu_box.itemText(i) for i in range(form.gpu_box.count())] == [
            "CPU",
            "2 CPU processes",
        ]
        form.gpu_box.setCurrentIndex(1)
        form.gpu_box.activated.emit(1)
        assert controller.processes == 2
        started = signal_future(controller.job_started)
        finished = signal_future(controller.job_finished)
        click(qtbot, form.train_button)
        await started
        assert not monitor.pause_button.isVisible(), "a multi-process run cannot pause"
        (final,) = await finished
        return final

    final = run(qloop, scenario())
    assert final.status is JobStatus.SUCCEEDED, final.error
    assert final.step == 4
    assert any("Distributed training: 2 processes" in line for line in monitor.log_lines())
    assert Path(final.output_path or "").is_file()


def test_config_fields_are_all_reachable_from_a_loaded_file(make_window, qloop, tmp_path: Path):
    """Every non-default value a TOML file can hold shows in the form unchanged."""
    special = LoraConfig.fast_preset().replace(
        name="everything",
        weight_decay=1.5e-7,
        seed=3_000_000_000,
        target_modules="to_q,to_v",
        timestep_sampling="uniform",
        lr_scheduler="cosine_with_restarts",
        lr_cycles=3,
        keep_last_checkpoints=7,
        save_every_n_steps=50,
        tensorboard=True,
        family="flux",
    )
    path = special.save(tmp_path / "everything.toml")
    window = make_window()

    async def scenario() -> None:
        changed = signal_future(window.controller.config_changed)
        window.controller.load_config(path)
        await changed

    run(qloop, scenario())
    form = window.preset_form
    assert form.errors == {}
    # Nothing is rounded or clamped on the way through the widgets.
    assert form._validate() == special
    assert form.field("seed").text() == "3000000000"
    assert form.field("weight_decay").text() == "1.5e-7"


def test_open_sections_are_remembered_with_the_window(make_window, qloop, gui_home: Path):
    from gui_helpers import close_window

    first = make_window()
    first.preset_form.advanced.set_expanded_sections(["advanced", "samples"])
    close_window(qloop, first)
    second = make_window()
    advanced = second.preset_form.advanced
    assert advanced.expanded_sections() == ["advanced", "samples"]
    assert not advanced.disclosures["network"].expanded
