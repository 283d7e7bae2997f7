"""Presets the user saved: named :class:`LoraConfig` TOML files in ``<config dir>/presets``.

A user preset's key is ``user:<name>`` (what ``LoraConfig.preset`` holds once it is
chosen); its file is ``<slug>.toml`` with the config under ``[lora]``, as
:meth:`LoraConfig.save` writes it, and the name the user typed under ``[preset]``, so the
file can be shared and loaded with *Load settings* too. Built-in presets
(:data:`lora_studio.core.config.PRESETS`) cannot be overwritten or deleted.
"""

from __future__ import annotations

import logging
import re
import tomllib
from pathlib import Path

import tomli_w

from lora_studio.core.atomic import atomic_write_text
from lora_studio.core.config import PRESETS, LoraConfig
from lora_studio.core.errors import ConfigError
from lora_studio.core.paths import config_dir

log = logging.getLogger(__name__)

USER_PREFIX = "user:"
#: Settings that describe the user's concept, not how to train it: a preset leaves them.
PERSONAL_FIELDS = ("name", "trigger_word", "sample_prompts")


def presets_dir() -> Path:
    return config_dir() / "presets"


def user_key(name: str) -> str:
    return f"{USER_PREFIX}{name.strip()}"


def is_user_key(key: str) -> bool:
    return key.startswith(USER_PREFIX)


def _slug(name: str) -> str:
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", name.strip()).strip("._")
    return slug or "preset"


def check_name(name: str) -> str:
    """The cleaned preset name, or :class:`ConfigError` saying why it cannot be used."""
    cleaned = " ".join(name.split())
    if not cleaned:
        raise ConfigError("A preset needs a name.")
    if len(cleaned) > 60:
        raise ConfigError("A preset name can be at most 60 characters long.")
    builtin = {p.label.lower() for p in PRESETS.values()} | set(PRESETS)
    if cleaned.lower() in builtin:
        raise ConfigError(f"{cleaned!r} is a built-in preset; choose another name.")
    return cleaned


def save_user_preset(name: str, config: LoraConfig, folder: Path | None = None) -> Path:
    """Save ``config`` as the user preset ``name`` (replacing one of that name).

    Returns the file written. Raises :class:`ConfigError` for an unusable name.
    """
    cleaned = check_name(name)
    folder = folder or presets_dir()
    stored = config.replace(preset=user_key(cleaned))
    body = {k: v for k, v in stored.to_dict().items() if v is not None}
    text = tomli_w.dumps({"preset": {"name": cleaned}, "lora": body})
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{_slug(cleaned)}.toml"
    return atomic_write_text(path, text)


def load_user_presets(folder: Path | None = None) -> dict[str, LoraConfig]:
    """Every saved user preset, ``name -> config``, sorted by name. A file that no longer
    loads is skipped with a log line, not an error."""
    folder = folder or presets_dir()
    found: dict[str, LoraConfig] = {}
    for path in sorted(folder.glob("*.toml")) if folder.is_dir() else []:
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
            name = str((data.get("preset") or {}).get("name") or path.stem)
            found[name] = LoraConfig.from_dict(data.get("lora", {})).replace(preset=user_key(name))
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError, ConfigError) as exc:
            log.warning("Skipping the preset file %s: %s", path, exc)
    return dict(sorted(found.items(), key=lambda item: item[0].lower()))


def delete_user_preset(name: str, folder: Path | None = None) -> bool:
    """Delete the user preset ``name``; ``False`` when there was none."""
    folder = folder or presets_dir()
    for path in folder.glob("*.toml") if folder.is_dir() else []:
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
            continue
        if str((data.get("preset") or {}).get("name") or path.stem) == name:
            path.unlink()
            return True
    return False
