"""The live estimate panel: what the numbers are for, the VRAM warning and its one-click
fixes, the Replicate cost in the same place, and colours that read in a dark palette."""

from __future__ import annotations

import sys
from pathlib import Path

from gui_helpers import open_and_wait, run
from PySide6.QtCore import Qt
from PySide6.QtGui import QColor, QPalette

from lora_studio.core.config import LoraConfig, ModelFamily
from lora_studio.core.estimates import estimate, estimate_vram_gb
from lora_studio.gui import artwork
from lora_studio.gui.async_signals import signal_future, wait_until
from lora_studio.gui.estimate_panel import EstimatePanel, GpuInfo
from lora_studio.gui.preset_form import PresetForm

SDXL = LoraConfig.sdxl_preset().replace(batch_size=2)


def sdxl_estimate(config: LoraConfig = SDXL):
    return estimate(40, config, ModelFamily.SDXL)


def test_no_warning_when_the_run_fits(qtbot) -> None:
    panel = EstimatePanel()
    qtbot.addWidget(panel)
    panel.set_image_count(40)
    panel.set_gpu(GpuInfo("NVIDIA RTX 4090", 24.0))
    panel.set_estimate(estimate(40, LoraConfig.sd15_preset(), ModelFamily.SD15), SDXL)
    assert not panel.over_budget
    assert "RTX 4090, 24 GB" in panel.device_label.text()


def test_over_budget_lists_the_settings_that_fit_and_applies_one(qtbot) -> None:
    form = PresetForm(SDXL)
    qtbot.addWidget(form)
    form.set_image_count(40)
    form.estimate_panel.set_gpu(GpuInfo("NVIDIA RTX 4080", 16.0))
    form.set_estimate(sdxl_estimate())
    panel = form.estimate_panel
    assert panel.over_budget
    text = panel.warning_label.text()
    assert f"{estimate_vram_gb(SDXL, ModelFamily.SDXL):.1f} GB" in text
    assert "NVIDIA RTX 4080 has 16 GB" in text
    assert panel.suggestions and all(s.vram_gb <= 16.0 for s in panel.suggestions)
    labels = [s.label for s in panel.suggestions]
    assert "Gradient checkpointing" in labels and "Batch size 1" in labels
    index = labels.index("Gradient checkpointing")
    chosen = panel.suggestions[index]
    with qtbot.waitSignal(form.config_edited) as edited:
        qtbot.mouseClick(panel.apply_buttons[index], Qt.MouseButton.LeftButton)
    config = edited.args[0]
    for name, value in chosen.changes.items():
        assert str(getattr(config, name)) == str(value)
    assert form.config == config
    # The form shows the new values at once (the next estimate clears the warning).
    form.set_estimate(sdxl_estimate(config))
    assert not panel.over_budget


def test_nothing_fits_says_so(qtbot) -> None:
    panel = EstimatePanel()
    qtbot.addWidget(panel)
    panel.set_image_count(10)
    panel.set_gpu(GpuInfo("Small GPU", 6.0))
    flux = LoraConfig.flux_preset()
    panel.set_estimate(estimate(10, flux, ModelFamily.FLUX), flux)
    assert panel.over_budget
    assert not panel.apply_buttons
    assert "GPU with more memory" in panel.warning_label.text()


def test_without_a_gpu_it_says_what_the_estimate_is_for(qtbot) -> None:
    panel = EstimatePanel()
    qtbot.addWidget(panel)
    panel.set_image_count(40)
    panel.set_gpu(GpuInfo("", 0.0))
    panel.set_estimate(sdxl_estimate(), SDXL)
    assert not panel.over_budget  # nothing to compare with
    text = panel.device_label.text()
    assert "No CUDA GPU here" in text and "RTX 4090-class" in text


def test_remote_training_shows_the_cost_here_and_no_local_warning(qtbot) -> None:
    panel = EstimatePanel()
    qtbot.addWidget(panel)
    panel.show()
    panel.set_image_count(40)
    panel.set_gpu(GpuInfo("Small GPU", 4.0))
    panel.set_estimate(sdxl_estimate(), SDXL)
    assert panel.over_budget
    panel.set_remote("Replicate")
    panel.set_remote_cost("Estimated cost: about $0.42.")
    assert not panel.over_budget  # the server's GPU is not this one
    assert panel.remote_cost_label.isVisible()
    assert "Replicate" in panel.device_label.text()
    panel.set_remote("")
    assert not panel.remote_cost_label.isVisible()


def _luminance(color: QColor) -> float:
    def channel(c: float) -> float:
        return c / 12.92 if c <= 0.03928 else ((c + 0.055) / 1.055) ** 2.4

    return (
        0.2126 * channel(color.redF())
        + 0.7152 * channel(color.greenF())
        + 0.0722 * channel(color.blueF())
    )


def contrast(a: QColor, b: QColor) -> float:
    hi, lo = sorted((_luminance(a), _luminance(b)), reverse=True)
    return (hi + 0.05) / (lo + 0.05)


