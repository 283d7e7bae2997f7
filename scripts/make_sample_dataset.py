#!/usr/bin/env python3
"""Generate the embedded LoRA Studio sample dataset.

The sample dataset is a small, coherent "papercut style" set of twelve
landscape illustrations (512x512 PNG) drawn procedurally with Pillow and
numpy.  Each scene is built from layered "paper" cut-outs with soft drop
shadows, gradient fills and a subtle paper-grain texture, rendered at 2x and
downsampled with LANCZOS for antialiasing.  Images are stored as 256-colour
palette PNGs (Floyd-Steinberg dithered) to keep each file around 90 KB.

Every image except the last two gets a kohya-style caption sidecar
(``<stem>.txt``) whose first tag is the trigger word ``papercut style``, so
the app can demonstrate a partially captioned dataset ("10 of 12 captioned").

All randomness uses fixed seeds, so running the script twice produces
byte-identical files.

Usage::

    python scripts/make_sample_dataset.py [OUTPUT_DIR]

``OUTPUT_DIR`` defaults to ``resources/sample_dataset`` under the repository
root (located relative to this script).
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

SIZE = 512  # final image size in pixels
SS = 2  # supersampling factor used while drawing
W = H = SIZE * SS
TRIGGER = "papercut style"
# Images are stored as 256-colour palette PNGs with Floyd-Steinberg dithering
# (~90 KB each instead of ~200 KB as RGB); the dither doubles as fine paper
# grain.  Set to 0 to save full RGB PNGs instead.
QUANTIZE_COLORS = 256
GRAIN_LOW = 0.010  # amplitude of the blotchy, low-frequency paper texture
GRAIN_FINE = 0.0  # amplitude of extra fine grain (costs a lot of PNG bytes)

Color = tuple[int, int, int]
Point = tuple[float, float]
Fill = Color | np.ndarray
Opacity = float | np.ndarray


# --------------------------------------------------------------------------
# Colour helpers
# --------------------------------------------------------------------------


def hexc(value: str) -> Color:
    """Convert ``#rrggbb`` into an RGB tuple."""
    value = value.lstrip("#")
    return (int(value[0:2], 16), int(value[2:4], 16), int(value[4:6], 16))


def mix(a: Color, b: Color, t: float) -> Color:
    """Linearly interpolate two colours."""
    return (
        round(a[0] + (b[0] - a[0]) * t),
        round(a[1] + (b[1] - a[1]) * t),
        round(a[2] + (b[2] - a[2]) * t),
    )


def _as_rgb(color: Color | str) -> np.ndarray:
    if isinstance(color, str):
        color = hexc(color)
    return np.asarray(color, dtype=np.float32)


# Pixel coordinate grids in 512-space (shared by all scenes).
_YY, _XX = np.mgrid[0:H, 0:W].astype(np.float32) / SS


def vgrad(stops: Sequence[tuple[float, Color | str]]) -> np.ndarray:
    """Vertical gradient through ``(y_in_512_space, colour)`` stops."""
    ys = np.array([s[0] for s in stops], dtype=np.float32)
    cols = np.stack([_as_rgb(s[1]) for s in stops])
    rows = (np.arange(H, dtype=np.float32) + 0.5) / SS
    out = np.empty((H, 3), dtype=np.float32)
    for ch in range(3):
        out[:, ch] = np.interp(rows, ys, cols[:, ch])
    return np.broadcast_to(out[:, None, :], (H, W, 3))


def hgrad(stops: Sequence[tuple[float, Color | str]]) -> np.ndarray:
    """Horizontal gradient through ``(x_in_512_space, colour)`` stops."""
    xs = np.array([s[0] for s in stops], dtype=np.float32)
    cols = np.stack([_as_rgb(s[1]) for s in stops])
    columns = (np.arange(W, dtype=np.float32) + 0.5) / SS
    out = np.empty((W, 3), dtype=np.float32)
    for ch in range(3):
        out[:, ch] = np.interp(columns, xs, cols[:, ch])
    return np.broadcast_to(out[None, :, :], (H, W, 3))


# --------------------------------------------------------------------------
# Paper cut-out masks
# --------------------------------------------------------------------------


class Cut:
    """A single paper cut-out: a 2x supersampled 8-bit mask.

    All coordinates are given in final (512x512) image space.
    """

    def __init__(self) -> None:
        self.img = Image.new("L", (W, H), 0)
        self.draw = ImageDraw.Draw(self.img)

    # -- primitives -------------------------------------------------------
    @staticmethod
    def _pts(points: Sequence[Point]) -> list[tuple[float, float]]:
        return [(x * SS, y * SS) for x, y in points]

    def polygon(self, points: Sequence[Point], erase: bool = False) -> Cut:
        self.draw.polygon(self._pts(points), fill=0 if erase else 255)
        return self

    def ellipse(
        self, cx: float, cy: float, rx: float, ry: float | None = None, erase: bool = False
    ) -> Cut:
        ry = rx if ry is None else ry
        box = [(cx - rx) * SS, (cy - ry) * SS, (cx + rx) * SS, (cy + ry) * SS]
        self.draw.ellipse(box, fill=0 if erase else 255)
        return self

    def rect(
        self, x0: float, y0: float, x1: float, y1: float, radius: float = 0.0, erase: bool = False
    ) -> Cut:
        box = [x0 * SS, y0 * SS, x1 * SS, y1 * SS]
        fill = 0 if erase else 255
        if radius > 0:
            self.draw.rounded_rectangle(box, radius=radius * SS, fill=fill)
        else:
            self.draw.rectangle(box, fill=fill)
        return self

    def line(self, points: Sequence[Point], width: float) -> Cut:
        self.draw.line(self._pts(points), fill=255, width=max(1, round(width * SS)), joint="curve")
        return self

    # -- compound shapes ---------------------------------------------------
    def hill(
        self,
        base: float,
        waves: Sequence[tuple[float, float, float]],
        x0: float = -10.0,
        x1: float = SIZE + 10.0,
        bottom: float = SIZE + 10.0,
        fade: tuple[float, float] | None = None,
    ) -> Callable[[float], float]:
        """Add a hill whose top edge is ``base + sum(a*sin(2pi*x/period + phase))``.

        ``fade=(xa, xb)`` smoothly lowers the ridge down to ``bottom`` between
        ``xa`` (full height) and ``xb`` (flat), so a hill can end gracefully.
        Returns the ridge function so that objects can be placed on it.
        """

        def ridge(x: float) -> float:
            y = base + sum(a * math.sin(2 * math.pi * x / p + ph) for a, p, ph in waves)
            if fade is not None:
                t = min(max((x - fade[0]) / (fade[1] - fade[0]), 0.0), 1.0)
                y += (bottom - y) * t * t * (3 - 2 * t)
            return y

        xs = np.linspace(x0, x1, int((x1 - x0) / 2) + 2)
        pts: list[Point] = [(float(x), ridge(float(x))) for x in xs]
        pts += [(x1, bottom), (x0, bottom)]
        self.polygon(pts)
        return ridge

    def mountains(
        self, peaks: Sequence[Point], base: float, x0: float = -10.0, x1: float = SIZE + 10.0
    ) -> None:
        """Polyline mountain range through ``peaks`` (and valleys), closed at ``base``."""
        self.polygon([(x0, base), *peaks, (x1, base), (x1, SIZE + 10), (x0, SIZE + 10)])

    def ribbon(self, points: Sequence[Point], widths: Sequence[float]) -> None:
        """Tapered stroke along a polyline (widths are full widths per point)."""
        n = len(points)
        left: list[Point] = []
        right: list[Point] = []
        for i, (x, y) in enumerate(points):
            xa, ya = points[max(i - 1, 0)]
            xb, yb = points[min(i + 1, n - 1)]
            dx, dy = xb - xa, yb - ya
            length = math.hypot(dx, dy) or 1.0
            nx, ny = -dy / length, dx / length
            hw = widths[i] / 2
            left.append((x + nx * hw, y + ny * hw))
            right.append((x - nx * hw, y - ny * hw))
        self.polygon(left + right[::-1])

    def pine(self, x: float, base: float, height: float, width: float, tiers: int = 3) -> None:
        """A stylised pine tree of stacked triangles standing on ``base``."""
        trunk_h = height * 0.14
        self.rect(x - width * 0.07, base - trunk_h - 1, x + width * 0.07, base + 2)
        top = base - height
        body = height - trunk_h
        for i in range(tiers):
            t0 = i / tiers
            t1 = (i + 1) / tiers
            apex = top + body * t0 * 0.82
            bottom = top + body * (t1 * 0.95 + 0.05)
            half = width / 2 * (0.45 + 0.55 * t1)
            self.polygon([(x, apex), (x + half, bottom), (x - half, bottom)])

    def round_tree(self, x: float, base: float, height: float, radius: float) -> None:
        """A lollipop tree: round canopy on a slim trunk."""
        self.rect(x - radius * 0.12, base - height + radius, x + radius * 0.12, base + 2)
        self.ellipse(x, base - height + radius, radius, radius * 1.05)

    def cloud(self, cx: float, cy: float, w: float) -> None:
        """A flat-bottomed papercut cloud centred at ``cx`` with baseline ``cy``."""
        h = w * 0.16
        self.rect(cx - w / 2, cy - h, cx + w / 2, cy, radius=h * 0.95)
        self.ellipse(cx - w * 0.18, cy - h * 1.05, w * 0.2)
        self.ellipse(cx + w * 0.1, cy - h * 1.4, w * 0.24)
        self.ellipse(cx + w * 0.3, cy - h * 0.9, w * 0.14)

    def array(self) -> np.ndarray:
        return np.asarray(self.img, dtype=np.float32) / 255.0


