"""Make the README's gallery: one picture of each panel, with real content.

    python scripts/screenshots.py docs/screenshots

Offscreen, on a temporary copy of the sample dataset, in one window (1600x1000, Fusion):

- ``browser.png``: the dataset browser with its thumbnails;
- ``caption-grid.png``: the caption grid with proposals from a captioning run (the real
  OpenAI-compatible provider against the loopback stand-in of
  ``scripts/screenshot_captioning.py``);
- ``preset-form.png``: the preset form with its live estimate;
- ``job-monitor.png``: the job monitor mid-run: a real training run of the built-in tiny
  model (256 px, two sample prompts every 15 steps, a cosine schedule), its loss and learning-rate curves,
  samples and log;
- ``jobs-list.png``: the jobs list, with that local run and a Replicate run from the
  history (one finished run recorded in the job history before the window opens: it
  stands for a run made earlier, as the real queue records them);
- ``main-window.png``: the whole window at that moment;
- ``settings.png``: the settings dialog (when the app has one).

Nothing in the user's folders is touched: ``LORA_STUDIO_HOME`` points at a temporary
folder (set ``LORA_STUDIO_CACHE`` to reuse an already built tiny model). ``--only`` makes
some of the pictures (comma-separated names without ``.png``).
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
from typing import Any

#: The run (the demo settings: Fast preset, 256 px) is stretched so that the pictures are
#: taken well inside it, with samples at steps 15 and 30.
RUN_STEPS = 100
MID_RUN_STEP = 42
SAMPLE_EVERY = 15

NAMES = (
    "browser",
    "caption-grid",
    "preset-form",
    "job-monitor",
    "jobs-list",
    "main-window",
    "settings",
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path, help="where the PNG files go")
    parser.add_argument("--width", type=int, default=1600)
    parser.add_argument("--height", type=int, default=1000)
    parser.add_argument("--only", default="", help="comma-separated names (default: all)")
    parser.add_argument("--timeout", type=float, default=420.0, help="seconds to wait in all")
    args = parser.parse_args(argv)
    wanted = set(args.only.split(",")) if args.only else set(NAMES)
    unknown = wanted - set(NAMES)
    if unknown:
        parser.error(f"unknown picture(s): {', '.join(sorted(unknown))}")

    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    os.environ.pop("OPENAI_API_KEY", None)
    work = Path(tempfile.mkdtemp(prefix="lora-studio-screenshots-"))
    os.environ["LORA_STUDIO_HOME"] = str(work)
    try:
        return _shoot(args, wanted, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _record_remote_job(dataset: Path) -> None:
    """A Replicate run in the job history, as the queue records a finished one."""
    import math

    from lora_studio.core.config import LoraConfig
    from lora_studio.core.jobs import BackendType, Job, JobSpec, JobStatus, JobStore
    from lora_studio.core.paths import default_output_dir, job_db_path

    config = LoraConfig.sdxl_preset().replace(name="papercut_sdxl", trigger_word="papercut style")
    out = default_output_dir()
    spec = JobSpec(
        dataset_dir=str(dataset),
        config=config.to_dict(),
        base_model="stability-ai/sdxl",
        output_dir=str(out),
        backend=BackendType.REPLICATE,
        backend_options={"hardware": "gpu-h100"},
    )
    started = time.time() - 3 * 3600
    job = Job(
        id=Job.new_id(),
        backend=BackendType.REPLICATE,
        name="papercut_sdxl",
        base_model=spec.base_model,
        output_dir=str(out),
        dataset_dir=str(dataset),
        status=JobStatus.SUCCEEDED,
        config=config.to_dict(),
        spec=spec,
        created_at=started - 40,
        started_at=started,
        finished_at=started + 1134,
        estimated_cost=1.21,
        cost=1.08,
        remote_id="ufawqhfynnddngldkgtslldrkq",
        output_path=str(out / "papercut_sdxl.safetensors"),
    )
    store = JobStore(job_db_path())
    try:
        store.save(job)
        store.record_losses(
            job.id,
            [
                (s, 0.09 + 0.06 * math.exp(-s / 300) + 0.015 * math.sin(s * 0.9))
                for s in range(1, 1001)
            ],
        )
        store.append_logs(job.id, ["Training on Replicate (gpu-h100)", "Downloaded the LoRA"])
    finally:
        store.close()


def _shoot(args: argparse.Namespace, wanted: set[str], work: Path) -> int:
    # Imported here, after LORA_STUDIO_HOME is set, so every path lands in ``work``.
    import qasync
    from PySide6.QtWidgets import QApplication, QWidget
    from screenshot import _thumbnails_shown
    from screenshot_captioning import _StandIn

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
    shutil.copytree(sample_dataset_dir(), dataset, ignore=shutil.ignore_patterns("README.md"))
    _record_remote_job(dataset)
    server = _StandIn(dataset)
    config = demo_config().replace(
        sample_prompts="[trigger], a fox in the snow\n[trigger], a lighthouse at night",
        sample_every_n_steps=SAMPLE_EVERY,
        sample_inference_steps=4,
        max_steps=RUN_STEPS,
        lr_scheduler="cosine",
        lr_warmup_steps=10,
    )
    controller = StudioController(config=config, output_dir=default_output_dir(), loop=loop)
    window = MainWindow(controller, open_settings(work / "settings.ini"), confirm_close=False)
    window.resize(args.width, args.height)
    window.show()
    args.folder.mkdir(parents=True, exist_ok=True)

    def save(name: str, widget: QWidget) -> None:
        if name not in wanted:
            return
        path = args.folder / f"{name}.png"
        if not widget.grab().save(str(path)):
            raise OSError(f"could not write {path}")
        print(f"wrote {path} ({widget.width()}x{widget.height()})")

    async def settle() -> None:
        await wait_until(lambda: _thumbnails_shown(window), 60, what="the thumbnails")
        await asyncio.sleep(0.3)  # let the views repaint once before grabbing

    async def caption_some() -> None:
        """Proposals for the images without a caption and a few more, left for review."""
        dialog = window.open_caption_dialog()
        assert dialog is not None
        dialog.set_provider("openai")
        dialog.url_edit.setText(server.url)
        dialog.model_edit.setText("llava-v1.6-mistral-7b")
        dialog.set_mode("overwrite")
        dialog.retries_spin.setValue(0)
        finished = signal_future(window.captions.run_finished)
        dialog.start_button.click()
        (report,) = await finished
        await window.captions.wait_idle()
        print(f"captioning: {report.state}, {len(report.captioned)} proposed")
        dialog.close()

    async def scenario() -> None:
        controller.start()  # the job queue: the history, with the Replicate run
        window.start_session(dataset)
        await wait_until(lambda: controller.dataset is not None, 60, what="the dataset")
        await wait_until(lambda: window.preset_form.train_button.isEnabled(), 30, what="Train")
        if "caption-grid" in wanted:
            await caption_some()
        window.select_image(2)
        # Each panel is shown with room, as a user who works in it would size it.
        window.main_splitter.setSizes([args.height * 78 // 100, args.height * 22 // 100])
        for name, sizes, panel in (
            ("browser", [560, 600, 440], window.browser),
            ("caption-grid", [250, 900, 450], window.caption_grid),
            ("preset-form", [300, 700, 600], window.preset_form),
        ):
            window.top_splitter.setSizes(sizes)
            await settle()
            save(name, panel)
        window.top_splitter.setSizes([340, 700, 560])
        if "settings" in wanted and hasattr(window, "open_settings_dialog"):
            dialog = window.open_settings_dialog()
            await asyncio.sleep(0.5)
            save("settings", dialog)
            dialog.close()

        if wanted & {"job-monitor", "jobs-list", "main-window"}:
            started = time.monotonic()
            monitor = window.job_monitor
            gallery = monitor.samples
            # Mid-run: two rounds of samples drawn, the curves well along, ETA ticking.
            window.preset_form.train_button.click()
            await wait_until(
                lambda: (
                    controller.last_progress is not None
                    and controller.last_progress.step >= MID_RUN_STEP
                ),
                args.timeout,
                0.005,
                what=f"step {MID_RUN_STEP}",
            )
            await wait_until(lambda: len(gallery.paths()) >= 4, 60, 0.005, what="the samples")
            await wait_until(
                lambda: all(gallery.has_thumbnail(p) for p in gallery.paths()),
                60,
                0.005,
                what="the samples' thumbnails",
            )
            step = controller.last_progress.step  # type: ignore[union-attr]
            print(f"training: step {step} after {time.monotonic() - started:.1f} s")
            window.message_bar.hide()  # the captioning run's note, long read
            await settle()
            save("main-window", window)
            window.main_splitter.setSizes([args.height * 45 // 100, args.height * 55 // 100])
            await asyncio.sleep(0.3)
            save("job-monitor", monitor)
            save("jobs-list", monitor.jobs)
            if controller.is_training:
                controller.cancel_training()
            await wait_until(lambda: not controller.is_training, 120, what="the run to stop")

    try:
        loop.run_until_complete(asyncio.wait_for(scenario(), args.timeout))
    finally:
        window.captions.shutdown()
        controller.shutdown()
        window.thumbnails.shutdown()
        window.job_monitor.shutdown()
        server.stop()
        _tear_down(window, loop)
    return 0


def _tear_down(window: Any, loop: asyncio.AbstractEventLoop) -> None:
    """Free the window and the run's objects here, on the GUI thread, before the loop
    closes (left to the collector at exit, Qt objects may die in a worker thread)."""
    import gc

    import shiboken6
    from PySide6.QtCore import QEvent
    from PySide6.QtWidgets import QApplication

    window.close()
    QApplication.sendPostedEvents(None, QEvent.Type.DeferredDelete)
    if shiboken6.isValid(window):
        shiboken6.delete(window)
    gc.collect()
    loop.close()


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    sys.exit(main())
