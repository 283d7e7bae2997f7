"""The config's help texts (the form's tooltips, the CLI's --help) say what a setting costs."""

from __future__ import annotations

import pytest

from lora_studio.core.config import FIELDS, field_help, field_label

# The settings whose cost a user weighs before a run: their help names the VRAM (or says
# it has no effect on it) and the speed or time.
COSTLY = (
    "rank",
    "alpha",
    "resolution",
    "epochs",
    "max_steps",
    "repeats",
    "learning_rate",
    "batch_size",
    "gradient_accumulation_steps",
    "mixed_precision",
    "train_text_encoder",
    "conv_rank",
    "caption_dropout",
    "shuffle_tags",
    "optimizer",
    "gradient_checkpointing",
    "torch_compile",
)


@pytest.mark.parametrize("name", COSTLY)
def test_costly_settings_say_what_they_cost(name: str) -> None:
    text = field_help(name).lower()
    assert "vram" in text, name
    assert any(word in text for word in ("speed", "slower", "faster", "time", "steps")), name


def test_every_setting_has_a_label_and_help() -> None:
    for name, f in FIELDS.items():
        if not f.metadata.get("flag", True):
            continue
        assert field_label(name) and len(field_help(name)) > 20, name
