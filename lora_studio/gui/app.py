"""Starting the desktop app: ``run_gui()`` (used by ``lora-studio gui`` and ``make run``)
and ``main()`` (the ``lora-studio-gui`` entry point).

Qt is imported only after the display check, so on a headless machine the app says what
to do in one line instead of failing inside Qt.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import traceback
from collections.abc import Callable
from functools import cache
from pathlib import Path
from types import TracebackType
from typing import Any

log = logging.getLogger(__name__)

APP_NAME = "LoRA Studio"
ORG_NAME = "LoRA Studio"
ORG_DOMAIN = "lora-studio.local"

NO_DISPLAY_MESSAGE = (
    "lora-studio: no display found; the window needs a desktop session. Train headless "
    "with: lora-studio train DATASET_DIR --output OUT_DIR  (or run with "
    "QT_QPA_PLATFORM=offscreen)"
)


def display_missing(environ: dict[str, str] | os._Environ[str] | None = None) -> bool:
    """``True`` on Linux when no X11/Wayland display is set and no Qt platform is forced."""
    env = os.environ if environ is None else environ
    if not sys.platform.startswith("linux"):
        return False
    if env.get("QT_QPA_PLATFORM"):
        return False
    return not (env.get("DISPLAY") or env.get("WAYLAND_DISPLAY"))


def _uses_xcb(env: dict[str, str] | os._Environ[str]) -> bool:
    platform = env.get("QT_QPA_PLATFORM", "")
    if platform:
        return platform.startswith("xcb")
    wayland = env.get("WAYLAND_DISPLAY") and env.get("XDG_SESSION_TYPE") == "wayland"
    return bool(env.get("DISPLAY")) and not wayland


def debian_package_for(soname: str) -> str:
    """Debian/Ubuntu's usual package name for a shared library, e.g.
    ``libxcb-icccm.so.4`` -> ``libxcb-icccm4``, ``libxkbcommon-x11.so.0`` ->
    ``libxkbcommon-x11-0``."""
    name, _, version = soname.partition(".so")
    version = version.lstrip(".").split(".")[0]
    if not version:
        return name.lower()
    joiner = "-" if name[-1:].isdigit() else ""
    return f"{name}{joiner}{version}".lower()


def missing_qt_library(
    environ: dict[str, str] | os._Environ[str] | None = None, plugin: Path | None = None
) -> str | None:
    """The system library Qt's X11 (xcb) plugin needs but cannot find, or ``None``.

    Qt aborts the process when its platform plugin fails to load (with a message that
    often names the wrong library), so this loads the plugin first, the same way Qt
    would, and reads the real missing library from the loader's error.
    """
    env = os.environ if environ is None else environ
    if not sys.platform.startswith("linux") or not _uses_xcb(env):
        return None
    import ctypes
    from importlib.util import find_spec

    if plugin is None:
        spec = find_spec("PySide6")
        if spec is None or not spec.submodule_search_locations:
            return None
        root = Path(next(iter(spec.submodule_search_locations)))
        plugin = root / "Qt" / "plugins" / "platforms" / "libqxcb.so"
    if not plugin.exists():
        return None
    try:
        ctypes.CDLL(str(plugin))
    except OSError as exc:
        match = re.search(r"([\w.+-]+\.so(?:\.\d+)*): cannot open shared object file", str(exc))
        return match.group(1) if match else str(exc)
    return None


SMOKE_TEST_TIMEOUT_S = 120.0


def run_gui(
    dataset: str | None = None, base_model: str | None = None, *, smoke_test: bool = False
) -> int:
    """Open the main window and run until it is closed.

    Args:
        dataset: a dataset folder to open; by default the last one, or on first start a
            copy of the bundled sample dataset.
        base_model: the base model to train on; by default the last one used, or
            ``builtin:tiny-sd15``.
        smoke_test: open the window, wait until the dataset has loaded (or failed to),
            then close it: a check that a packaged build starts (``make package-smoke``).

    Returns:
        The process exit code: 0 after a normal close (or a smoke test that opened the
        window and the dataset), 1 when a smoke test failed, 2 when there is no display.
    """
    if display_missing():
        print(NO_DISPLAY_MESSAGE, file=sys.stderr)
        return 2
    missing = missing_qt_library()
    if missing:
        print(
            f"lora-studio: Qt cannot open a window: the system library {missing} is missing. "
            f"On Debian/Ubuntu install it with: sudo apt install {debian_package_for(missing)} "
            f"(README.md lists every library Qt needs on Linux)",
            file=sys.stderr,
        )
        return 2

    import asyncio

    import qasync
    from PySide6.QtWidgets import QApplication

    from lora_studio.gui import artwork, qt_compat
    from lora_studio.gui import settings as app_settings
    from lora_studio.gui.controller import ERROR, StudioController
    from lora_studio.gui.logs import configure_logging, log_file
    from lora_studio.gui.main_window import MainWindow

    configure_logging()
    if qt_compat.applied():
        log.info(qt_compat.describe())
    app = QApplication.instance() or QApplication(sys.argv[:1])
    assert isinstance(app, QApplication)
    app.setApplicationName(APP_NAME)
    app.setApplicationDisplayName(APP_NAME)
    app.setOrganizationName(ORG_NAME)
    app.setOrganizationDomain(ORG_DOMAIN)
    # Wayland's app id: the launcher packaging/linux/lora-studio.desktop (its icon, its
    # taskbar entry).
    app.setDesktopFileName("lora-studio")
    app.setWindowIcon(artwork.app_icon())
    app.setStyle("Fusion")

    loop = qasync.QEventLoop(app)
    asyncio.set_event_loop(loop)

    settings = app_settings.open_settings()
    session = app_settings.read_session(settings)
    controller = StudioController(
        base_model=base_model or session.base_model,
        output_dir=session.output_dir,
        config=session.config,
        loop=loop,
    )
    window = MainWindow(controller, settings)
    smoke_result: list[int] = []
    if smoke_test:
        _start_smoke_test(app, window, controller, smoke_result)
    # macOS hands a folder dropped on the Dock icon (or opened with the app) to the running
    # app as a file-open event, not as an argument.
    open_filter = _file_open_filter(window.open_dataset, app)
    app.installEventFilter(open_filter)
    report = _error_reporter(window.show_message, ERROR, str(log_file()))
    previous_hook = sys.excepthook
    sys.excepthook = report
    loop.set_exception_handler(lambda _loop, context: _report_loop_error(report, context))
    window.show()
    if session.problem:
        window.show_message("warning", session.problem)
    window.start_session(dataset)

    closed = asyncio.Event()
    app.aboutToQuit.connect(closed.set)
    try:
        with loop:
            loop.run_until_complete(closed.wait())
            # The window waits for a cancelled run before closing; this is the backstop
            # for any other way out (so no QThread is destroyed while running).
            controller.shutdown()
            pending = [task for task in asyncio.all_tasks(loop) if not task.done()]
            if pending:  # let cancelled tasks finish their clean-up
                loop.run_until_complete(asyncio.wait(pending, timeout=5))
    finally:
        controller.shutdown()  # no-op after a normal exit
        sys.excepthook = previous_hook
        app.removeEventFilter(open_filter)
    return smoke_result[0] if smoke_result else 0


def _start_smoke_test(app: Any, window: Any, controller: Any, result: list[int]) -> None:
    """Close the window once the first dataset has loaded; ``result`` gets the exit code.

    One line on stdout says what opened (the packaging check greps for it); a failure or
    no dataset within :data:`SMOKE_TEST_TIMEOUT_S` is one line on stderr and code 1.
    """
    from PySide6.QtCore import QTimer

    def finish(code: int, message: str) -> None:
        if result:
            return
        result.append(code)
        print(f"lora-studio smoke test: {message}", file=sys.stderr if code else sys.stdout)
        sys.stdout.flush()
        window.close()
        QTimer.singleShot(0, app.quit)  # also when close() was refused

    def loaded(dataset: Any) -> None:
        if not window.isVisible():
            finish(1, "the window is not visible")
            return
        finish(0, f"window opened on {dataset.root} ({len(dataset)} images)")

    controller.dataset_loaded.connect(loaded)
    controller.dataset_failed.connect(lambda text: finish(1, f"the dataset failed: {text}"))
    QTimer.singleShot(
        int(SMOKE_TEST_TIMEOUT_S * 1000),
        lambda: finish(1, f"no dataset loaded within {SMOKE_TEST_TIMEOUT_S:.0f} s"),
    )


@cache
def _file_open_filter_class() -> type:
    # Defined on first use: Qt is imported only after the display checks.
    from PySide6.QtCore import QEvent, QObject
    from PySide6.QtGui import QFileOpenEvent

    class FileOpenFilter(QObject):
        """Opens the folder of a ``QFileOpenEvent`` (macOS: a folder dropped on the Dock
        icon, or "Open With" in the Finder); an image opens the folder it is in."""

        def __init__(self, open_dataset: Callable[[str], None], parent: QObject) -> None:
            super().__init__(parent)
            self._open_dataset = open_dataset

        def eventFilter(self, watched: QObject, event: QEvent) -> bool:  # noqa: N802
            if event.type() == QEvent.Type.FileOpen and isinstance(event, QFileOpenEvent):
                path = Path(event.file())
                if path.exists():
                    self._open_dataset(str(path if path.is_dir() else path.parent))
                    return True
            return super().eventFilter(watched, event)

    return FileOpenFilter


def _file_open_filter(open_dataset: Callable[[str], None], parent: Any) -> Any:
    return _file_open_filter_class()(open_dataset, parent)


def _error_reporter(
    show: Callable[[str, str], None], level: str, log_path: str
) -> Callable[[type[BaseException], BaseException, TracebackType | None], None]:
    """An excepthook: log the traceback, show one line in the window."""

    def report(kind: type[BaseException], error: BaseException, tb: TracebackType | None) -> None:
        if issubclass(kind, KeyboardInterrupt):
            sys.__excepthook__(kind, error, tb)
            return
        log.error("Unexpected error:\n%s", "".join(traceback.format_exception(kind, error, tb)))
        try:
            show(level, f"Unexpected error: {kind.__name__}: {error} (details in {log_path}).")
        except Exception:  # the window itself may be what broke; the log has it
            log.exception("Could not show the error in the window")

    return report


def _report_loop_error(
    report: Callable[[type[BaseException], BaseException, TracebackType | None], None],
    context: dict[str, Any],
) -> None:
    error = context.get("exception")
    if isinstance(error, BaseException):
        report(type(error), error, error.__traceback__)
    else:
        log.error("asyncio: %s", context.get("message", context))


def main() -> int:
    """Entry point of ``lora-studio-gui``: the same as ``lora-studio gui [PATH] [options]``."""
    from lora_studio.cli import main as cli_main

    return cli_main(["gui", *sys.argv[1:]])


if __name__ == "__main__":
    sys.exit(main())
