"""Benchmark opening a big folder in the window (issue 8, item 3), against a naive browser.

    python benchmarks/bench_browser.py [--images 10000] [--baseline-images 300]
                                       [--folder DIR] [--json]

Generates N JPEGs of nine sizes from 640x480 to 4000x3000 and 3000x4000, 80% with a
caption file, in ``/tmp/lora-studio-bench-browser-N`` (kept between runs; delete it to
regenerate; about 10 s for 10,000): 40 low-quality pictures per size are encoded on every
core and each file is one of them with its own JPEG comment, so decoding costs what a
photo of that size costs. Then,
each side in its own process (so peak RSS is its own), with Qt's offscreen platform:

**ours** - the real :class:`~lora_studio.gui.main_window.MainWindow` and controller, the
browser given most of a 2400x1400 window (about 70 thumbnails visible), an empty thumbnail
disk cache:
  - *index*: ``open_dataset`` until ``dataset_loaded`` (the folder's listing and captions;
    the file list is warm in the OS cache, as for any folder opened twice). The window
    shows the first page first: the index starts once its thumbnails are in (0.2 s at
    most), so this includes that wait;
  - *first thumbnails*: from ``open_dataset`` until 50 items were painted with their
    thumbnail (the delegate's ``paint`` is watched: in the listing of the folder's first
    files the browser shows while the folder is indexed, then in the dataset's grid);
  - *longest stall*: a 5 ms ``QTimer`` heartbeat on the GUI thread; the longest gap
    between its ticks while the grid is scrolled from top to bottom one page every 40 ms,
    from the moment the dataset is in (and, separately, during the open). Validation and
    bucket placement run in the background meanwhile, as in the app;
  - *RSS*: peak resident memory of the process after scrolling everything and waiting for
    the last page's thumbnails;
  - *second open*: the same folder opened again (the window reopens it; thumbnails now
    come from the disk cache): index and first-thumbnail times again.

**naive** - what taggui does: the open reads every image's header (size) and caption on
the GUI thread; a ``QListView`` whose model decodes the *full* image with ``QImage`` on the
GUI thread when a row is first painted, scales it to 128 px, and keeps every thumbnail in
memory. Scrolling it through 10,000 large JPEGs would take most of an hour, so it scrolls
through ``--baseline-images`` rows at the same pace and its RSS is extrapolated linearly to
N images (said so in the output).

Every comparison is printed as a ratio measured in the same run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from multiprocessing import Pool
from pathlib import Path
from typing import Any

SIZES = [
    (4000, 3000),
    (3000, 4000),
    (3000, 2000),
    (2000, 3000),
    (1920, 1080),
    (2048, 1536),
    (1024, 1024),
    (800, 600),
    (640, 480),
]
WINDOW = (2400, 1400)
FIRST = 50
HEARTBEAT_MS = 5
SCROLL_EVERY_MS = 40
TARGETS = {"index_s": 0.5, "first_s": 0.3, "stall_ms": 50.0, "rss_mb": 600.0}


# ---- the folder ----------------------------------------------------------------------------


TEMPLATES = 40  # distinct pictures per size; the other files are copies of them


def _template(job: tuple[int, int]) -> bytes:
    import io

    from PIL import Image

    size_index, seed = job
    rng = random.Random(size_index * 1000 + seed)
    width, height = SIZES[size_index]
    small = Image.new("RGB", (8, 6))
    small.putdata([(rng.randrange(256), rng.randrange(256), rng.randrange(256)) for _ in range(48)])
    out = io.BytesIO()
    small.resize((width, height), Image.Resampling.BILINEAR).save(out, format="JPEG", quality=30)
    return out.getvalue()


def _with_comment(jpeg: bytes, text: str) -> bytes:
    """``jpeg`` with a COM segment after SOI: another file, the same pixels to decode."""
    body = text.encode("ascii")
    return jpeg[:2] + b"\xff\xfe" + (len(body) + 2).to_bytes(2, "big") + body + jpeg[2:]


def ensure_folder(count: int, folder: Path | None = None) -> Path:
    """The generated folder of ``count`` JPEGs (made once, kept for later runs).

    ``TEMPLATES`` pictures per size are encoded (in parallel); every file is one of them
    with its own JPEG comment, so the files differ while decoding costs what a photo of
    that size costs. (Validation therefore reports many duplicates in this folder.)
    """
    folder = folder or Path(tempfile.gettempdir()) / f"lora-studio-bench-browser-{count}"
    marker = folder / ".complete"
    if marker.is_file():
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    print(f"Generating {count} JPEGs in {folder} (once; kept for later runs)...", flush=True)
    jobs = [(s, t) for s in range(len(SIZES)) for t in range(TEMPLATES)]
    with Pool(os.cpu_count() or 2) as pool:
        encoded = pool.map(_template, jobs, chunksize=4)
    templates = dict(zip(jobs, encoded, strict=True))
    for index in range(count):
        size_index = index % len(SIZES)
        jpeg = templates[(size_index, (index // len(SIZES)) % TEMPLATES)]
        name = folder / f"img_{index:05d}.jpg"
        name.write_bytes(_with_comment(jpeg, f"bench image {index}"))
        if index % 5:
            name.with_suffix(".txt").write_text(
                f"bench, picture {index}, {'red' if index % 3 else 'blue'} sky, soft light",
                encoding="utf-8",
            )
    marker.write_text(str(count))
    print(f"  generated in {time.perf_counter() - started:.0f} s", flush=True)
    return folder


# ---- measuring in a child process ---------------------------------------------------------------


def peak_rss_mb() -> float:
    # ru_maxrss: kilobytes on Linux, bytes on macOS.
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


class Heartbeat:
    """The longest gap between ticks of a short GUI-thread timer, per named phase."""

    def __init__(self) -> None:
        from PySide6.QtCore import QTimer

        self.gaps: dict[str, float] = {}
        self.phase = "idle"
        self._last = time.perf_counter()
        self.timer = QTimer()
        self.timer.setInterval(HEARTBEAT_MS)
        self.timer.timeout.connect(self._tick)
        self.timer.start()

    def _tick(self) -> None:
        now = time.perf_counter()
        gap = (now - self._last) * 1000
        self._last = now
        if gap > self.gaps.get(self.phase, 0.0):
            self.gaps[self.phase] = gap

    def enter(self, phase: str) -> None:
        self._tick()
        self.phase = phase
        self._last = time.perf_counter()


async def _spin_until(done: Any, timeout: float) -> bool:
    """Let the (qasync) event loop run until ``done()`` or ``timeout`` seconds."""
    end = time.perf_counter() + timeout
    while not done():
        if time.perf_counter() > end:
            return False
        await asyncio.sleep(0.002)
    return True


async def _scroll_through(view: Any, beat: Heartbeat, enough: Any = None) -> int:
    """Scroll ``view`` a page at a time to the bottom (or until ``enough()``)."""
    bar = view.verticalScrollBar()
    page = max(1, view.viewport().height())
    beat.enter("scroll")
    steps = 0
    while True:
        target = min(bar.maximum(), bar.value() + page)
        bar.setValue(target)
        steps += 1
        await asyncio.sleep(SCROLL_EVERY_MS / 1000)
        if bar.value() >= bar.maximum():
            break
        if enough is not None and enough():
            break
    beat.enter("idle")
    return steps


def run_ours(folder: Path, cache: Path) -> dict[str, Any]:
    os.environ["LORA_STUDIO_HOME"] = str(cache / "home")
    os.environ["LORA_STUDIO_CACHE"] = str(cache / "cache")
    import qasync
    from PySide6.QtWidgets import QApplication

    import lora_studio.gui  # noqa: F401 - Qt compatibility guards
    from lora_studio.core.config import LoraConfig
    from lora_studio.gui.controller import StudioController
    from lora_studio.gui.dataset_browser import BadgeDelegate
    from lora_studio.gui.main_window import MainWindow
    from lora_studio.gui.settings import open_settings

    app = QApplication.instance() or QApplication([])
    loop = qasync.QEventLoop(app)
    asyncio.set_event_loop(loop)
    painted: set[Path] = set()
    first_at: list[float] = []
    started = [0.0]
    real_paint = BadgeDelegate.paint

    def watching_paint(self: Any, painter: Any, option: Any, index: Any) -> None:
        real_paint(self, painter, option, index)
        listing = window.browser.listing
        if index.model() is listing:
            model = listing  # the folder's first files, shown while it is indexed
            if not listed:
                return  # (the listing of the last open)
        else:
            model = window.dataset_model
            if not loaded:
                return  # the dataset shown before this open
        path = index.data(model_role_path)
        if path is not None and model.has_thumbnail(path) and path not in painted:
            painted.add(path)
            if len(painted) == FIRST:
                first_at.append(time.perf_counter() - started[0])

    from lora_studio.gui.dataset_model import Role

    model_role_path = Role.PATH
    BadgeDelegate.paint = watching_paint  # type: ignore[method-assign]
    controller = StudioController(
        config=LoraConfig.fast_preset(),
        output_dir=cache / "out",
        base_model="builtin:tiny-sd15",
        loop=loop,
    )
    window = MainWindow(controller, open_settings(cache / "settings.ini"), confirm_close=False)
    window.resize(*WINDOW)
    window.top_splitter.setSizes([1500, 450, 450])
    window.main_splitter.setSizes([1300, 100])
    window.show()
    beat = Heartbeat()
    results: dict[str, Any] = {}
    loaded: list[float] = []
    listed: list[float] = []
    controller.dataset_loaded.connect(lambda _ds: loaded.append(time.perf_counter() - started[0]))
    controller.dataset_preview.connect(lambda _p: listed.append(time.perf_counter() - started[0]))

    async def open_once(label: str) -> None:
        painted.clear()
        first_at.clear()
        loaded.clear()
        listed.clear()
        beat.enter(f"open {label}")
        started[0] = time.perf_counter()
        controller.open_dataset(folder)
        ok = await _spin_until(lambda: bool(first_at), 300)
        await _spin_until(lambda: bool(loaded), 300)
        results[f"{label}_index_s"] = loaded[0] if loaded else None
        results[f"{label}_first_s"] = first_at[0] if ok else None
        beat.enter("idle")
        results[f"{label}_open_stall_ms"] = beat.gaps.get(f"open {label}")

    async def scenario() -> None:
        detected: list[int] = []
        controller.devices_detected.connect(lambda *_: detected.append(1))
        controller.start()
        # The start-up's GPU check imports torch on a worker thread (seconds of GIL):
        # measured apart from the open, as a user opens a folder after the window is up.
        await _spin_until(lambda: bool(detected), 120)
        await asyncio.sleep(1)  # the window's first layout and paint
        await open_once("cold")
        view = window.browser.view
        model = window.dataset_model
        results["visible"] = len(painted)
        rows = results["rows"] = model.rowCount()
        results["scroll_steps"] = await _scroll_through(view, beat)
        results["scroll_stall_ms"] = beat.gaps.get("scroll")
        # Wait for the last page's thumbnails, then measure memory.
        last = [model.item(r).path for r in range(max(0, rows - 20), rows)]
        await _spin_until(lambda: all(model.has_thumbnail(p) for p in last), 120)
        results["rss_mb"] = peak_rss_mb()
        results["thumbnail_cache_files"] = sum(1 for _ in (cache / "cache").rglob("*.png"))
        view.verticalScrollBar().setValue(0)
        await open_once("warm")
        results["rss_after_second_open_mb"] = peak_rss_mb()

    with loop:  # as the app ends (lora_studio.gui.app.run_gui): no thread left running
        loop.run_until_complete(scenario())
        controller.shutdown(timeout=10)
        pending = [task for task in asyncio.all_tasks(loop) if not task.done()]
        if pending:  # let cancelled tasks finish their clean-up
            loop.run_until_complete(asyncio.wait(pending, timeout=5))
    return results


def run_naive(folder: Path, limit_rows: int) -> dict[str, Any]:
    import qasync
    from PIL import Image
    from PySide6.QtCore import QAbstractListModel, QModelIndex, QSize, Qt
    from PySide6.QtGui import QIcon, QImage, QPixmap
    from PySide6.QtWidgets import QApplication, QListView, QStyledItemDelegate

    app = QApplication.instance() or QApplication([])
    loop = qasync.QEventLoop(app)
    asyncio.set_event_loop(loop)

    class NaiveModel(QAbstractListModel):
        """taggui's way: full decode on the GUI thread when painted, every icon kept."""

        def __init__(self) -> None:
            super().__init__()
            self.rows: list[tuple[Path, str, tuple[int, int]]] = []
            self.icons: dict[int, QIcon] = {}

        def load(self, root: Path) -> None:
            self.beginResetModel()
            rows = []
            for path in sorted(root.iterdir()):
                if path.suffix.lower() != ".jpg":
                    continue
                with Image.open(path) as img:  # the header: the size
                    size = img.size
                caption_file = path.with_suffix(".txt")
                caption = caption_file.read_text("utf-8") if caption_file.exists() else ""
                rows.append((path, caption, size))
            self.rows = rows
            self.endResetModel()

        def rowCount(self, parent: Any = QModelIndex()) -> int:  # noqa: B008, N802
            return len(self.rows)

        def data(self, index: Any, role: int = Qt.ItemDataRole.DisplayRole) -> Any:
            row = index.row()
            if role == Qt.ItemDataRole.DisplayRole:
                return self.rows[row][0].name
            if role == Qt.ItemDataRole.DecorationRole:
                icon = self.icons.get(row)
                if icon is None:
                    image = QImage(str(self.rows[row][0]))
                    scaled = image.scaled(
                        128,
                        128,
                        Qt.AspectRatioMode.KeepAspectRatio,
                        Qt.TransformationMode.SmoothTransformation,
                    )
                    icon = self.icons[row] = QIcon(QPixmap.fromImage(scaled))
                return icon
            return None

    painted: set[int] = set()
    first_at: list[float] = []
    started = [0.0]

    class WatchingDelegate(QStyledItemDelegate):
        def paint(self, painter: Any, option: Any, index: Any) -> None:
            super().paint(painter, option, index)
            if index.row() not in painted:
                painted.add(index.row())
                if len(painted) == FIRST:
                    first_at.append(time.perf_counter() - started[0])

    model = NaiveModel()
    view = QListView()
    view.setViewMode(QListView.ViewMode.IconMode)
    view.setIconSize(QSize(116, 116))
    view.setGridSize(QSize(138, 150))
    view.setUniformItemSizes(True)
    view.setResizeMode(QListView.ResizeMode.Adjust)
    view.setItemDelegate(WatchingDelegate(view))
    view.setModel(model)
    # The same grid area as ours (the browser's share of the window).
    view.resize(1480, 1150)
    view.show()
    beat = Heartbeat()
    results: dict[str, Any] = {}

    async def scenario() -> None:
        beat.enter("open")
        started[0] = time.perf_counter()
        model.load(folder)
        results["index_s"] = time.perf_counter() - started[0]
        await _spin_until(lambda: bool(first_at), 600)
        results["first_s"] = first_at[0] if first_at else None
        beat.enter("idle")
        results["open_stall_ms"] = beat.gaps.get("open")
        results["visible"] = len(painted)
        results["rss_before_mb"] = peak_rss_mb()
        results["icons_before"] = len(model.icons)
        scroll_started = time.perf_counter()
        results["scroll_steps"] = await _scroll_through(
            view, beat, lambda: len(model.icons) >= limit_rows
        )
        results["scroll_s"] = time.perf_counter() - scroll_started
        results["scroll_stall_ms"] = beat.gaps.get("scroll")

    loop.run_until_complete(scenario())
    rss_before = results.pop("rss_before_mb")
    icons_before = results.pop("icons_before")
    results["rows_scrolled"] = len(model.icons)
    results["rss_mb"] = peak_rss_mb()
    per_image = (results["rss_mb"] - rss_before) / max(1, len(model.icons) - icons_before)
    results["rss_per_image_kb"] = per_image * 1024
    results["rss_extrapolated_mb"] = results["rss_mb"] + per_image * (
        len(model.rows) - len(model.icons)
    )
    return results


