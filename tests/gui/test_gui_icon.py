"""The window icon comes from the shipped PNG set, up to 1024 px for high-DPI screens."""

from __future__ import annotations

from PySide6.QtCore import QSize

from lora_studio.gui import artwork


def test_the_icon_has_every_size_up_to_1024(qapp) -> None:
    icon = artwork.app_icon()
    sizes = {size.width() for size in icon.availableSizes()}
    assert {16, 32, 48, 256, 512, 1024} <= sizes
    big = icon.pixmap(QSize(1024, 1024)).toImage()
    assert big.width() == 1024 and big.pixelColor(512, 512).alpha() == 255
