from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from lora_studio.core import atomic
from lora_studio.core.atomic import atomic_write_text


def test_atomic_write_keeps_permissions(tmp_path: Path) -> None:
    target = tmp_path / "a.txt"
    target.write_text("old", encoding="utf-8")
    target.chmod(0o640)
    atomic_write_text(target, "new")
    assert target.read_text(encoding="utf-8") == "new"
    assert target.stat().st_mode & 0o777 == 0o640


def test_a_failed_write_leaves_the_old_file_and_no_temp(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "a.txt"
    target.write_text("old", encoding="utf-8")

    def disk_full(src: object, dst: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(atomic.os, "replace", disk_full)
    with pytest.raises(OSError, match="No space left"):
        atomic_write_text(target, "new")
    assert target.read_text(encoding="utf-8") == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt"]


# (modules imported, top-level packages that must not end up in sys.modules)
IMPORT_CASES = [
    (
        ["lora_studio.core", "lora_studio.core.dataset", "lora_studio.core.estimates"],
        ["torch", "PySide6", "diffusers", "transformers", "peft", "accelerate"],
    ),
    (
        [
            "lora_studio.creator",
            "lora_studio.cli",
            "lora_studio.backends",
            "lora_studio.training.trainer",
        ],
        ["PySide6", "qasync"],
    ),
]


@pytest.mark.parametrize(("modules", "forbidden"), IMPORT_CASES, ids=["core", "domain"])
def test_importing_the_domain_pulls_in_nothing_forbidden(modules, forbidden) -> None:
    # A fresh interpreter: this test process has long imported everything.
    code = (
        f"import sys, {', '.join(modules)};"
        f"bad = sorted(m for m in sys.modules if m.split('.')[0] in {set(forbidden)!r});"
        "print(bad); sys.exit(1 if bad else 0)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=os.environ
    )
    assert result.returncode == 0, result.stdout + result.stderr
