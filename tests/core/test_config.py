from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from lora_studio.core.config import (
    CONFIG_VERSION,
    PRESETS,
    LoraConfig,
    MixedPrecision,
    ModelFamily,
    field_help,
)
from lora_studio.core.errors import ConfigError

# (preset, rank, alpha, resolution, epochs, precision, text encoder) - the seed's numbers.
PRESET_CASES = [
    ("sdxl", 32, 32, 1024, 10, MixedPrecision.BF16, False),
    ("sd15", 16, 16, 512, 15, MixedPrecision.FP16, False),
    ("fast", 8, 8, 512, 5, MixedPrecision.FP16, False),
    ("high_quality", 64, 64, 768, 20, MixedPrecision.BF16, True),
    ("flux", 16, 16, 1024, 10, MixedPrecision.BF16, False),
    ("sd35", 16, 16, 1024, 10, MixedPrecision.BF16, False),
]


@pytest.mark.parametrize(("key", "rank", "alpha", "res", "epochs", "precision", "te"), PRESET_CASES)
def test_presets_carry_the_seed_numbers(key, rank, alpha, res, epochs, precision, te) -> None:
    config = LoraConfig.from_preset(key)
    assert (config.rank, config.alpha, config.resolution, config.epochs) == (
        rank,
        alpha,
        res,
        epochs,
    )
    assert config.mixed_precision is precision
    assert config.train_text_encoder is te
    assert config.preset == key
    assert config.problems() == []


def test_named_preset_constructors_match_the_registry() -> None:
    assert LoraConfig.sdxl_preset() == PRESETS["sdxl"].factory()
    assert LoraConfig.sd15_preset().family is ModelFamily.SD15
    assert LoraConfig.flux_preset().family is ModelFamily.FLUX
    assert LoraConfig.sd35_preset().family is ModelFamily.SD3
    assert set(PRESETS) == {"sdxl", "sd15", "flux", "sd35", "fast", "high_quality"}


def test_unknown_preset_names_the_choices() -> None:
    with pytest.raises(ConfigError, match="high_quality"):
        LoraConfig.from_preset("turbo")


def test_with_trigger_word_strips_and_keeps_the_rest() -> None:
    config = LoraConfig.fast_preset().with_trigger_word("  myloraname ")
    assert config.trigger_word == "myloraname"
    assert config.rank == 8


def test_replace_coerces_text_from_forms_and_flags() -> None:
    config = LoraConfig().replace(
        rank="32",
        alpha="16.5",
        learning_rate="3e-4",
        mixed_precision="BF16",
        train_text_encoder="yes",
        max_steps="",
    )
    assert config.rank == 32 and config.alpha == 16.5 and config.learning_rate == 3e-4
    assert config.mixed_precision is MixedPrecision.BF16
    assert config.train_text_encoder is True
    assert config.max_steps is None


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"rank": 0}, "Rank must be at least 1"),
        ({"rank": 5000}, "Rank must be at most 1024"),
        ({"resolution": 500}, "multiple of 8"),
        ({"resolution": 32}, "Resolution must be at least 64"),
        ({"learning_rate": float("nan")}, "finite"),
        ({"batch_size": "many"}, "Batch size: 'many' is not a valid value"),
        ({"rank": 1.5}, "Rank: 1.5 is not a valid value"),
        ({"mixed_precision": "fp8"}, "one of: no, fp16, bf16"),
        ({"name": "a/b"}, "cannot be used as a file name"),
        ({"name": "  "}, "must not be empty"),
        ({"epochs": 0}, "Epochs must be at least 1"),
    ],
)
def test_invalid_values_are_refused_with_the_field_named(changes, message) -> None:
    with pytest.raises(ConfigError, match=message):
        LoraConfig().replace(**changes)


def test_unknown_settings_are_refused() -> None:
    with pytest.raises(ConfigError, match="Unknown config setting"):
        LoraConfig.from_dict({"rank": 4, "network_dim": 8})


def test_toml_round_trip(tmp_path: Path) -> None:
    config = LoraConfig.high_quality_preset().replace(
        name="hero", trigger_word="zxq person", max_steps=1200, seed=7
    )
    path = config.save(tmp_path / "run.toml")
    assert path.read_text(encoding="utf-8").startswith("[lora]")
    assert LoraConfig.load(path) == config


def test_config_files_from_a_newer_version_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "future.toml"
    path.write_text(f"[lora]\nconfig_version = {CONFIG_VERSION + 1}\nrank = 4\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="newer LoRA Studio"):
        LoraConfig.load(path)


def test_a_hand_written_partial_config_fills_in_defaults(tmp_path: Path) -> None:
    path = tmp_path / "mine.toml"
    path.write_text('rank = 4\nmixed_precision = "bf16"\n', encoding="utf-8")
    config = LoraConfig.load(path)
    assert config.rank == 4 and config.mixed_precision is MixedPrecision.BF16
    assert config.resolution == LoraConfig().resolution


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "does not exist"),
        (b"rank = = 4", "not valid TOML"),
        (b"\xff\xfe rank", "cannot be read"),
        (b"[lora]\nrank = 0\n", "Rank must be at least 1"),
    ],
)
def test_bad_config_files_give_one_clear_error(tmp_path: Path, content, message) -> None:
    path = tmp_path / "bad.toml"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(ConfigError, match=message):
        LoraConfig.load(path)


def test_every_field_has_help_text() -> None:
    for f in dataclasses.fields(LoraConfig):
        assert len(field_help(f.name)) > 10, f.name


def test_effective_values() -> None:
    config = LoraConfig(learning_rate=2e-4, batch_size=2, gradient_accumulation_steps=4)
    assert config.effective_text_encoder_lr == 1e-4
    assert config.effective_batch_size == 8
