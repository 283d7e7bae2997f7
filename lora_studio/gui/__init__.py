"""The desktop app: PySide6 widgets and item models, the qasync controller, the trainer's
QThread host and the thumbnail loader.

Nothing here is imported by the domain (``core``, ``backends``, ``training``, ``creator``);
``lora_studio.gui.app.run_gui`` is the way in.
"""

from __future__ import annotations

from lora_studio.gui import qt_compat

# Before any signal is emitted or any model is painted (see qt_compat's docstring).
qt_compat.apply()
