"""Caption files that another program may change while the app has them open.

The app knows each caption as it last read or wrote it (``ImageItem.caption``). Before a
save, :func:`write_caption_checked` reads the file again: when it no longer holds what the
app knew (another editor saved it meanwhile) the save is refused with
:class:`CaptionChangedOnDisk`, which carries what is on disk, so the user can reload it or
keep their own text on purpose (``force=True``). :func:`captions_changed_on_disk` finds
such files for a folder watcher. Blocking I/O: call both off the GUI thread.
"""

from __future__ import annotations

from collections.abc import Iterable

from lora_studio.core.dataset import ImageItem, read_item_caption, write_caption
from lora_studio.core.errors import CaptionError, DatasetError


class CaptionChangedOnDisk(CaptionError):
    """The caption file was changed by another program since the app read it.

    Attributes:
        disk_text: the caption on disk now (``None``: the file is gone).
    """

    def __init__(self, message: str, disk_text: str | None) -> None:
        super().__init__(message)
        self.disk_text = disk_text


def _same(a: str | None, b: str | None) -> bool:
    return (a or "").strip() == (b or "").strip()


def disk_caption(item: ImageItem) -> str | None:
    """``item``'s caption as it is on disk now; ``None`` when it has none or it cannot be
    read (an unreadable file is reported elsewhere and never counts as a change)."""
    try:
        return read_item_caption(item)
    except DatasetError:
        return item.caption


def write_caption_checked(
    item: ImageItem, text: str, known: str | None, *, force: bool = False
) -> ImageItem:
    """:func:`write_caption`, unless the file changed since the app read ``known`` from it.

    Raises:
        CaptionChangedOnDisk: the file holds neither ``known`` nor ``text`` (and not
            ``force``): it was changed by another program; nothing was written. A file
            that was deleted is written again.
        CaptionError: the file cannot be written.
    """
    if not force:
        on_disk = disk_caption(item)
        # A file deleted meanwhile holds nothing to lose: the save writes it again.
        if on_disk is not None and not _same(on_disk, known) and not _same(on_disk, text):
            raise CaptionChangedOnDisk(
                f"The caption of {item.name} was changed by another program; your text "
                f"was not saved over it. Reload it, or keep yours.",
                on_disk,
            )
    return write_caption(item, text)


class CaptionStamps:
    """Remembers each caption file's modification time and size, so that looking for
    outside changes again only reads the files that were touched since the last look."""

    def __init__(self) -> None:
        self._seen: dict = {}

    def touched(self, item: ImageItem) -> bool:
        """``item``'s caption file changed (or appeared, or went) since the last call."""
        path = item.metadata.file if item.metadata is not None else item.caption_path
        try:
            info = path.stat()
            stamp: tuple[int, int] | None = (info.st_mtime_ns, info.st_size)
        except OSError:
            stamp = None
        key = (item.path, path)
        before = self._seen.get(key, ())
        self._seen[key] = stamp
        return before != stamp


def captions_changed_on_disk(
    items: Iterable[tuple[ImageItem, str | None]], stamps: CaptionStamps | None = None
) -> dict:
    """The captions that differ on disk from what the app knows: ``{path: disk text}``
    for each ``(item, known caption)`` whose file changed. With ``stamps``, only the files
    touched since its last look are read (the first look reads them all)."""
    changed: dict = {}
    for item, known in items:
        if stamps is not None and not stamps.touched(item):
            continue
        on_disk = disk_caption(item)
        if not _same(on_disk, known):
            changed[item.path] = on_disk
    return changed


def remove_caption_checked(item: ImageItem, known: str | None, *, force: bool = False) -> ImageItem:
    """Take ``item``'s caption away again: its sidecar file is deleted (a ``metadata.jsonl``
    row is emptied instead), unless the file changed since the app read ``known`` from it.
    What an undo of the first caption of an image does, so the folder is as it was.

    Raises:
        CaptionChangedOnDisk: another program changed the file (and not ``force``).
        CaptionError: the file cannot be deleted.
    """
    if item.metadata is not None:
        write_caption(item, "")
        item.caption = None
        return item
    on_disk = disk_caption(item)
    if not force and on_disk is not None and not _same(on_disk, known) and not _same(on_disk, ""):
        raise CaptionChangedOnDisk(
            f"The caption of {item.name} was changed by another program; it was not "
            f"removed. Reload it, or keep yours.",
            on_disk,
        )
    try:
        item.caption_path.unlink(missing_ok=True)
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise CaptionError(f"Could not remove the caption of {item.name}: {reason}.") from None
    item.caption = None
    item.caption_encoding = "utf-8"
    item.caption_error = None
    return item
