"""Datasets on disk: images with their captions, in the layouts people already have.

Opening a folder (:meth:`Dataset.from_directory`) walks it recursively and understands:

* **kohya**: ``image.png`` with its caption ``image.txt`` beside it; the caption extension
  is configurable (``.txt``, ``.caption``, ...). Sub-folders named ``<N>_<name>`` (repeat
  folders, e.g. ``10_papercut style``) give their images ``N`` repeats per epoch.
* **Hugging Face imagefolder**: a ``metadata.jsonl`` whose rows have a ``file_name``
  (relative to the file's folder) and a caption column, ``text`` or ``caption``. A row
  applies to its image wherever it sits below the file; the nearest ``metadata.jsonl``
  wins. Its caption is used even when a sidecar file exists too (that is noted).
* our own **dataset.json** manifest (:meth:`Dataset.from_manifest`); a folder with no
  images but a ``dataset.json`` opens that manifest. :meth:`Dataset.open` takes a folder,
  a manifest or a ``metadata.jsonl``.

Images: PNG, JPEG, WebP, BMP, TIFF, and HEIC/AVIF when a Pillow plugin for them is
registered (:mod:`lora_studio.core.formats`). Other image files (GIF, HEIC without its
plugin, camera raw, ...) are not part of the dataset but are listed in
:attr:`Dataset.notes`, so the validator can say why they are left out.

**Where an edited caption goes.** :func:`write_caption` writes to wherever the caption
came from, so the folder stays in the layout it had and tools that read it see the edit:

* a sidecar caption (or an image with no caption in a kohya folder): the sidecar file,
  atomically; a sidecar that was not UTF-8 is first kept as ``<file>.orig``;
* a caption from ``metadata.jsonl`` (or an uncaptioned image in a folder that has one):
  that row of ``metadata.jsonl``, rewritten atomically (temp file, fsync, rename). Only the
  caption column of that one row changes: every other column, row, blank line and line
  ending stays as it was, and a row is appended for an image that had none. Writes to one
  file are serialised, and each re-reads the file first, so two captions saved at once
  (or a change made by another program meanwhile) are never lost. A ``metadata.jsonl``
  that was not UTF-8 is kept as ``metadata.jsonl.orig`` before the first rewrite.

Opening a dataset only lists files and reads the (small) caption files; image pixels are
never read here (thumbnails decode in a worker, the validator and the trainer elsewhere).
That keeps opening a folder of 10,000 images to about a second (``benchmarks/bench_index.py``).

Export writes the kohya layout (:meth:`Dataset.export_kohya`) or a ``metadata.jsonl``
(:meth:`Dataset.export_metadata_jsonl`); neither ever overwrites a file unless asked to.
"""

from __future__ import annotations

import codecs
import collections
import contextlib
import json
import os
import re
import shutil
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from PIL import Image, UnidentifiedImageError

from lora_studio.core.atomic import atomic_write_text
from lora_studio.core.errors import CaptionError, DatasetError, OutputError
from lora_studio.core.formats import BASE_IMAGE_EXTENSIONS, image_extensions, unsupported_reason

if TYPE_CHECKING:
    from lora_studio.core.stats import DatasetStatistics

#: Image extensions every install reads (see :func:`lora_studio.core.formats.image_extensions`
#: for the full set, which adds HEIC/AVIF when their plugins are registered).
IMAGE_EXTENSIONS: frozenset[str] = BASE_IMAGE_EXTENSIONS
CAPTION_EXTENSION = ".txt"
METADATA_FILE = "metadata.jsonl"
MANIFEST_FILE = "dataset.json"
#: ``metadata.jsonl`` columns read as the caption, in this order.
CAPTION_COLUMNS = ("text", "caption")
MANIFEST_VERSION = 1

# Severities of :class:`DatasetNote` (the validator's words).
ERROR, WARNING, INFO = "error", "warning", "info"

_REPEAT_FOLDER = re.compile(r"^(\d+)_(.+)$")
# Encodings tried, in order, for caption files that are not UTF-8. latin-1 decodes any
# byte string, so reading never fails; the item remembers that it was not UTF-8.
_FALLBACK_ENCODINGS = ("cp1252", "latin-1")


@dataclass(frozen=True)
class MetadataRef:
    """Where in a ``metadata.jsonl`` an image's caption lives.

    Attributes:
        file: the ``metadata.jsonl``.
        file_name: the row's ``file_name`` (relative to ``file``'s folder, ``/``-separated).
        column: the caption column (``text`` or ``caption``).
    """

    file: Path
    file_name: str
    column: str = "text"


