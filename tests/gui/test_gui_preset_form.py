"""The preset form explains itself: every field has a label and a tooltip from the config's
metadata, and a refused value says why right beside the field."""

from __future__ import annotations

from lora_studio.core.config import FIELDS, LoraConfig, field_help, field_label
from lora_studio.gui.advanced_settings import NOT_EDITABLE
from lora_studio.gui.preset_form import PresetForm


def test_every_setting_has_a_label_and_its_help_as_tooltip(qtbot) -> None:
    form = PresetForm(LoraConfig.sd15_preset())
    qtbot.addWidget(form)
    for name in FIELDS:
        if name in NOT_EDITABLE:
            continue
        widget = form.field(name)
        assert field_help(name) in widget.toolTip(), name
        label = form._labels.get(name)
        text = label.text() if label is not None else widget.text()  # a check box's own text
        assert text == field_label(name), name


def test_a_refused_value_is_explained_beside_its_field(qtbot) -> None:
    form = PresetForm(LoraConfig.sd15_preset())
    qtbot.addWidget(form)
    form.show()
    qtbot.keyClicks(form.lr_edit, "x")  # 1e-4 -> "1e-4x"
    error = form._error_labels["learning_rate"]
    assert error.isVisible() and "Learning rate" in error.text()
    assert not form.train_button.isEnabled()
    assert not form._error_labels["rank"].isVisible()
    form.lr_edit.setText("2e-4")
    form.lr_edit.textEdited.emit("2e-4")
    assert not error.isVisible() and form.errors == {}


def test_an_advanced_field_shows_its_reason_and_its_section_opens(qtbot) -> None:
    form = PresetForm(LoraConfig.sd15_preset().replace(train_text_encoder=True))
    qtbot.addWidget(form)
    form.show()
    assert not form.advanced.expanded
    edit = form.field("text_encoder_lr")
    edit.setText("5")  # more than the maximum, 1.0
    edit.textEdited.emit("5")
    error = form._error_labels["text_encoder_lr"]
    assert form.advanced.expanded and form.advanced.disclosures["optimizer"].expanded
    assert error.isVisible() and "at most 1" in error.text()
    edit.setText("")
    edit.textEdited.emit("")
    assert not error.isVisible()
