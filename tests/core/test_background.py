"""The low-priority helper process (``core.background``) and the work the window sends it:
the image check and the bucket preview give the same answers there as on threads, the
helper is niced, ends with the app even when the app is killed, and a helper that dies
mid-run costs no work."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from image_factory import picture, write_broken, write_every_kind

from lora_studio.core import background
from lora_studio.core.background import map_chunks, shutdown_background
from lora_studio.core.config import LoraConfig
from lora_studio.core.dataset import Dataset
from lora_studio.core.validate import validate_dataset
from lora_studio.gui.bucket_preview import place_images


@pytest.fixture
def helper():
    """A fresh helper process for the test, stopped afterwards."""
    shutdown_background()
    yield background.background_executor()
    shutdown_background()


def _square(numbers):
    return [n * n for n in numbers]


def test_map_chunks_runs_everything_in_order_of_chunks_with_progress() -> None:
    seen: list[tuple[int, ...]] = []
    with ThreadPoolExecutor(2) as pool:
        finished = map_chunks(
            _square,
            list(range(100)),
            executor=pool,
            chunk=7,
            done=lambda part, out: seen.append(tuple(zip(part, out, strict=True))),
        )
    assert finished
    pairs = sorted(pair for part in seen for pair in part)
    assert pairs == [(n, n * n) for n in range(100)]
    assert sorted(len(part) for part in seen) == [2] + [7] * 14


def test_map_chunks_stops_between_chunks() -> None:
    done: list[int] = []
    with ThreadPoolExecutor(1) as pool:
        finished = map_chunks(
            _square,
            list(range(1000)),
            executor=pool,
            chunk=10,
            in_flight=1,
            should_stop=lambda: len(done) >= 3,
            done=lambda part, out: done.append(len(part)),
        )
    assert not finished
    assert 3 <= len(done) < 100, "it stopped long before the end"


def test_map_chunks_ends_when_its_pool_is_shut_down(caplog) -> None:
    """The app is closing (shutdown_background at exit): the rest of the work is not
    wanted, so it is neither run here in the calling thread nor reported as a lost
    helper (it used to be, chunk by chunk, keeping a closing window busy)."""
    ran: list[int] = []
    pool = ThreadPoolExecutor(1)

    def work(numbers):
        ran.append(len(numbers))
        return _square(numbers)

    def done(part, out):
        if len(ran) == 2:
            pool.shutdown(wait=False, cancel_futures=True)

    finished = map_chunks(work, list(range(1000)), executor=pool, chunk=10, in_flight=1, done=done)
    pool.shutdown(wait=True)
    assert not finished
    assert len(ran) <= 4, "the remaining chunks were run anyway"
    assert "background process stopped" not in caplog.text


def _folder_with_problems(folder: Path) -> Path:
    made = write_every_kind(folder)
    write_broken(folder, made["jpeg"])
    picture(800, 600, 1).save(folder / "a.png")
    picture(800, 600, 1).save(folder / "a copy.png")
    picture(40, 40, 2).save(folder / "tiny.png")
    (folder / "a.txt").write_text("a photo", "utf-8")
    return folder


def test_the_image_check_in_the_helper_finds_what_the_threads_find(tmp_path, helper) -> None:
    dataset = Dataset.from_directory(_folder_with_problems(tmp_path / "set"))
    progress: list[tuple[int, int]] = []
    there = validate_dataset(
        dataset, in_process=True, progress=lambda done, total: progress.append((done, total))
    )
    here = validate_dataset(dataset)
    assert there.to_dict() == here.to_dict()
    assert {i.code for i in there.issues()} >= {"corrupt", "truncated", "duplicate", "too_small"}
    assert progress[-1] == (len(dataset), len(dataset))


def test_the_helper_runs_at_a_lower_priority(helper) -> None:
    if not hasattr(os, "nice"):
        pytest.skip("no nice() here")
    theirs = helper.submit(os.nice, 0).result(timeout=60)
    assert theirs >= os.nice(0) + background.NICENESS or theirs == 19
    if hasattr(os, "SCHED_IDLE") and _sched_idle_allowed():  # Linux: a core nothing else wants
        assert helper.submit(os.sched_getscheduler, 0).result(timeout=60) == os.SCHED_IDLE


def _sched_idle_allowed() -> bool:
    """Whether a process here may make itself SCHED_IDLE (a sandbox may refuse it)."""
    probe = "import os; os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))"
    return subprocess.run([sys.executable, "-c", probe], check=False).returncode == 0


def test_bucket_preview_of_a_big_folder_reads_in_the_helper(tmp_path, helper, monkeypatch) -> None:
    folder = tmp_path / "big"
    folder.mkdir()
    sizes_made = [(640, 480), (480, 640), (512, 512), (1024, 576)]
    for n in range(24):
        picture(*sizes_made[n % 4], n).save(folder / f"{n:03}.png")
    (folder / "broken.png").write_bytes(b"not a png")
    paths = sorted(folder.iterdir())
    config = LoraConfig.fast_preset()
    on_thread = place_images(paths, {}, config)
    # The same folder, now counted as big: read and placed in the helper process.
    monkeypatch.setattr(background, "PROCESS_THRESHOLD", 10)
    monkeypatch.setattr("lora_studio.gui.bucket_preview.HEADER_CHUNK", 5)
    sizes: dict = {}
    in_helper = place_images(paths, sizes, config)
    assert in_helper == on_thread
    assert sizes[folder / "003.png"] == (1024, 576)
    assert isinstance(in_helper[folder / "broken.png"], str)


def test_a_killed_helper_costs_no_work(tmp_path, helper, monkeypatch) -> None:
    """The helper dies mid-run (out of memory, killed): the rest is done on this thread."""
    dataset = Dataset.from_directory(_folder_with_problems(tmp_path / "set"))
    pid = helper.submit(os.getpid).result(timeout=60)
    os.kill(pid, signal.SIGKILL)
    report = validate_dataset(dataset, in_process=True)
    assert report.to_dict() == validate_dataset(dataset).to_dict()
    # The next run starts a fresh helper.
    assert background.background_executor().submit(os.getpid).result(timeout=60) != pid


def test_the_helper_ends_when_the_app_is_killed(tmp_path) -> None:
    """No orphan: a SIGKILLed app takes its helper process with it."""
    script = textwrap.dedent(
        """
        import os, sys, time
        from lora_studio.core.background import background_executor

        if __name__ == "__main__":
            print(background_executor().submit(os.getpid).result(timeout=60), flush=True)
            time.sleep(60)
        """
    )
    (tmp_path / "app.py").write_text(script, "utf-8")
    # (stderr: the killed app's resource tracker reports the semaphores it left.)
    app = subprocess.Popen(
        [sys.executable, str(tmp_path / "app.py")],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        line = app.stdout.readline() if app.stdout is not None else ""
        pid = int(line)
        os.kill(app.pid, signal.SIGKILL)
        app.wait(timeout=30)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and _alive(pid):
            time.sleep(0.1)
        assert not _alive(pid), "the helper outlived the app"
    finally:
        if app.poll() is None:
            app.kill()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie (exited, not yet reaped by its new parent) counts as gone.
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
    except OSError:
        return True
    return state != "Z"


def test_a_hold_makes_the_helper_wait_before_its_next_image(tmp_path, helper, monkeypatch) -> None:
    """While the user scrolls, the window holds the helper: its next image waits."""
    images = []
    for i in range(3):
        path = tmp_path / f"p{i}.png"
        picture(64, 48, seed=i).save(path)
        images.append(path)
    options = {"min_side": 16}
    free = helper.submit(background.check_images, images, options).result(timeout=60)  # warm
    monkeypatch.setattr(background, "_held_until", 0.0)
    background.hold(1.5)
    started = time.monotonic()
    held = helper.submit(background.check_images, images, options).result(timeout=60)
    assert time.monotonic() - started >= 1.4
    assert held == free  # the same work, done once the hold was over
    # Work run in the window's process (small folders, a dead helper) is not held here.
    background.hold(1.5)
    started = time.monotonic()
    assert background.check_images(images, options) == free
    assert time.monotonic() - started < 1.4


def test_file_sizes_and_existence_of_a_big_folder_come_from_the_helper(
    tmp_path, helper, monkeypatch
) -> None:
    monkeypatch.setattr(background, "PROCESS_THRESHOLD", 10)
    monkeypatch.setattr(background, "PATH_CHUNK", 4)
    paths = []
    for i in range(12):
        path = tmp_path / f"f{i}.bin"
        path.write_bytes(b"x" * i)
        paths.append(str(path))
    gone = str(tmp_path / "gone.bin")
    ran_in: list[int] = []
    original = background.map_chunks

    def spying(function, items, **kwargs):
        ran_in.append(len(items))
        return original(function, items, **kwargs)

    monkeypatch.setattr(background, "map_chunks", spying)
    sizes = background.map_paths(background.file_sizes, [*paths, gone])
    assert sizes == {**{p: i for i, p in enumerate(paths)}, gone: -1}
    assert background.map_paths(background.existing, [gone, *paths]) == {
        gone: False,
        **dict.fromkeys(paths, True),
    }
    assert ran_in == [13, 13]  # both went to the helper, in chunks
    # A small list is done here, without the helper.
    assert background.map_paths(background.file_sizes, paths[:3]) == {
        p: i for i, p in enumerate(paths[:3])
    }
    assert ran_in == [13, 13]