@dataclass
class ImageItem:
    """One training image and its caption.

    Attributes:
        path: the image file.
        caption: the caption text, or ``None`` when there is no caption.
        repeats: times the image is seen per epoch when it sits in a kohya ``N_`` folder;
            ``None`` means "not set by the folder" (the config's ``repeats`` applies).
        caption_encoding: how the caption file was decoded (``"utf-8"`` normally).
        problem: a user-facing note when something about this item is wrong.
        caption_extension: the extension of the caption sidecar (``.txt``, ``.caption``).
        metadata: set when the caption lives in a ``metadata.jsonl`` row (edits go there).
        caption_error: why the caption file could not be read (``None``: it could).
    """

    path: Path
    caption: str | None = None
    repeats: int | None = None
    caption_encoding: str = "utf-8"
    problem: str | None = None
    caption_extension: str = CAPTION_EXTENSION
    metadata: MetadataRef | None = None
    caption_error: str | None = None

    @property
    def caption_path(self) -> Path:
        """The caption sidecar beside the image (it may not exist)."""
        return self.path.with_suffix(self.caption_extension)

    @property
    def caption_file(self) -> Path:
        """The file the caption is read from and saved to: a sidecar or a ``metadata.jsonl``."""
        return self.metadata.file if self.metadata is not None else self.caption_path

    @property
    def has_caption(self) -> bool:
        return bool(self.caption and self.caption.strip())

    @property
    def name(self) -> str:
        return self.path.name


@dataclass(frozen=True)
class DatasetNote:
    """Something found while indexing that is not one image's caption: a file left out
    (unsupported format), a bad ``metadata.jsonl`` row, a folder that cannot be read.

    ``severity`` is ``"error"``, ``"warning"`` or ``"info"``; ``code`` is a stable string.
    """

    path: Path
    severity: str
    code: str
    message: str


@dataclass(frozen=True)
class ExportReport:
    """What an export wrote."""

    target: Path
    images: int
    captions: int
    copied: int


@dataclass
class DatasetStats:
    """Numbers about a dataset, as shown in the browser and by ``dataset stats``."""

    total_images: int
    images_with_captions: int
    images_without_captions: int
    avg_caption_length: float
    avg_caption_words: float
    total_repeats: int
    folders: dict[str, int]
    top_tags: list[tuple[str, int]]
    formats: dict[str, int]
    total_bytes: int
    problems: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        data = dict(self.__dict__)
        data["top_tags"] = [{"tag": t, "count": c} for t, c in self.top_tags]
        return data


def normalize_caption_extension(extension: str) -> str:
    """``"txt"`` or ``".txt"`` -> ``".txt"``.

    Raises:
        DatasetError: the extension is empty, has a path separator, or is an image one.
    """
    ext = extension.strip()
    if ext and not ext.startswith("."):
        ext = "." + ext
    if len(ext) < 2 or "/" in ext or "\\" in ext or ext.count(".") != 1:
        raise DatasetError(
            f"{extension!r} is not a caption file extension; use one like .txt or .caption."
        )
    if ext.lower() in image_extensions():
        raise DatasetError(f"{ext} is an image extension; captions need another one.")
    return ext


def _decode_text(raw: bytes) -> tuple[str, str]:
    # The BOM by hand: the "utf-8-sig" codec is Python code, 4x the C "utf-8" decoder.
    try:
        return raw.removeprefix(codecs.BOM_UTF8).decode("utf-8"), "utf-8"
    except UnicodeDecodeError:
        pass
    for encoding in _FALLBACK_ENCODINGS:
        try:
            return raw.decode(encoding), encoding
        except UnicodeDecodeError:
            continue
    raise AssertionError("latin-1 decodes every byte string")  # pragma: no cover


def read_caption(path: str | os.PathLike[str]) -> tuple[str | None, str]:
    """Read a caption file; returns ``(text, encoding)`` or ``(None, "utf-8")`` if absent.

    Text that is not UTF-8 is decoded with a fallback encoding instead of failing, so
    nothing the user wrote is hidden; the encoding returned says which one was used.

    Raises:
        DatasetError: the file exists but cannot be read (permission denied, a folder...).
    """
    try:
        raw = _read_bytes(path)
    except FileNotFoundError:
        return None, "utf-8"
    except OSError as exc:
        raise DatasetError(f"Caption file {path} cannot be read: {exc.strerror or exc}.") from None
    text, encoding = _decode_text(raw)
    return text.strip(), encoding


_READ_FLAGS = os.O_RDONLY | getattr(os, "O_BINARY", 0)  # (O_BINARY: Windows only)


def _read_bytes(path: str | os.PathLike[str]) -> bytes:
    """A file's bytes through ``os.open``/``os.read``: no buffered file object is made,
    which halves the cost of a small file (an index of 10,000 images reads 8,000 caption
    files: 54 -> 30 ms). A folder raises ``IsADirectoryError`` here as ``open()`` does."""
    fd = os.open(path, _READ_FLAGS)
    try:
        chunks = []
        while chunk := os.read(fd, 1 << 16):
            chunks.append(chunk)
    finally:
        os.close(fd)
    return b"".join(chunks)


def write_caption(item: ImageItem, text: str) -> ImageItem:
    """Save ``text`` as ``item``'s caption, atomically, and update ``item``.

    The caption goes where it came from (see the module docstring): the sidecar file with
    the item's caption extension, or the item's row of ``metadata.jsonl``. A sidecar that
    was not UTF-8 is first copied to ``<file>.orig`` so the original bytes are never lost;
    the new file is UTF-8.

    Raises:
        CaptionError: the file cannot be written (read-only folder, full disk, ...).
    """
    text = text.strip()
    try:
        if item.metadata is not None:
            _write_metadata_caption(item.metadata, item.path, text)
        else:
            target = item.caption_path
            if item.caption_encoding != "utf-8" and target.exists():
                _keep_original(target)
            atomic_write_text(target, text + "\n" if text else "")
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise CaptionError(f"Could not save the caption of {item.name}: {reason}.") from None
    if item.problem and ("UTF-8" in item.problem or item.problem == item.caption_error):
        item.problem = None
    item.caption = text
    item.caption_encoding = "utf-8"
    item.caption_error = None
    return item


