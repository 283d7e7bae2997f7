"""The browser's thumbnail cells: each drawn from one model call (Role.CELL) exactly as the
style draws it role by role, and every cell the size of a full thumbnail, whatever the
folder's last image is."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest
from gui_helpers import open_validated, run, small_pngs
from PIL import Image
from PySide6.QtCore import QModelIndex, QPoint, QRect, QSize, Qt
from PySide6.QtGui import QColor, QImage, QPainter
from PySide6.QtWidgets import QApplication, QStyle, QStyledItemDelegate, QStyleOptionViewItem

from lora_studio.gui import artwork
from lora_studio.gui.async_signals import wait_until
from lora_studio.gui.dataset_browser import ICON
from lora_studio.gui.dataset_model import DatasetModel, Role
from lora_studio.gui.main_window import MainWindow

pytestmark = pytest.mark.usefixtures("built_tiny_model")


def _folder(root: Path) -> Path:
    """Three captioned images, one without a caption (a warning), one that cannot be
    decoded (an error) and, last by name, a tiny one."""
    root.mkdir()
    for path in small_pngs(root, 4, size=(300, 200))[:3]:
        path.with_suffix(".txt").write_text("a photo of a square", encoding="utf-8")
    (root / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot an image")
    (root / "broken.txt").write_text("broken", encoding="utf-8")
    Image.new("RGB", (24, 12), "red").save(root / "zz_tiny.png")
    (root / "zz_tiny.txt").write_text("tiny", encoding="utf-8")
    return root


def _open(qloop, window: MainWindow, folder: Path) -> None:
    open_validated(qloop, window, folder)
    model = window.dataset_model
    paths = [model.item(row).path for row in range(model.rowCount())]
    run(qloop, wait_until(lambda: all(map(model.has_thumbnail, paths)), 20, what="thumbnails"))


def _render(size: QSize, paint: Callable[[QPainter], None]) -> QImage:
    image = QImage(size, QImage.Format.Format_ARGB32_Premultiplied)
    image.fill(QColor("white"))
    painter = QPainter(image)
    paint(painter)
    painter.end()
    return image


def _role_by_role(
    delegate: QStyledItemDelegate,
    painter: QPainter,
    option: QStyleOptionViewItem,
    index: QModelIndex,
) -> None:
    """What the delegate drew before cells: Qt's own paint, asking each role, and the
    badge where Qt's option puts the thumbnail."""
    QStyledItemDelegate.paint(delegate, painter, option, index)
    severity = index.data(Role.SEVERITY)
    if severity:
        opt = QStyleOptionViewItem(option)
        delegate.initStyleOption(opt, index)
        style = opt.widget.style() if opt.widget is not None else QApplication.style()
        rect = style.subElementRect(QStyle.SubElement.SE_ItemViewItemDecoration, opt, opt.widget)
        artwork.draw_badge(painter, rect, severity)


def test_a_cell_looks_as_qt_draws_it_role_by_role(make_window, qloop, tmp_path: Path):
    window = make_window()
    _open(qloop, window, _folder(tmp_path / "set"))
    view = window.browser.view
    proxy = view.model()
    view.setCurrentIndex(proxy.index(1, 0))  # a selected cell too
    delegate = view.itemDelegate()
    severities = set()
    for row in range(proxy.rowCount()):
        index = proxy.index(row, 0)
        severities.add(index.data(Role.SEVERITY))
        option = QStyleOptionViewItem()
        view.initViewItemOption(option)
        size = view.visualRect(index).size()
        option.rect = QRect(QPoint(0, 0), size)
        if view.selectionModel().isSelected(index):
            option.state |= QStyle.StateFlag.State_Selected
        ours = _render(size, lambda p, o=option, i=index: delegate.paint(p, o, i))
        reference = _render(size, lambda p, o=option, i=index: _role_by_role(delegate, p, o, i))
        assert ours == reference, index.data()
    # The cells compared include a red name with an error badge and an amber warning.
    assert {"error", "warning", None} <= severities


def test_a_small_last_image_does_not_shrink_every_cell(make_window, qloop, tmp_path: Path):
    """The view sizes every cell like its last item; that is zz_tiny.png here."""
    window = make_window()
    _open(qloop, window, _folder(tmp_path / "set"))
    view = window.browser.view
    proxy = view.model()
    assert proxy.index(proxy.rowCount() - 1, 0).data() == "zz_tiny.png"
    sizes = {view.visualRect(proxy.index(row, 0)).size().toTuple() for row in range(5)}
    ((width, height),) = sizes
    assert width >= ICON
    assert height >= ICON + view.fontMetrics().height()


def test_a_page_of_cells_asks_the_model_once_per_cell(
    make_window, qloop, tmp_path: Path, monkeypatch
):
    asked: Counter[int] = Counter()
    original = DatasetModel.data

    def counting(self, index, role=Qt.ItemDataRole.DisplayRole):
        asked[role] += 1
        return original(self, index, role)

    monkeypatch.setattr(DatasetModel, "data", counting)
    window = make_window()
    _open(qloop, window, _folder(tmp_path / "set"))
    view = window.browser.view
    proxy = view.model()
    shown = view.viewport().rect()
    visible = [
        row
        for row in range(proxy.rowCount())
        if shown.intersects(view.visualRect(proxy.index(row, 0)))
    ]
    assert len(visible) >= 2
    asked.clear()
    view.viewport().repaint()
    assert asked[Role.CELL] == len(visible)  # every visible cell was painted...
    assert sum(asked.values()) == asked[Role.CELL]  # ...from one call each
