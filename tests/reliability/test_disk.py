"""A disk that stops taking bytes in the middle of a write.

The child processes run under ``RLIMIT_FSIZE``: the kernel refuses any write past the limit
(``EFBIG``, "File too large"), exactly where a full disk would refuse it (``ENOSPC``). The
app must say so in one line, keep the old file, and leave no partial file behind.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="RLIMIT_FSIZE is POSIX")

LIMITED = """
    import resource, runpy, signal, sys
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a refused write raises, not kills
    limit = int(sys.argv.pop(1))
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    sys.argv[0] = "lora-studio"
    runpy.run_module("lora_studio", run_name="__main__")
"""


def _run_limited(limit: int, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(LIMITED), str(limit), *args],
        capture_output=True,
        text=True,
        env=os.environ,
        timeout=600,
    )


def test_training_onto_a_full_disk_says_so_and_leaves_no_partial_file(
    tiny_model: Path, small_dataset: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    result = _run_limited(
        64 * 1024,  # the LoRA (rank 16, about 700 kB) cannot be written; the caches can
        "train",
        str(small_dataset),
        "--base-model",
        "builtin:tiny-sd15",
        "--preset",
        "fast",
        "--resolution",
        "64",
        "--max-steps",
        "2",
        "--output",
        str(out),
    )
    assert result.returncode == 1, result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("lora-studio: error:") and "File too large" in last, result.stderr
    assert "Traceback" not in result.stderr
    assert not out.exists() or list(out.iterdir()) == []  # no partial LoRA, no temp file
    # the history could not be written either; that was a warning, not the run's end
    assert "could not be written" in result.stderr and "The run goes on without it" in result.stderr
    assert "step 2/2" in result.stderr


def test_a_caption_that_does_not_fit_keeps_the_old_caption(tmp_path: Path) -> None:
    from PIL import Image

    folder = tmp_path / "ds"
    folder.mkdir()
    Image.new("RGB", (8, 8)).save(folder / "a.png")
    (folder / "a.txt").write_text("the caption I wrote\n", encoding="utf-8")
    code = """
        import resource, signal, sys
        from lora_studio.core.dataset import Dataset, write_caption
        from lora_studio.core.errors import CaptionError
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        (item,) = Dataset.from_directory(sys.argv[1]).images
        resource.setrlimit(resource.RLIMIT_FSIZE, (1024, 1024))
        try:
            write_caption(item, "tag, " * 1000)
        except CaptionError as exc:
            print(exc)
    """
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code), str(folder)],
        capture_output=True,
        text=True,
        env=os.environ,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "Could not save the caption of a.png: File too large."
    assert (folder / "a.txt").read_text(encoding="utf-8") == "the caption I wrote\n"
    assert sorted(p.name for p in folder.iterdir()) == ["a.png", "a.txt"]


def test_a_history_upgrade_cut_short_by_a_full_disk_is_redone_whole(tmp_path: Path) -> None:
    import sqlite3

    from lora_studio.core.jobs import JobStatus, JobStore

    db = tmp_path / "jobs.sqlite3"
    with sqlite3.connect(db) as conn:  # a version-1 history with one finished run
        conn.executescript(
            "CREATE TABLE jobs (id TEXT PRIMARY KEY, backend TEXT NOT NULL, name TEXT NOT NULL,"
            " base_model TEXT NOT NULL, output_dir TEXT NOT NULL, dataset_dir TEXT NOT NULL"
            " DEFAULT '', status TEXT NOT NULL, created_at REAL NOT NULL, updated_at REAL NOT"
            " NULL, config TEXT NOT NULL DEFAULT '{}', output_path TEXT, error TEXT,"
            " remote_id TEXT);"
            "INSERT INTO jobs VALUES ('old1', 'local', 'old', 'builtin:tiny-sd15', '/o', '',"
            " 'succeeded', 1.0, 2.0, '{}', '/o/old.safetensors', NULL, NULL);"
        )
    code = """
        import resource, shutil, signal, sys
        from lora_studio.core.jobs import JobStore, JobStoreError
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        original, copy = sys.argv[1], sys.argv[2]
        for limit in range(2048, 65536, 2048):  # the disk fills up at every point in turn
            shutil.copy(original, copy + f".{limit}")
            resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.RLIM_INFINITY))
            try:
                JobStore(copy + f".{limit}").close()
                print(limit, "ok")
            except JobStoreError as exc:
                print(limit, exc)
            resource.setrlimit(resource.RLIMIT_FSIZE, (resource.RLIM_INFINITY,) * 2)
    """
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code), str(db), str(tmp_path / "try")],
        capture_output=True,
        text=True,
        env=os.environ,
    )
    assert result.returncode == 0, result.stderr
    outcomes = dict(line.split(" ", 1) for line in result.stdout.splitlines())
    assert any("could not be opened" in o for o in outcomes.values())  # the disk did fill
    for limit in outcomes:
        store = JobStore(tmp_path / f"try.{limit}")  # room again: the upgrade runs whole
        try:
            old = store.get("old1")
            assert old is not None and old.status is JobStatus.SUCCEEDED, limit
        finally:
            store.close()
