"""User presets: named configs saved as TOML in the config dir."""

from __future__ import annotations

from pathlib import Path

import pytest

from lora_studio.core.config import LoraConfig
from lora_studio.core.errors import ConfigError
from lora_studio.core.user_presets import (
    check_name,
    delete_user_preset,
    load_user_presets,
    presets_dir,
    save_user_preset,
)


def test_save_load_delete_round_trip(tmp_path: Path) -> None:
    config = LoraConfig.sdxl_preset().replace(rank=48, alpha=24.0, optimizer="prodigy")
    path = save_user_preset("  My   SDXL style ", config, tmp_path)
    assert path.parent == tmp_path and path.suffix == ".toml"
    assert LoraConfig.load(path).rank == 48  # an ordinary config file too
    (name, loaded), *_ = load_user_presets(tmp_path).items()
    assert name == "My SDXL style"
    assert loaded.preset == "user:My SDXL style"
    assert loaded.replace(preset="sdxl") == config
    save_user_preset("My SDXL style", config.replace(rank=8, alpha=8.0), tmp_path)
    assert load_user_presets(tmp_path)["My SDXL style"].rank == 8  # replaced, not doubled
    assert delete_user_preset("My SDXL style", tmp_path)
    assert load_user_presets(tmp_path) == {}
    assert not delete_user_preset("My SDXL style", tmp_path)


def test_names_that_cannot_be_used() -> None:
    for bad in ("", "   ", "SDXL", "fast", "x" * 61):
        with pytest.raises(ConfigError):
            check_name(bad)
    assert check_name("portraits  v2") == "portraits v2"


def test_a_broken_file_is_skipped(tmp_path: Path) -> None:
    save_user_preset("good", LoraConfig(), tmp_path)
    (tmp_path / "broken.toml").write_text("[lora]\nrank = 'many'\n", encoding="utf-8")
    assert list(load_user_presets(tmp_path)) == ["good"]


def test_presets_live_in_the_config_dir() -> None:
    assert presets_dir().name == "presets"
    assert load_user_presets() == {}  # a fresh home has none
