"""What the window remembers between runs: geometry, the last dataset, the settings.

Stored with ``QSettings`` in an INI file under the app's config folder
(:func:`lora_studio.core.paths.config_dir`), so ``LORA_STUDIO_HOME`` moves it along with
everything else (tests point it at a temporary folder).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

from PySide6.QtCore import QSettings

from lora_studio.core.config import LoraConfig
from lora_studio.core.errors import ConfigError
from lora_studio.core.paths import config_dir

log = logging.getLogger(__name__)

SETTINGS_FILE = "lora-studio.ini"

KEY_GEOMETRY = "window/geometry"
KEY_WINDOW_STATE = "window/state"
KEY_SPLITTERS = "window/splitters"
KEY_LAST_DATASET = "dataset/last"
KEY_CONFIG = "training/config"
KEY_BASE_MODEL = "training/base_model"
KEY_OUTPUT_DIR = "training/output_dir"
KEY_PROCESSES = "training/processes"
KEY_ADVANCED_SECTIONS = "form/advanced_sections"


def settings_path() -> Path:
    return config_dir() / SETTINGS_FILE


def open_settings(path: str | Path | None = None) -> QSettings:
    """The app's settings file (``path`` overrides where it is)."""
    return QSettings(str(path or settings_path()), QSettings.Format.IniFormat)


@dataclass(frozen=True)
class Session:
    """What the last run left behind (``None``: nothing remembered)."""

    config: LoraConfig | None = None
    base_model: str | None = None
    output_dir: str | None = None
    last_dataset: str | None = None
    problem: str | None = None
    processes: int = 1
    advanced_sections: tuple[str, ...] = ()


def _text(settings: QSettings, key: str) -> str | None:
    value = settings.value(key)
    return str(value) if value not in (None, "") else None


def read_session(settings: QSettings) -> Session:
    """Read the remembered session; a config that no longer loads is reported, not fatal."""
    config = None
    problem = None
    saved = _text(settings, KEY_CONFIG)
    if saved:
        try:
            data = json.loads(saved)
            if not isinstance(data, dict):
                raise ValueError("not a table of settings")
            config = LoraConfig.from_dict(data)
        except (ValueError, ConfigError) as exc:
            log.warning("Ignoring the remembered training settings: %s", exc)
            problem = (
                f"The remembered training settings could not be used ({exc}); using the defaults."
            )
    processes, sections = read_form_state(settings)
    return Session(
        config=config,
        base_model=_text(settings, KEY_BASE_MODEL),
        output_dir=_text(settings, KEY_OUTPUT_DIR),
        last_dataset=_text(settings, KEY_LAST_DATASET),
        problem=problem,
        processes=processes,
        advanced_sections=sections,
    )


def read_form_state(settings: QSettings) -> tuple[int, tuple[str, ...]]:
    """The GPUs chosen and the advanced-settings sections left open."""
    try:
        processes = max(1, int(_text(settings, KEY_PROCESSES) or 1))
    except ValueError:
        processes = 1
    sections = tuple((_text(settings, KEY_ADVANCED_SECTIONS) or "").split())
    return processes, sections


def remember_config(settings: QSettings, config: LoraConfig) -> None:
    # JSON of LoraConfig.to_dict(): from_dict() migrates it when the format changes.
    settings.setValue(KEY_CONFIG, json.dumps(config.to_dict()))


def remember(settings: QSettings, key: str, value: str) -> None:
    settings.setValue(key, value)


#: The caption dialog's remembered choices live under this group; never a token.
CAPTION_GROUP = "captioning"
CAPTION_SECRET_WORDS = ("token", "key", "secret", "password")


def read_caption_choices(settings: QSettings) -> dict[str, str]:
    """The caption dialog's last choices (provider, per-provider model/URL/prompt, mode,
    scope, concurrency, time limit), as text."""
    settings.beginGroup(CAPTION_GROUP)
    try:
        return {key: str(settings.value(key)) for key in settings.allKeys()}
    finally:
        settings.endGroup()


def remember_caption_choices(settings: QSettings, choices: dict[str, str]) -> None:
    """Remember the caption dialog's choices (``provider/model``-style keys).

    Raises:
        ValueError: a key that looks like a secret: tokens go to the OS keyring only.
    """
    for key in choices:
        if any(word in key.lower() for word in CAPTION_SECRET_WORDS):
            raise ValueError(f"{key!r} looks like a secret; it belongs in the OS keyring")
    settings.beginGroup(CAPTION_GROUP)
    try:
        for key, value in choices.items():
            settings.setValue(key, value)
    finally:
        settings.endGroup()


#: The Settings dialog's own choices (never a token: those go to the OS keyring).
KEY_DEVICE = "preferences/device"
KEY_HF_ENDPOINT = "preferences/hf_endpoint"
DEVICES = ("auto", "cuda", "mps", "cpu")


@dataclass(frozen=True)
class Preferences:
    """What the Settings dialog keeps in QSettings besides the backend choice, the output
    folder and the caption server (which live under their own keys)."""

    device: str = "auto"
    hf_endpoint: str = ""


def read_preferences(settings: QSettings) -> Preferences:
    device = _text(settings, KEY_DEVICE) or "auto"
    return Preferences(
        device=device if device in DEVICES else "auto",
        hf_endpoint=_text(settings, KEY_HF_ENDPOINT) or "",
    )


def remember_preferences(settings: QSettings, preferences: Preferences) -> None:
    settings.setValue(KEY_DEVICE, preferences.device)
    settings.setValue(KEY_HF_ENDPOINT, preferences.hf_endpoint)


def apply_device(device: str) -> None:
    """Make the trainer use ``device`` (``auto``: CUDA, then Apple MPS, then the CPU)
    through ``LORA_STUDIO_DEVICE``, which the trainer reads when a run starts."""
    import os

    if device in ("cuda", "mps", "cpu"):
        os.environ["LORA_STUDIO_DEVICE"] = device
    else:
        os.environ.pop("LORA_STUDIO_DEVICE", None)
