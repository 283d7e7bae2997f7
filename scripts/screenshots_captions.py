"""Pictures of the caption editor: the grid with the tag list and a caption over the token
limit (``caption-editor.png``), the editor open on it with its token counter
(``caption-tokens.png``), a find-and-replace preview (``caption-batch-edit.png``) and the
zoom popup (``caption-zoom.png``).

    python scripts/screenshots_captions.py docs/screenshots

Offscreen, on a temporary copy of the sample dataset (nothing in the user's folders is
touched); everything is the app's real window and code path.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import sys
import tempfile
from pathlib import Path

LONG_CAPTION = (
    "papercut style, desert sand dunes, saguaro cacti, distant mesas, bright sun, clear sky, "
    "layered paper texture, warm orange and ochre palette, long soft shadows across the "
    "dunes, tiny silhouetted camel caravan on the horizon, heat haze, a few wispy clouds, "
    "handmade craft look, subtle grain, symmetrical composition, wide panoramic view, "
    "golden hour light, deep blue gradient at the top of the sky"
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path)
    parser.add_argument("--timeout", type=float, default=120.0)
    args = parser.parse_args(argv)
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    work = Path(tempfile.mkdtemp(prefix="lora-studio-shots-"))
    os.environ["LORA_STUDIO_HOME"] = str(work)
    try:
        return _shoot(args.folder, work, args.timeout)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _shoot(folder: Path, work: Path, timeout: float) -> int:
    import qasync
    from PySide6.QtCore import Qt
    from PySide6.QtTest import QTest
    from PySide6.QtWidgets import QApplication

    import lora_studio.gui  # noqa: F401 - qt_compat first
    from lora_studio.core.paths import default_output_dir, sample_dataset_dir
    from lora_studio.core.tags import BatchKind
    from lora_studio.gui.async_signals import signal_future, wait_until
    from lora_studio.gui.controller import StudioController, demo_config
    from lora_studio.gui.dataset_model import Column
    from lora_studio.gui.main_window import MainWindow
    from lora_studio.gui.settings import open_settings

    app = QApplication.instance() or QApplication(["lora-studio"])
    assert isinstance(app, QApplication)
    app.setStyle("Fusion")
    loop = qasync.QEventLoop(app)
    asyncio.set_event_loop(loop)
    dataset = work / "papercut"
    shutil.copytree(sample_dataset_dir(), dataset, ignore=shutil.ignore_patterns("README.md"))
    (dataset / "papercut_05.txt").write_text(LONG_CAPTION + "\n", encoding="utf-8")
    folder.mkdir(parents=True, exist_ok=True)

    controller = StudioController(config=demo_config(), output_dir=default_output_dir(), loop=loop)
    window = MainWindow(controller, open_settings(work / "settings.ini"), confirm_close=False)
    window.resize(1500, 900)
    window.show()
    grid = window.caption_grid
    model = window.dataset_model

    async def scenario() -> None:
        loaded = signal_future(controller.dataset_loaded)
        controller.open_dataset(dataset)
        await loaded
        await asyncio.sleep(1.5)  # thumbnails (decoded for the visible rows)
        # The caption grid alone, wide, with the tag list beside it.
        window.top_splitter.setSizes([260, 900, 340])
        grid.tags_button.setChecked(True)
        grid.recount_tags()
        grid.splitter.setSizes([660, 230])
        row = model.row_of(dataset / "papercut_05.png")
        assert row is not None
        grid.table.selectRow(grid.proxy_index(model.index(row, Column.CAPTION)).row())
        await asyncio.sleep(0.3)
        grid.grab().save(str(folder / "caption-editor.png"))

        grid.edit_caption(row)
        await asyncio.sleep(0.2)
        editor = grid.delegate.editor
        assert editor is not None
        editor.moveCursor(editor.textCursor().MoveOperation.End)
        QTest.keyClicks(editor, ", pa")
        await asyncio.sleep(0.3)
        shot = grid.grab()
        popup = grid.completer.popup()
        if popup.isVisible():  # a popup is its own window: draw it onto the grid's picture
            from PySide6.QtGui import QPainter

            painter = QPainter(shot)
            painter.drawPixmap(
                grid.mapFromGlobal(popup.mapToGlobal(popup.rect().topLeft())), popup.grab()
            )
            painter.end()
        shot.save(str(folder / "caption-tokens.png"))
        popup.hide()
        QTest.keyClick(editor, Qt.Key.Key_Escape)

        grid.table.clearSelection()
        dialog = grid.open_batch_dialog(BatchKind.REPLACE)
        dialog.regex_box.setChecked(True)
        dialog.find_edit.setText(r"(pine|palm) (trees|forest)")
        dialog.replace_edit.setText(r"\2 of \1")
        dialog.update_preview()
        dialog.resize(720, 560)
        await asyncio.sleep(0.2)
        dialog.grab().save(str(folder / "caption-batch-edit.png"))
        dialog.find_edit.setText(r"(pine|palm")
        dialog.update_preview()
        await asyncio.sleep(0.1)
        dialog.grab().save(str(folder / "caption-batch-edit-error.png"))
        dialog.reject()

        zoom = grid.zoom_row(model.row_of(dataset / "papercut_04.png") or 0)
        zoom.resize(720, 560)
        await wait_until(lambda: zoom.image is not None)
        await asyncio.sleep(0.2)
        zoom.grab().save(str(folder / "caption-zoom.png"))
        zoom.close()
        await controller.flush_captions()

    try:
        loop.run_until_complete(asyncio.wait_for(scenario(), timeout))
    finally:
        window.close()
        controller.shutdown()
    for name in ("editor", "tokens", "batch-edit", "batch-edit-error", "zoom"):
        print(folder / f"caption-{name}.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
