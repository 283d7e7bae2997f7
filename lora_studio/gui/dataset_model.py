"""The Qt item model over a dataset's images: one row per :class:`ImageItem`.

Columns: image (file name + thumbnail), caption (editable), status (saved / saving /
not saved / problems). Both the dataset browser (a thumbnail grid on column 0) and the
caption editor grid show this one model. Each image's bucket (the size it is trained at,
e.g. ``640×384``, placed off the GUI thread by the controller) is in :attr:`Role.BUCKET`
and the image's tooltip; the caption grid draws it under the file name.

Each row's problems (:attr:`Role.ISSUES`, worst in :attr:`Role.SEVERITY` and
:attr:`Role.PROBLEM`) come from the controller's validation report
(:func:`lora_studio.core.validate.validate_dataset`, run off the GUI thread), from thumbnails
that failed to decode, and from the caption as it is now: caption issues (missing, empty,
not UTF-8) are worked out live from the shown text, so writing a caption clears its warning
at once. Info entries (how an image is converted) are in the tooltip but are no problem.

The model never writes files. Editing a caption records the new text as *pending*, shows
it, and emits :attr:`DatasetModel.caption_edit_requested`; the controller saves it off the
GUI thread and answers with :meth:`caption_saved` or :meth:`caption_failed`. A failed save
keeps the edited text visible (marked "not saved") so nothing the user typed is lost;
editing the caption again retries.

Automatic captions waiting for review (:class:`~lora_studio.core.proposals.Proposal`,
given by the caption controller) are in the :attr:`Column.PROPOSAL` column and in
:attr:`Role.PROPOSAL` as a :class:`~lora_studio.core.proposals.ProposalView` worked out
against the caption shown now: editing a caption in the grid turns its proposal into a
conflict at once. :attr:`Role.PROVENANCE` says which captioner made an accepted caption.
"""

from __future__ import annotations

import enum
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, NamedTuple

from PySide6.QtCore import (
    QAbstractListModel,
    QAbstractTableModel,
    QModelIndex,
    QObject,
    QPersistentModelIndex,
    Qt,
    Signal,
)
from PySide6.QtGui import QBrush, QIcon, QImage, QPixmap

from lora_studio.core.buckets import Placement
from lora_studio.core.dataset import Dataset, ImageItem
from lora_studio.core.proposals import (
    Proposal,
    ProposalState,
    ProposalView,
    Provenance,
    proposal_state,
)
from lora_studio.core.validate import (
    CAPTION_CODES,
    UNREADABLE_CODES,
    FileReport,
    Issue,
    Severity,
    ValidationReport,
    caption_issues,
)
from lora_studio.gui import artwork
from lora_studio.gui.bucket_preview import bucket_text, buckets_summary, placement_tooltip
from lora_studio.gui.thumbnail_loader import THUMBNAIL_SIZE, ThumbnailLoader

Index = QModelIndex | QPersistentModelIndex
_USER = int(Qt.ItemDataRole.UserRole)


class Role(enum.IntEnum):
    """Custom data roles."""

    ITEM = _USER + 1  #: the :class:`ImageItem`
    PATH = _USER + 2  #: the image's :class:`Path`
    HAS_CAPTION = _USER + 3  #: bool: a (saved or pending) non-empty caption
    CAPTION_STATE = _USER + 4  #: :class:`CaptionState`
    PROBLEM = _USER + 5  #: str | None: what is wrong with the item
    PLACEMENT = _USER + 6  #: Placement | str | None: the image's bucket, or why it has none
    BUCKET = _USER + 7  #: str | None: ``"640×384"``, ``"–"`` (no bucket), None (not known yet)
    SEVERITY = _USER + 8  #: str | None: ``"error"`` / ``"warning"`` (the badge), None: fine
    ISSUES = _USER + 9  #: list[Issue]: every finding about the item, worst first
    PROPOSAL = _USER + 10  #: ProposalView | None: an automatic caption waiting for review
    PROVENANCE = _USER + 11  #: Provenance | None: who made the (accepted) caption
    #: Cell | None: what a thumbnail cell draws, in one call (see :class:`Cell`)
    CELL = _USER + 12


class Cell(NamedTuple):
    """What the browser's delegate draws for an image (column 0), asked for in one
    ``data()`` call rather than one per role: each call from the view goes through the
    filter proxy into Python and back, giving up and taking back the GIL."""

    text: str  #: the file name
    icon: QIcon  #: the thumbnail (or the loading / broken-image placeholder)
    foreground: QBrush | None  #: the name's colour when something is wrong
    severity: str | None  #: the badge: ``"error"`` / ``"warning"``, None: none


def _problem_brush(worst: Issue | None) -> QBrush | None:
    """The colour of an image's name: red for an error, amber for anything else."""
    if worst is None:
        return None
    return QBrush(artwork.ERROR if worst.severity is Severity.ERROR else artwork.WARNING)


