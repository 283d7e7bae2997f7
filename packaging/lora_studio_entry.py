"""The frozen app's entry point (PyInstaller runs this file as ``__main__``).

It is ``lora-studio`` itself: no arguments or a folder opens the window, a command runs it.
``freeze_support()`` comes first so that worker processes of a frozen app (``dataset
prepare`` uses a process pool; Windows and macOS spawn them) run their task instead of a
second copy of the app.

A frozen app has no Python interpreter to run ``python -m MODULE``, which is how training
on several GPUs starts its workers (``sys.executable -m accelerate.commands.launch ...``,
which in turn runs ``sys.executable -u -m lora_studio train ...``). So the app also
understands ``[-u] -m MODULE ARGS...`` and runs that module.
"""

from __future__ import annotations

import multiprocessing
import runpy
import sys


def _run_module(argv: list[str]) -> bool:
    """Run ``[-u] -m MODULE ARGS...`` like Python would; ``False`` for anything else."""
    args = argv[1:]
    unbuffered = False
    while args and args[0] == "-u":
        unbuffered = True
        args = args[1:]
    if len(args) < 2 or args[0] != "-m":
        return False
    if unbuffered:
        sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]
        sys.stderr.reconfigure(line_buffering=True)  # type: ignore[union-attr]
    sys.argv = [argv[0], *args[2:]]
    runpy.run_module(args[1], run_name="__main__", alter_sys=True)
    return True


if __name__ == "__main__":
    multiprocessing.freeze_support()
    if not _run_module(sys.argv):
        from lora_studio.cli import main

        sys.exit(main())