def dark_palette() -> QPalette:
    palette = QPalette()
    for role, color in (
        (QPalette.ColorRole.Window, "#2b2b2b"),
        (QPalette.ColorRole.WindowText, "#eeeeee"),
        (QPalette.ColorRole.Base, "#1e1e1e"),
        (QPalette.ColorRole.Text, "#eeeeee"),
        (QPalette.ColorRole.Button, "#3a3a3a"),
        (QPalette.ColorRole.ButtonText, "#eeeeee"),
    ):
        palette.setColor(role, QColor(color))
    return palette


def test_the_app_colours_read_on_light_and_dark_windows(qtbot) -> None:
    light, dark = QPalette(QColor("#efefef")), dark_palette()
    assert not artwork.is_dark(light) and artwork.is_dark(dark)
    for palette in (light, dark):
        window = palette.color(QPalette.ColorRole.Window)
        assert contrast(artwork.muted_color(palette), window) >= 3.0
        assert contrast(artwork.error_color(palette), window) >= 4.5
        assert contrast(artwork.success_color(palette), window) >= 3.0


def test_the_panel_follows_a_dark_palette(qtbot) -> None:
    panel = EstimatePanel()
    qtbot.addWidget(panel)
    panel.set_image_count(40)
    panel.set_gpu(GpuInfo("Small GPU", 8.0))
    panel.set_estimate(sdxl_estimate(), SDXL)
    light_sheet = panel.styleSheet()
    panel.setPalette(dark_palette())  # as when the system switches to dark mode
    assert panel.styleSheet() != light_sheet
    assert "#262b45" in panel.styleSheet()  # the dark box, not the light blue one
    assert not panel.grab().isNull()


def test_window_warns_for_the_gpu_found_and_a_fix_reaches_the_controller(
    make_window, papercut, qloop
) -> None:
    window = make_window(config=LoraConfig.fast_preset().replace(batch_size=4, resolution=256))
    open_and_wait(qloop, window, papercut)
    controller, panel = window.controller, window.preset_form.estimate_panel
    needed = controller.creator.estimate().vram_gb
    batch_one = controller.creator.config.replace(batch_size=1)
    limit = (needed + estimate_vram_gb(batch_one, ModelFamily.SD15, tiny=True)) / 2

    async def scenario() -> None:
        controller.gpu_detected.emit("Tiny GPU", limit)  # as the detection reports it
        await wait_until(lambda: panel.over_budget, 20, what="the VRAM warning")
        labels = [s.label for s in panel.suggestions]
        assert "Batch size 1" in labels
        changed = signal_future(controller.config_changed)
        panel.apply_buttons[labels.index("Batch size 1")].click()
        (config,) = await changed
        assert config.batch_size == 1
        await wait_until(lambda: not panel.over_budget, 20, what="the warning to go")
        assert window.preset_form.field("batch_size").value() == 1

    run(qloop, scenario())


def test_the_form_is_drawn_for_a_dark_system_palette(qtbot, qapp) -> None:
    previous = qapp.palette()
    qapp.setPalette(dark_palette())
    try:
        form = PresetForm(SDXL)
        qtbot.addWidget(form)
        form.set_image_count(40)
        form.estimate_panel.set_gpu(GpuInfo("Small GPU", 8.0))
        form.set_estimate(sdxl_estimate())
        assert artwork.MUTED_ON_DARK.name() in form.preset_description.styleSheet()
        assert "#3a3f5c" in form.train_button.styleSheet()  # not the light lavender
        assert "#262b45" in form.estimate_panel.styleSheet()
        assert not form.grab().isNull()
    finally:
        qapp.setPalette(previous)


def test_training_on_comfyui_compares_with_the_servers_gpu(
    make_window, papercut, qloop, tmp_path
) -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "backends"))
    from comfyui_server import FakeComfyUI

    from lora_studio.core.jobs import BackendType

    window = make_window(
        config=SDXL.replace(name="remote_sdxl"), base_model=str(tmp_path / "on-the-server")
    )
    open_and_wait(qloop, window, papercut)
    panel, backend = window.preset_form.estimate_panel, window.backend_panel

    async def scenario() -> None:
        fake = FakeComfyUI(tmp_path / "comfy", device="cuda")  # an RTX 4090, 24 GB
        url = await fake.start()
        try:
            window.controller.gpu_detected.emit("Big local GPU", 80.0)
            await wait_until(lambda: panel._estimate is not None, 20, what="the estimate")
            assert not panel.over_budget  # 25 GB fits this computer's 80 GB
            box = backend.kind_box
            box.setCurrentIndex(box.findData(BackendType.COMFYUI.value))
            box.activated.emit(box.currentIndex())
            backend.comfy_url_edit.setText(url)
            backend.comfy_url_edit.editingFinished.emit()
            assert "ComfyUI" in panel.device_label.text() and not panel.over_budget
            backend.test_button.click()
            await wait_until(lambda: panel.over_budget, 30, what="the server's GPU")
            assert "NVIDIA GeForce RTX 4090 has 24 GB" in panel.warning_label.text()
            assert "24 GB" in panel.device_label.text()
            assert panel.suggestions  # the same fixes apply to a run on the server
        finally:
            await fake.stop()

    run(qloop, scenario())
