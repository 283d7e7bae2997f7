"""Saved configs carry ``config_version``; older files are upgraded step by step."""

from __future__ import annotations

from pathlib import Path

import pytest

from lora_studio.core import config as config_module
from lora_studio.core.config import CONFIG_VERSION, MIGRATIONS, LoraConfig, migrate
from lora_studio.core.errors import ConfigError


def test_every_version_has_its_upgrade_step() -> None:
    assert CONFIG_VERSION >= 1
    assert sorted(MIGRATIONS) == list(range(1, CONFIG_VERSION))


def test_saved_files_carry_the_current_version(tmp_path: Path) -> None:
    path = LoraConfig.sdxl_preset().replace(rank=8).save(tmp_path / "c.toml")
    text = path.read_text(encoding="utf-8")
    assert f"config_version = {CONFIG_VERSION}" in text
    assert LoraConfig.load(path).rank == 8


def test_a_version_1_file_loads(tmp_path: Path) -> None:
    """Files from before versioning (no config_version) and version 1 files."""
    for header in ("", "config_version = 1\n"):
        path = tmp_path / "old.toml"
        path.write_text(f"[lora]\n{header}rank = 4\nalpha = 2.0\nfamily = 'sdxl'\n", "utf-8")
        loaded = LoraConfig.load(path)
        assert (loaded.rank, loaded.alpha, loaded.family.value) == (4, 2.0, "sdxl")
        assert loaded.config_version == CONFIG_VERSION


@pytest.mark.parametrize("value", ["two", 0, -1, 1.5])
def test_a_bad_version_is_a_clear_error(value: object) -> None:
    with pytest.raises(ConfigError, match="version"):
        migrate({"config_version": value})


def test_steps_run_in_order_from_version_1(monkeypatch: pytest.MonkeyPatch) -> None:
    """The mechanism, with two made-up later versions: v1 renamed a setting, v2 split one."""

    def v1_to_v2(data: dict) -> dict:
        data["rank"] = data.pop("network_dim")
        return data

    def v2_to_v3(data: dict) -> dict:
        data["alpha"] = data["rank"] / 2
        return data

    monkeypatch.setattr(config_module, "CONFIG_VERSION", 3)
    monkeypatch.setattr(config_module, "MIGRATIONS", {1: v1_to_v2, 2: v2_to_v3})
    assert config_module.migrate({"network_dim": 8}) == {
        "rank": 8,
        "alpha": 4.0,
        "config_version": 3,
    }
    assert config_module.migrate({"config_version": 2, "rank": 6}) == {
        "rank": 6,
        "alpha": 3.0,
        "config_version": 3,
    }
    monkeypatch.setattr(config_module, "MIGRATIONS", {1: v1_to_v2})
    with pytest.raises(ConfigError, match="No upgrade from config version 2"):
        config_module.migrate({"config_version": 2, "rank": 6})