def read_item_caption(item: ImageItem) -> str | None:
    """``item``'s caption as it is on disk now (its sidecar, or its ``metadata.jsonl``
    row); ``None`` when it has none. Unlike ``item.caption`` this sees edits made since
    the folder was opened (by the user, another program or another window).

    Raises:
        DatasetError: the caption file exists but cannot be read.
    """
    if item.metadata is not None:
        table = _read_metadata(item.metadata.file)
        hit = table.rows.get(os.path.normcase(os.path.normpath(item.path)))
        if hit is None:
            return None
        row, column = hit
        return _caption_value(row, column)
    text, _encoding = read_caption(item.caption_path)
    return text


def _keep_original(target: Path) -> None:
    backup = target.with_name(target.name + ".orig")
    if not backup.exists():
        shutil.copy2(target, backup)


def training_caption(item: ImageItem, trigger_word: str) -> str:
    """The caption training uses: the trigger word put in front when it is missing."""
    caption = (item.caption or "").strip()
    trigger = trigger_word.strip()
    if trigger and trigger.lower() not in caption.lower():
        return f"{trigger}, {caption}" if caption else trigger
    return caption


def split_tags(caption: str) -> list[str]:
    """Comma-separated tags of a caption, stripped, empty ones dropped."""
    return [t.strip() for t in caption.split(",") if t.strip()]


# ---- metadata.jsonl ----------------------------------------------------------------------

# One lock per metadata.jsonl: captions of two images in one file may be saved at once
# (the window saves each image's caption on its own worker thread).
_METADATA_LOCKS: dict[str, threading.Lock] = {}
_METADATA_LOCKS_GUARD = threading.Lock()


def _metadata_lock(path: Path) -> threading.Lock:
    key = os.path.normcase(os.path.abspath(path))
    with _METADATA_LOCKS_GUARD:
        return _METADATA_LOCKS.setdefault(key, threading.Lock())


def _json_line(row: dict[str, Any]) -> str:
    line = json.dumps(row, ensure_ascii=False)
    try:
        line.encode("utf-8")
    except UnicodeEncodeError:  # a file name that is not valid UTF-8 (lone surrogates)
        line = json.dumps(row)
    return line


def _row_target(folder: Path, file_name: str) -> str:
    return os.path.normcase(os.path.normpath(os.path.join(folder, file_name)))


@dataclass
class _MetadataRows:
    """The rows of one ``metadata.jsonl`` that name an image: path -> (row, column)."""

    file: Path
    rows: dict[str, tuple[dict[str, Any], str | None]]
    column: str  # the file's caption column (for rows without one)
    encoding: str
    notes: list[DatasetNote]


