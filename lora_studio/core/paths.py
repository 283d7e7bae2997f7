"""Where LoRA Studio keeps its own files (platformdirs' user dirs).

``LORA_STUDIO_HOME`` moves all of them under one folder (tests and portable installs use
it); ``LORA_STUDIO_CACHE`` moves only the cache (built-in models, thumbnails).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import platformdirs

APP_NAME = "lora-studio"


def _resources_dir() -> Path:
    # A checkout (or editable install) has resources/ beside the package; a wheel installs
    # them as data files under <prefix>/share/lora-studio/resources.
    beside = Path(__file__).resolve().parents[2] / "resources"
    if beside.is_dir():
        return beside
    return Path(sys.prefix) / "share" / APP_NAME / "resources"


RESOURCES_DIR = _resources_dir()


def _home() -> Path | None:
    value = os.environ.get("LORA_STUDIO_HOME")
    return Path(value).expanduser() if value else None


def cache_dir() -> Path:
    if os.environ.get("LORA_STUDIO_CACHE"):
        return Path(os.environ["LORA_STUDIO_CACHE"]).expanduser()
    home = _home()
    if home:
        return home / "cache"
    return Path(platformdirs.user_cache_dir(APP_NAME, appauthor=False))


def data_dir() -> Path:
    home = _home()
    if home:
        return home / "data"
    return Path(platformdirs.user_data_dir(APP_NAME, appauthor=False))


def config_dir() -> Path:
    home = _home()
    if home:
        return home / "config"
    return Path(platformdirs.user_config_dir(APP_NAME, appauthor=False))


def models_cache_dir() -> Path:
    return cache_dir() / "models"


def thumbnails_cache_dir() -> Path:
    return cache_dir() / "thumbnails"


def job_db_path() -> Path:
    return data_dir() / "jobs.sqlite3"


def default_output_dir() -> Path:
    """Where LoRAs go unless the user picks a folder: ``~/LoRA Studio/outputs``."""
    home = _home()
    if home:
        return home / "outputs"
    return Path(platformdirs.user_documents_dir()) / "LoRA Studio" / "outputs"


def sample_dataset_dir() -> Path:
    """The sample dataset that ships with the app."""
    return RESOURCES_DIR / "sample_dataset"
