"""Make the captioning screenshots: the "Caption images" dialog after a run, and the
caption grid with the proposals it made, ready for review.

    python scripts/screenshot_captioning.py docs/screenshot-captioning.png \
        [--dialog docs/screenshot-caption-dialog.png]

Offscreen, on a temporary copy of the sample dataset. The captioner is the real
OpenAI-compatible provider talking to a small stand-in server on loopback (this script
starts it) that answers like a vision LLM would, with hand-written captions for the
sample images, and with a server error for one of them so the failure list shows.
Everything else is the app's real code path: the run, the proposals in
``dataset.json``, the review in the grid (one caption is edited after it was proposed,
which makes that proposal a conflict, and one proposal is accepted).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import json
import os
import shutil
import sys
import tempfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

#: What the stand-in "vision LLM" says about each sample image.
CAPTIONS = {
    "papercut_01": "layered green hills at dawn, orange sun, pine trees, soft gradient sky",
    "papercut_02": "snowy mountain peaks, alpine meadow, pine forest, blue sky, midday",
    "papercut_03": "calm lake at dusk, sun reflected in water, purple hills, reeds, pink sky",
    "papercut_04": "lighthouse on a rocky cliff at night, light beam, crescent moon, ocean waves",
    "papercut_05": "desert dunes, saguaro cacti, distant mesas, bright sun, clear sky",
    "papercut_06": "autumn forest on rolling hills, red and orange trees, golden sky, birds",
    "papercut_07": None,  # the server fails on this one
    "papercut_08": "tropical island, palm trees, turquoise sea, white sailboat, sandy beach",
    "papercut_09": "snowy village at dusk, glowing windows, snow-covered hills, falling snow",
    "papercut_10": "farm fields, red barn, round trees, rolling hills, summer sky",
    "papercut_11": "paper cut-out coastline, layered cliffs, seagulls, cloudy sky",
    "papercut_12": "paper cut-out night city skyline, full moon, stars, dark blue sky",
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("output", type=Path, help="PNG of the window to write")
    parser.add_argument("--dialog", type=Path, help="also write the dialog as this PNG")
    parser.add_argument("--width", type=int, default=1440)
    parser.add_argument("--height", type=int, default=900)
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds to wait in all")
    args = parser.parse_args(argv)

    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    work = Path(tempfile.mkdtemp(prefix="lora-studio-screenshot-"))
    os.environ["LORA_STUDIO_HOME"] = str(work)
    for name in ("OPENAI_API_KEY",):
        os.environ.pop(name, None)
    try:
        return _shoot(args, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)


class _StandIn:
    """An OpenAI-compatible chat server on loopback that knows the sample images."""

    def __init__(self, dataset: Path) -> None:
        from PIL import Image

        self.means: dict[str, tuple[float, ...]] = {}
        for path in sorted(dataset.glob("*.png")):
            with Image.open(path) as image:
                self.means[path.stem] = _mean(image)
        stand_in = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                status, reply = stand_in.answer(json.loads(body))
                data = json.dumps(reply).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        host, port = self.httpd.server_address[:2]
        return f"http://{host}:{port}/v1"

    def answer(self, payload: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        from PIL import Image

        parts = payload["messages"][-1]["content"]
        url = next(p["image_url"]["url"] for p in parts if p["type"] == "image_url")
        with Image.open(io.BytesIO(base64.b64decode(url.partition(",")[2]))) as image:
            mean = _mean(image)
        name = min(
            self.means,
            key=lambda n: sum((a - b) ** 2 for a, b in zip(self.means[n], mean, strict=True)),
        )
        text = CAPTIONS.get(name)
        if text is None:
            return 500, {"error": {"message": "CUDA out of memory", "type": "server_error"}}
        message = {"role": "assistant", "content": text}
        return 200, {"choices": [{"index": 0, "message": message, "finish_reason": "stop"}]}

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def _mean(image: Any) -> tuple[float, ...]:
    small = image.convert("RGB").resize((4, 4))
    return tuple(float(v) for v in small.tobytes())


def _shoot(args: argparse.Namespace, work: Path) -> int:
    import qasync
    from PySide6.QtWidgets import QApplication

    from lora_studio.core.paths import default_output_dir, sample_dataset_dir
    from lora_studio.gui import artwork
    from lora_studio.gui.async_signals import signal_future, wait_until
    from lora_studio.gui.controller import StudioController, demo_config
    from lora_studio.gui.dataset_model import Column
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
    server = _StandIn(dataset)
    controller = StudioController(config=demo_config(), output_dir=default_output_dir(), loop=loop)
    window = MainWindow(controller, open_settings(work / "settings.ini"), confirm_close=False)
    window.resize(args.width, args.height)
    window.show()

    async def scenario() -> None:
        window.start_session(dataset)
        await wait_until(lambda: controller.dataset is not None, 60, what="the dataset")
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
        await asyncio.sleep(0.2)
        if args.dialog:
            args.dialog.parent.mkdir(parents=True, exist_ok=True)
            dialog.grab().save(str(args.dialog))
            print(f"wrote {args.dialog}")
        dialog.close()
        model = window.dataset_model
        # A caption edited after it was proposed: its proposal becomes a conflict.
        row = model.row_of(dataset / "papercut_03.png")
        saved = signal_future(controller.caption_saved)
        model.setData(model.index(row, Column.CAPTION), f"{model.index(row, 1).data()}, mirror")
        await saved
        # One accepted: its caption now says who made it (tooltip).
        resolved = signal_future(window.captions.proposals_resolved)
        window.captions.accept([dataset / "papercut_01.png"])
        await resolved
        window.select_image(model.row_of(dataset / "papercut_02.png") or 0)
        window.top_splitter.setSizes([230, 900, 310])
        await wait_until(lambda: _thumbnails_shown(window), 60, what="the thumbnails")
        await asyncio.sleep(0.3)

    try:
        loop.run_until_complete(asyncio.wait_for(scenario(), args.timeout))
        args.output.parent.mkdir(parents=True, exist_ok=True)
        if not window.grab().save(str(args.output)):
            print(f"screenshot: could not write {args.output}", file=sys.stderr)
            return 1
        print(f"wrote {args.output} ({args.width}x{args.height})")
    finally:
        window.captions.shutdown()
        controller.shutdown()
        window.thumbnails.shutdown()
        server.stop()
        loop.close()
    return 0


def _thumbnails_shown(window: Any) -> bool:
    model = window.dataset_model
    grid = window.caption_grid
    for row in range(model.rowCount()):
        index = grid.proxy_index(model.index(row, 0))
        rect = grid.table.visualRect(index)
        visible = rect.isValid() and rect.intersects(grid.table.viewport().rect())
        if visible and not model.has_thumbnail(model.item(row).path):
            return False
    return True


if __name__ == "__main__":
    sys.exit(main())