# --------------------------------------------------------------------------
# Canvas
# --------------------------------------------------------------------------


def _shift(a: np.ndarray, dx: int, dy: int) -> np.ndarray:
    """Shift a 2-D array by whole pixels, filling with zeros."""
    out = np.zeros_like(a)
    h, w = a.shape
    ys = slice(max(dy, 0), h + min(dy, 0))
    xs = slice(max(dx, 0), w + min(dx, 0))
    ys_src = slice(max(-dy, 0), h + min(-dy, 0))
    xs_src = slice(max(-dx, 0), w + min(-dx, 0))
    out[ys, xs] = a[ys_src, xs_src]
    return out


@dataclass
class Shadow:
    """Drop shadow parameters (512-space units)."""

    strength: float = 0.38
    blur: float = 5.0
    dx: float = 1.0
    dy: float = -1.5


DEFAULT_SHADOW = Shadow()
SOFT_SHADOW = Shadow(strength=0.22, blur=4.0, dx=0.5, dy=0.5)
NO_SHADOW: Shadow | None = None


class Canvas:
    """Float RGB canvas at supersampled resolution."""

    def __init__(self, seed: int) -> None:
        self.rgb = np.zeros((H, W, 3), dtype=np.float32)
        self.rng = np.random.default_rng(seed)

    def fill(self, fill: Fill) -> None:
        self.rgb[...] = _as_rgb(fill) if isinstance(fill, (tuple, str)) else fill

    def glow(
        self, cx: float, cy: float, radius: float, color: Color | str, strength: float
    ) -> None:
        """Soft radial glow (e.g. around the sun or moon)."""
        d2 = ((_XX - cx) ** 2 + (_YY - cy) ** 2) / (radius * radius)
        a = (strength * np.exp(-d2))[..., None]
        self.rgb = self.rgb * (1 - a) + _as_rgb(color) * a

    def screen(self, color: np.ndarray | Color, alpha: np.ndarray) -> None:
        """Screen-blend a light source (used for aurora and light beams)."""
        col = (_as_rgb(color) if isinstance(color, tuple) else color) / 255.0
        base = self.rgb / 255.0
        a = alpha[..., None]
        self.rgb = (1 - (1 - base) * (1 - col * a)) * 255.0

    def paste(
        self,
        cut: Cut,
        fill: Fill,
        shadow: Shadow | None = DEFAULT_SHADOW,
        opacity: Opacity = 1.0,
        soften: float = 0.0,
    ) -> None:
        """Composite a paper cut-out with an optional drop shadow."""
        img = cut.img.filter(ImageFilter.GaussianBlur(soften * SS)) if soften > 0 else cut.img
        m = np.asarray(img, dtype=np.float32) / 255.0
        if shadow is not None and shadow.strength > 0:
            sh = (
                np.asarray(
                    cut.img.filter(ImageFilter.GaussianBlur(shadow.blur * SS)), dtype=np.float32
                )
                / 255.0
            )
            sh = _shift(sh, round(shadow.dx * SS), round(shadow.dy * SS))
            self.rgb *= (1.0 - shadow.strength * sh)[..., None]
        a = m * opacity
        col = _as_rgb(fill) if isinstance(fill, (tuple, str)) else fill
        self.rgb = self.rgb * (1 - a[..., None]) + col * a[..., None]

    def stars(
        self,
        count: int,
        y_max: float,
        color: Color = (255, 250, 230),
        min_r: float = 0.5,
        max_r: float = 1.5,
    ) -> None:
        cut = Cut()
        for _ in range(count):
            x = float(self.rng.uniform(0, SIZE))
            y = float(self.rng.uniform(0, 1) ** 1.4 * y_max)
            r = float(self.rng.uniform(min_r, max_r))
            if r > max_r * 0.85:
                # four-pointed sparkle
                cut.polygon([(x, y - r * 3), (x + r * 0.6, y), (x, y + r * 3), (x - r * 0.6, y)])
                cut.polygon([(x - r * 3, y), (x, y - r * 0.6), (x + r * 3, y), (x, y + r * 0.6)])
            else:
                cut.ellipse(x, y, r)
        self.paste(cut, color, shadow=NO_SHADOW, opacity=0.9)

    def finish(self) -> Image.Image:
        """Apply paper grain + vignette, downsample and return an RGB image."""
        rng = self.rng
        low = rng.normal(0.0, 1.0, (H // 16, W // 16)).astype(np.float32)
        low_img = Image.fromarray(low, mode="F").resize((W, H), Image.Resampling.BICUBIC)
        fine = rng.normal(0.0, 1.0, (H // 4, W // 4)).astype(np.float32)
        fine_img = Image.fromarray(fine, mode="F").resize((W, H), Image.Resampling.BICUBIC)
        tex = GRAIN_LOW * np.asarray(low_img) + GRAIN_FINE * np.asarray(fine_img)
        # subtle vignette
        d2 = ((_XX - SIZE / 2) ** 2 + (_YY - SIZE / 2) ** 2) / (SIZE * SIZE / 2)
        vignette = 1.0 - 0.10 * d2
        out = self.rgb * ((1.0 + tex) * vignette)[..., None]
        out8 = np.clip(out + 0.5, 0, 255).astype(np.uint8)
        img = Image.fromarray(out8, mode="RGB").resize((SIZE, SIZE), Image.Resampling.LANCZOS)
        return img


# --------------------------------------------------------------------------
# Scenes
# --------------------------------------------------------------------------


def sun_disc(
    c: Canvas,
    cx: float,
    cy: float,
    r: float,
    color: str,
    glow: str,
    glow_r: float,
    glow_s: float = 0.55,
) -> None:
    c.glow(cx, cy, glow_r, glow, glow_s)
    c.paste(Cut().ellipse(cx, cy, r), color, shadow=SOFT_SHADOW)


def scene_sunrise_hills(c: Canvas) -> None:
    c.fill(vgrad([(0, "#86bfe3"), (170, "#cfe3e6"), (260, "#fde1b4"), (330, "#f8b27e")]))
    sun_disc(c, 330, 235, 40, "#f59a4c", "#fff0c4", 130, 0.7)
    cl = Cut()
    cl.cloud(120, 120, 130)
    cl.cloud(420, 80, 90)
    c.paste(cl, "#fff7ee", shadow=SOFT_SHADOW)

    far = Cut()
    far.hill(285, [(14, 260, 0.5), (6, 110, 1.9)])
    c.paste(far, vgrad([(260, "#c5dea5"), (360, "#a9cf92")]))

    mid = Cut()
    r = mid.hill(330, [(18, 340, 2.4), (7, 130, 0.3)])
    trees = Cut()
    for x in (40, 62, 80, 380, 402, 425, 446):
        trees.pine(x, r(x) + 4, 48 + (x % 3) * 8, 24, tiers=3)
    c.paste(trees, vgrad([(260, "#6fa866"), (340, "#5e9658")]), shadow=SOFT_SHADOW)
    c.paste(mid, vgrad([(290, "#93c77c"), (420, "#78b066")]))

    near = Cut()
    r = near.hill(395, [(20, 420, 4.0), (8, 170, 1.1)])
    trees = Cut()
    for x, h in ((150, 70), (178, 90), (204, 64), (300, 58)):
        trees.pine(x, r(x) + 5, h, h * 0.48, tiers=4)
    c.paste(trees, vgrad([(300, "#3f8a4e"), (400, "#32743f")]), shadow=SOFT_SHADOW)
    c.paste(near, vgrad([(360, "#5fa35e"), (512, "#3f8549")]))

    front = Cut()
    front.hill(465, [(14, 300, 1.0), (6, 120, 2.2)])
    c.paste(front, vgrad([(440, "#3d7a46"), (512, "#2d6238")]))


def scene_snowy_mountains(c: Canvas) -> None:
    c.fill(vgrad([(0, "#3f8fd2"), (260, "#a9d7f1"), (330, "#dff2fa")]))
    sun_disc(c, 90, 90, 26, "#fff4c9", "#ffffff", 90, 0.45)
    cl = Cut()
    cl.cloud(330, 95, 120)
    cl.cloud(160, 165, 80)
    c.paste(cl, "#ffffff", shadow=SOFT_SHADOW)

    far_peaks = [
        (-10, 250),
        (40, 210),
        (95, 160),
        (130, 190),
        (190, 120),
        (250, 185),
        (300, 150),
        (345, 175),
        (400, 110),
        (455, 170),
        (522, 140),
    ]
    far = Cut()
    far.mountains(far_peaks, 300)
    c.paste(far, vgrad([(110, "#a9bfdc"), (320, "#8aa5cc")]))
    snow = Cut()
    snow.mountains(far_peaks, 300)
    snow_line = 150 + 6 * np.abs(((_XX / 11.0) % 2.0) - 1.0)
    snow_arr = snow.array() * (snow_line > _YY)
    c.rgb = c.rgb * (1 - snow_arr[..., None]) + _as_rgb("#f4f8fd") * snow_arr[..., None]

    near_peaks = [
        (-10, 220),
        (60, 170),
        (120, 230),
        (170, 205),
        (240, 280),
        (300, 215),
        (360, 175),
        (430, 240),
        (480, 205),
        (522, 230),
    ]
    near = Cut()
    near.mountains(near_peaks, 320)
    mask_before = near.array()
    c.paste(near, vgrad([(170, "#6f8fbd"), (340, "#4f6f9e")]))
    snow_line2 = 205 + 7 * np.abs(((_XX / 9.0) % 2.0) - 1.0)
    snow2 = mask_before * (snow_line2 > _YY)
    c.rgb = c.rgb * (1 - snow2[..., None]) + _as_rgb("#eef4fb") * snow2[..., None]

    meadow = Cut()
    meadow.hill(345, [(10, 300, 0.7), (5, 110, 2.0)])
    c.paste(meadow, vgrad([(320, "#9ccf7e"), (430, "#7ab764")]))

    forest = Cut()
    r = forest.hill(410, [(16, 380, 2.8), (6, 150, 0.4)])
    for x in range(-5, 530, 22):
        if 150 < x < 330:
            continue
        h = 60 + 25 * math.sin(x * 0.37) ** 2
        forest.pine(x, r(x) + 6, h, h * 0.45, tiers=4)
    c.paste(forest, vgrad([(340, "#3f8a56"), (512, "#2a6441")]))

    front = Cut()
    front.hill(478, [(10, 260, 0.2), (4, 90, 1.3)])
    c.paste(front, vgrad([(460, "#2b5f3e"), (512, "#1f4a30")]))


def scene_sunset_lake(c: Canvas) -> None:
    horizon = 300
    c.fill(vgrad([(0, "#4b3f86"), (140, "#9b5a98"), (230, "#e8787a"), (horizon, "#fbbd72")]))
    sun_disc(c, 256, 282, 46, "#ffd98a", "#ffe7b0", 150, 0.55)
    cl = Cut()
    cl.cloud(110, 110, 120)
    cl.cloud(400, 150, 100)
    c.paste(cl, "#f2a0a0", shadow=SOFT_SHADOW, opacity=0.95)

    left = Cut()
    left.hill(
        235, [(16, 420, 1.0), (8, 130, 0.2)], x0=-10, x1=250, bottom=horizon + 1, fade=(90, 240)
    )
    right = Cut()
    right.mountains(
        [(300, horizon), (360, 240), (400, 255), (450, 205), (522, 235)], horizon + 1, x0=300
    )
    c.paste(left, "#6c4a86")
    c.paste(right, "#5d3f7c")

    back = Cut()
    back.hill(horizon - 12, [(6, 200, 0.4), (3, 70, 1.0)], bottom=horizon + 1)
    c.paste(back, "#815a92")

    lake = Cut()
    lake.rect(-10, horizon, SIZE + 10, SIZE + 10)
    c.paste(
        lake, vgrad([(horizon, "#f0a17a"), (360, "#a76c96"), (512, "#43376e")]), shadow=NO_SHADOW
    )

    refl = Cut()
    for i, (w, h) in enumerate(
        [(120, 5), (96, 4), (80, 4), (60, 3.5), (44, 3), (30, 3), (18, 2.5)]
    ):
        y = horizon + 8 + i * 11
        refl.rect(256 - w / 2, y, 256 + w / 2, y + h, radius=h / 2)
    c.paste(refl, "#ffd98a", shadow=NO_SHADOW, opacity=0.8)

    ripples = Cut()
    for x, y, w in [(90, 350, 70), (420, 338, 60), (160, 410, 90), (370, 430, 80), (60, 470, 60)]:
        ripples.rect(x - w / 2, y, x + w / 2, y + 2.5, radius=1.2)
    c.paste(ripples, "#c98aa8", shadow=NO_SHADOW, opacity=0.6)

    reeds = Cut()
    for i, x in enumerate([18, 30, 44, 55, 70, 448, 462, 476, 490, 503]):
        h = 90 + 40 * math.sin(i * 1.7) ** 2
        lean = 10 * math.sin(i * 2.3)
        pts = [(x + lean * (t * t), SIZE + 5 - h * t) for t in np.linspace(0, 1, 12)]
        reeds.ribbon(pts, list(np.linspace(4.0, 1.0, 12)))
        if i % 2 == 0:
            tx, ty = pts[-3]
            reeds.rect(tx - 3.2, ty - 12, tx + 3.2, ty + 8, radius=3.2)
    shore = Cut()
    shore.hill(490, [(10, 300, 0.5), (5, 80, 1.0)])
    c.paste(reeds, "#2c2250")
    c.paste(shore, "#2a2150")


SEA_COLORS = ["#3a6a9c", "#2f5d8d", "#264f7c", "#1d406a", "#153258"]


def sea_layer(c: Canvas, i: int, horizon: float) -> None:
    """One layer of night-sea waves with a few foam strips."""
    col = SEA_COLORS[i]
    y = horizon + i * 38
    wave = Cut()
    r = wave.hill(y, [(5 + i * 1.5, 90 + i * 25, i * 1.3), (2 + i, 37 + i * 9, i * 0.7)])
    c.paste(wave, vgrad([(y - 10, col), (y + 60, mix(hexc(col), (10, 20, 45), 0.3))]))
    foam = Cut()
    for _ in range(6):
        x = float(c.rng.uniform(10, 500))
        if i < 2 and x > 300:
            continue  # hidden behind the cliff anyway
        fy = r(x)
        foam.rect(x - 14, fy + 6, x + 14, fy + 8.5, radius=1.2)
    c.paste(foam, "#9bb9d9", shadow=NO_SHADOW, opacity=0.55)


def scene_lighthouse_night(c: Canvas) -> None:
    horizon = 330
    c.fill(vgrad([(0, "#0b1838"), (200, "#1d3766"), (horizon, "#3b5f8f")]))
    c.stars(140, 300)
    c.glow(95, 95, 70, "#dfe6ff", 0.35)
    moon = Cut().ellipse(95, 95, 34)
    moon.ellipse(112, 84, 30, erase=True)
    c.paste(moon, "#fbf3d0", shadow=SOFT_SHADOW)

    for i in range(2):
        sea_layer(c, i, horizon)

    cliff = Cut()
    cliff.polygon(
        [(300, SIZE + 10), (318, 330), (340, 270), (368, 240), (522, 232), (522, SIZE + 10)]
    )
    c.paste(cliff, vgrad([(230, "#3b4a5f"), (512, "#1e2736")]))
    grass = Cut()
    grass.polygon(
        [
            (338, 274),
            (368, 236),
            (522, 228),
            (522, 246),
            (470, 250),
            (410, 246),
            (372, 256),
            (350, 280),
        ]
    )
    c.paste(grass, "#2f5a4d", shadow=SOFT_SHADOW)

    # lighthouse
    bx, base_y, top_y = 430, 238, 118
    bw, tw = 26, 17

    def half(y: float) -> float:
        return tw + (bw - tw) * (y - top_y) / (base_y - top_y)

    tower = Cut()
    tower.polygon(
        [(bx - bw, base_y + 2), (bx - tw, top_y), (bx + tw, top_y), (bx + bw, base_y + 2)]
    )
    c.paste(tower, hgrad([(bx - bw, "#f4f1ea"), (bx + bw, "#c9c4bc")]))
    stripes = Cut()
    for y0 in (top_y + 18, top_y + 58, top_y + 98):
        y1 = min(y0 + 20, base_y + 2)
        stripes.polygon(
            [(bx - half(y0), y0), (bx + half(y0), y0), (bx + half(y1), y1), (bx - half(y1), y1)]
        )
    c.paste(stripes, hgrad([(bx - bw, "#d8434a"), (bx + bw, "#a52d3a")]), shadow=NO_SHADOW)

    # light beam (screen-blended, fading with distance)
    beam = Cut()
    beam.polygon([(bx - 6, top_y - 16), (-40, 40), (-40, 190)])
    beam_a = np.asarray(beam.img.filter(ImageFilter.GaussianBlur(6 * SS)), dtype=np.float32) / 255.0
    fade = np.clip(0.15 + 0.85 * (_XX / bx), 0, 1)
    c.screen((255, 226, 150), beam_a * fade * 0.55)
    c.glow(bx, top_y - 16, 40, "#fff0b0", 0.6)

    lantern = Cut()
    lantern.rect(bx - 13, top_y - 26, bx + 13, top_y - 4)
    c.paste(lantern, "#ffe27a", shadow=NO_SHADOW)
    frame = Cut()
    frame.rect(bx - 20, top_y - 5, bx + 20, top_y + 2)
    frame.polygon([(bx - 16, top_y - 26), (bx, top_y - 44), (bx + 16, top_y - 26)])
    frame.rect(bx - 1.5, top_y - 26, bx + 1.5, top_y - 4)
    frame.rect(bx - 1.5, top_y - 52, bx + 1.5, top_y - 40)
    c.paste(frame, "#2b2f3f", shadow=SOFT_SHADOW)
    door = Cut()
    door.rect(bx - 6, base_y - 20, bx + 6, base_y + 2, radius=5)
    c.paste(door, "#3a2a2e", shadow=NO_SHADOW)

    for i in range(2, len(SEA_COLORS)):
        sea_layer(c, i, horizon)
    # moon path on the water
    path = Cut()
    for i in range(6):
        y = horizon + 14 + i * 26
        w = 30 + i * 10
        path.rect(95 - w / 2, y, 95 + w / 2, y + 3, radius=1.5)
    c.paste(path, "#e9e3c1", shadow=NO_SHADOW, opacity=0.45)


def scene_desert_dunes(c: Canvas) -> None:
    c.fill(vgrad([(0, "#5fb2e0"), (210, "#bfe2ee"), (300, "#fbe6bf")]))
    sun_disc(c, 380, 110, 44, "#fff3c0", "#fffbe8", 140, 0.6)

    mesas = Cut()
    mesas.polygon([(20, 300), (40, 232), (110, 228), (130, 300)])
    mesas.polygon([(120, 300), (132, 262), (170, 260), (182, 300)])
    mesas.polygon([(330, 300), (350, 210), (420, 205), (448, 300)])
    mesas.rect(-10, 280, SIZE + 10, 310)
    c.paste(mesas, vgrad([(200, "#d58a63"), (300, "#c47352")]))

    layers = [
        (300, "#f3cf91", "#eebe7c", [(14, 330, 0.3), (6, 120, 1.2)]),
        (345, "#f0bb73", "#e6a45f", [(22, 390, 2.0), (8, 140, 0.1)]),
        (405, "#e7a25a", "#d98a48", [(26, 460, 4.1), (9, 170, 2.5)]),
        (470, "#d88643", "#c06f35", [(16, 330, 1.4), (6, 120, 0.2)]),
    ]
    for idx, (base, top, bot, waves) in enumerate(layers):
        cut = Cut()
        r = cut.hill(base, waves)
        if idx == 1:
            cactus(cut, 92, r(92) + 4, 52)
            cactus(cut, 430, r(430) + 4, 40)
        if idx == 2:
            cactus(cut, 300, r(300) + 5, 96)
        c.paste(cut, vgrad([(base - 30, top), (base + 90, bot)]))
        if idx == 1:
            cac = Cut()
            cactus(cac, 92, r(92) + 4, 52)
            cactus(cac, 430, r(430) + 4, 40)
            c.paste(cac, "#5b8c4e", shadow=NO_SHADOW)
        if idx == 2:
            cac = Cut()
            cactus(cac, 300, r(300) + 5, 96)
            c.paste(cac, hgrad([(285, "#6a9b56"), (320, "#4d7d44")]), shadow=NO_SHADOW)


def cactus(cut: Cut, x: float, base: float, h: float) -> None:
    """Saguaro cactus with two arms."""
    w = h * 0.18
    cut.rect(x - w / 2, base - h, x + w / 2, base + 2, radius=w / 2)
    aw = w * 0.8
    # left arm
    cut.rect(x - w * 1.7, base - h * 0.62, x - w * 1.7 + aw, base - h * 0.32, radius=aw / 2)
    cut.rect(x - w * 1.7, base - h * 0.38, x, base - h * 0.38 + aw, radius=aw / 2)
    # right arm
    cut.rect(x + w * 1.7 - aw, base - h * 0.8, x + w * 1.7, base - h * 0.45, radius=aw / 2)
    cut.rect(x, base - h * 0.5, x + w * 1.7, base - h * 0.5 + aw, radius=aw / 2)


def scene_autumn_forest(c: Canvas) -> None:
    c.fill(vgrad([(0, "#f4c27a"), (200, "#f9dca4"), (320, "#fbe9c7")]))
    sun_disc(c, 120, 170, 36, "#f6a05a", "#fff0c8", 110, 0.55)
    birds = Cut()
    for bx, by, s in ((330, 90, 9), (352, 104, 7), (372, 84, 8), (300, 112, 6)):
        birds.line([(bx - s, by - s * 0.4), (bx, by), (bx + s, by - s * 0.4)], 1.6)
    c.paste(birds, "#7a4a3a", shadow=NO_SHADOW)

    far = Cut()
    r = far.hill(290, [(16, 300, 1.0), (7, 110, 0.2)])
    for x in range(8, 512, 26):
        far.round_tree(x, r(x) + 6, 34 + 8 * math.sin(x), 13)
    c.paste(far, vgrad([(250, "#e8a868"), (360, "#d98e56")]))

    mid = Cut()
    r = mid.hill(350, [(22, 380, 2.6), (8, 140, 0.9)])
    for x in range(20, 512, 40):
        mid.round_tree(x + 6 * math.sin(x * 0.7), r(x) + 6, 58 + 12 * math.sin(x * 1.3), 20)
    c.paste(mid, vgrad([(280, "#d5633f"), (420, "#b84a34")]))

    near = Cut()
    r = near.hill(415, [(24, 430, 4.4), (7, 150, 1.7)])
    for x, h, rad in ((70, 110, 34), (210, 96, 30), (330, 128, 38), (455, 100, 31)):
        near.round_tree(x, r(x) + 6, h, rad)
    c.paste(near, vgrad([(290, "#f2b544"), (512, "#d98f2e")]))

    front = Cut()
    front.hill(478, [(12, 280, 3.0), (5, 100, 0.6)])
    c.paste(front, vgrad([(460, "#8e4a2e"), (512, "#6e3722")]))

    leaves = Cut()
    for _ in range(26):
        x = float(c.rng.uniform(10, 500))
        y = float(c.rng.uniform(60, 460))
        ang = float(c.rng.uniform(0, math.pi))
        s = float(c.rng.uniform(4.5, 7.5))
        dx, dy = math.cos(ang) * s, math.sin(ang) * s
        nx, ny = -dy * 0.45, dx * 0.45
        leaves.polygon([(x - dx, y - dy), (x + nx, y + ny), (x + dx, y + dy), (x - nx, y - ny)])
    c.paste(leaves, "#c5462e", shadow=SOFT_SHADOW)


def scene_misty_valley(c: Canvas) -> None:
    c.fill(vgrad([(0, "#a9d6d2"), (190, "#e6efdc"), (280, "#f7ebd0")]))
    sun_disc(c, 256, 160, 30, "#fff4dc", "#ffffff", 110, 0.55)

    def mist(y: float, strength: float) -> None:
        m = Cut()
        m.hill(y, [(6, 240, 0.4), (3, 90, 2.0)])
        a = np.clip((_YY - (y - 10)) / 40.0, 0, 1) * np.clip(1 - (_YY - y) / 70.0, 0, 1)
        c.paste(m, "#f4f7ef", shadow=NO_SHADOW, opacity=a * strength, soften=6)

    far = Cut()
    far.mountains(
        [
            (-10, 220),
            (50, 170),
            (110, 205),
            (170, 150),
            (230, 215),
            (300, 230),
            (360, 160),
            (420, 190),
            (470, 140),
            (522, 180),
        ],
        260,
    )
    c.paste(far, vgrad([(140, "#9cc7c1"), (280, "#84b6b0")]))
    mist(245, 0.7)
    mid = Cut()
    mid.mountains(
        [
            (-10, 250),
            (40, 215),
            (120, 270),
            (190, 235),
            (240, 290),
            (290, 290),
            (350, 240),
            (420, 205),
            (522, 255),
        ],
        320,
    )
    c.paste(mid, vgrad([(200, "#6aa6a1"), (340, "#4f8f8d")]))
    mist(300, 0.65)

    valley = Cut()
    r0 = valley.hill(320, [(6, 220, 1.0), (3, 80, 0.4)])
    copse = Cut()
    for x in (150, 163, 176, 330, 344, 358, 372):
        copse.pine(x, r0(x) + 4, 26 + (x % 3) * 4, 13, tiers=3)
    c.paste(copse, "#5e9a7a", shadow=SOFT_SHADOW)
    c.paste(valley, vgrad([(310, "#8fbf94"), (512, "#5f9c72")]))

    # winding river
    river = Cut()
    ts = np.linspace(0, 1.15, 70)
    pts = [(256 + 55 * math.sin(t * 5.5) * t, 320 + 200 * t**1.2) for t in ts]
    river.ribbon(pts, [4 + 110 * t**2 for t in ts])
    c.paste(river, vgrad([(320, "#e9f2e8"), (512, "#86bfd0")]), shadow=SOFT_SHADOW)

    left = Cut()
    r = left.hill(360, [(30, 360, 1.9), (6, 90, 0.1)], x0=-10, x1=200, fade=(60, 160))
    for x in (14, 40, 66):
        left.pine(x, r(x) + 5, 70 + (x % 5) * 5, 30, tiers=4)
    c.paste(left, vgrad([(290, "#3f7c6e"), (512, "#2a5c52")]))

    right = Cut()
    r2 = right.hill(400, [(25, 300, 0.2), (6, 70, 1.4)], x0=320, x1=SIZE + 10, fade=(430, 330))
    for x in (436, 462, 490):
        right.pine(x, r2(x) + 5, 84 + (x % 4) * 6, 34, tiers=4)
    c.paste(right, vgrad([(300, "#356b60"), (512, "#234c44")]))

    front = Cut()
    front.hill(500, [(6, 200, 0.3), (3, 70, 1.8)])
    c.paste(front, "#1f4440")


def palm(cut: Cut, x: float, base: float, h: float, lean: float) -> None:
    """Palm tree with a curved trunk and drooping fronds."""
    ts = np.linspace(0, 1, 20)
    pts = [(x + lean * t * t, base - h * t) for t in ts]
    cut.ribbon(pts, [h * 0.08 * (1 - 0.45 * t) for t in ts])
    tx, ty = pts[-1]
    for ang, length in (
        (-160, 0.55),
        (-130, 0.5),
        (-95, 0.38),
        (-55, 0.5),
        (-20, 0.55),
        (160, 0.42),
        (25, 0.42),
    ):
        rad = math.radians(ang)
        dx, dy = math.cos(rad), math.sin(rad)
        L = h * length
        fs = np.linspace(0, 1, 16)
        fpts = [(tx + dx * L * f, ty + dy * L * f + L * 0.45 * f * f) for f in fs]
        cut.ribbon(fpts, [h * 0.1 * math.sin(math.pi * min(f * 1.1, 1.0)) + 0.5 for f in fs])
    cut.ellipse(tx, ty, h * 0.04)


def scene_tropical_island(c: Canvas) -> None:
    horizon = 290
    c.fill(vgrad([(0, "#3fb0e0"), (200, "#a6e0f0"), (horizon, "#e3f7f5")]))
    sun_disc(c, 420, 80, 30, "#fff8d8", "#ffffff", 100, 0.55)
    cl = Cut()
    cl.cloud(120, 90, 110)
    cl.cloud(300, 150, 80)
    c.paste(cl, "#ffffff", shadow=SOFT_SHADOW)

    sea_cols = [
        ("#5fd0d6", "#48bccb"),
        ("#3fb6c8", "#2ea0ba"),
        ("#2a9bb6", "#1f82a2"),
        ("#1c7f9f", "#146787"),
    ]
    far_island = Cut()
    far_island.hill(horizon - 14, [(10, 120, 1.0)], x0=20, x1=140, bottom=horizon + 2)
    c.paste(far_island, "#7fb49a", shadow=SOFT_SHADOW)

    sea0 = Cut()
    sea0.rect(-10, horizon, SIZE + 10, SIZE + 10)
    c.paste(sea0, vgrad([(horizon, sea_cols[0][0]), (512, sea_cols[0][1])]), shadow=NO_SHADOW)

    # sailboat
    boat = Cut()
    sx, sy = 120, 322
    boat.polygon([(sx - 30, sy), (sx + 32, sy), (sx + 22, sy + 11), (sx - 22, sy + 11)])
    c.paste(boat, "#b5573e", shadow=SOFT_SHADOW)
    sail = Cut()
    sail.polygon([(sx + 2, sy - 4), (sx + 2, sy - 70), (sx + 34, sy - 4)])
    sail.polygon([(sx - 3, sy - 4), (sx - 3, sy - 58), (sx - 26, sy - 4)])
    c.paste(sail, hgrad([(sx - 26, "#f2efe6"), (sx + 34, "#ffffff")]), shadow=SOFT_SHADOW)

    island = Cut()
    island.ellipse(350, 392, 150, 46)

    def r_isl(x: float) -> float:
        return 392 - 46 * math.sqrt(max(0.0, 1 - ((x - 350) / 150) ** 2))

    palm(island, 320, r_isl(320) + 6, 150, 30)
    palm(island, 395, r_isl(395) + 6, 120, -26)
    palm(island, 270, r_isl(270) + 8, 92, -18)
    c.paste(island, "#2f7a4a")
    sand = Cut()
    sand.ellipse(350, 398, 156, 38)
    c.paste(sand, vgrad([(360, "#f7e3a8"), (440, "#e9c77e")]), shadow=SOFT_SHADOW)

    for i, (top, bot) in enumerate(sea_cols[1:], start=1):
        y = 410 + (i - 1) * 36
        w = Cut()
        r = w.hill(y, [(5, 110 + 20 * i, i * 1.1), (3, 47, i * 2.2)])
        c.paste(w, vgrad([(y - 6, top), (y + 80, bot)]))
        foam = Cut()
        for k in range(5):
            x = 40 + k * 105 + 20 * i
            foam.rect(x - 16, r(x) + 5, x + 16, r(x) + 7.5, radius=1.2)
        c.paste(foam, "#d9f5f4", shadow=NO_SHADOW, opacity=0.6)


def house(cut: Cut, x: float, base: float, w: float, h: float) -> tuple[float, float, float]:
    """Small house; returns (roof_apex_y, wall_top_y, half_width)."""
    wall_top = base - h
    cut.rect(x - w / 2, wall_top, x + w / 2, base + 2)
    apex = wall_top - w * 0.45
    cut.polygon([(x - w / 2 - 4, wall_top + 1), (x, apex), (x + w / 2 + 4, wall_top + 1)])
    cut.rect(x + w * 0.18, apex + w * 0.06, x + w * 0.32, wall_top - w * 0.1)
    return apex, wall_top, w / 2


def scene_winter_village(c: Canvas) -> None:
    c.fill(vgrad([(0, "#34407a"), (150, "#7a6aa0"), (260, "#e8a3a0"), (320, "#f7c8a4")]))
    c.stars(40, 140, min_r=0.4, max_r=1.1)
    moon = Cut().ellipse(410, 80, 22)
    moon.ellipse(420, 73, 20, erase=True)
    c.paste(moon, "#fff3d6", shadow=SOFT_SHADOW)

    far = Cut()
    far.mountains(
        [
            (-10, 260),
            (60, 210),
            (130, 250),
            (200, 195),
            (280, 255),
            (360, 205),
            (430, 240),
            (522, 200),
        ],
        290,
    )
    c.paste(far, vgrad([(190, "#b9b4d6"), (300, "#a19dc7")]))

    mid = Cut()
    r = mid.hill(320, [(12, 320, 0.6), (5, 110, 2.0)])
    for x in range(10, 512, 30):
        if 140 < x < 370:
            continue
        mid.pine(x, r(x) + 5, 46 + 8 * math.sin(x), 22, tiers=3)
    c.paste(mid, vgrad([(270, "#d7dcef"), (380, "#c3c9e4")]))

    # houses
    hs = Cut()
    roofs = Cut()
    windows = Cut()
    specs = [(175, 372, 48, 40), (245, 362, 60, 50), (318, 376, 44, 36)]
    for x, base, w, h in specs:
        apex, wall_top, hw = house(hs, x, base, w, h)
        roofs.polygon(
            [
                (x - hw - 6, wall_top + 3),
                (x, apex - 3),
                (x + hw + 6, wall_top + 3),
                (x + hw + 6, wall_top + 7),
                (x, apex + 4),
                (x - hw - 6, wall_top + 7),
            ]
        )
        ww = w * 0.16
        windows.rect(
            x - hw * 0.6,
            wall_top + h * 0.25,
            x - hw * 0.6 + ww,
            wall_top + h * 0.25 + ww * 1.2,
            radius=1,
        )
        windows.rect(
            x + hw * 0.6 - ww,
            wall_top + h * 0.25,
            x + hw * 0.6,
            wall_top + h * 0.25 + ww * 1.2,
            radius=1,
        )
        windows.rect(x - ww * 0.6, base - h * 0.42, x + ww * 0.6, base + 1, radius=2)
    c.paste(hs, hgrad([(150, "#8a5a6a"), (340, "#6a4560")]))
    halo = (
        np.asarray(windows.img.filter(ImageFilter.GaussianBlur(5 * SS)), dtype=np.float32) / 255.0
    )
    c.screen((255, 200, 110), np.clip(halo * 1.2, 0, 1) * 0.7)
    c.paste(windows, "#ffd77e", shadow=NO_SHADOW)
    c.paste(roofs, "#f5f4fb", shadow=SOFT_SHADOW)

    near_snow = Cut()
    r = near_snow.hill(392, [(10, 360, 3.3), (4, 120, 0.2)])
    near = Cut()
    for x, h in ((40, 100), (80, 76), (420, 90), (462, 118), (500, 84)):
        near.pine(x, r(x) + 10, h, h * 0.45, tiers=4)
    c.paste(near, vgrad([(300, "#2f4f6e"), (512, "#24405c")]))
    c.paste(near_snow, vgrad([(370, "#eef1fa"), (512, "#c6cde6")]))

    front = Cut()
    front.hill(470, [(10, 300, 1.3), (4, 100, 0.1)])
    c.paste(front, vgrad([(450, "#dfe4f4"), (512, "#b8c1df")]))

    snow = Cut()
    for _ in range(110):
        x = float(c.rng.uniform(0, SIZE))
        y = float(c.rng.uniform(0, SIZE))
        snow.ellipse(x, y, float(c.rng.uniform(0.9, 2.2)))
    c.paste(snow, "#ffffff", shadow=NO_SHADOW, opacity=0.85)


def scene_farm_fields(c: Canvas) -> None:
    c.fill(vgrad([(0, "#5aaee2"), (220, "#bfe4f4"), (290, "#eaf6ef")]))
    sun_disc(c, 450, 70, 28, "#fff6cf", "#ffffff", 100, 0.5)
    cl = Cut()
    cl.cloud(90, 80, 100)
    cl.cloud(290, 120, 140)
    c.paste(cl, "#ffffff", shadow=SOFT_SHADOW)

    def striped(y0: float, y1: float, a: str, b: str, period: float, angle: float) -> np.ndarray:
        u = _XX * math.cos(angle) + _YY * math.sin(angle)
        s = (np.sin(2 * math.pi * u / period) > 0).astype(np.float32)
        g1 = vgrad([(y0, a), (y1, mix(hexc(a), (40, 60, 30), 0.15))])
        g2 = vgrad([(y0, b), (y1, mix(hexc(b), (40, 60, 30), 0.15))])
        return g1 * s[..., None] + g2 * (1 - s[..., None])

    far = Cut()
    r = far.hill(270, [(10, 300, 0.8), (5, 100, 2.4)])
    for x in range(14, 512, 38):
        far.round_tree(x, r(x) + 5, 22, 9)
    c.paste(far, vgrad([(250, "#a7cf8a"), (320, "#92c07a")]))

    f1 = Cut()
    f1.hill(305, [(14, 340, 2.2), (6, 130, 0.7)])
    c.paste(f1, striped(280, 380, "#e9cf6a", "#dcbc55", 14, 1.25))

    barn_cut = Cut()
    bx, by = 150, 320
    barn_cut.polygon(
        [
            (bx - 34, by + 2),
            (bx - 34, by - 34),
            (bx - 24, by - 52),
            (bx, by - 62),
            (bx + 24, by - 52),
            (bx + 34, by - 34),
            (bx + 34, by + 2),
        ]
    )
    silo = Cut()
    silo.rect(bx + 34, by - 62, bx + 58, by + 2)
    silo.ellipse(bx + 46, by - 62, 12, 10)
    c.paste(silo, hgrad([(bx + 34, "#d9dde2"), (bx + 58, "#a9b0b9")]))
    c.paste(barn_cut, hgrad([(bx - 34, "#d24a3c"), (bx + 34, "#a83a32")]))
    trim = Cut()
    trim.rect(bx - 14, by - 26, bx + 14, by + 2)
    trim.rect(bx - 7, by - 48, bx + 7, by - 36)
    c.paste(trim, "#f4efe4", shadow=NO_SHADOW)
    door = Cut()
    door.rect(bx - 11, by - 23, bx + 11, by + 2)
    c.paste(door, "#8e2f2a", shadow=NO_SHADOW)
    cross = Cut()
    cross.line([(bx - 11, by - 23), (bx + 11, by + 2)], 2.2)
    cross.line([(bx + 11, by - 23), (bx - 11, by + 2)], 2.2)
    cross.rect(bx - 5, by - 46, bx + 5, by - 38)
    c.paste(cross, "#f4efe4", shadow=NO_SHADOW)
    loft = Cut()
    loft.rect(bx - 5, by - 46, bx + 5, by - 38)
    c.paste(loft, "#6e2622", shadow=NO_SHADOW)

    f2 = Cut()
    r2 = f2.hill(360, [(18, 420, 4.0), (6, 160, 1.5)])
    trees = Cut()
    for x in (330, 370, 470):
        trees.round_tree(x, r2(x) + 6, 60, 22)
    c.paste(trees, vgrad([(280, "#5fa35a"), (380, "#4a8a48")]))
    c.paste(f2, striped(330, 440, "#8cc46a", "#7ab45c", 18, 1.8))

    f3 = Cut()
    f3.hill(420, [(16, 380, 0.6), (6, 140, 3.1)])
    c.paste(f3, striped(400, 512, "#c9a44f", "#b88f3f", 22, 1.2))

    f4 = Cut()
    r4 = f4.hill(475, [(10, 300, 2.0), (4, 110, 0.8)])
    trees = Cut()
    for x in (40, 470):
        trees.round_tree(x, r4(x) + 8, 90, 32)
    c.paste(trees, vgrad([(380, "#3f8a45"), (470, "#2f6e37")]))
    c.paste(f4, vgrad([(440, "#4f8f4a"), (512, "#3d743b")]))


def blossom_tree(cut: Cut, x: float, base: float, h: float) -> list[tuple[float, float, float]]:
    """Trunk + branches; returns canopy blobs (cx, cy, r) for a separate layer."""
    ts = np.linspace(0, 1, 12)
    cut.ribbon(
        [(x + 6 * math.sin(t * 3), base - h * 0.6 * t) for t in ts],
        [h * 0.07 * (1 - 0.4 * t) for t in ts],
    )
    top = (x + 6 * math.sin(3), base - h * 0.6)
    blobs: list[tuple[float, float, float]] = []
    for ang, L in ((-140, 0.32), (-100, 0.3), (-60, 0.34), (-30, 0.22), (-165, 0.2)):
        rad = math.radians(ang)
        ex = top[0] + math.cos(rad) * h * L
        ey = top[1] + math.sin(rad) * h * L
        cut.ribbon(
            [top, ((top[0] + ex) / 2, (top[1] + ey) / 2 - 3), (ex, ey)],
            [h * 0.04, h * 0.028, h * 0.012],
        )
        blobs.append((ex, ey, h * 0.17))
    blobs.append((top[0], top[1] - h * 0.12, h * 0.22))
    return blobs


def scene_cherry_blossom(c: Canvas) -> None:
    c.fill(vgrad([(0, "#c8e3f2"), (200, "#fbe4ea"), (300, "#fff3e8")]))
    sun_disc(c, 100, 120, 28, "#fff9ee", "#ffffff", 90, 0.5)

    fuji = Cut()
    fuji.polygon([(60, 300), (200, 170), (225, 158), (262, 158), (290, 172), (440, 300)])
    c.paste(fuji, vgrad([(150, "#9fb4d8"), (300, "#b8c8e6")]))
    cap = Cut()
    zig = [
        (290, 172),
        (304, 190),
        (290, 196),
        (278, 188),
        (262, 200),
        (246, 192),
        (232, 204),
        (216, 190),
        (200, 196),
        (184, 186),
        (200, 170),
        (225, 158),
        (262, 158),
    ]
    cap.polygon(zig)
    c.paste(cap, "#f7f8fc", shadow=NO_SHADOW)

    far = Cut()
    far.hill(290, [(10, 300, 0.2), (5, 120, 1.3)])
    c.paste(far, vgrad([(270, "#cbe3b6"), (330, "#b3d69d")]))

    pond = Cut()
    pond.ellipse(270, 352, 120, 22)
    c.paste(pond, vgrad([(330, "#d4ecf2"), (374, "#a9d2e0")]), shadow=SOFT_SHADOW)

    def layer_with_trees(
        base: float,
        waves: Sequence[tuple[float, float, float]],
        trees: Sequence[tuple[float, float]],
        top: str,
        bot: str,
        bark: str,
        petals: tuple[str, str],
    ) -> None:
        ground = Cut()
        r = ground.hill(base, waves)
        trunks = Cut()
        canopy = Cut()
        canopy_hi = Cut()
        for tx, th in trees:
            for cx, cy, rr in blossom_tree(trunks, tx, r(tx) + 6, th):
                canopy.ellipse(cx, cy, rr, rr * 0.9)
                canopy_hi.ellipse(cx - rr * 0.2, cy - rr * 0.25, rr * 0.6, rr * 0.5)
        c.paste(trunks, bark, shadow=SOFT_SHADOW)
        c.paste(canopy, petals[0])
        c.paste(canopy_hi, petals[1], shadow=NO_SHADOW, opacity=0.9)
        c.paste(ground, vgrad([(base - 20, top), (base + 80, bot)]))

    layer_with_trees(
        370,
        [(12, 330, 2.1), (5, 120, 0.1)],
        [(60, 120), (450, 140)],
        "#9fcf86",
        "#86bd70",
        "#6b4a4a",
        ("#f4a9c0", "#fbd0dc"),
    )
    layer_with_trees(
        450,
        [(14, 380, 0.4), (6, 140, 2.6)],
        [(140, 190), (380, 170)],
        "#78b463",
        "#5e9a50",
        "#5a3a3c",
        ("#ee8fae", "#f9c2d3"),
    )

    petals = Cut()
    for _ in range(40):
        x = float(c.rng.uniform(0, SIZE))
        y = float(c.rng.uniform(0, SIZE))
        s = float(c.rng.uniform(2.0, 3.6))
        petals.ellipse(x, y, s, s * 0.65)
    c.paste(petals, "#f7b6c9", shadow=SOFT_SHADOW)


def scene_aurora(c: Canvas) -> None:
    c.fill(vgrad([(0, "#050e24"), (200, "#0d2a48"), (330, "#17456a")]))
    c.stars(170, 320, min_r=0.4, max_r=1.3)

    # aurora curtains: bright lower edge, fading streaks above
    curtains = (
        (70, 0.32, 28, 0.4, (90, 255, 170), 0.85),
        (30, 0.18, 20, 2.2, (120, 220, 255), 0.5),
    )
    for start, slope, amp, phase, col, strength in curtains:
        cy = (
            start
            + slope * _XX
            + amp * np.sin(_XX / 70.0 + phase)
            + 9 * np.sin(_XX / 29.0 + phase * 2)
        )
        dy = _YY - cy
        below = np.exp(-((np.maximum(dy, 0) / 5.0) ** 2))
        above = np.exp(-np.maximum(-dy, 0) / 45.0)
        streak = 0.55 + 0.25 * np.sin(_XX / 5.3 + phase) + 0.2 * np.sin(_XX / 13.1 + 1.7 * phase)
        envelope = 0.35 + 0.65 * np.sin(np.clip(_XX / SIZE, 0, 1) * math.pi * 1.1 + 0.15) ** 2
        alpha = np.where(dy > 0, below, above) * streak * envelope * strength
        topcol = np.array([170, 110, 255], np.float32)
        t = np.clip(-dy / 120.0, 0, 1)[..., None]
        colarr = np.asarray(col, np.float32) * (1 - t) + topcol * t
        c.screen(colarr, np.clip(alpha, 0, 1))

    far = Cut()
    far.mountains(
        [
            (-10, 300),
            (70, 250),
            (150, 290),
            (230, 235),
            (320, 295),
            (400, 250),
            (470, 275),
            (522, 245),
        ],
        330,
    )
    c.paste(far, vgrad([(230, "#4d6f91"), (340, "#3b5a7c")]))

    lake = Cut()
    lake.rect(-10, 330, SIZE + 10, 400)
    c.paste(lake, vgrad([(330, "#2f6a72"), (400, "#1d4a5a")]), shadow=NO_SHADOW)
    glint = Cut()
    for i in range(5):
        y = 338 + i * 12
        glint.rect(200 - i * 14, y, 320 + i * 10, y + 2.5, radius=1.2)
    c.paste(glint, "#6fe0b0", shadow=NO_SHADOW, opacity=0.35)

    mid = Cut()
    mid.hill(385, [(14, 340, 0.4), (5, 110, 1.9)])
    c.paste(mid, vgrad([(360, "#dfe9f5"), (470, "#bccde2")]))

    snow = Cut()
    r2 = snow.hill(452, [(18, 400, 2.6), (6, 130, 0.8)])
    pines = Cut()
    for x in (-4, 24, 54, 86, 118, 392, 420, 450, 478, 506):
        h = 110 + 35 * math.sin(x * 0.9) ** 2
        pines.pine(x, r2(x) + 10, h, h * 0.42, tiers=5)
    c.paste(pines, vgrad([(280, "#13293f"), (512, "#0c1c2e")]))
    c.paste(snow, vgrad([(420, "#f2f6fc"), (512, "#c4d2e6")]))


@dataclass(frozen=True)
class SceneSpec:
    seed: int
    draw: Callable[[Canvas], None]
    caption: str | None


SCENES: list[SceneSpec] = [
    SceneSpec(
        101,
        scene_sunrise_hills,
        "layered green hills at sunrise, orange sun, pine trees, white clouds, soft gradient sky",
    ),
    SceneSpec(
        102,
        scene_snowy_mountains,
        "snowy mountain peaks, alpine meadow, pine forest, blue sky, white clouds, midday",
    ),
    SceneSpec(
        103,
        scene_sunset_lake,
        "calm lake at sunset, setting sun reflected in water, purple hills, reeds, pink and orange sky",
    ),
    SceneSpec(
        104,
        scene_lighthouse_night,
        "lighthouse on a cliff at night, light beam, crescent moon, starry sky, layered ocean waves",
    ),
    SceneSpec(
        105,
        scene_desert_dunes,
        "desert sand dunes, saguaro cacti, distant mesas, bright sun, clear sky",
    ),
    SceneSpec(
        106,
        scene_autumn_forest,
        "autumn forest on rolling hills, orange and red trees, golden sky, low sun, falling leaves, birds",
    ),
    SceneSpec(
        107,
        scene_misty_valley,
        "winding river through a valley, teal mountains, morning mist, pine trees, pale sun",
    ),
    SceneSpec(
        108,
        scene_tropical_island,
        "tropical island with palm trees, turquoise sea, white sailboat, sandy beach, clear sky",
    ),
    SceneSpec(
        109,
        scene_winter_village,
        "snowy village at dusk, small houses with glowing windows, snow-covered hills, pine trees, pink twilight sky, falling snow",
    ),
    SceneSpec(
        110,
        scene_farm_fields,
        "patchwork farm fields, red barn, round trees, rolling hills, summer day, blue sky, white clouds",
    ),
    SceneSpec(111, scene_cherry_blossom, None),  # intentionally uncaptioned
    SceneSpec(112, scene_aurora, None),  # intentionally uncaptioned
]

README_TEXT = """\
# Sample dataset

Twelve 512x512 "papercut style" landscape illustrations bundled with LoRA Studio
as a demo dataset (trigger word: `papercut style`).

- `papercut_01.png` ... `papercut_12.png` - images
- `papercut_01.txt` ... `papercut_10.txt` - kohya-style captions (comma-separated
  tags, trigger word first). `papercut_11` and `papercut_12` are intentionally
  left uncaptioned so the app can demonstrate a partially captioned dataset.

Generated procedurally (deterministically, fixed seeds) by
`scripts/make_sample_dataset.py`; re-run that script to regenerate the files.

License: public domain (CC0 1.0). The images are procedurally generated and
contain no third-party material.
"""


def render(spec: SceneSpec) -> Image.Image:
    canvas = Canvas(spec.seed)
    spec.draw(canvas)
    return canvas.finish()


def save_png(img: Image.Image, path: Path) -> None:
    if QUANTIZE_COLORS:
        # Pillow ignores ``dither`` when it builds the palette itself, so build
        # the palette first and then map onto it with dithering (avoids banding).
        # A few k-means passes fix colours that median cut misses (which would
        # otherwise show up as stray dither dots on large pale areas).
        palette = img.quantize(colors=QUANTIZE_COLORS, method=Image.Quantize.MEDIANCUT, kmeans=3)
        img = img.quantize(palette=palette, dither=Image.Dither.FLOYDSTEINBERG)
    img.save(path, format="PNG", optimize=True)


def default_output_dir() -> Path:
    return Path(__file__).resolve().parent.parent / "resources" / "sample_dataset"


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument(
        "output_dir",
        nargs="?",
        type=Path,
        default=default_output_dir(),
        help="directory to write the dataset into (default: resources/sample_dataset in the repo)",
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    out_dir: Path = args.output_dir
    out_dir.mkdir(parents=True, exist_ok=True)
    total = 0
    for index, spec in enumerate(SCENES, start=1):
        stem = f"papercut_{index:02d}"
        png_path = out_dir / f"{stem}.png"
        txt_path = out_dir / f"{stem}.txt"
        save_png(render(spec), png_path)
        size = png_path.stat().st_size
        total += size
        if spec.caption is not None:
            txt_path.write_text(f"{TRIGGER}, {spec.caption}\n", encoding="utf-8")
        elif txt_path.exists():
            txt_path.unlink()
        print(f"{png_path.name}: {size / 1024:.1f} KiB{'' if spec.caption else ' (no caption)'}")
    (out_dir / "README.md").write_text(README_TEXT, encoding="utf-8")
    print(f"wrote {len(SCENES)} images ({total / 1024:.1f} KiB total) to {out_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
