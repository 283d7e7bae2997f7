"""Make the README screenshot: the main window after a real training run.

    python scripts/screenshot.py docs/screenshot.png

Opens the window offscreen at 1440x900 on a temporary copy of the sample dataset, trains
the default demo config on the built-in tiny model (256 px, a few seconds on a CPU),
selects an image and saves the window as a PNG. Nothing in the user's folders is touched:
``LORA_STUDIO_HOME`` points at a temporary folder (set ``LORA_STUDIO_CACHE`` to reuse an
already built tiny model).

``--state running`` grabs the window mid-run instead, ``--state start`` right after the
dataset opened (useful when working on the layout). ``--samples`` gives the run two sample
prompts (the job monitor then shows their thumbnails); ``--advanced network,samples``
opens the advanced settings with those sections and scrolls the form down to them.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("output", type=Path, help="PNG file to write")
    parser.add_argument("--width", type=int, default=1440)
    parser.add_argument("--height", type=int, default=900)
    parser.add_argument("--state", choices=["finished", "running", "start"], default="finished")
    parser.add_argument("--select", type=int, default=2, help="row of the image to select")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds to wait in all")
    parser.add_argument("--samples", action="store_true", help="draw sample images in the run")
    parser.add_argument(
        "--advanced", default="", help="open the advanced settings: comma-separated sections"
    )
    args = parser.parse_args(argv)

    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    work = Path(tempfile.mkdtemp(prefix="lora-studio-screenshot-"))
    os.environ["LORA_STUDIO_HOME"] = str(work)
    try:
        return _shoot(args, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _shoot(args: argparse.Namespace, work: Path) -> int:
    # Imported here, after LORA_STUDIO_HOME is set, so every path lands in ``work``.
    import qasync
    from PySide6.QtWidgets import QApplication

    from lora_studio.core.paths import default_output_dir, sample_dataset_dir
    from lora_studio.gui import artwork
    from lora_studio.gui.async_signals import signal_future, wait_until
    from lora_studio.gui.controller import StudioController, demo_config
    from lora_studio.gui.main_window import MainWindow
    from lora_studio.gui.settings import open_settings

    app = QApplication.instance() or QApplication(["lora-studio"])
    assert isinstance(app, QApplication)
    app.setApplicationName("LoRA Studio")
    app.setWindowIcon(artwork.app_icon())
    app.setStyle("Fusion")
    loop = qasync.QEventLoop(app)
    asyncio.set_event_loop(loop)

    dataset = work / "sample_dataset"
    shutil.copytree(sample_dataset_dir(), dataset)
    config = demo_config()
    if args.samples:
        config = config.replace(
            sample_prompts="[trigger], a fox in the snow\n[trigger], a lighthouse at night",
            sample_every_n_steps=20,
            sample_inference_steps=4,
        )
    controller = StudioController(config=config, output_dir=default_output_dir(), loop=loop)
    window = MainWindow(controller, open_settings(work / "settings.ini"), confirm_close=False)
    window.resize(args.width, args.height)
    if args.advanced:
        window.preset_form.advanced.set_expanded_sections(["advanced", *args.advanced.split(",")])
    window.show()

    async def scenario() -> float:
        window.start_session(dataset)
        await wait_until(lambda: controller.dataset is not None, 60, what="the dataset")
        await wait_until(lambda: _thumbnails_shown(window), 60, what="the thumbnails")
        await wait_until(lambda: window.preset_form.train_button.isEnabled(), 30, what="Train")
        # Show the caption editing at work: one edited, saved caption.
        from lora_studio.gui.dataset_model import Column

        index = window.dataset_model.index(args.select, Column.CAPTION)
        saved = signal_future(controller.caption_saved)
        window.dataset_model.setData(index, f"{index.data()}, paper texture")
        await saved
        if args.state == "start":
            return 0.0
        started = time.monotonic()
        if args.state == "running":
            running = signal_future(controller.job_progress, lambda p: p.step >= 20)
            window.preset_form.train_button.click()
            await running
        else:
            finished = signal_future(controller.job_finished)
            window.preset_form.train_button.click()
            (progress,) = await finished
            print(f"training: {progress.status.label} in {time.monotonic() - started:.1f} s")
            print(f"output: {progress.output_path}")
        window.select_image(args.select)
        window.caption_grid.table.setFocus()
        await wait_until(lambda: _thumbnails_shown(window), 60, what="the thumbnails")
        gallery = window.job_monitor.samples
        await wait_until(
            lambda: all(gallery.has_thumbnail(p) for p in gallery.paths()), 60, what="samples"
        )

        await asyncio.sleep(0.3)  # let the views repaint once before grabbing
        return time.monotonic() - started

    try:
        loop.run_until_complete(asyncio.wait_for(scenario(), args.timeout))
        if args.advanced:
            form = window.preset_form
            form.scroll.verticalScrollBar().setValue(form.advanced.y() - 8)
            loop.run_until_complete(asyncio.sleep(0.2))  # repaint after scrolling
        args.output.parent.mkdir(parents=True, exist_ok=True)
        if not window.grab().save(str(args.output)):
            print(f"screenshot: could not write {args.output}", file=sys.stderr)
            return 1
        print(f"wrote {args.output} ({args.width}x{args.height})")
    finally:
        if controller.is_training:
            controller.cancel_training()
        window.confirm_close = False
        controller.shutdown()
        window.thumbnails.shutdown()
        loop.close()
    return 0


def _thumbnails_shown(window: object) -> bool:
    """Every row visible in the browser or the caption grid has its thumbnail."""
    from lora_studio.gui.main_window import MainWindow

    assert isinstance(window, MainWindow)
    model = window.dataset_model
    grid = window.caption_grid
    for row in range(model.rowCount()):
        path = model.item(row).path
        index = model.index(row, 0)
        views = [
            (window.browser.view, index),
            (grid.table, grid.proxy_index(index)),
        ]
        for view, view_index in views:
            rect = view.visualRect(view_index)
            visible = rect.isValid() and rect.intersects(view.viewport().rect())
            if visible and not model.has_thumbnail(path):
                return False
    return True


if __name__ == "__main__":
    sys.exit(main())
