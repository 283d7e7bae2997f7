"""Write the application icon set into ``resources/icons/``.

The picture is the one ``lora_studio.gui.artwork.app_icon()`` draws at run time (an indigo
tile, a sun, three paper hills), written once as SVG and rendered to the PNG sizes that
desktops, installers and high-DPI screens ask for (16 to 1024 px). Run it again after
changing the artwork:

    QT_QPA_PLATFORM=offscreen .venv/bin/python packaging/make_icons.py
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ICONS = ROOT / "resources" / "icons"
NAME = "lora-studio"
SIZES = (16, 24, 32, 48, 64, 128, 256, 512, 1024)
HILLS = ("#a5d6a7", "#66bb6a", "#2e7d32")


def svg(size: float = 256.0) -> str:
    """The icon as SVG, with artwork.app_icon()'s geometry in a ``size`` viewBox."""
    inset = size * 0.04
    left = top = inset
    right = bottom = size - inset
    w = h = right - left

    def f(v: float) -> str:
        return f"{v:.2f}".rstrip("0").rstrip(".")

    radius = size * 0.2
    # The hills end in the tile's rounded bottom corners (arcs) instead of being clipped:
    # Qt's SVG renderer, which KDE uses for icons, ignores clipPath.
    hills = []
    for i, color in enumerate(HILLS):
        base = top + h * (0.48 + 0.14 * i)
        c1 = (left + w * (0.25 + 0.1 * i), base - h * 0.22)
        c2 = (left + w * (0.55 - 0.05 * i), base + h * 0.12)
        end = (right, base - h * 0.1)
        hills.append(
            f'  <path fill="{color}" d="M{f(left)} {f(base)} '
            f"C{f(c1[0])} {f(c1[1])} {f(c2[0])} {f(c2[1])} {f(end[0])} {f(end[1])} "
            f"L{f(right)} {f(bottom - radius)} "
            f"A{f(radius)} {f(radius)} 0 0 1 {f(right - radius)} {f(bottom)} "
            f"L{f(left + radius)} {f(bottom)} "
            f'A{f(radius)} {f(radius)} 0 0 1 {f(left)} {f(bottom - radius)} Z"/>'
        )
    return "\n".join(
        [
            f'<svg xmlns="http://www.w3.org/2000/svg" width="{f(size)}" height="{f(size)}" '
            f'viewBox="0 0 {f(size)} {f(size)}">',
            "  <title>LoRA Studio</title>",
            "  <defs>",
            '    <linearGradient id="tile" x1="0" y1="0" x2="0" y2="1">',
            '      <stop offset="0" stop-color="#5c6bc0"/>',
            '      <stop offset="1" stop-color="#283593"/>',
            "    </linearGradient>",
            "  </defs>",
            f'  <rect x="{f(left)}" y="{f(top)}" width="{f(w)}" height="{f(h)}" '
            f'rx="{f(radius)}" fill="url(#tile)"/>',
            f'  <circle cx="{f(left + size * 0.68)}" cy="{f(top + size * 0.3)}" '
            f'r="{f(size * 0.13)}" fill="#ffca28"/>',
            *hills,
            "</svg>",
            "",
        ]
    )


def main() -> int:
    from PySide6.QtCore import QByteArray, Qt
    from PySide6.QtGui import QGuiApplication, QImage, QPainter
    from PySide6.QtSvg import QSvgRenderer

    app = QGuiApplication.instance() or QGuiApplication(sys.argv[:1])
    text = svg()
    scalable = ICONS / "hicolor" / "scalable" / "apps" / f"{NAME}.svg"
    scalable.parent.mkdir(parents=True, exist_ok=True)
    scalable.write_text(text, encoding="utf-8")
    renderer = QSvgRenderer(QByteArray(text.encode()))
    for size in SIZES:
        image = QImage(size, size, QImage.Format.Format_ARGB32)
        image.fill(Qt.GlobalColor.transparent)
        painter = QPainter(image)
        painter.setRenderHint(QPainter.RenderHint.Antialiasing)
        renderer.render(painter)
        painter.end()
        target = ICONS / "hicolor" / f"{size}x{size}" / "apps" / f"{NAME}.png"
        target.parent.mkdir(parents=True, exist_ok=True)
        if not image.save(str(target), "PNG"):
            print(f"could not write {target}", file=sys.stderr)
            return 1
        print(target.relative_to(ROOT))
    print(scalable.relative_to(ROOT))
    del app
    return 0


if __name__ == "__main__":
    sys.exit(main())
