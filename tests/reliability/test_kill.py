"""SIGKILL in the middle of work: nothing acknowledged is lost, nothing is half-written.

Each test runs the real code in a child process, kills it with SIGKILL (no handler, no
``finally``, no flush) at a busy moment, and checks what is on disk afterwards.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from lora_studio.cli import main
from lora_studio.core.dataset import Dataset
from lora_studio.core.jobs import JobStatus, JobStore
from lora_studio.core.paths import job_db_path

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL is POSIX")


def _child(code: str, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(code), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=os.environ,
    )


def _kill_after(proc: subprocess.Popen[str], acks: int) -> list[str]:
    """Read ``proc``'s acknowledgement lines; SIGKILL it after ``acks`` of them. Returns
    every line it acknowledged before it died."""
    assert proc.stdout is not None
    seen: list[str] = []
    for line in proc.stdout:
        seen.append(line.rstrip("\n"))
        if len(seen) >= acks:
            proc.send_signal(signal.SIGKILL)
            break
    seen += [line.rstrip("\n") for line in proc.stdout]  # acknowledged before the kill landed
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read() if proc.stderr else ""
    return seen


# ---- captions ----------------------------------------------------------------------------


BATCH_EDIT = """
    import sys
    from lora_studio.core.dataset import Dataset, write_caption

    dataset = Dataset.from_directory(sys.argv[1])
    for round in range(1, 1000):
        for item in dataset.images:
            # a batch edit: every caption gets the round's tag, as the grid's "add tag" does
            write_caption(item, f"{item.path.stem}, tag round {round}, " + "x" * 400)
            print(f"{item.path.name} {round}", flush=True)  # acknowledged: saved
"""


def test_a_kill_during_a_batch_caption_edit_loses_nothing_acknowledged(tmp_path: Path) -> None:
    folder = tmp_path / "ds"
    folder.mkdir()
    for n in range(40):
        Image.new("RGB", (8, 8), (n, 0, 0)).save(folder / f"img{n:02d}.png")
        (folder / f"img{n:02d}.txt").write_text(f"img{n:02d}, original\n", encoding="utf-8")

    acked = _kill_after(_child(BATCH_EDIT, str(folder)), acks=150)

    latest: dict[str, int] = {}
    for line in acked:
        name, round_ = line.split()
        latest[name] = max(latest.get(name, 0), int(round_))
    dataset = Dataset.from_directory(folder)  # the app reopening the folder
    assert len(dataset.images) == 40
    for item in dataset.images:
        text = item.path.with_suffix(".txt").read_text(encoding="utf-8")
        stem = item.path.stem
        if text == f"{stem}, original\n":
            assert item.path.name not in latest, f"{item.path.name}: an acknowledged save is lost"
            continue
        # never empty, never half-written: a whole caption of some round
        head, _, tail = text.rstrip("\n").partition(", tag round ")
        round_, _, filler = tail.partition(", ")
        assert head == stem and filler == "x" * 400, f"{item.path.name} is torn: {text!r}"
        assert int(round_) >= latest.get(item.path.name, 0), f"{item.path.name} went back"
        assert item.caption == text.strip()
    # a temp file the kill left behind is not taken for a caption or an image
    assert all(not p.name.endswith(".tmp") for p in (i.path for i in dataset.images))


# ---- the job history ---------------------------------------------------------------------


HISTORY_WRITER = """
    import sys
    from lora_studio.core.jobs import BackendType, Job, JobStatus, JobStore

    store = JobStore(sys.argv[1])
    for n in range(100000):
        job = Job(id=f"job{n:06d}", backend=BackendType.LOCAL, name=f"run {n}",
                  base_model="builtin:tiny-sd15", output_dir="/out")
        store.save(job)
        job.status = JobStatus.RUNNING
        store.save(job)
        store.append_logs(job.id, [f"step {s}/50" for s in range(50)])
        store.record_losses(job.id, [(s, 1.0 / (s + 1)) for s in range(50)])
        print(job.id, flush=True)  # acknowledged: committed