class CaptionState(enum.Enum):
    CLEAN = "clean"  # as on disk, not edited in this session
    SAVING = "saving"
    SAVED = "saved"
    FAILED = "failed"


class Column(enum.IntEnum):
    IMAGE = 0
    CAPTION = 1
    STATUS = 2
    PROPOSAL = 3  #: the proposed caption (the grid shows it beside the caption)


_HEADERS = {
    Column.IMAGE: "Image",
    Column.CAPTION: "Caption",
    Column.STATUS: "Status",
    Column.PROPOSAL: "Proposed caption",
}
#: The status column's word for an item's worst problem (its tooltip has the message).
_SHORT = {
    "missing_caption": "No caption",
    "empty_caption": "Empty caption",
    "caption_unreadable": "Caption unreadable",
    "duplicate": "Duplicate",
    "near_duplicate": "Near-duplicate",
    "too_small": "Too small",
    "extreme_aspect_ratio": "Extreme shape",
    "too_many_pixels": "Too large",
}
_ICON_CACHE_LIMIT = 3000  # QIcons kept in memory; evicted ones come back from the disk cache


class DatasetModel(QAbstractTableModel):
    """Rows are the images of the current dataset (see the module docstring).

    Signals:
        caption_edit_requested(path, text): the user changed a caption; save it.
        caption_remove_requested(path): take the image's caption away (its file goes: an
            undo of the image's first caption).
        counts_changed(): image/caption counts, problems or the validation state may have
            changed.
        proposals_changed(): proposals were added, accepted, rejected, or their state
            changed (a caption was edited).
        disk_changes_changed(): caption files changed by another program were found, or
            reloaded / kept (:meth:`changed_on_disk`).
    """

    caption_edit_requested = Signal(object, str)
    caption_remove_requested = Signal(object)
    counts_changed = Signal()
    proposals_changed = Signal()
    disk_changes_changed = Signal()

    def __init__(
        self, thumbnails: ThumbnailLoader | None = None, parent: QObject | None = None
    ) -> None:
        super().__init__(parent)
        self._dataset: Dataset | None = None
        self._items: list[ImageItem] = []
        self._rows: dict[Path, int] = {}
        self._pending: dict[Path, str] = {}
        self._states: dict[Path, CaptionState] = {}
        self._save_errors: dict[Path, str] = {}
        self._icons: OrderedDict[Path, QIcon] = OrderedDict()
        self._broken: dict[Path, str] = {}
        self._placements: dict[Path, Placement | str] = {}
        self._reports: dict[Path, FileReport] = {}
        self._other_files: list[FileReport] = []
        self._validation: ValidationReport | None = None
        self._validation_progress: tuple[int, int] | None = None
        self._proposals: dict[Path, Proposal] = {}
        self._provenance: dict[Path, Provenance] = {}
        self._on_disk: dict[Path, str | None] = {}
        # Each item's worst problem, worked out when first asked (problems() asks for all
        # 10,000 on every count update); a row's entry goes when the row changes.
        self._worst_cache: dict[Path, Issue | None] = {}
        self._problems_cache: list[str] | None = None  # problems(), until anything changes
        self._thumbnails = thumbnails
        if thumbnails is not None:
            thumbnails.thumbnail_ready.connect(self._on_thumbnail_ready)
            thumbnails.thumbnail_failed.connect(self._on_thumbnail_failed)

    # ---- the dataset ---------------------------------------------------------------

    @property
    def dataset(self) -> Dataset | None:
        return self._dataset

    def set_dataset(self, dataset: Dataset | None) -> None:
        """Show ``dataset`` (``None``: nothing)."""
        self.beginResetModel()
        self._dataset = dataset
        self._items = list(dataset.images) if dataset is not None else []
        self._rows = {item.path: row for row, item in enumerate(self._items)}
        if self._thumbnails is not None:
            # The last dataset's requests go; this one's (prefetched while it was
            # indexed) stay.
            self._thumbnails.cancel_pending(keep=self._rows)
        self._pending.clear()
        self._states.clear()
        self._save_errors.clear()
        self._broken.clear()
        self._placements = {}
        self._reports = {}
        self._other_files = []
        self._validation = None
        self._validation_progress = None
        had_proposals = bool(self._proposals)
        self._proposals = {}
        self._provenance = {}
        self._on_disk = {}
        # Reopening a folder is how a user refreshes it: thumbnails come back from the
        # disk cache, which notices changed files (keyed by mtime and size).
        self._icons.clear()
        self._worst_cache.clear()
        self._problems_cache = None
        self.endResetModel()
        self.counts_changed.emit()
        if had_proposals:
            self.proposals_changed.emit()

    def adopt_icons(self, icons: Mapping[Path, QIcon]) -> None:
        """Thumbnails already shown for this dataset's images (by the
        :class:`ListingModel` while the folder was indexed): kept, not asked for again."""
        for path, icon in icons.items():
            if path in self._rows:
                self._icons[path] = icon

    def item(self, row: int) -> ImageItem:
        return self._items[row]

    def row_of(self, path: Path) -> int | None:
        return self._rows.get(path)

    def index_of(self, path: Path, column: int = Column.IMAGE) -> QModelIndex:
        row = self._rows.get(path)
        return self.index(row, column) if row is not None else QModelIndex()

    def counts(self) -> tuple[int, int]:
        """``(images, images with a saved caption)``."""
        return len(self._items), sum(1 for item in self._items if item.has_caption)

    def problems(self) -> list[str]:
        """One line per file with a problem (an error or a warning), errors first: the
        images, then files of the folder that are not in the dataset (unsupported formats,
        an unreadable ``metadata.jsonl``...)."""
        if self._problems_cache is not None:
            return list(self._problems_cache)
        lines: list[tuple[int, int, str]] = []
        for row, item in enumerate(self._items):
            worst = self._worst(item)
            if worst is not None:
                lines.append((-worst.severity.rank, row, f"{item.name}: {worst.message}"))
        for offset, report in enumerate(self._other_files):
            worst = report.worst
            if worst is not None:
                line = f"{report.path.name}: {worst.message}"
                lines.append((-worst.severity.rank, len(self._items) + offset, line))
        self._problems_cache = [text for _, _, text in sorted(lines)]
        return list(self._problems_cache)

    def problem_count(self) -> int:
        """Files with an error or a warning (see :meth:`problems`)."""
        return len(self.problems())

    def issues(self, path: Path) -> list[Issue]:
        """Everything known to be wrong (or worth a note) about image ``path``, worst first."""
        row = self._rows.get(path)
        return self._issues(self._items[row]) if row is not None else []

    @property
    def validation(self) -> ValidationReport | None:
        """The last validation report of this dataset (``None`` until it is in)."""
        return self._validation

    @property
    def validation_progress(self) -> tuple[int, int] | None:
        """``(done, total)`` while the images are being checked, else ``None``."""
        return self._validation_progress

    def unsaved(self) -> dict[Path, str]:
        """Captions whose save failed: path -> the text the user typed."""
        return {
            p: t for p, t in self._pending.items() if self._states.get(p) is CaptionState.FAILED
        }

    def state_counts(self) -> dict[CaptionState, int]:
        """How many captions are saving / saved / failed (only edited rows are counted)."""
        counts: dict[CaptionState, int] = {}
        for state in self._states.values():
            counts[state] = counts.get(state, 0) + 1
        return counts

    def has_thumbnail(self, path: Path) -> bool:
        """A thumbnail (or the broken-image placeholder) is ready for ``path``."""
        return path in self._icons or path in self._broken

    def caption_state(self, path: Path) -> CaptionState:
        return self._states.get(path, CaptionState.CLEAN)

    def placement(self, path: Path) -> Placement | str | None:
        """``path``'s bucket placement (or why it has none); ``None`` until computed."""
        return self._placements.get(path)

    def placements(self) -> Iterable[Placement | str]:
        """The placements computed so far (or why an image has none), one per image."""
        return self._placements.values()

    def buckets_summary(self) -> str:
        """``2 buckets: 256×256 (10) · 192×320 (2)``."""
        return buckets_summary(
            self._placements[i.path] for i in self._items if i.path in self._placements
        )

    # ---- caption edits (the caption grid's undo commands go through these) ----------------

    def caption_text(self, path: Path) -> str:
        """The caption shown for ``path`` now (an edit not saved yet included)."""
        row = self._rows.get(path)
        return self._caption_text(self._items[row]) if row is not None else ""

    def captions(self) -> dict[Path, str]:
        """Every image's caption as shown now, in row order."""
        return {item.path: self._caption_text(item) for item in self._items}

    def caption_or_none(self, path: Path) -> str | None:
        """The caption shown for ``path``; ``None`` when it has no caption file at all."""
        row = self._rows.get(path)
        if row is None:
            return None
        item = self._items[row]
        if path not in self._pending and item.caption is None:
            return None
        return self._caption_text(item)

    def set_captions(self, captions: dict[Path, str | None]) -> None:
        """Show and save these captions (a batch edit, an undo): :meth:`setData` for each;
        ``None`` takes an image's caption file away (:attr:`caption_remove_requested`)."""
        for path, text in captions.items():
            row = self._rows.get(path)
            if row is None:
                continue
            if text is not None:
                self.setData(self.index(row, Column.CAPTION), text)
            elif self.caption_or_none(path) is not None:
                self._pending[path] = ""
                self._states[path] = CaptionState.SAVING
                self._save_errors.pop(path, None)
                self._row_changed(path)
                self.caption_remove_requested.emit(path)

    def changed_on_disk(self) -> dict[Path, str | None]:
        """Caption files another program changed: path -> the text on disk now."""
        return dict(self._on_disk)

    def mark_changed_on_disk(self, captions: dict[Path, str | None]) -> None:
        """The controller found these caption files changed by another program."""
        changed = [p for p in captions if p in self._rows]
        for path in changed:
            self._on_disk[path] = captions[path]
        self.refresh(changed)
        if changed:
            self.disk_changes_changed.emit()

    def forget_disk_changes(self, paths: list[Path]) -> None:
        """These files' outside changes were dealt with (the user kept their text)."""
        for path in paths:
            self._on_disk.pop(path, None)
        self.refresh([p for p in paths if p in self._rows])
        self.disk_changes_changed.emit()

    def captions_reloaded(self, captions: dict[Path, str | None]) -> None:
        """These captions were taken from disk (the items already updated): any edit of
        them not saved is dropped."""
        for path in captions:
            self._on_disk.pop(path, None)
            self._pending.pop(path, None)
            self._save_errors.pop(path, None)
            self._states.pop(path, None)
        self.refresh([p for p in captions if p in self._rows])
        self.disk_changes_changed.emit()
        if any(p in self._proposals for p in captions):
            self.proposals_changed.emit()

    # ---- proposals ------------------------------------------------------------------------

    def set_proposals(
        self, proposals: dict[Path, Proposal], provenance: dict[Path, Provenance] | None = None
    ) -> None:
        """Show these pending proposals (and provenance), replacing those shown."""
        had_any = bool(self._proposals or self._provenance)
        self._proposals = {p: v for p, v in proposals.items() if p in self._rows}
        if provenance is not None:
            self._provenance = {p: v for p, v in provenance.items() if p in self._rows}
        if had_any or self._proposals or self._provenance:
            # Not for a dataset without any (most): repainting and re-filtering every
            # row of a 10,000-image dataset for nothing costs ~0.3 s of the GUI thread.
            self.refresh()
        self.proposals_changed.emit()

    def add_proposals(self, proposals: dict[Path, Proposal]) -> None:
        """New proposals arrived (a run is going): show them beside the captions."""
        added = [p for p in proposals if p in self._rows]
        for path in added:
            self._proposals[path] = proposals[path]
            self._row_changed(path)
        if added:
            self.proposals_changed.emit()

    def resolve_proposals(
        self,
        accepted: dict[Path, str],
        rejected: list[Path],
        provenance: dict[Path, Provenance] | None = None,
    ) -> None:
        """Proposals were accepted (their caption written: ``accepted`` path -> text, the
        item already updated) or rejected (dropped)."""
        changed = [p for p in [*accepted, *rejected] if p in self._rows]
        for path in changed:
            self._proposals.pop(path, None)
        for path in accepted:
            if path in self._rows:
                # The accepted caption is what is on disk now (an Overwrite replaced any
                # edit still shown here).
                self._pending.pop(path, None)
                self._save_errors.pop(path, None)
                self._states[path] = CaptionState.SAVED
        for path, record in (provenance or {}).items():
            if path in self._rows:
                self._provenance[path] = record
        self.refresh(changed)
        if changed:
            self.proposals_changed.emit()

    def proposal_view(self, path: Path) -> ProposalView | None:
        """``path``'s proposal beside the caption shown now (``None``: none)."""
        proposal = self._proposals.get(path)
        row = self._rows.get(path)
        if proposal is None or row is None:
            return None
        current = self._caption_text(self._items[row])
        return ProposalView(proposal, current, proposal_state(proposal, current), path)

    def proposal_paths(self) -> list[Path]:
        """The images with a pending proposal, in row order."""
        return [item.path for item in self._items if item.path in self._proposals]

    def proposal_counts(self) -> tuple[int, int]:
        """``(pending proposals, of which conflicts)``."""
        conflicts = 0
        for path in self._proposals:
            view = self.proposal_view(path)
            if view is not None and view.state is ProposalState.CONFLICT:
                conflicts += 1
        return len(self._proposals), conflicts

    def provenance(self, path: Path) -> Provenance | None:
        return self._provenance.get(path)

    # ---- answers from the controller ---------------------------------------------------

    def set_placements(self, placements: dict[Path, Placement | str]) -> None:
        """Where the controller placed each image (bucket settings or dataset changed)."""
        self._placements = {p: v for p, v in placements.items() if p in self._rows}
        if self._items:
            last = len(self._items) - 1
            self.dataChanged.emit(self.index(0, Column.IMAGE), self.index(last, Column.IMAGE))
        self.headerDataChanged.emit(Qt.Orientation.Horizontal, Column.IMAGE, Column.IMAGE)

    def caption_saved(self, path: Path, text: str) -> None:
        """The controller saved ``text`` as ``path``'s caption."""
        if self._pending.get(path) == text:
            del self._pending[path]
            self._states[path] = CaptionState.SAVED
            self._save_errors.pop(path, None)
        self._row_changed(path)
        self.counts_changed.emit()
        if path in self._proposals:
            self.proposals_changed.emit()  # the edit may have made it a conflict

    def caption_failed(self, path: Path, text: str, message: str) -> None:
        """Saving ``text`` failed: keep it visible, marked as not saved."""
        if self._pending.get(path) == text:
            self._states[path] = CaptionState.FAILED
            self._save_errors[path] = message
        self._row_changed(path)

    def set_validation(self, report: ValidationReport) -> None:
        """The controller's validation report of this dataset (badges, tooltips, counts)."""
        if self._dataset is None or report.root != self._dataset.root:
            return  # a report of a dataset no longer shown
        self._validation = report
        self._validation_progress = None
        self._reports = {r.path: r for r in report.files if r.path in self._rows}
        self._other_files = [r for r in report.files if r.path not in self._rows and r.is_problem]
        self.refresh()

    def set_validation_progress(self, done: int, total: int) -> None:
        """The images are being checked: ``done`` of ``total``."""
        self._validation_progress = (done, total) if done < total else None
        self.counts_changed.emit()

    def mark_unreadable(self, reasons: dict[Path, str]) -> None:
        """Images found unreadable elsewhere (the controller's check): show them as broken."""
        changed = [path for path in reasons if path in self._rows]
        for path in changed:
            self._broken[path] = reasons[path]
        self.refresh(changed)

    def refresh(self, paths: list[Path] | None = None) -> None:
        """Items changed outside the model (problems found, captions reloaded)."""
        if paths is None:
            self._worst_cache.clear()
            self._problems_cache = None
            if self._items:
                self.dataChanged.emit(
                    self.index(0, 0), self.index(len(self._items) - 1, len(Column) - 1)
                )
        else:
            for path in paths:
                self._row_changed(path)
        self.counts_changed.emit()

    # ---- QAbstractItemModel ------------------------------------------------------------

    def rowCount(self, parent: Index = QModelIndex()) -> int:  # noqa: B008, N802
        return 0 if parent.isValid() else len(self._items)

    def columnCount(self, parent: Index = QModelIndex()) -> int:  # noqa: B008, N802
        return 0 if parent.isValid() else len(Column)

    def headerData(  # noqa: N802
        self, section: int, orientation: Qt.Orientation, role: int = Qt.ItemDataRole.DisplayRole
    ) -> Any:
        if orientation is not Qt.Orientation.Horizontal or not 0 <= section < len(Column):
            return None
        if role == Qt.ItemDataRole.DisplayRole:
            return _HEADERS.get(Column(section))
        if role == Qt.ItemDataRole.ToolTipRole and section == Column.IMAGE:
            summary = self.buckets_summary()
            return (
                "Each image with the size it is trained at: its aspect-ratio bucket (see "
                "Advanced settings \u203a Data and buckets)." + (f"\n{summary}" if summary else "")
            )
        return None

    def flags(self, index: Index) -> Qt.ItemFlag:
        if not index.isValid():
            return Qt.ItemFlag.NoItemFlags
        flags = Qt.ItemFlag.ItemIsEnabled | Qt.ItemFlag.ItemIsSelectable
        if index.column() == Column.CAPTION:
            flags |= Qt.ItemFlag.ItemIsEditable
        return flags

    def data(self, index: Index, role: int = Qt.ItemDataRole.DisplayRole) -> Any:
        if not index.isValid() or not 0 <= index.row() < len(self._items):
            return None
        item = self._items[index.row()]
        column = index.column()
        if role == Role.ITEM:
            return item
        if role == Role.PATH:
            return item.path
        if role == Role.CELL:
            return self._cell(item) if column == Column.IMAGE else None
        if role == Role.HAS_CAPTION:
            return bool(self._caption_text(item).strip())
        if role == Role.CAPTION_STATE:
            return self.caption_state(item.path)
        if role == Role.PROBLEM:
            return self._problem(item)
        if role == Role.SEVERITY:
            worst = self._worst(item)
            return str(worst.severity) if worst is not None else None
        if role == Role.ISSUES:
            return self._issues(item)
        if role == Role.PLACEMENT:
            return self._placements.get(item.path)
        if role == Role.BUCKET:
            return self._bucket_text(item)
        if role == Role.PROPOSAL:
            return self.proposal_view(item.path)
        if role == Role.PROVENANCE:
            return self._provenance.get(item.path)
        if column == Column.IMAGE:
            return self._image_data(item, role)
        if column == Column.CAPTION:
            return self._caption_data(item, role)
        if column == Column.STATUS:
            return self._status_data(item, role)
        if column == Column.PROPOSAL:
            return self._proposal_data(item, role)
        return None

    def setData(self, index: Index, value: Any, role: int = Qt.ItemDataRole.EditRole) -> bool:  # noqa: N802
        """Record a caption edit and ask the controller to save it (no file I/O here)."""
        if role != Qt.ItemDataRole.EditRole or index.column() != Column.CAPTION:
            return False
        if not index.isValid() or not 0 <= index.row() < len(self._items):
            return False
        item = self._items[index.row()]
        text = str(value if value is not None else "")
        state = self.caption_state(item.path)
        unchanged = text.strip() == (item.caption or "").strip()
        # An unchanged caption needs no write, unless an earlier save of this row failed
        # (then this edit is the retry) or another save is still under way.
        if unchanged and state is not CaptionState.FAILED and item.path not in self._pending:
            return False
        self._pending[item.path] = text
        self._states[item.path] = CaptionState.SAVING
        self._save_errors.pop(item.path, None)
        self._row_changed(item.path)
        self.caption_edit_requested.emit(item.path, text)
        return True

    # ---- pieces --------------------------------------------------------------------------

    def _caption_text(self, item: ImageItem) -> str:
        pending = self._pending.get(item.path)
        return pending if pending is not None else (item.caption or "")

    def _issues(self, item: ImageItem) -> list[Issue]:
        report = self._reports.get(item.path)
        found = [i for i in report.issues if i.code not in CAPTION_CODES] if report else []
        broken = self._broken.get(item.path)
        if broken and not any(i.code in UNREADABLE_CODES for i in found):
            found.insert(0, Issue(item.path, Severity.ERROR, "corrupt", broken))
        if not self._unreadable(item):
            # Worked out from the text shown now: a typed caption clears "missing caption".
            found.extend(caption_issues(item, self._pending.get(item.path)))
        found.sort(key=lambda issue: -issue.severity.rank)  # stable: worst first
        return found

    def _worst(self, item: ImageItem) -> Issue | None:
        """The worst error or warning of ``item`` (info entries are not problems)."""
        path = item.path
        cache = self._worst_cache
        if cache:  # (a Path's hash is Python code: not asked of an empty dict)
            try:
                return cache[path]
            except KeyError:
                pass
        text = item.caption
        reports, broken, pending = self._reports, self._broken, self._pending
        if (
            text
            and item.caption_encoding == "utf-8"
            and not item.caption_error
            and not (reports and path in reports)
            and not (broken and path in broken)
            and not (pending and path in pending)
            and text.strip()
        ):
            # Nothing known about the image and a caption as read: no problem (every
            # row is asked when a folder opens, before its check is in).
            self._worst_cache[path] = None
            return None
        worst = None
        for issue in self._issues(item):
            worst = issue if issue.severity is not Severity.INFO else None
            break
        self._worst_cache[path] = worst
        return worst

    def _unreadable(self, item: ImageItem) -> bool:
        report = self._reports.get(item.path)
        return item.path in self._broken or (report is not None and report.unreadable)

    def _problem(self, item: ImageItem) -> str | None:
        worst = self._worst(item)
        return worst.message if worst is not None else None

    def _image_data(self, item: ImageItem, role: int) -> Any:
        if role == Qt.ItemDataRole.DisplayRole:
            return item.name
        if role == Qt.ItemDataRole.DecorationRole:
            return self._icon(item.path)
        if role == Qt.ItemDataRole.ToolTipRole:
            lines = [str(item.path)]
            placement = self._placements.get(item.path)
            if placement is not None:
                lines.append(placement_tooltip(placement))
            for issue in self._issues(item):
                mark = "\u2139" if issue.severity is Severity.INFO else "\u26a0"
                lines.append(f"{mark} {issue.message}")
            return "\n".join(lines)
        if role == Qt.ItemDataRole.ForegroundRole:
            return _problem_brush(self._worst(item))
        return None

    def _cell(self, item: ImageItem) -> Cell:
        worst = self._worst(item)
        severity = str(worst.severity) if worst is not None else None
        return Cell(item.name, self._icon(item.path), _problem_brush(worst), severity)

    def _bucket_text(self, item: ImageItem) -> str | None:
        placement = self._placements.get(item.path)
        if placement is None:
            return None
        return bucket_text(placement.bucket) if isinstance(placement, Placement) else "\u2013"

    def _caption_data(self, item: ImageItem, role: int) -> Any:
        if role in (Qt.ItemDataRole.DisplayRole, Qt.ItemDataRole.EditRole):
            return self._caption_text(item)
        if role == Qt.ItemDataRole.ToolTipRole:
            parts = []
            error = self._save_errors.get(item.path)
            if error:
                parts.append(f"Not saved: {error} Edit the caption again to retry.")
            parts.extend(
                issue.message
                for issue in self._issues(item)
                if issue.code in CAPTION_CODES and issue.code != "missing_caption"
            )
            text = self._caption_text(item)
            parts.append(text if text else "No caption yet: double-click to write one.")
            record = self._provenance.get(item.path)
            if record is not None:
                parts.append(provenance_text(record))
            return "\n\n".join(parts)
        return None

    def _proposal_data(self, item: ImageItem, role: int) -> Any:
        view = self.proposal_view(item.path)
        if view is None:
            return None
        if role == Qt.ItemDataRole.DisplayRole:
            return view.proposal.text
        if role == Qt.ItemDataRole.ToolTipRole:
            parts = [view.proposal.text, proposal_origin(view.proposal)]
            if view.state is ProposalState.CONFLICT:
                parts.append(
                    "The caption was edited after this was proposed: accepting it needs "
                    "Overwrite, which replaces your edit."
                )
            return "\n\n".join(parts)
        return None

    def _status_data(self, item: ImageItem, role: int) -> Any:
        state = self.caption_state(item.path)
        problem = self._problem(item)
        if role == Qt.ItemDataRole.DisplayRole:
            if item.path in self._on_disk:
                return "\u26a0 Changed on disk"
            if state is CaptionState.FAILED:
                return "\u26a0 Not saved"
            if state is CaptionState.SAVING:
                return "Saving\u2026"
            if self._unreadable(item):
                return "\u26a0 Unreadable"
            if item.caption_encoding != "utf-8":
                return "\u26a0 Not UTF-8"
            worst = self._worst(item)
            if worst is not None:
                return "\u26a0 " + _SHORT.get(worst.code, "Problem")
            view = self.proposal_view(item.path)
            if view is not None:
                return "\u26a0 Conflict" if view.state is ProposalState.CONFLICT else "Proposal"
            if state is CaptionState.SAVED:
                return "Saved \u2713"
            return ""
        if role == Qt.ItemDataRole.ForegroundRole:
            if item.path in self._on_disk:
                return QBrush(artwork.WARNING)
            if state is CaptionState.FAILED or self._unreadable(item):
                return QBrush(artwork.ERROR)
            view = self.proposal_view(item.path)
            if view is not None and not problem:
                conflict = view.state is ProposalState.CONFLICT
                return QBrush(artwork.WARNING if conflict else artwork.ACCENT)
            if state is CaptionState.SAVED and not problem:
                return QBrush(artwork.SUCCESS)
            if problem or item.caption_encoding != "utf-8":
                return QBrush(artwork.WARNING)
            return QBrush(artwork.MUTED)
        if role == Qt.ItemDataRole.ToolTipRole:
            if item.path in self._on_disk:
                disk = self._on_disk[item.path]
                return (
                    "Another program changed this caption file:\n"
                    f"{disk if disk is not None else '(deleted)'}\n"
                    "Reload it, or keep the caption shown here (the bar above the grid)."
                )
            error = self._save_errors.get(item.path)
            if error:
                return f"{error}\nYour text is kept here; edit the caption again to retry."
            messages = [i.message for i in self._issues(item) if i.severity is not Severity.INFO]
            return "\n".join(messages) or None
        return None

    def _icon(self, path: Path) -> QIcon:
        icon = self._icons.get(path)
        if icon is not None:
            self._icons.move_to_end(path)
            return icon
        if path in self._broken:
            return artwork.broken_image_icon(THUMBNAIL_SIZE)
        if self._thumbnails is not None:
            # data() is only asked for visible rows, so this is what makes loading lazy.
            self._thumbnails.request(path)
        return artwork.loading_icon(THUMBNAIL_SIZE)

    def _on_thumbnail_ready(self, path: Path, image: QImage) -> None:
        if path not in self._rows:
            return  # from a dataset that is no longer shown
        self._icons[path] = QIcon(QPixmap.fromImage(image))
        self._icons.move_to_end(path)
        while len(self._icons) > _ICON_CACHE_LIMIT:
            self._icons.popitem(last=False)
        self._row_changed(path, Column.IMAGE)

    def _on_thumbnail_failed(self, path: Path, reason: str) -> None:
        if path not in self._rows:
            return
        self._broken[path] = reason
        self._row_changed(path)
        self.counts_changed.emit()

    def _row_changed(self, path: Path, column: int | None = None) -> None:
        if column is None:  # (a thumbnail that arrived changes no problem)
            self._worst_cache.pop(path, None)
            self._problems_cache = None
        row = self._rows.get(path)
        if row is None:
            return
        first = column if column is not None else 0
        last = column if column is not None else len(Column) - 1
        self.dataChanged.emit(self.index(row, first), self.index(row, last))