def _read_metadata(file: Path) -> _MetadataRows:
    notes: list[DatasetNote] = []
    rows: dict[str, tuple[dict[str, Any], str | None]] = {}
    columns: collections.Counter[str] = collections.Counter()
    try:
        text, encoding = _decode_text(file.read_bytes())
    except OSError as exc:
        notes.append(
            DatasetNote(
                file,
                WARNING,
                "metadata_unreadable",
                f"{file.name} cannot be read ({exc.strerror or exc}); its captions are not used.",
            )
        )
        return _MetadataRows(file, rows, "text", "utf-8", notes)
    if encoding != "utf-8":
        notes.append(
            DatasetNote(
                file,
                WARNING,
                "metadata_not_utf8",
                f"{file.name} is not UTF-8; it was read as {encoding}. Saving a caption "
                f"writes UTF-8 and keeps the original as {file.name}.orig.",
            )
        )
    bad_lines: list[int] = []
    for number, line in enumerate(_lines(text), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError:
            bad_lines.append(number)
            continue
        name = row.get("file_name") if isinstance(row, dict) else None
        if not isinstance(name, str) or not name.strip():
            bad_lines.append(number)
            continue
        column = next((c for c in CAPTION_COLUMNS if c in row), None)
        if column is not None:
            columns[column] += 1
        rows.setdefault(_row_target(file.parent, name), (row, column))
    if bad_lines:
        shown = ", ".join(str(n) for n in bad_lines[:5]) + (" \u2026" if len(bad_lines) > 5 else "")
        notes.append(
            DatasetNote(
                file,
                WARNING,
                "metadata_bad_rows",
                f"{len(bad_lines)} line(s) of {file.name} are not JSON objects with a "
                f"file_name (line {shown}); they are kept as they are but not used.",
            )
        )
    column = columns.most_common(1)[0][0] if columns else CAPTION_COLUMNS[0]
    return _MetadataRows(file, rows, column, encoding, notes)


def _lines(text: str, *, keepends: bool = False) -> list[str]:
    """JSON Lines split at ``\n`` only: ``str.splitlines`` would also split at U+2028 and
    other separators that JSON allows inside a string."""
    parts = text.split("\n")
    if keepends:
        lines = [part + "\n" for part in parts[:-1]]
        return lines + [parts[-1]] if parts[-1] else lines
    return [part.rstrip("\r") for part in (parts[:-1] if not parts[-1] else parts)]


def _caption_value(row: dict[str, Any], column: str | None) -> str | None:
    if column is None:
        return None
    value = row.get(column)
    if value is None:
        return None
    return (value if isinstance(value, str) else str(value)).strip()


def _write_metadata_caption(ref: MetadataRef, image: Path, text: str) -> None:
    """Set the caption of ``image``'s row(s) in ``ref.file``; append a row if it has none.

    Raises:
        OSError: the file cannot be read or written; it is then unchanged.
    """
    with _metadata_lock(ref.file):
        try:
            raw = ref.file.read_bytes()
        except FileNotFoundError:
            raw = b""
        content, encoding = _decode_text(raw)
        lines = _lines(content, keepends=True)
        target = os.path.normcase(os.path.normpath(image))
        found = False
        for index, line in enumerate(lines):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except ValueError:
                continue
            name = row.get("file_name") if isinstance(row, dict) else None
            if not isinstance(name, str) or _row_target(ref.file.parent, name) != target:
                continue
            column = next((c for c in CAPTION_COLUMNS if c in row), ref.column)
            row[column] = text
            body = line.rstrip("\r\n")
            lines[index] = _json_line(row) + line[len(body) :]
            found = True
        if not found:
            if lines and not lines[-1].endswith(("\n", "\r")):
                lines[-1] += "\n"
            lines.append(_json_line({"file_name": ref.file_name, ref.column: text}) + "\n")
        if encoding != "utf-8" and ref.file.exists():
            _keep_original(ref.file)
        atomic_write_text(ref.file, "".join(lines))


# ---- the dataset ------------------------------------------------------------------------


class Dataset:
    """A set of :class:`ImageItem` rooted at a folder.

    Attributes:
        root: the dataset folder.
        images: the images, in folder order.
        notes: files left out and other findings of indexing (see :class:`DatasetNote`).
        caption_extension: the caption sidecar extension the dataset was opened with.
    """

    def __init__(
        self,
        root: Path,
        images: list[ImageItem] | None = None,
        *,
        notes: list[DatasetNote] | None = None,
        caption_extension: str = CAPTION_EXTENSION,
    ) -> None:
        self.root = Path(root)
        self.images: list[ImageItem] = list(images or [])
        self.notes: list[DatasetNote] = list(notes or [])
        self.caption_extension = caption_extension

    def __len__(self) -> int:
        return len(self.images)

    def __iter__(self) -> Iterator[ImageItem]:
        return iter(self.images)

    def __repr__(self) -> str:
        return f"Dataset(root={str(self.root)!r}, images={len(self.images)})"

    @classmethod
    def open(
        cls, path: str | os.PathLike[str], caption_extension: str = CAPTION_EXTENSION
    ) -> Dataset:
        """Open a dataset folder, a ``dataset.json`` manifest or a ``metadata.jsonl``.

        Raises:
            DatasetError: nothing usable at ``path`` (see :meth:`from_directory`).
        """
        target = Path(path).expanduser()
        if target.is_file():
            if target.name == METADATA_FILE:
                return cls.from_directory(target.parent, caption_extension)
            if target.suffix.lower() == ".json":
                return cls.from_manifest(target)
            raise DatasetError(
                f"{target} is a file; open a dataset folder, a dataset.json or a {METADATA_FILE}."
            )
        return cls.from_directory(target, caption_extension)

    @classmethod
    def from_directory(
        cls, root: str | os.PathLike[str], caption_extension: str = CAPTION_EXTENSION
    ) -> Dataset:
        """Index the images under ``root`` (recursively) and read their captions.

        Only file listings and caption files are read, never image pixels.

        Args:
            root: the dataset folder.
            caption_extension: the extension of caption sidecars (``.txt``, ``.caption``).

        Raises:
            DatasetError: ``root`` is missing, not a folder, unreadable, or has no images.
        """
        folder = Path(root).expanduser()
        ext = normalize_caption_extension(caption_extension)
        if not folder.exists():
            raise DatasetError(f"Dataset folder {folder} does not exist.")
        if not folder.is_dir():
            raise DatasetError(f"{folder} is not a folder; choose a folder of images.")
        try:
            return _index(folder, ext)
        except PermissionError as exc:
            raise DatasetError(f"Cannot read {exc.filename}: permission denied.") from None

    @classmethod
    def from_manifest(cls, manifest: str | os.PathLike[str]) -> Dataset:
        """Load a dataset saved with :meth:`save_manifest`."""
        path = Path(manifest)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            root = Path(data.get("root") or path.parent)
            if not root.is_absolute():
                root = (path.parent / root).resolve()
            ext = normalize_caption_extension(str(data.get("caption_extension") or ".txt"))
            images = [
                ImageItem(
                    path=(root / entry["file"]),
                    caption=entry.get("caption"),
                    repeats=_optional_int(entry.get("repeats")),
                    caption_extension=ext,
                )
                for entry in data["images"]
            ]
        except FileNotFoundError:
            raise DatasetError(f"Manifest {path} does not exist.") from None
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            raise DatasetError(f"Manifest {path} cannot be read: {exc}.") from None
        return cls(root, images, caption_extension=ext)

    def save_manifest(self, path: str | os.PathLike[str]) -> Path:
        """Write a ``dataset.json`` listing every image, caption and repeat count."""
        target = Path(path)
        try:
            root = os.path.relpath(self.root, target.parent)
        except ValueError:  # different drives on Windows
            root = str(self.root)
        data = {
            "version": MANIFEST_VERSION,
            "root": root,
            "caption_extension": self.caption_extension,
            "images": [
                {
                    "file": self.relative_name(item),
                    "caption": item.caption,
                    "repeats": item.repeats,
                }
                for item in self.images
            ],
        }
        target.parent.mkdir(parents=True, exist_ok=True)
        text = json.dumps(data, indent=2, ensure_ascii=False)
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:  # file names that are not valid UTF-8
            text = json.dumps(data, indent=2)
        return atomic_write_text(target, text + "\n")

    def samples_per_epoch(self, default_repeats: int = 1) -> int:
        """Images seen per epoch: each image once per repeat."""
        return sum(item.repeats or default_repeats for item in self.images)

    def relative_name(self, item: ImageItem) -> str:
        try:
            return item.path.relative_to(self.root).as_posix()
        except ValueError:
            return item.path.name

    def snapshot(self) -> Dataset:
        """An independent copy (items copied), e.g. to hand to a training run."""
        return Dataset(
            self.root,
            [replace(item) for item in self.images],
            notes=list(self.notes),
            caption_extension=self.caption_extension,
        )

    def find(self, path: Path) -> ImageItem | None:
        for item in self.images:
            if item.path == path:
                return item
        return None

    def tag_frequency(self) -> dict[str, dict[str, int]]:
        """kohya's ``ss_tag_frequency``: ``{folder: {tag: count}}``."""
        result: dict[str, collections.Counter[str]] = {}
        for item in self.images:
            folder = item.path.parent.name if item.path.parent != self.root else self.root.name
            counter = result.setdefault(folder, collections.Counter())
            if item.caption:
                counter.update(split_tags(item.caption))
        return {folder: dict(counter) for folder, counter in result.items()}

    def statistics(self, **options: Any) -> DatasetStatistics:
        """The full statistics (:func:`lora_studio.core.stats.dataset_statistics`): size,
        aspect and bucket histograms from the image headers, caption tokens when given a
        ``count_tokens`` function, tag frequency. Reads every header: call it off the GUI
        thread for a big dataset."""
        from lora_studio.core.stats import dataset_statistics  # stats imports this module

        return dataset_statistics(self, **options)

    def stats(self) -> DatasetStats:
        """Counts, caption lengths, tag frequency and problems (images are not decoded)."""
        captioned = [i for i in self.images if i.has_caption]
        lengths = [len(i.caption or "") for i in captioned]
        words = [len((i.caption or "").split()) for i in captioned]
        tags: collections.Counter[str] = collections.Counter()
        for item in captioned:
            tags.update(t.lower() for t in split_tags(item.caption or ""))
        folders: collections.Counter[str] = collections.Counter(
            self.relative_name(i).rpartition("/")[0] or "." for i in self.images
        )
        formats: collections.Counter[str] = collections.Counter(
            i.path.suffix.lower().lstrip(".") for i in self.images
        )
        total_bytes = 0
        for item in self.images:
            with contextlib.suppress(OSError):  # a file deleted since indexing
                total_bytes += item.path.stat().st_size
        problems = [f"{self.relative_name(i)}: {i.problem}" for i in self.images if i.problem]
        return DatasetStats(
            total_images=len(self.images),
            images_with_captions=len(captioned),
            images_without_captions=len(self.images) - len(captioned),
            avg_caption_length=sum(lengths) / len(lengths) if lengths else 0.0,
            avg_caption_words=sum(words) / len(words) if words else 0.0,
            total_repeats=self.samples_per_epoch(),
            folders=dict(folders),
            top_tags=tags.most_common(20),
            formats=dict(formats),
            total_bytes=total_bytes,
            problems=problems,
        )

    def verify_images(self) -> list[tuple[ImageItem, str]]:
        """Decode every image header and pixel data; return the unreadable ones with why.

        This is slow for big datasets: call it from a worker thread.
        """
        bad: list[tuple[ImageItem, str]] = []
        for item in self.images:
            reason = check_image(item.path)
            if reason:
                item.problem = reason
                bad.append((item, reason))
        return bad

    # ---- export ------------------------------------------------------------------------

    def export_kohya(
        self,
        out: str | os.PathLike[str],
        *,
        default_repeats: int = 1,
        concept: str | None = None,
        caption_extension: str = CAPTION_EXTENSION,
        overwrite: bool = False,
    ) -> ExportReport:
        """Copy the images, with a caption sidecar each, into kohya's layout under ``out``.

        Images already in a repeat folder (``10_name/``) keep it; the others go into
        ``<repeats>_<concept>/`` (the item's repeats, else ``default_repeats``; the
        concept defaults to the dataset folder's name). Sub-folders are flattened (kohya
        reads one level) with names made unique, so no image and no caption collide.
        Uncaptioned images get no caption file. The originals are not touched.

        Args:
            out: the folder to write; created if missing. Must not be inside the dataset.
            overwrite: replace files that already exist in ``out``. Without it, an
                export that would replace any file writes nothing and raises.

        Raises:
            OutputError: ``out`` is inside the dataset, would overwrite files, or cannot
                be written.
        """
        target = self._export_target(Path(out).expanduser())
        ext = normalize_caption_extension(caption_extension)
        name = _safe_folder_name(concept or self.root.name) or "dataset"
        plan: list[tuple[ImageItem, Path, Path | None]] = []
        used: set[tuple[str, str]] = set()
        for item in self.images:
            parts = Path(self.relative_name(item)).parts
            folder, inner = _kohya_folder(parts[:-1])
            if folder is None:
                folder = f"{max(1, item.repeats or default_repeats)}_{name}"
            stem = "_".join([*inner, item.path.stem]) if inner else item.path.stem
            stem = _unique_stem(stem, folder, used)
            image = target / folder / (stem + item.path.suffix)
            caption = image.with_suffix(ext) if item.has_caption else None
            plan.append((item, image, caption))
        files = [p for _, image, caption in plan for p in (image, caption) if p is not None]
        _refuse_overwrites(target, files, overwrite)

        def write(base: Path) -> None:
            for item, image, caption in plan:
                destination = base / image.relative_to(target)
                destination.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(item.path, destination)
                if caption is not None:
                    atomic_write_text(
                        base / caption.relative_to(target), (item.caption or "").strip() + "\n"
                    )

        _write_export(target, write)
        captions = sum(1 for _, _, caption in plan if caption is not None)
        return ExportReport(target, len(plan), captions, len(plan))

    def export_metadata_jsonl(
        self,
        path: str | os.PathLike[str],
        *,
        caption_column: str = "text",
        overwrite: bool = False,
    ) -> ExportReport:
        """Write a Hugging Face imagefolder ``metadata.jsonl`` of the images and captions.

        Images below the file's folder are referenced where they are; the others are
        copied there (keeping their path within the dataset), since an imagefolder's
        ``file_name`` is relative to the metadata file.

        Args:
            path: the file to write, or a folder to write ``metadata.jsonl`` in.
            caption_column: the column the caption goes in (``text`` for diffusers).
            overwrite: replace an existing metadata file (its other columns, and rows of
                files not in this dataset, are kept) and copied images in the way.

        Raises:
            OutputError: the file exists (without ``overwrite``) or cannot be written.
        """
        target = Path(path).expanduser()
        if target.is_dir() or not target.suffix:
            target = target / METADATA_FILE
        folder = target.parent
        if caption_column == "file_name" or not caption_column.strip():
            raise OutputError(f"{caption_column!r} cannot be the caption column.")
        if target.exists() and not overwrite:
            raise OutputError(
                f"{target} already exists; choose another file or allow overwriting it."
            )
        copies: list[tuple[ImageItem, Path]] = []
        names: list[tuple[ImageItem, str]] = []
        for item in self.images:
            relative = _relative_inside(item.path, folder)
            if relative is None:
                destination = folder / self.relative_name(item)
                copies.append((item, destination))
                relative = destination.relative_to(folder).as_posix()
            names.append((item, relative))
        if _inside(folder, self.root) and copies:
            raise OutputError(
                f"{target} would copy images into the dataset itself; choose a folder "
                f"outside it, or the dataset folder itself to reference them in place."
            )
        _refuse_overwrites(folder, [dest for _, dest in copies], overwrite)
        existing: dict[str, dict[str, Any]] = {}
        order: list[str] = []
        if target.exists():
            for key, (row, _column) in _read_metadata(target).rows.items():
                existing[key] = row
                order.append(key)
        lines: list[str] = []
        written: set[str] = set()
        for item, relative in names:
            key = _row_target(folder, relative)
            row = dict(existing.get(key, {}))
            row["file_name"] = relative
            if item.caption is not None:
                row[caption_column] = item.caption.strip()
            lines.append(_json_line(row))
            written.add(key)
        lines.extend(_json_line(existing[key]) for key in order if key not in written)
        try:
            folder.mkdir(parents=True, exist_ok=True)
            for item, destination in copies:
                destination.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(item.path, destination)
            atomic_write_text(target, "".join(line + "\n" for line in lines))
        except OSError as exc:
            raise OutputError(f"Cannot write {target}: {exc.strerror or exc}.") from None
        captions = sum(1 for item, _ in names if item.caption is not None)
        return ExportReport(target, len(names), captions, len(copies))

    def _export_target(self, out: Path) -> Path:
        if out.exists() and not out.is_dir():
            raise OutputError(f"{out} is a file; export into a folder.")
        if _inside(out, self.root):
            raise OutputError(
                f"{out} is inside the dataset {self.root}; export to a folder outside it "
                f"(the export would become part of the dataset)."
            )
        return out


# ---- indexing ----------------------------------------------------------------------------


def _suffix(name: str) -> str:
    """A file name's extension, lower case (``os.path.splitext`` for a bare name that
    does not start with a dot, at a third of its cost: an index calls it 28,000 times for
    10,000 images)."""
    dot = name.rfind(".")
    return name[dot:].lower() if dot > 0 else ""


def first_images(folder: str | os.PathLike[str], count: int) -> list[Path]:
    """The first ``count`` image files of ``folder`` in the order its dataset lists them
    (folders top-down, names sorted), from the listing alone: the window prefetches their
    thumbnails while the folder is still being indexed. Unreadable folders are skipped."""
    extensions = image_extensions()
    found: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if not name.startswith(".") and _suffix(name) in extensions:
                found.append(Path(dirpath) / name)
                if len(found) >= count:
                    return found
    return found


def _index(folder: Path, ext: str) -> Dataset:
    extensions = image_extensions()
    notes: list[DatasetNote] = []
    listing: list[tuple[Path, list[str], set[str]]] = []
    metadata_files: list[Path] = []

    def on_error(exc: OSError) -> None:
        if folder == Path(exc.filename or ""):
            raise exc
        notes.append(
            DatasetNote(
                Path(exc.filename or folder),
                WARNING,
                "folder_unreadable",
                f"The folder cannot be read ({exc.strerror or exc}); its images are left out.",
            )
        )

    for dirpath, dirnames, filenames in os.walk(folder, onerror=on_error):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        here = Path(dirpath)
        images: list[str] = []
        for name in sorted(filenames):
            if name.startswith("."):
                continue
            suffix = _suffix(name)  # (names starting with a dot were skipped)
            if suffix in extensions:
                images.append(name)
            elif name == METADATA_FILE:
                metadata_files.append(here / name)
            elif suffix != ext:  # (not a caption)
                reason = unsupported_reason(suffix)
                if reason is not None:
                    notes.append(DatasetNote(here / name, ERROR, "unsupported_format", reason))
        if images:
            # Folders too: a caption "file" that is a folder is reported as unreadable.
            listing.append((here, images, set(filenames) | set(dirnames)))

    # Nearest metadata.jsonl wins: deeper files are read last and override.
    rows: dict[str, tuple[_MetadataRows, dict[str, Any], str | None]] = {}
    tables: list[_MetadataRows] = []
    for file in sorted(metadata_files, key=lambda p: len(p.parts)):
        table = _read_metadata(file)
        notes.extend(table.notes)
        tables.append(table)
        for key, (row, column) in table.rows.items():
            rows[key] = (table, row, column)

    items: list[ImageItem] = []
    caption_problems: list[DatasetNote] = []
    for here, images, names in listing:
        repeats = _repeats_for(here, folder)
        covering = _covering_table(here, tables)
        for name in images:
            path = here / name
            item = ImageItem(path=path, repeats=repeats, caption_extension=ext)
            sidecar_name = name[: name.rfind(".")] + ext  # (an image name has a suffix)
            has_sidecar = sidecar_name in names
            hit = rows.get(os.path.normcase(os.path.normpath(path))) if rows else None
            if hit is not None and (hit[2] is not None or not has_sidecar):
                table, row, column = hit
                item.metadata = MetadataRef(table.file, row["file_name"], column or table.column)
                item.caption = _caption_value(row, column)
                if has_sidecar and _sidecar_differs(item):
                    caption_problems.append(
                        DatasetNote(
                            path,
                            INFO,
                            "caption_conflict",
                            f"The caption in {table.file.name} is used; {sidecar_name} "
                            f"beside the image is ignored.",
                        )
                    )
            elif has_sidecar:
                _read_sidecar(item, os.path.join(here, sidecar_name))
            elif covering is not None:
                # A folder described by metadata.jsonl: a new caption becomes a new row.
                relative = os.path.relpath(path, covering.file.parent).replace(os.sep, "/")
                item.metadata = MetadataRef(covering.file, relative, covering.column)
            items.append(item)
    notes.extend(caption_problems)

    if not items:
        manifest = folder / MANIFEST_FILE
        if manifest.is_file():
            return Dataset.from_manifest(manifest)
        looked = ", ".join(sorted(extensions))
        left_out = [n for n in notes if n.code == "unsupported_format"]
        detail = ""
        if left_out:
            names_shown = ", ".join(n.path.name for n in left_out[:3])
            detail = f" {len(left_out)} file(s) are in formats that cannot be used ({names_shown}\u2026)."
        raise DatasetError(f"No images found in {folder} (looked for {looked}).{detail}")
    return Dataset(folder, items, notes=notes, caption_extension=ext)


def _read_sidecar(item: ImageItem, file: str | None = None) -> None:
    # ``file``: the sidecar's path, when the caller has it as text (faster than a Path).
    try:
        caption, encoding = read_caption(file if file is not None else item.caption_path)
    except DatasetError as exc:
        item.problem = item.caption_error = str(exc)
        return
    item.caption = caption
    item.caption_encoding = encoding
    if encoding != "utf-8":
        item.problem = (
            f"Caption file is not UTF-8; it was read as {encoding}. Saving it writes "
            f"UTF-8 and keeps the original as {item.caption_path.name}.orig."
        )


def _sidecar_differs(item: ImageItem) -> bool:
    try:
        text, _encoding = read_caption(item.caption_path)
    except DatasetError:
        return True
    return text is not None and text != (item.caption or "")


def _covering_table(folder: Path, tables: list[_MetadataRows]) -> _MetadataRows | None:
    best: _MetadataRows | None = None
    for table in tables:  # sorted shallow to deep: the last match is the nearest
        if _inside(folder, table.file.parent):
            best = table
    return best


def _inside(path: Path, folder: Path) -> bool:
    """``path`` is ``folder`` or below it (both resolved)."""
    try:
        path.resolve().relative_to(folder.resolve())
    except (ValueError, OSError):
        return False
    return True


def _relative_inside(path: Path, folder: Path) -> str | None:
    try:
        return path.resolve().relative_to(folder.resolve()).as_posix()
    except (ValueError, OSError):
        return None


def _kohya_folder(parents: tuple[str, ...]) -> tuple[str | None, list[str]]:
    """The repeat folder among ``parents`` (the first one) and the sub-folders below it."""
    for index, part in enumerate(parents):
        if _REPEAT_FOLDER.match(part):
            return part, list(parents[index + 1 :])
    return None, list(parents)


def _safe_folder_name(name: str) -> str:
    cleaned = re.sub(r"[\\/:*?\"<>|\x00-\x1f]", "_", name).strip().strip(".")
    return cleaned


def _unique_stem(stem: str, folder: str, used: set[tuple[str, str]]) -> str:
    candidate, number = stem, 1
    while (folder.casefold(), candidate.casefold()) in used:
        number += 1
        candidate = f"{stem}-{number}"
    used.add((folder.casefold(), candidate.casefold()))
    return candidate


def _refuse_overwrites(target: Path, files: list[Path], overwrite: bool) -> None:
    if overwrite:
        return
    clashes = [p for p in files if p.exists() or p.is_symlink()]
    if clashes:
        shown = ", ".join(str(p.relative_to(target)) for p in clashes[:3])
        more = f" and {len(clashes) - 3} more" if len(clashes) > 3 else ""
        raise OutputError(
            f"{len(clashes)} file(s) already exist in {target} ({shown}{more}); nothing "
            f"was written. Choose an empty folder or allow overwriting."
        )


def _write_export(target: Path, write: Any) -> None:
    """Run ``write(base)``: into a hidden staging folder renamed to ``target`` when
    ``target`` does not exist yet (all or nothing), else into ``target`` itself."""
    try:
        if target.exists():
            write(target)
            return
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = target.with_name(f".{target.name}.{uuid.uuid4().hex[:8]}.tmp")
        try:
            staging.mkdir()
            write(staging)
            staging.rename(target)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
    except OSError as exc:
        raise OutputError(f"Cannot export to {target}: {exc.strerror or exc}.") from None


def check_image(path: Path) -> str | None:
    """``None`` if ``path`` decodes as an image, else a user-facing reason."""
    try:
        with Image.open(path) as img:
            img.load()
            if img.width < 8 or img.height < 8:
                return f"Image is too small ({img.width}x{img.height})."
    except FileNotFoundError:
        return "Image file is missing."
    except UnidentifiedImageError:
        return "Not a readable image (the file is corrupt or not an image)."
    except Image.DecompressionBombError:
        return "Image is too large to decode safely."
    except (OSError, ValueError, SyntaxError) as exc:
        return f"Image cannot be decoded ({exc})."
    return None


def _optional_int(value: Any) -> int | None:
    return None if value is None else max(1, int(value))


def _repeats_for(folder: Path, root: Path) -> int | None:
    for part in folder.relative_to(root).parts:
        match = _REPEAT_FOLDER.match(part)
        if match:
            return max(1, int(match.group(1)))
    return None


class DatasetBuilder:
    """Builds a dataset folder from images in memory (e.g. extracted video frames)."""

    def __init__(self, output_dir: str | os.PathLike[str]) -> None:
        self.output_dir = Path(output_dir)
        try:
            self.output_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise DatasetError(
                f"Cannot create dataset folder {self.output_dir}: {exc.strerror}."
            ) from None
        self._items: list[ImageItem] = []

    def add_image(self, image: Image.Image, caption: str, name: str | None = None) -> ImageItem:
        """Save ``image`` as PNG with ``caption`` beside it; returns the new item."""
        stem = name or f"image_{len(self._items) + 1:05d}"
        path = self.output_dir / f"{stem}.png"
        if path.exists():
            raise DatasetError(f"{path} already exists; choose another name.")
        try:
            image.save(path, format="PNG")
        except OSError as exc:
            raise DatasetError(f"Cannot save {path}: {exc}.") from None
        item = ImageItem(path=path)
        if caption.strip():
            write_caption(item, caption)
        self._items.append(item)
        return item

    def build(self) -> Dataset:
        return Dataset(self.output_dir, list(self._items))