"""


def test_a_kill_mid_write_leaves_the_job_history_whole(tmp_path: Path) -> None:
    db = tmp_path / "jobs.sqlite3"
    acked = _kill_after(_child(HISTORY_WRITER, str(db)), acks=60)

    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    store = JobStore(db)  # reopens (and recovers the WAL)
    try:
        for job_id in acked:
            job = store.get(job_id)
            assert job is not None and job.status is JobStatus.RUNNING, job_id
            assert len(store.logs(job_id)) == 50 and len(store.losses(job_id)) == 50
        # a job half-written when the kill came is either absent or whole: never torn
        for job in store.list(limit=100000):
            logs = store.logs(job.id)
            assert len(logs) in (0, 50)
    finally:
        store.close()


# ---- training ----------------------------------------------------------------------------


def _train_args(dataset: Path, out: Path, *extra: str) -> list[str]:
    return [
        "train",
        str(dataset),
        "--base-model",
        "builtin:tiny-sd15",
        "--preset",
        "fast",
        "--resolution",
        "64",
        "--max-steps",
        "12",
        "--save-every-n-steps",
        "3",
        "--seed",
        "7",
        "--name",
        "killed",
        "--output",
        str(out),
        *extra,
    ]


def test_a_kill_during_training_keeps_the_checkpoint_and_resume_matches_a_whole_run(
    tiny_model: Path, small_dataset: Path, tmp_path: Path, capsys
) -> None:
    out = tmp_path / "split"
    proc = subprocess.Popen(
        [sys.executable, "-m", "lora_studio", *_train_args(small_dataset, out)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=os.environ,
    )
    assert proc.stderr is not None
    for line in proc.stderr:
        if "step 7/12" in line:  # checkpoints at 3 and 6 are behind it
            proc.send_signal(signal.SIGKILL)
            break
    proc.wait(timeout=120)
    assert proc.returncode == -signal.SIGKILL
    checkpoints = out / "killed-checkpoints"
    finished = sorted(p.name for p in checkpoints.iterdir() if not p.name.startswith("."))
    assert "step-000006" in finished and "step-000012" not in finished
    # whatever step the kill came at, the finished checkpoints are whole
    for name in finished:
        state = json.loads((checkpoints / name / "state.json").read_text(encoding="utf-8"))
        assert state["step"] == int(name.split("-")[1])
        load_file(checkpoints / name / "adapter.safetensors")
    assert not (out / "killed.safetensors").exists()

    # the history shows the run as interrupted, with where to resume from
    assert main(["jobs", "list", "--json"]) == 0
    (listed,) = json.loads(capsys.readouterr().out)
    assert listed["status"] == "interrupted"
    store = JobStore(job_db_path())
    try:
        job = store.get(listed["id"])
    finally:
        store.close()
    assert job is not None and f"Resume it from {finished[-1]}" in (job.error or "")

    # resume from the folder: the same weights as a run that was never killed
    assert (
        main(["train", str(small_dataset), "--resume", str(checkpoints), "--output", str(out)]) == 0
    )
    resumed = Path(capsys.readouterr().out.strip().splitlines()[-1])
    assert main(_train_args(small_dataset, tmp_path / "whole")) == 0
    whole = Path(capsys.readouterr().out.strip().splitlines()[-1])
    a, b = load_file(resumed), load_file(whole)
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


LIVE_RUN = """
    import sys, time
    from lora_studio.core.jobs import BackendType, Job, JobStatus, JobStore

    store = JobStore(sys.argv[1])
    job = Job(id="live", backend=BackendType.LOCAL, name="live", base_model="builtin:tiny-sd15",
              output_dir=sys.argv[2], status=JobStatus.RUNNING)
    store.save(job)
    print(job.id, flush=True)
    time.sleep(120)  # training, as far as anyone can tell
