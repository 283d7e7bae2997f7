"""A small loss plot painted with ``QPainter`` (no plotting library needed)."""

from __future__ import annotations

from collections.abc import Sequence

from PySide6.QtCore import QPointF, QRectF, QSize, Qt
from PySide6.QtGui import QColor, QPainter, QPainterPath, QPaintEvent, QPen
from PySide6.QtWidgets import QSizePolicy, QWidget

from lora_studio.gui import artwork


def smooth(values: Sequence[float], weight: float = 0.8) -> list[float]:
    """Exponential moving average (TensorBoard-style), so the trend is visible in noise."""
    out: list[float] = []
    last: float | None = None
    for value in values:
        last = value if last is None else last * weight + (1 - weight) * value
        out.append(last)
    return out


class LossCurve(QWidget):
    """Draws a loss history: raw values faint, the smoothed trend bold."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self._values: tuple[float, ...] = ()
        self._last_step = 0
        self.setMinimumHeight(90)
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Expanding)
        self.setToolTip("Training loss per step (faint) and its moving average (bold)")

    def sizeHint(self) -> QSize:  # noqa: N802
        return QSize(320, 120)

    @property
    def values(self) -> tuple[float, ...]:
        return self._values

    def set_values(self, values: Sequence[float], last_step: int | None = None) -> None:
        """Show ``values`` (the history may be thinned; ``last_step`` labels the x axis)."""
        values = tuple(v for v in values if v == v)  # drop NaN
        step = last_step if last_step is not None else len(values)
        if values != self._values or step != self._last_step:
            self._values = values
            self._last_step = step
            self.update()

    def paintEvent(self, event: QPaintEvent) -> None:  # noqa: N802
        painter = QPainter(self)
        painter.setRenderHint(QPainter.RenderHint.Antialiasing)
        rect = QRectF(self.rect()).adjusted(0.5, 0.5, -0.5, -0.5)
        painter.setPen(QPen(QColor("#d0d0d0")))
        painter.setBrush(QColor("#ffffff"))
        painter.drawRoundedRect(rect, 4, 4)
        font = painter.font()
        font.setPointSizeF(max(7.0, font.pointSizeF() * 0.85))
        painter.setFont(font)
        metrics = painter.fontMetrics()
        if len(self._values) < 2:
            painter.setPen(artwork.MUTED)
            painter.drawText(
                rect, int(Qt.AlignmentFlag.AlignCenter), "Loss curve appears here while training"
            )
            painter.end()
            return
        lo, hi = min(self._values), max(self._values)
        if hi - lo < 1e-12:
            lo, hi = lo - 0.5, hi + 0.5
        label_w = metrics.horizontalAdvance("0.0000") + 8
        plot = rect.adjusted(label_w, 8, -8, -metrics.height() - 6)
        painter.setPen(QPen(QColor("#eeeeee")))
        for i in range(5):
            y = plot.top() + plot.height() * i / 4
            painter.drawLine(QPointF(plot.left(), y), QPointF(plot.right(), y))
        painter.setPen(artwork.MUTED)
        painter.drawText(QPointF(rect.left() + 4, plot.top() + metrics.ascent() / 2), f"{hi:.4f}")
        painter.drawText(
            QPointF(rect.left() + 4, plot.bottom() + metrics.ascent() / 2), f"{lo:.4f}"
        )
        n = len(self._values)
        painter.drawText(
            QRectF(plot.left(), plot.bottom() + 3, plot.width(), metrics.height()),
            int(Qt.AlignmentFlag.AlignRight),
            f"step {self._last_step}",
        )
        painter.drawText(
            QRectF(plot.left(), plot.bottom() + 3, plot.width(), metrics.height()),
            int(Qt.AlignmentFlag.AlignLeft),
            "loss",
        )

        def path_of(values: Sequence[float]) -> QPainterPath:
            path = QPainterPath()
            for i, value in enumerate(values):
                x = plot.left() + plot.width() * i / (n - 1)
                y = plot.bottom() - plot.height() * (value - lo) / (hi - lo)
                if i == 0:
                    path.moveTo(x, y)
                else:
                    path.lineTo(x, y)
            return path

        painter.setBrush(Qt.BrushStyle.NoBrush)
        faint = QColor(artwork.ACCENT)
        faint.setAlpha(70)
        painter.setPen(QPen(faint, 1.0))
        painter.drawPath(path_of(self._values))
        painter.setPen(QPen(artwork.ACCENT, 2.0))
        painter.drawPath(path_of(smooth(self._values)))
        painter.end()
