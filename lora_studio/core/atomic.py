"""Atomic file writes: temp file in the same folder, fsync, rename.

A reader (or a crash) sees either the old file or the new one, never half of one.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

from lora_studio.core.errors import OutputError


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes, *, durable: bool = True) -> Path:
    """Write ``data`` to ``path`` atomically and return the path.

    The file keeps the permission bits of the file it replaces. ``durable=False`` skips
    the two ``fsync`` calls: still never half a file for a reader, but after a power cut
    the file may be empty. For caches, whose readers treat an unreadable file as missing.

    Raises:
        OSError: the folder is not writable, the disk is full, ... The old file is untouched.
    """
    target = Path(path)
    folder = target.parent
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=folder)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            if durable:
                os.fsync(handle.fileno())
        try:
            mode = target.stat().st_mode & 0o7777
        except FileNotFoundError:
            umask = os.umask(0)
            os.umask(umask)
            mode = 0o666 & ~umask
        os.chmod(tmp, mode)
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
    if durable:
        _fsync_dir(folder)
    return target


def atomic_write_text(path: str | os.PathLike[str], text: str, encoding: str = "utf-8") -> Path:
    """Write ``text`` to ``path`` atomically (see :func:`atomic_write_bytes`)."""
    return atomic_write_bytes(path, text.encode(encoding))


def _fsync_dir(folder: Path) -> None:
    # Makes the rename itself durable; not every platform allows opening a folder.
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def ensure_writable_dir(folder: Path) -> None:
    """Create ``folder`` if needed and make sure a file can be written there.

    Raises:
        OutputError: with the reason (a file in the way, permission denied, read-only
            file system, ...).
    """
    if folder.exists() and not folder.is_dir():
        raise OutputError(f"The output path {folder} is a file, not a folder.")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".lora-studio-write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise OutputError(
            f"Cannot write to the output folder {folder}: {exc.strerror or exc}. "
            f"Choose another output folder."
        ) from None
