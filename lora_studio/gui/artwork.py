"""Pictures the app draws itself: the window icon and thumbnail placeholders.

Drawn with ``QPainter`` at run time so no image files need to ship. ``QPixmap`` belongs
to the GUI thread, so call these only there.
"""

from __future__ import annotations

from functools import cache

from PySide6.QtCore import QPointF, QRect, QRectF, Qt
from PySide6.QtGui import (
    QColor,
    QFont,
    QIcon,
    QLinearGradient,
    QPainter,
    QPainterPath,
    QPalette,
    QPen,
    QPixmap,
)

from lora_studio.core.paths import RESOURCES_DIR

ACCENT = QColor("#3f51b5")
ERROR = QColor("#c62828")
WARNING = QColor("#b26a00")
SUCCESS = QColor("#2e7d32")
MUTED = QColor("#757575")
#: Muted text on a dark palette (#757575 is too dim there).
MUTED_ON_DARK = QColor("#a8a8a8")
#: Error and warning text on a dark palette (the light ones are too dark to read there).
ERROR_ON_DARK = QColor("#ff8a80")
WARNING_ON_DARK = QColor("#ffb74d")
SUCCESS_ON_DARK = QColor("#81c784")


def is_dark(palette: QPalette) -> bool:
    """The palette's window is dark (the system is in dark mode)."""
    return palette.color(QPalette.ColorRole.Window).lightness() < 128


def muted_color(palette: QPalette) -> QColor:
    """Secondary text that reads on ``palette``'s window colour."""
    return MUTED_ON_DARK if is_dark(palette) else MUTED


def error_color(palette: QPalette) -> QColor:
    """Error text that reads on ``palette``'s window colour."""
    return ERROR_ON_DARK if is_dark(palette) else ERROR


def success_color(palette: QPalette) -> QColor:
    """Success text that reads on ``palette``'s window colour."""
    return SUCCESS_ON_DARK if is_dark(palette) else SUCCESS


def _hills(painter: QPainter, rect: QRectF, colors: list[str]) -> None:
    """Layered paper hills, the sample dataset's motif."""
    w, h = rect.width(), rect.height()
    for i, color in enumerate(colors):
        base = rect.top() + h * (0.48 + 0.14 * i)
        path = QPainterPath(QPointF(rect.left(), rect.bottom()))
        path.lineTo(rect.left(), base)
        path.cubicTo(
            QPointF(rect.left() + w * (0.25 + 0.1 * i), base - h * 0.22),
            QPointF(rect.left() + w * (0.55 - 0.05 * i), base + h * 0.12),
            QPointF(rect.right(), base - h * 0.1),
        )
        path.lineTo(rect.right(), rect.bottom())
        path.closeSubpath()
        painter.fillPath(path, QColor(color))


@cache
def app_icon() -> QIcon:
    """The window icon: paper hills under a sun on an indigo tile. The PNG set in
    ``resources/icons/hicolor`` (16 to 1024 px, so high-DPI screens get a sharp one) when
    it is there; otherwise drawn here, the same picture."""
    icon = QIcon()
    for png in sorted((RESOURCES_DIR / "icons" / "hicolor").glob("*/apps/lora-studio.png")):
        icon.addFile(str(png))
    if not icon.isNull():
        return icon
    for size in (16, 24, 32, 48, 64, 128, 256):
        pixmap = QPixmap(size, size)
        pixmap.fill(Qt.GlobalColor.transparent)
        painter = QPainter(pixmap)
        painter.setRenderHint(QPainter.RenderHint.Antialiasing)
        tile = QRectF(0, 0, size, size).adjusted(
            size * 0.04, size * 0.04, -size * 0.04, -size * 0.04
        )
        clip = QPainterPath()
        clip.addRoundedRect(tile, size * 0.2, size * 0.2)
        gradient = QLinearGradient(tile.topLeft(), tile.bottomLeft())
        gradient.setColorAt(0, QColor("#5c6bc0"))
        gradient.setColorAt(1, QColor("#283593"))
        painter.fillPath(clip, gradient)
        painter.setClipPath(clip)
        painter.setPen(Qt.PenStyle.NoPen)
        painter.setBrush(QColor("#ffca28"))
        painter.drawEllipse(
            QPointF(tile.left() + size * 0.68, tile.top() + size * 0.3), size * 0.13, size * 0.13
        )
        _hills(painter, tile, ["#a5d6a7", "#66bb6a", "#2e7d32"])
        painter.end()
        icon.addPixmap(pixmap)
    return icon