"""


def test_a_live_run_in_another_process_is_not_taken_for_an_interrupted_one(
    tmp_path: Path,
) -> None:
    """The window opening (JobQueue.start) or `jobs list` while `lora-studio train` runs in
    a terminal leaves that run alone; once that process is gone, it is interrupted."""
    import asyncio

    from lora_studio.backends.factory import backend_for_spec
    from lora_studio.jobqueue import JobQueue

    db = job_db_path()
    proc = _child(LIVE_RUN, str(db), str(tmp_path / "out"))
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "live"

        async def open_the_window() -> None:
            queue = JobQueue(JobStore(db), backend_for_spec)
            await queue.start()
            await queue.stop()
            queue.store.close()

        asyncio.run(open_the_window())
        assert main(["jobs", "list"]) == 0
        store = JobStore(db)
        try:
            job = store.get("live")
            assert job is not None and job.status is JobStatus.RUNNING
        finally:
            store.close()
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
    assert main(["jobs", "list"]) == 0
    store = JobStore(db)
    try:
        job = store.get("live")
        assert job is not None and job.status is JobStatus.INTERRUPTED
        assert "It left no checkpoint" in (job.error or "")
    finally:
        store.close()


WINDOW_BATCH_EDIT = """
    import asyncio, sys
    from pathlib import Path

    import qasync
    from PySide6.QtWidgets import QApplication

    import lora_studio.gui  # noqa: F401 - Qt compatibility first
    from lora_studio.gui.async_signals import signal_future
    from lora_studio.gui.controller import StudioController
    from lora_studio.gui.main_window import MainWindow
    from lora_studio.gui.settings import open_settings

    folder, home = Path(sys.argv[1]), Path(sys.argv[2])
    app = QApplication([])
    loop = qasync.QEventLoop(app)
    asyncio.set_event_loop(loop)
    controller = StudioController(output_dir=home / "outputs", loop=loop)
    window = MainWindow(controller, open_settings(home / "settings.ini"), confirm_close=False)
    window.show()
    # acknowledged = the window reported the caption saved
    controller.caption_saved.connect(
        lambda path, text: print(Path(path).name, text.split(", ")[1], flush=True)
    )

    async def edit() -> None:
        loaded = signal_future(controller.dataset_loaded)
        controller.open_dataset(folder)
        await loaded
        for round_ in range(1, 1000):  # the grid's batch edit, round after round
            changes = {
                item.path: (
                    window.dataset_model.caption_or_none(item.path) or "",
                    f"{item.path.stem}, round {round_}, " + "x" * 400,
                )
                for item in controller.dataset.images
            }
            window.caption_grid.apply_changes(changes, f"round {round_}")
            await asyncio.sleep(0.02)

    loop.run_until_complete(edit())
"""


def test_a_kill_of_the_window_mid_batch_edit_loses_nothing_acknowledged(tmp_path: Path) -> None:
    """The app itself (the window, offscreen) applies batch edits to 30 captions round
    after round; it is SIGKILLed after 120 acknowledged saves, and the folder reopened."""
    folder = tmp_path / "ds"
    folder.mkdir()
    for n in range(30):
        Image.new("RGB", (8, 8), (n, 0, 0)).save(folder / f"img{n:02d}.png")
        (folder / f"img{n:02d}.txt").write_text(f"img{n:02d}, original\n", encoding="utf-8")
    proc = _child(WINDOW_BATCH_EDIT, str(folder), str(tmp_path / "home"))
    acked = _kill_after(proc, acks=120)

    latest: dict[str, int] = {}
    for line in acked:
        name, round_ = line.split(" ", 1)
        latest[name] = max(latest.get(name, 0), int(round_.split()[-1]))
    assert len(latest) >= 10  # the kill came in the middle of it, many files in
    for image in Dataset.from_directory(folder).images:
        text = image.path.with_suffix(".txt").read_text(encoding="utf-8")
        stem = image.path.stem
        if text == f"{stem}, original\n":
            assert image.path.name not in latest, f"{image.path.name}: an acknowledged save is lost"
            continue
        head, _, tail = text.rstrip("\n").partition(", round ")
        round_, _, filler = tail.partition(", ")
        assert head == stem and filler == "x" * 400, f"{image.path.name} is torn: {text!r}"
        assert int(round_) >= latest.get(image.path.name, 0), f"{image.path.name} went back"
