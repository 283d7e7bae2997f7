"""The job monitor's charts: the loss (raw points faint, an exponential moving average bold,
with a smoothing slider as in TensorBoard) and the learning rate below it, on the same steps.

Painted with ``QPainter`` (no plotting library). A series is drawn decimated to at most
two points per pixel column (the lowest and the highest value of each column, so spikes
stay visible), so a 10,000-step history paints as fast as a 100-step one.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from PySide6.QtCore import QPointF, QRectF, QSize, Qt, Signal
from PySide6.QtGui import QColor, QMouseEvent, QPainter, QPaintEvent, QPen, QPolygonF
from PySide6.QtWidgets import (
    QHBoxLayout,
    QLabel,
    QSizePolicy,
    QSlider,
    QToolTip,
    QVBoxLayout,
    QWidget,
)

from lora_studio.gui import artwork

#: A little stronger than TensorBoard's 0.6: short runs are noisy.
DEFAULT_SMOOTHING = 0.8
_LR_COLOR = QColor("#c05621")


def smooth(values: Sequence[float], weight: float = 0.8) -> list[float]:
    """Exponential moving average (TensorBoard-style), so the trend is visible in noise."""
    out: list[float] = []
    last: float | None = None
    for value in values:
        last = value if last is None else last * weight + (1 - weight) * value
        out.append(last)
    return out


def decimate(xs: np.ndarray, ys: np.ndarray, columns: int) -> tuple[np.ndarray, np.ndarray]:
    """At most two points per column: each column's lowest and highest value, in order.

    ``xs`` must be increasing. Series short enough to draw as they are come back unchanged.
    """
    n = len(xs)
    if n <= 2 * max(1, columns):
        return xs, ys
    span = float(xs[-1] - xs[0]) or 1.0
    bucket = np.minimum(((xs - xs[0]) / span * columns).astype(np.int64), columns - 1)
    starts = np.flatnonzero(np.r_[True, bucket[1:] != bucket[:-1]])
    lows = np.minimum.reduceat(ys, starts)
    highs = np.maximum.reduceat(ys, starts)
    centre = np.add.reduceat(xs, starts) / np.diff(np.r_[starts, n])
    out_x = np.repeat(centre, 2)
    out_y = np.empty(2 * len(starts))
    out_y[0::2], out_y[1::2] = lows, highs
    return out_x, out_y


def spread_steps(n: int, last_step: int) -> np.ndarray:
    """The steps of a thinned history of ``n`` points that ends at ``last_step``: one per
    step when nothing was thinned, otherwise spread evenly from step 1."""
    if n == 0:
        return np.zeros(0)
    if last_step <= n:
        first = max(1, last_step - n + 1)
        return np.arange(first, first + n, dtype=float)
    return np.linspace(1, last_step, n)


def format_lr(value: float) -> str:
    """``1e-4``, ``2.5e-4``, ``0`` (learning rates are read in powers of ten)."""
    if value == 0:
        return "0"
    mantissa, exponent = f"{value:.1e}".split("e")
    mantissa = mantissa.rstrip("0").rstrip(".")
    return f"{mantissa}e{int(exponent)}"


def format_loss(value: float) -> str:
    return f"{value:.4f}" if abs(value) < 100 else f"{value:.1f}"


class _Plot(QWidget):
    """One line chart over training steps (see the module docstring)."""

    empty_text = ""
    y_format = staticmethod(format_loss)

    def __init__(self, color: QColor, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self._color = QColor(color)
        self._steps = np.zeros(0)
        self._values = np.zeros(0)
        self._smoothed = np.zeros(0)
        self._weight = 0.0
        self._x_range: tuple[float, float] | None = None
        self._plot_rect = QRectF()
        self.setMouseTracking(True)
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Expanding)

    # ---- data ---------------------------------------------------------------------------

    def set_series(self, steps: Sequence[float], values: Sequence[float]) -> None:
        """Show ``values`` at ``steps`` (NaN values are left out)."""
        xs = np.asarray(steps, dtype=float)
        ys = np.asarray(values, dtype=float)
        keep = np.isfinite(ys) & np.isfinite(xs)
        xs, ys = xs[keep], ys[keep]
        if np.array_equal(xs, self._steps) and np.array_equal(ys, self._values):
            return
        self._steps, self._values = xs, ys
        self._resmooth()
        self.update()

    def set_x_range(self, x_range: tuple[float, float] | None) -> None:
        """Share the step axis with another chart (``None``: this series' own range)."""
        if x_range != self._x_range:
            self._x_range = x_range
            self.update()

    def set_smoothing(self, weight: float) -> None:
        """The moving average's weight in [0, 1) (0: no smoothed line)."""
        weight = min(max(weight, 0.0), 0.999)
        if weight != self._weight:
            self._weight = weight
            self._resmooth()
            self.update()

    @property
    def smoothing(self) -> float:
        return self._weight

    @property
    def values(self) -> tuple[float, ...]:
        return tuple(float(v) for v in self._values)

    @property
    def steps(self) -> tuple[float, ...]:
        return tuple(float(v) for v in self._steps)

    def smoothed(self) -> tuple[float, ...]:
        return tuple(float(v) for v in self._smoothed)

    def _resmooth(self) -> None:
        if self._weight > 0 and len(self._values):
            self._smoothed = np.asarray(smooth(self._values.tolist(), self._weight))
        else:
            self._smoothed = np.zeros(0)

    def x_span(self) -> tuple[float, float] | None:
        if self._x_range is not None:
            return self._x_range
        if len(self._steps) == 0:
            return None
        return float(self._steps[0]), float(self._steps[-1])

    # ---- painting ---------------------------------------------------------------------------

    def paintEvent(self, event: QPaintEvent) -> None:  # noqa: N802
        painter = QPainter(self)
        painter.setRenderHint(QPainter.RenderHint.Antialiasing)
        palette = self.palette()
        rect = QRectF(self.rect()).adjusted(0.5, 0.5, -0.5, -0.5)
        painter.setPen(QPen(palette.mid().color()))
        painter.setBrush(palette.base())
        painter.drawRoundedRect(rect, 4, 4)
        font = painter.font()
        font.setPointSizeF(max(7.0, font.pointSizeF() * 0.85))
        painter.setFont(font)
        metrics = painter.fontMetrics()
        span = self.x_span()
        if len(self._values) < 2 or span is None:
            painter.setPen(artwork.MUTED)
            painter.drawText(rect, int(Qt.AlignmentFlag.AlignCenter), self.empty_text)
            painter.end()
            return
        lo, hi = float(self._values.min()), float(self._values.max())
        if hi - lo < 1e-12 * max(1.0, abs(hi)):
            pad = abs(hi) * 0.1 or 0.5
            lo, hi = lo - pad, hi + pad
        top_label, bottom_label = self.y_format(hi), self.y_format(lo)
        label_w = max(metrics.horizontalAdvance(top_label), metrics.horizontalAdvance("0.0000"))
        plot = rect.adjusted(label_w + 10, metrics.height() / 2 + 4, -10, -metrics.height() - 6)
        if plot.width() < 10 or plot.height() < 10:
            painter.end()
            return
        self._plot_rect = plot
        grid = QColor(palette.mid().color())
        grid.setAlpha(70)
        painter.setPen(QPen(grid))
        for i in range(5):
            y = plot.top() + plot.height() * i / 4
            painter.drawLine(QPointF(plot.left(), y), QPointF(plot.right(), y))
        painter.setPen(artwork.MUTED)
        right = int(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
        for label, y in ((top_label, plot.top()), (bottom_label, plot.bottom())):
            painter.drawText(
                QRectF(rect.left(), y - metrics.height() / 2, label_w + 4, metrics.height()),
                right,
                label,
            )
        x0, x1 = span
        if x1 <= x0:
            x1 = x0 + 1
        below = QRectF(plot.left(), plot.bottom() + 3, plot.width(), metrics.height())
        painter.drawText(below, int(Qt.AlignmentFlag.AlignLeft), f"step {x0:.0f}")
        painter.drawText(below, int(Qt.AlignmentFlag.AlignRight), f"{x1:.0f}")

        columns = max(1, int(plot.width()))

        def polygon(ys: np.ndarray) -> QPolygonF:
            xs, ys = decimate(self._steps, ys, columns)
            px = plot.left() + plot.width() * (xs - x0) / (x1 - x0)
            py = plot.bottom() - plot.height() * (ys - lo) / (hi - lo)
            return QPolygonF([QPointF(x, y) for x, y in zip(px.tolist(), py.tolist(), strict=True)])

        painter.setBrush(Qt.BrushStyle.NoBrush)
        painter.setClipRect(plot.adjusted(-2, -2, 2, 2))
        if len(self._smoothed):
            faint = QColor(self._color)
            faint.setAlpha(60)
            painter.setPen(QPen(faint, 1.0))
            painter.drawPolyline(polygon(self._values))
            painter.setPen(QPen(self._color, 2.0))
            painter.drawPolyline(polygon(self._smoothed))
        else:
            painter.setPen(QPen(self._color, 1.6))
            painter.drawPolyline(polygon(self._values))
        painter.end()

    def mouseMoveEvent(self, event: QMouseEvent) -> None:  # noqa: N802
        """The value under the pointer, as a tooltip."""
        plot, span = self._plot_rect, self.x_span()
        if len(self._steps) == 0 or span is None or plot.width() <= 0:
            return
        x = event.position().x()
        if not plot.left() - 4 <= x <= plot.right() + 4:
            QToolTip.hideText()
            return
        step = span[0] + (x - plot.left()) / plot.width() * (span[1] - span[0])
        i = int(np.clip(np.searchsorted(self._steps, step), 0, len(self._steps) - 1))
        if i > 0 and abs(self._steps[i - 1] - step) < abs(self._steps[i] - step):
            i -= 1
        text = self.point_text(i)
        QToolTip.showText(event.globalPosition().toPoint(), text, self)

    def point_text(self, i: int) -> str:
        text = f"step {self._steps[i]:.0f}: {self.y_format(float(self._values[i]))}"
        if len(self._smoothed):
            text += f" (smoothed {self.y_format(float(self._smoothed[i]))})"
        return text


class LossCurve(_Plot):
    """The loss per step: raw values faint, the smoothed trend bold."""

    empty_text = "The loss curve appears here while training"

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(artwork.ACCENT, parent)
        self._weight = DEFAULT_SMOOTHING
        self.setMinimumHeight(90)
        self.setToolTip("")

    def sizeHint(self) -> QSize:  # noqa: N802
        return QSize(320, 140)

    def set_values(self, values: Sequence[float], last_step: int | None = None) -> None:
        """Show a loss history that may be thinned (``Progress.loss_history``): its points
        are spread evenly from step 1 to ``last_step`` (default: one point per step)."""
        last = last_step if last_step is not None else len(values)
        self.set_series(spread_steps(len(values), last), values)


class LrCurve(_Plot):
    """The learning rate per step (one line, no smoothing)."""

    empty_text = "No learning rate reported"
    y_format = staticmethod(format_lr)

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(_LR_COLOR, parent)
        self.setMinimumHeight(56)

    def sizeHint(self) -> QSize:  # noqa: N802
        return QSize(320, 70)


class TrainingCharts(QWidget):
    """The loss chart with its smoothing slider, and the learning-rate chart below it.

    Signals:
        smoothing_changed(float): the user moved the slider (the window remembers it).
    """

    smoothing_changed = Signal(float)

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.loss = LossCurve()
        self.lr = LrCurve()
        self.lr.hide()  # until a run reports a learning rate
        self.title = QLabel("Loss")
        self.title.setStyleSheet(f"color: {artwork.MUTED.name()};")
        self.smoothing_slider = QSlider(Qt.Orientation.Horizontal)
        self.smoothing_slider.setRange(0, 99)
        self.smoothing_slider.setValue(round(DEFAULT_SMOOTHING * 100))
        self.smoothing_slider.setFixedWidth(90)
        self.smoothing_slider.setToolTip(
            "Smoothing: the weight of the moving average drawn over the raw loss "
            "(0 shows the raw values only), as in TensorBoard"
        )
        self.smoothing_value = QLabel()
        self.smoothing_value.setMinimumWidth(
            self.smoothing_value.fontMetrics().horizontalAdvance("0.00") + 2
        )
        self.smoothing_slider.valueChanged.connect(self._on_slider)
        smoothing_label = QLabel("Smoothing")
        smoothing_label.setStyleSheet(f"color: {artwork.MUTED.name()};")
        head = QHBoxLayout()
        head.setContentsMargins(2, 0, 0, 0)
        head.addWidget(self.title, 1)
        head.addSpacing(12)
        head.addWidget(smoothing_label)
        head.addWidget(self.smoothing_slider)
        head.addWidget(self.smoothing_value)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.setSpacing(3)
        layout.addLayout(head)
        layout.addWidget(self.loss, 3)
        layout.addWidget(self.lr, 1)
        self._on_slider(self.smoothing_slider.value())

    def sizeHint(self) -> QSize:  # noqa: N802
        return QSize(340, 220)

    def set_smoothing(self, weight: float) -> None:
        self.smoothing_slider.setValue(round(min(max(weight, 0.0), 0.99) * 100))

    def set_history(
        self,
        losses: Sequence[float],
        last_step: int,
        rates: Sequence[float] = (),
        loss: float | None = None,
        rate: float | None = None,
        rate_points: Sequence[tuple[int, float]] = (),
    ) -> None:
        """A live run's thinned histories (``Progress.loss_history`` / ``lr_history``, the
        learning rates at the same steps; or ``rate_points``, (step, rate) pairs collected
        from the snapshots of a backend that reports only the current rate) and its latest
        values."""
        self.loss.set_values(losses, last_step)
        if len(rates) == len(losses) and len(rates):
            self.lr.set_series(spread_steps(len(rates), last_step), rates)
        else:
            self.lr.set_series([s for s, _ in rate_points], [r for _, r in rate_points])
        self._finish(loss, rate)

    def set_points(
        self,
        loss_points: Sequence[tuple[int, float]],
        lr_points: Sequence[tuple[int, float]] = (),
    ) -> None:
        """Series with their own steps (a finished job's history, every step)."""
        self.loss.set_series([s for s, _ in loss_points], [v for _, v in loss_points])
        self.lr.set_series([s for s, _ in lr_points], [v for _, v in lr_points])
        self._finish(
            loss_points[-1][1] if loss_points else None, lr_points[-1][1] if lr_points else None
        )

    def clear(self) -> None:
        self.set_points(())

    def _finish(self, loss: float | None, rate: float | None) -> None:
        span = self.loss.x_span()
        self.lr.set_x_range(span)
        self.lr.setVisible(len(self.lr.steps) >= 2)
        loss_text = "Loss"
        if loss is not None and math.isfinite(loss):
            loss_text = f"Loss <b>{format_loss(loss)}</b>"
        parts = [f'<span style="color: {artwork.ACCENT.name()};">{loss_text}</span>']
        if rate is not None and math.isfinite(rate):
            parts.append(
                f'<span style="color: {_LR_COLOR.name()};">LR <b>{format_lr(rate)}</b></span>'
            )
        self.title.setText(" &nbsp;\u00b7&nbsp; ".join(parts))

    def _on_slider(self, value: int) -> None:
        weight = value / 100
        self.smoothing_value.setText(f"{weight:.2f}")
        self.loss.set_smoothing(weight)
        self.smoothing_changed.emit(weight)
