"""Where the desktop app logs: a rotating file under the user data folder.

The file is what a user attaches to a bug report; messages in the window stay one line
and point here for the details.
"""

from __future__ import annotations

import logging
import logging.handlers
import sys
from pathlib import Path

from lora_studio.core.paths import data_dir

LOG_FILE_NAME = "lora-studio.log"
_FORMAT = "%(asctime)s %(levelname)-7s %(threadName)s %(name)s: %(message)s"


def log_file() -> Path:
    """The current log file (``<data dir>/logs/lora-studio.log``)."""
    return data_dir() / "logs" / LOG_FILE_NAME


def configure_logging(level: int = logging.INFO) -> Path | None:
    """Send log records to the rotating log file (and warnings to stderr).

    Returns:
        The log file, or ``None`` when it cannot be created (then only stderr is used).
    """
    root = logging.getLogger()
    root.setLevel(level)
    console = logging.StreamHandler(sys.stderr)
    console.setLevel(logging.WARNING)
    console.setFormatter(logging.Formatter("lora-studio: %(levelname)s: %(message)s"))
    root.addHandler(console)
    path = log_file()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handler = logging.handlers.RotatingFileHandler(
            path, maxBytes=2_000_000, backupCount=3, encoding="utf-8"
        )
    except OSError as exc:
        root.warning("Cannot write the log file %s (%s); logging to stderr only.", path, exc)
        return None
    handler.setFormatter(logging.Formatter(_FORMAT))
    root.addHandler(handler)
    return path
