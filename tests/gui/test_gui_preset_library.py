"""Presets in the window: save the current settings as a named preset, pick it again,
see what changed from it (preset value -> yours) and reset one setting or all, delete it."""

from __future__ import annotations

from gui_helpers import fast_config, run
from PySide6.QtCore import Qt

from lora_studio.core.config import PRESETS, LoraConfig
from lora_studio.core.user_presets import load_user_presets, presets_dir
from lora_studio.gui.async_signals import signal_future, wait_until
from lora_studio.gui.preset_form import PresetForm


def test_the_changes_view_lists_preset_and_own_values_and_resets(qtbot) -> None:
    config = LoraConfig.sdxl_preset().replace(rank=64, alpha=64.0, batch_size=2, name="mine")
    form = PresetForm(config)
    qtbot.addWidget(form)
    assert form.changes_button.text() == "What changed? (3)"  # name is the user's own
    view = form.show_changes()
    assert view.changed == ["rank", "alpha", "batch_size"]
    assert "3 settings changed from SDXL" in view.title.text()
    with qtbot.waitSignal(form.config_edited) as edited:
        qtbot.mouseClick(view.reset_buttons["batch_size"], Qt.MouseButton.LeftButton)
    assert edited.args[0].batch_size == 1 and edited.args[0].rank == 64
    assert view.changed == ["rank", "alpha"]  # the open view follows
    assert form.field("batch_size").value() == 1
    with qtbot.waitSignal(form.config_edited) as edited:
        qtbot.mouseClick(view.reset_all_button, Qt.MouseButton.LeftButton)
    reset = edited.args[0]
    assert reset.replace(name="my_lora") == LoraConfig.sdxl_preset().replace(name="my_lora")
    assert reset.name == "mine"
    assert view.changed == [] and not view.reset_all_button.isEnabled()
    assert form.changes_button.text() == "What changed?"


def test_save_pick_and_delete_a_preset_of_your_own(make_window, qloop) -> None:
    window = make_window(config=fast_config(rank=24, alpha=12.0))
    form, controller = window.preset_form, window.controller

    async def scenario() -> None:
        window.start_session()
        listed = signal_future(window.preset_library.presets_changed)
        await listed  # the first load: none yet
        saved = signal_future(window.preset_library.saved)
        form.save_preset_as("Papercut fast")
        (name,) = await saved
        assert name == "Papercut fast"
        await wait_until(lambda: controller.config.preset == "user:Papercut fast", 10)
        assert form.preset_box.currentText() == "Papercut fast"
        assert form.delete_preset_button.isEnabled()
        assert form.changes_button.text() == "What changed?"  # it is the preset now
        assert load_user_presets()["Papercut fast"].rank == 24
        assert (presets_dir() / "Papercut_fast.toml").is_file()

        # Another preset, then back to ours: its values, with the name and trigger kept.
        form.preset_box.setCurrentIndex(form.preset_box.findData("sdxl"))
        form.preset_box.activated.emit(form.preset_box.currentIndex())
        await wait_until(lambda: controller.config.preset == "sdxl", 10)
        assert controller.config.rank == 32
        form.field("name").setText("renamed")
        form.field("name").textEdited.emit("renamed")
        await wait_until(lambda: controller.config.name == "renamed", 10)
        index = form.preset_box.findData("user:Papercut fast")
        form.preset_box.setCurrentIndex(index)
        form.preset_box.activated.emit(index)
        await wait_until(lambda: controller.config.preset == "user:Papercut fast", 10)
        assert controller.config.rank == 24 and controller.config.alpha == 12.0
        assert controller.config.name == "renamed"

        # What changed is measured against our preset.
        form.rank_spin.setValue(32)
        await wait_until(lambda: controller.config.rank == 32, 10)
        assert form.changes_button.text() == "What changed? (1)"
        assert "Your preset. Changed here: rank." in form.preset_description.text()

        changed = signal_future(window.preset_library.presets_changed)
        form.delete_preset()
        (presets,) = await changed
        assert presets == {}
        assert form.preset_box.findData("user:Papercut fast") == -1
        assert form.preset_box.count() == len(PRESETS)

    run(qloop, scenario())
