"""Shared fixtures. Every test runs with LoRA Studio's user dirs in a temp folder, and the
built-in tiny model is built once per session into a shared cache."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[1]
SAMPLE_DATASET = REPO / "resources" / "sample_dataset"

_SESSION_DIR = Path(tempfile.mkdtemp(prefix="lora-studio-tests-"))
# Set at import time so nothing (not even collection) can touch the real user dirs.
os.environ["LORA_STUDIO_HOME"] = str(_SESSION_DIR / "home")
os.environ["LORA_STUDIO_CACHE"] = str(_SESSION_DIR / "cache")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    shutil.rmtree(_SESSION_DIR, ignore_errors=True)


@pytest.fixture(autouse=True)
def _isolated_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Per-test app data/config/output dirs; the model cache stays shared."""
    monkeypatch.setenv("LORA_STUDIO_HOME", str(tmp_path / "home"))


@pytest.fixture(scope="session")
def tiny_model() -> Path:
    """The built-in tiny SD 1.5 model, built once per session."""
    from lora_studio.training.tiny import ensure_builtin_model

    return ensure_builtin_model("tiny-sd15")


@pytest.fixture
def sample_dataset(tmp_path: Path) -> Path:
    """A private copy of the shipped sample dataset (12 images, 10 captions)."""
    target = tmp_path / "dataset"
    shutil.copytree(SAMPLE_DATASET, target, ignore=shutil.ignore_patterns("README.md"))
    return target


@pytest.fixture
def small_dataset(tmp_path: Path) -> Iterator[Path]:
    """Four of the sample images with captions: enough for quick training tests."""
    target = tmp_path / "small"
    target.mkdir()
    for n in (1, 2, 3, 4):
        for ext in (".png", ".txt"):
            shutil.copy(SAMPLE_DATASET / f"papercut_{n:02d}{ext}", target)
    yield target


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The window tests run last. Once a QApplication exists, pytest-qt processes Qt events
    around every later test; a window test's leftovers (a deleted object's queued event)
    would then surface in an unrelated test. The order within each group is kept."""
    items.sort(key=lambda item: Path(str(item.path)).parent.name == "gui")


@pytest.fixture
def memory_keyring(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """The OS keyring replaced by an in-memory one (tests/memory_keyring.py), and no token
    in the environment."""
    import keyring
    from memory_keyring import TOKEN_VARIABLES, MemoryKeyring

    for name in TOKEN_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    previous = keyring.get_keyring()
    backend = MemoryKeyring()
    keyring.set_keyring(backend)
    yield backend
    keyring.set_keyring(previous)
