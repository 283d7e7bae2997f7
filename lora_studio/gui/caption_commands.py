"""Undo commands for caption edits (the caption grid's ``QUndoStack``).

Every change of captions in the grid - one caption typed, or a batch operation over many -
is one :class:`CaptionEdit`: it holds each image's text before and after, and both
``redo`` and ``undo`` go through :meth:`DatasetModel.set_captions`, so the files are saved
again (atomically, off the GUI thread, by the controller) either way; undoing the first
caption of an image deletes its caption file again, so the folder is exactly as it was. The autosaves of one
editing session of one caption merge into a single step.
"""

from __future__ import annotations

import itertools
from pathlib import Path

from PySide6.QtGui import QUndoCommand

from lora_studio.gui.dataset_model import DatasetModel

#: ``QUndoCommand.id`` of a single caption's edits, which merge within one editor session.
_TYPING_ID = 7001
_sessions = itertools.count(1)


def new_session() -> int:
    """A key for one opening of a caption editor (its autosaves merge into one step)."""
    return next(_sessions)


class CaptionEdit(QUndoCommand):
    """Change captions: ``changes`` is ``{path: (before, after)}``; a ``before`` of ``None``
    means the image had no caption file, which undo deletes again.

    Args:
        model: the dataset model that shows and saves the captions.
        changes: the captions' text before and after.
        label: the Edit menu's "Undo <label>".
        session: a single caption's editor session (see :func:`new_session`): commands of
            the same session merge; ``None`` never merges (batch operations).
    """

    def __init__(
        self,
        model: DatasetModel,
        changes: dict[Path, tuple[str | None, str]],
        label: str,
        session: int | None = None,
    ) -> None:
        super().__init__(label)
        self.model = model
        self.changes = dict(changes)
        self.session = session

    def redo(self) -> None:
        self.model.set_captions({p: after for p, (_before, after) in self.changes.items()})

    def undo(self) -> None:
        self.model.set_captions({p: before for p, (before, _after) in self.changes.items()})

    def id(self) -> int:
        return _TYPING_ID if self.session is not None else -1

    def mergeWith(self, other: QUndoCommand) -> bool:  # noqa: N802
        if (
            not isinstance(other, CaptionEdit)
            or other.session != self.session
            or other.changes.keys() != self.changes.keys()
        ):
            return False
        for path, (_before, after) in other.changes.items():
            self.changes[path] = (self.changes[path][0], after)
        if all(before == after for before, after in self.changes.values()):
            self.setObsolete(True)  # typed and deleted again: no step at all
        return True


def batch_label(verb: str, count: int) -> str:
    """``"add tag 'sks' to 3 captions"``."""
    return f"{verb} ({count} caption{'s' if count != 1 else ''})"