def proposal_origin(proposal: Proposal) -> str:
    """``Proposed by openai · llava, 2025-01-01 12:00 UTC (mode fill)``."""
    when = _when(proposal.created_at)
    line = f"Proposed by {proposal.provider} \u00b7 {proposal.model}"
    if when:
        line += f", {when}"
    line += f" (mode {proposal.mode})"
    if proposal.prompt:
        line += f"\nPrompt: {proposal.prompt}"
    return line


def provenance_text(record: Provenance) -> str:
    """``Caption by blip · Salesforce/..., accepted 2025-01-01 12:00 UTC``."""
    line = f"Caption by {record.provider} \u00b7 {record.model}"
    when = _when(record.accepted_at)
    if when:
        line += f", accepted {when}"
    if record.edited:
        line += " (edited before accepting)"
    return line


def _when(stamp: str) -> str:
    """``2025-01-01T12:00:00Z`` -> ``2025-01-01 12:00 UTC``."""
    if not stamp:
        return ""
    text = stamp.replace("T", " ")
    if text.endswith("Z") and len(text) >= 17:
        return text[:16] + " UTC"
    return text


class ListingModel(QAbstractListModel):
    """The first image files of a folder still being opened: names and thumbnails only.

    The browser shows it while the folder is indexed (its captions read: 0.2-0.3 s at
    10,000 images), so the first page of thumbnails appears before the dataset does. The
    :class:`DatasetModel` of the opened dataset takes its thumbnails over
    (:meth:`DatasetModel.adopt_icons`). Rows carry :attr:`Role.PATH`; nothing is editable.

    Signals:
        page_shown(): every row a view asked a thumbnail for (the visible ones) has it.
    """

    page_shown = Signal()

    def __init__(self, thumbnails: ThumbnailLoader | None, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self._paths: list[Path] = []
        self._rows: dict[Path, int] = {}
        self._icons: dict[Path, QIcon] = {}
        self._broken: set[Path] = set()
        self._waiting: set[Path] = set()  # asked for by a view, not in yet
        self._thumbnails = thumbnails
        if thumbnails is not None:
            thumbnails.thumbnail_ready.connect(self._on_thumbnail_ready)
            thumbnails.thumbnail_failed.connect(self._on_thumbnail_failed)

    def set_paths(self, paths: Iterable[Path]) -> None:
        """List ``paths`` (none: an empty listing)."""
        self.beginResetModel()
        self._paths = list(paths)
        self._rows = {path: row for row, path in enumerate(self._paths)}
        self._icons = {}
        self._broken = set()
        self._waiting = set()
        self.endResetModel()

    def icons(self) -> dict[Path, QIcon]:
        """The thumbnails that arrived, by path."""
        return dict(self._icons)

    def has_thumbnail(self, path: Path) -> bool:
        """A thumbnail (or the broken-image placeholder) is ready for ``path``."""
        return path in self._icons or path in self._broken

    def rowCount(self, parent: Index = QModelIndex()) -> int:  # noqa: B008, N802
        return 0 if parent.isValid() else len(self._paths)

    def data(self, index: Index, role: int = Qt.ItemDataRole.DisplayRole) -> Any:
        if not index.isValid() or not 0 <= index.row() < len(self._paths):
            return None
        path = self._paths[index.row()]
        if role == Qt.ItemDataRole.DisplayRole:
            return path.name
        if role == Role.PATH:
            return path
        if role == Qt.ItemDataRole.ToolTipRole:
            return str(path)
        if role == Qt.ItemDataRole.DecorationRole:
            return self._icon(path)
        if role == Role.CELL:
            return Cell(path.name, self._icon(path), None, None)
        return None

    def _icon(self, path: Path) -> QIcon:
        icon = self._icons.get(path)
        if icon is not None:
            return icon
        if path in self._broken:
            return artwork.broken_image_icon(THUMBNAIL_SIZE)
        if self._thumbnails is not None:
            self._waiting.add(path)
            self._thumbnails.request(path)
        return artwork.loading_icon(THUMBNAIL_SIZE)

    def _on_thumbnail_ready(self, path: Path, image: QImage) -> None:
        row = self._rows.get(path)
        if row is not None:
            self._icons[path] = QIcon(QPixmap.fromImage(image))
            self._arrived(path, row)

    def _on_thumbnail_failed(self, path: Path, reason: str) -> None:
        row = self._rows.get(path)
        if row is not None:
            self._broken.add(path)
            self._arrived(path, row)

    def _arrived(self, path: Path, row: int) -> None:
        self.dataChanged.emit(self.index(row), self.index(row))
        if path in self._waiting:
            self._waiting.discard(path)
            if not self._waiting:
                self.page_shown.emit()