def _tile(size: int, fill: str, border: str) -> tuple[QPixmap, QPainter]:
    pixmap = QPixmap(size, size)
    pixmap.fill(Qt.GlobalColor.transparent)
    painter = QPainter(pixmap)
    painter.setRenderHint(QPainter.RenderHint.Antialiasing)
    rect = QRectF(2, 2, size - 4, size - 4)
    painter.setPen(QPen(QColor(border), 1.5))
    painter.setBrush(QColor(fill))
    painter.drawRoundedRect(rect, 6, 6)
    return pixmap, painter


@cache
def loading_icon(size: int) -> QIcon:
    """Shown while a thumbnail is being made."""
    pixmap, painter = _tile(size, "#eeeeee", "#d0d0d0")
    painter.setPen(Qt.PenStyle.NoPen)
    painter.setBrush(QColor("#d6d6d6"))
    for i in range(3):
        painter.drawEllipse(QPointF(size * (0.35 + 0.15 * i), size / 2), size * 0.04, size * 0.04)
    painter.end()
    return QIcon(pixmap)


@cache
def broken_image_icon(size: int) -> QIcon:
    """Shown for an image that cannot be decoded: a red-crossed frame saying so."""
    pixmap, painter = _tile(size, "#fdecea", "#e57373")
    pen = QPen(ERROR, max(2.0, size / 24))
    pen.setCapStyle(Qt.PenCapStyle.RoundCap)
    painter.setPen(pen)
    c = size / 2
    r = size * 0.14
    top = size * 0.36
    painter.drawLine(QPointF(c - r, top - r), QPointF(c + r, top + r))
    painter.drawLine(QPointF(c + r, top - r), QPointF(c - r, top + r))
    if size >= 64:
        font = QFont()
        font.setPixelSize(max(10, size // 9))
        font.setBold(True)
        painter.setFont(font)
        painter.drawText(
            QRectF(0, size * 0.58, size, size * 0.3),
            int(Qt.AlignmentFlag.AlignCenter),
            "broken image",
        )
    painter.end()
    return QIcon(pixmap)


def badge_color(severity: str | None) -> QColor | None:
    """The badge colour of a problem's severity: red for errors, amber for warnings."""
    if severity == "error":
        return ERROR
    if severity == "warning":
        return BADGE_WARNING
    return None


#: Brighter than :data:`WARNING` (a text colour): a badge must stand out on a photo.
BADGE_WARNING = QColor("#f59e0b")


def draw_badge(painter: QPainter, icon_rect: QRect | QRectF, severity: str | None) -> QRectF | None:
    """Draw a problem badge (a round "!" mark) in the top-right corner of ``icon_rect``.

    Returns the badge's rectangle, or ``None`` when ``severity`` has no badge.
    """
    color = badge_color(severity)
    if color is None or icon_rect.isEmpty():
        return None
    rect = QRectF(icon_rect)
    diameter = max(12.0, min(20.0, rect.width() * 0.2))
    badge = QRectF(rect.right() - diameter - 1, rect.top() + 1, diameter, diameter)
    painter.save()
    painter.setRenderHint(QPainter.RenderHint.Antialiasing)
    painter.setPen(QPen(QColor("white"), 1.5))
    painter.setBrush(color)
    painter.drawEllipse(badge)
    font = QFont()
    font.setPixelSize(int(diameter * 0.7))
    font.setBold(True)
    painter.setFont(font)
    painter.setPen(QColor("white"))
    painter.drawText(badge, int(Qt.AlignmentFlag.AlignCenter), "!")
    painter.restore()
    return badge
