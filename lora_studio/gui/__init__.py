"""The desktop app: PySide6 widgets and item models, the qasync controller, the trainer's
QThread host and the thumbnail loader.

Nothing here is imported by the domain (``core``, ``backends``, ``training``, ``creator``);
``lora_studio.gui.app.run_gui`` is the way in.
"""

from __future__ import annotations

import os

#: Set to ``1`` to let Qt paint on its own thread pool again (see below).
KEEP_QT_PAINT_POOL = "LORA_STUDIO_QT_PAINT_POOL"

# Qt's raster engine hands every fill or scale of 96 rows or more to a thread pool of its
# own and waits for it, on the GUI thread. While the app's own work keeps the cores busy
# (thumbnail decodes, an image check, a preprocessing run, training on the CPU), those
# helper threads wait for a core and the window waits for them. Scrolling a 10,000-image
# grid on 2 cores, runs interleaved, the longest stall was 22-66 ms with the pool and
# 18-44 ms without; with two other busy processes, 44-109 ms against 31-48
# (docs/benchmarks.md, item 3). Without the pool a one-off 12 MP smooth downscale takes
# 7 ms instead of 4. Qt reads this once, when it first needs the pool: set it before any
# painting (importing this package is the first thing the app does).
if os.environ.get(KEEP_QT_PAINT_POOL) != "1":
    os.environ.setdefault("QT_NO_GUI_THREADPOOL", "1")

from lora_studio.gui import qt_compat  # noqa: E402 - after the environment is set

# Before any signal is emitted or any model is painted (see qt_compat's docstring).
qt_compat.apply()