def _child(argv: list[str]) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, __file__, *argv], capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        sys.stderr.write(done.stderr)
        raise SystemExit(f"{argv[0]} failed with exit code {done.returncode}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _fmt(value: float | None, unit: str, digits: int = 2) -> str:
    return "n/a" if value is None else f"{value:.{digits}f} {unit}"


def _ratio(ours: float | None, naive: float | None) -> str:
    if not ours or naive is None:
        return "n/a"
    return f"{naive / ours:.1f}x"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=10_000)
    parser.add_argument(
        "--baseline-images", type=int, default=300, help="rows the naive side scrolls"
    )
    parser.add_argument("--folder", type=Path, help="use (or generate) this folder")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--report", type=Path, help="print the table of a saved --json run")
    parser.add_argument("--side", choices=["ours", "naive"], help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

    if args.side:
        # Each side ends with os._exit: the window's background work (validation of
        # 10,000 images takes minutes) is not waited for, and Qt's teardown is skipped.
        tmp = Path(tempfile.mkdtemp(prefix="bench-browser-"))
        if args.side == "ours":
            result = run_ours(args.folder, tmp)
        else:
            result = run_naive(args.folder, args.baseline_images)
        print(json.dumps(result), flush=True)
        shutil.rmtree(tmp, ignore_errors=True)
        os._exit(0)

    if args.report:
        print_report(json.loads(args.report.read_text()))
        return 0
    folder = ensure_folder(args.images, args.folder)
    ours = _child(["--side", "ours", "--folder", str(folder)])
    naive = _child(
        ["--side", "naive", "--folder", str(folder), "--baseline-images", str(args.baseline_images)]
    )
    report = {"images": args.images, "folder": str(folder), "ours": ours, "naive": naive}
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print_report(report)
    return 0


def print_report(report: dict[str, Any]) -> None:
    """The table of a run (also ``--report FILE`` for a saved ``--json`` output)."""
    ours, naive, n = report["ours"], report["naive"], report["images"]
    print(f"\nOpening {n} JPEGs (mixed sizes up to 4000x3000), {os.cpu_count()} CPU cores")
    print(f"{'':34} {'ours':>12} {'naive':>12} {'naive/ours':>11} {'target':>10}")
    rows = [
        ("index (warm file list)", ours["cold_index_s"], naive["index_s"], "s", "< 0.5 s"),
        ("first 50 thumbnails, cold cache", ours["cold_first_s"], naive["first_s"], "s", "< 0.3 s"),
        ("first 50 thumbnails, second open", ours["warm_first_s"], None, "s", "< 0.3 s"),
        ("index, second open", ours["warm_index_s"], None, "s", "< 0.5 s"),
        ("longest GUI stall, open", ours["cold_open_stall_ms"], naive["open_stall_ms"], "ms", ""),
        (
            "longest GUI stall, scrolling",
            ours["scroll_stall_ms"],
            naive["scroll_stall_ms"],
            "ms",
            "< 50 ms",
        ),
        (
            "peak RSS after scrolling all",
            ours["rss_mb"],
            naive["rss_extrapolated_mb"],
            "MB",
            "< 600 MB",
        ),
    ]
    for label, a, b, unit, target in rows:
        digits = 0 if unit in ("ms", "MB") else 3
        print(
            f"{label:34} {_fmt(a, unit, digits):>12} {_fmt(b, unit, digits):>12} "
            f"{_ratio(a, b):>11} {target:>10}"
        )
    decoded = max(1, naive["rows_scrolled"] - naive["visible"])
    all_s = naive["scroll_s"] / decoded * n
    print(
        f"\nnaive: scrolled {naive['rows_scrolled']} of {n} rows in {naive['scroll_s']:.0f} s "
        f"(all of them: ~{all_s / 60:.0f} min of GUI-thread decoding); its RSS is "
        f"{naive['rss_mb']:.0f} MB measured + {naive['rss_per_image_kb']:.0f} KB per further "
        f"image, extrapolated to {n}."
    )
    print(
        f"ours: {ours['scroll_steps']} page steps of {SCROLL_EVERY_MS} ms, "
        f"{ours['thumbnail_cache_files']} thumbnails in the disk cache after scrolling; "
        f"second open: index {_fmt(ours['warm_index_s'], 's', 3)}, first 50 thumbnails "
        f"{_fmt(ours['warm_first_s'], 's', 3)} (from the disk cache)."
    )


if __name__ == "__main__":
    sys.exit(main())
