"""What the dataset browser shows, and in which order: a filter-and-sort proxy.

:class:`BrowserFilter` sits between :class:`~lora_studio.gui.dataset_model.DatasetModel`
and the browser's ``QListView``, so the grid stays virtualized (the view still asks only
for visible rows, and filtering reads roles that never decode an image).

Filters combine (all must hold):
  - *show*: every image, only those without a caption, only those with a problem (an error
    or a warning from validation, as badged), or only those with an error;
  - *search*: in **text** mode, a case-insensitive substring of the caption or the file
    name; in **tags** mode, the query is split on commas and every term must be one of the
    caption's comma-separated tags (whole tags, case-insensitive: ``red`` does not match
    ``red hair``);
  - *bucket*: only the images placed in one bucket (e.g. ``640×384``), or those that
    cannot be placed.

Sort: by name (the dataset's own order: folder, then file name), file size (from the
controller's index, no file is touched here) or aspect ratio (width / height, from the
bucket placement's original size); ascending or descending.

The proxy does not re-filter on every ``dataChanged`` (thumbnails arrive one by one and
would each trigger it); it re-filters when its settings change and, coalesced, when the
model says counts, problems or placements changed.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from PySide6.QtCore import (
    QModelIndex,
    QObject,
    QPersistentModelIndex,
    QSortFilterProxyModel,
    Qt,
    QTimer,
)

from lora_studio.core.buckets import Bucket, Placement
from lora_studio.core.dataset import split_tags
from lora_studio.gui.bucket_preview import bucket_text
from lora_studio.gui.dataset_model import Column, DatasetModel, Role

Index = QModelIndex | QPersistentModelIndex

#: The bucket filter's value for images that have no bucket (unreadable, too small).
NO_BUCKET = "none"


class BrowserFilter(QSortFilterProxyModel):
    """Filters and sorts the browser's images (see the module docstring)."""

    ALL = "All images"
    UNCAPTIONED = "Missing caption"
    PROBLEMS = "Problems"
    ERRORS = "Errors only"
    SHOWS = (ALL, UNCAPTIONED, PROBLEMS, ERRORS)

    TEXT = "text"
    TAGS = "tags"

    NAME = "Name"
    SIZE = "File size"
    ASPECT = "Aspect ratio"
    SORTS = (NAME, SIZE, ASPECT)

    def __init__(self, model: DatasetModel, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.setSourceModel(model)
        # Re-filtered on purpose (see the module docstring), never per dataChanged.
        self.setDynamicSortFilter(False)
        self._model = model
        self._show = self.ALL
        self._query = ""
        self._terms: list[str] = []
        self._search_mode = self.TEXT
        self._bucket: str | None = None
        self._sort = self.NAME
        self._descending = False
        self._keys: list[float] = []
        self._file_sizes: dict[Path, int] = {}
        self._refresh_timer = QTimer(self)
        self._refresh_timer.setSingleShot(True)
        self._refresh_timer.setInterval(250)
        self._refresh_timer.timeout.connect(self._model_changed)
        model.counts_changed.connect(self._schedule_refresh)
        model.modelReset.connect(self._on_reset)
        model.headerDataChanged.connect(self._schedule_refresh)  # placements arrived

    # ---- settings ---------------------------------------------------------------------------

    @property
    def show(self) -> str:
        return self._show

    @property
    def query(self) -> str:
        return self._query

    @property
    def search_mode(self) -> str:
        return self._search_mode

    @property
    def bucket(self) -> str | None:
        return self._bucket

    @property
    def sort_key(self) -> str:
        return self._sort

    @property
    def descending(self) -> bool:
        return self._descending

    @property
    def is_filtering(self) -> bool:
        """Some images may be hidden."""
        return self._show != self.ALL or bool(self._terms) or self._bucket is not None

    @property
    def shows_dataset_order(self) -> bool:
        """Every image, in the dataset's own order (no filter, sorted by name A-Z)."""
        return not self.is_filtering and self._sort == self.NAME and not self._descending

    def set_show(self, show: str) -> None:
        """:attr:`ALL`, :attr:`UNCAPTIONED`, :attr:`PROBLEMS` or :attr:`ERRORS`."""
        if show not in self.SHOWS:
            raise ValueError(f"unknown filter {show!r}")
        if show != self._show:
            self._show = show
            self._refilter()

    def set_search(self, query: str, mode: str | None = None) -> None:
        """Search ``query`` as :attr:`TEXT` (substring) or :attr:`TAGS` (whole tags)."""
        mode = mode or self._search_mode
        if mode not in (self.TEXT, self.TAGS):
            raise ValueError(f"unknown search mode {mode!r}")
        query = query.strip()
        if query == self._query and mode == self._search_mode:
            return
        self._query, self._search_mode = query, mode
        if mode == self.TAGS:
            self._terms = [t.lower() for t in split_tags(query)]
        else:
            self._terms = [query.lower()] if query else []
        self._refilter()

    def set_bucket(self, bucket: str | None) -> None:
        """Only images in ``bucket`` (``"640×384"``, :data:`NO_BUCKET`); ``None``: any."""
        if bucket != self._bucket:
            self._bucket = bucket
            self._refilter()

    def set_sort(self, key: str, descending: bool | None = None) -> None:
        """Sort by :attr:`NAME`, :attr:`SIZE` or :attr:`ASPECT`."""
        if key not in self.SORTS:
            raise ValueError(f"unknown sort {key!r}")
        if descending is None:
            descending = self._descending
        if key == self._sort and descending == self._descending:
            return
        self._sort, self._descending = key, descending
        self._resort()

    def set_file_sizes(self, sizes: dict[Path, int]) -> None:
        """File sizes in bytes (the controller reads them while indexing)."""
        self._file_sizes = dict(sizes)
        if self._sort == self.SIZE:
            self._resort()

    def clear_filters(self) -> None:
        """Show every image again (the sort stays)."""
        self._show, self._query, self._terms, self._bucket = self.ALL, "", [], None
        self._refilter()

    # ---- what the controls offer ---------------------------------------------------------------

    def bucket_choices(self) -> list[tuple[str, int]]:
        """``[("640×384", 12), ..., (NO_BUCKET, 2)]``: the buckets in use, the fullest first."""
        # Counted per (width, height), named per bucket: a handful of names for 10,000
        # images. (Not per Bucket: its dataclass hash runs Python, ~10 ms at 10,000.)
        sizes: Counter[tuple[int, int]] = Counter()
        unplaced = 0
        for placement in self._model.placements():
            if isinstance(placement, Placement):
                bucket = placement.bucket
                sizes[bucket.width, bucket.height] += 1
            else:
                unplaced += 1
        counts: Counter[str] = Counter()
        for (width, height), count in sizes.items():
            counts[bucket_text(Bucket(width, height))] += count
        choices = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
        if unplaced:
            choices.append((NO_BUCKET, unplaced))
        return choices

    # ---- QSortFilterProxyModel -------------------------------------------------------------------

    def filterAcceptsRow(self, source_row: int, source_parent: Index) -> bool:  # noqa: N802
        model = self._model
        if self._show != self.ALL:
            index = model.index(source_row, Column.IMAGE, source_parent)
            if self._show == self.UNCAPTIONED:
                if model.data(index, Role.HAS_CAPTION):
                    return False
            else:
                severity = model.data(index, Role.SEVERITY)
                if not severity or (self._show == self.ERRORS and severity != "error"):
                    return False
        if self._bucket is not None:
            placement = model.placement(model.item(source_row).path)
            if placement is None:
                return False
            if isinstance(placement, Placement):
                if bucket_text(placement.bucket) != self._bucket:
                    return False
            elif self._bucket != NO_BUCKET:
                return False
        if self._terms:
            index = model.index(source_row, Column.CAPTION, source_parent)
            caption = str(model.data(index, Qt.ItemDataRole.DisplayRole) or "")
            if self._search_mode == self.TAGS:
                tags = {t.lower() for t in split_tags(caption)}
                return all(term in tags for term in self._terms)
            needle = self._terms[0]
            name = model.item(source_row).name
            return needle in caption.lower() or needle in name.lower()
        return True

    def lessThan(self, left: Index, right: Index) -> bool:  # noqa: N802
        # Keys are worked out once per sort (see _resort): this runs n log n times.
        keys, lr, rr = self._keys, left.row(), right.row()
        if lr >= len(keys) or rr >= len(keys):
            return lr < rr  # keys of an older dataset; _resort follows
        a, b = keys[lr], keys[rr]
        if a == b:
            return left.row() < right.row()  # stable: name order among equals
        return a < b

    # ---- internals ----------------------------------------------------------------------------------

    def _sort_keys(self) -> list[float]:
        model = self._model
        keys: list[float] = []
        for row in range(model.rowCount()):
            path = model.item(row).path
            if self._sort == self.SIZE:
                keys.append(float(self._file_sizes.get(path, -1)))
            else:
                placement = model.placement(path)
                if isinstance(placement, Placement):
                    width, height = placement.original
                    keys.append(width / max(1, height))
                else:
                    keys.append(-1.0)  # not known (yet): first
        return keys

    def _resort(self) -> None:
        order = Qt.SortOrder.DescendingOrder if self._descending else Qt.SortOrder.AscendingOrder
        if self._sort == self.NAME:
            self._keys = []
            if self._descending:
                self._keys = [float(row) for row in range(self._model.rowCount())]
                self.sort(Column.IMAGE, order)
            else:
                self.sort(-1)  # the dataset's own order
            return
        self._keys = self._sort_keys()
        self.sort(Column.IMAGE, order)

    def _refilter(self) -> None:
        if hasattr(self, "beginFilterChange"):  # Qt >= 6.10
            self.beginFilterChange()
            self.endFilterChange(QSortFilterProxyModel.Direction.Rows)
        else:  # pragma: no cover - older Qt
            self.invalidateRowsFilter()

    def _schedule_refresh(self, *_: object) -> None:
        if self.is_filtering or self._sort != self.NAME:
            self._refresh_timer.start()

    def _model_changed(self) -> None:
        """Captions, problems or placements changed: filter and sort again."""
        if self.is_filtering:
            self._refilter()
        if self._sort != self.NAME:
            self._resort()

    def _on_reset(self) -> None:
        self._file_sizes = {}
        self._bucket = None
        if self._sort != self.NAME or self._descending:
            self._resort()
