"""Datasets on disk: images with caption sidecars, in the kohya folder layout.

A dataset folder holds images (``.png``, ``.jpg``, ``.jpeg``, ``.webp``, ``.bmp``) with an
optional ``<stem>.txt`` caption beside each. Sub-folders named ``<N>_<name>`` (kohya's
repeat folders, e.g. ``10_papercut style``) give their images ``N`` repeats per epoch.

Opening a dataset only lists files and reads the (small) caption files; images are decoded
later and elsewhere (thumbnails in a worker, training in the trainer). That keeps opening a
folder of thousands of images fast.
"""

from __future__ import annotations

import collections
import contextlib
import json
import os
import re
import shutil
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from PIL import Image, UnidentifiedImageError

from lora_studio.core.atomic import atomic_write_text
from lora_studio.core.errors import CaptionError, DatasetError

IMAGE_EXTENSIONS: frozenset[str] = frozenset({".png", ".jpg", ".jpeg", ".webp", ".bmp"})
CAPTION_EXTENSION = ".txt"
MANIFEST_VERSION = 1

_REPEAT_FOLDER = re.compile(r"^(\d+)_(.+)$")
# Encodings tried, in order, for caption files that are not UTF-8. latin-1 decodes any
# byte string, so reading never fails; the item remembers that it was not UTF-8.
_FALLBACK_ENCODINGS = ("cp1252", "latin-1")


@dataclass
class ImageItem:
    """One training image and its caption.

    Attributes:
        path: the image file.
        caption: the caption text, or ``None`` when there is no caption file.
        repeats: times the image is seen per epoch when it sits in a kohya ``N_`` folder;
            ``None`` means "not set by the folder" (the config's ``repeats`` applies).
        caption_encoding: how the caption file was decoded (``"utf-8"`` normally).
        problem: a user-facing note when something about this item is wrong.
    """

    path: Path
    caption: str | None = None
    repeats: int | None = None
    caption_encoding: str = "utf-8"
    problem: str | None = None

    @property
    def caption_path(self) -> Path:
        return self.path.with_suffix(CAPTION_EXTENSION)

    @property
    def has_caption(self) -> bool:
        return bool(self.caption and self.caption.strip())

    @property
    def name(self) -> str:
        return self.path.name


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


def read_caption(path: Path) -> tuple[str | None, str]:
    """Read a caption file; returns ``(text, encoding)`` or ``(None, "utf-8")`` if absent.

    Text that is not UTF-8 is decoded with a fallback encoding instead of failing, so
    nothing the user wrote is hidden; the encoding returned says which one was used.
    """
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return None, "utf-8"
    except OSError as exc:
        raise DatasetError(f"Caption file {path} cannot be read: {exc.strerror}.") from None
    try:
        return raw.decode("utf-8-sig").strip(), "utf-8"
    except UnicodeDecodeError:
        pass
    for encoding in _FALLBACK_ENCODINGS:
        try:
            return raw.decode(encoding).strip(), encoding
        except UnicodeDecodeError:
            continue
    raise AssertionError("latin-1 decodes every byte string")  # pragma: no cover


def write_caption(item: ImageItem, text: str) -> ImageItem:
    """Save ``text`` as ``item``'s caption, atomically, and update ``item``.

    A caption file that was not UTF-8 is first copied to ``<stem>.txt.orig`` so the
    original bytes are never lost; the new file is UTF-8.

    Raises:
        CaptionError: the file cannot be written (read-only folder, full disk, ...).
    """
    text = text.strip()
    target = item.caption_path
    try:
        if item.caption_encoding != "utf-8" and target.exists():
            backup = target.with_name(target.name + ".orig")
            if not backup.exists():
                shutil.copy2(target, backup)
        atomic_write_text(target, text + "\n" if text else "")
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise CaptionError(f"Could not save the caption of {item.name}: {reason}.") from None
    item.caption = text
    item.caption_encoding = "utf-8"
    if item.problem and "UTF-8" in item.problem:
        item.problem = None
    return item


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


class Dataset:
    """A set of :class:`ImageItem` rooted at a folder."""

    def __init__(self, root: Path, images: list[ImageItem] | None = None) -> None:
        self.root = Path(root)
        self.images: list[ImageItem] = list(images or [])

    def __len__(self) -> int:
        return len(self.images)

    def __iter__(self) -> Iterator[ImageItem]:
        return iter(self.images)

    def __repr__(self) -> str:
        return f"Dataset(root={str(self.root)!r}, images={len(self.images)})"

    @classmethod
    def from_directory(cls, root: str | os.PathLike[str]) -> Dataset:
        """Index the images under ``root`` (recursively) and read their captions.

        Raises:
            DatasetError: ``root`` is missing, not a folder, unreadable, or has no images.
        """
        folder = Path(root).expanduser()
        if not folder.exists():
            raise DatasetError(f"Dataset folder {folder} does not exist.")
        if not folder.is_dir():
            raise DatasetError(f"{folder} is not a folder; choose a folder of images.")
        items: list[ImageItem] = []
        try:
            for path in _walk_images(folder):
                caption, encoding = read_caption(path.with_suffix(CAPTION_EXTENSION))
                problem = None
                if encoding != "utf-8":
                    problem = (
                        f"Caption file is not UTF-8; it was read as {encoding}. Saving it "
                        f"writes UTF-8 and keeps the original as {path.stem}.txt.orig."
                    )
                items.append(
                    ImageItem(
                        path=path,
                        caption=caption,
                        repeats=_repeats_for(path, folder),
                        caption_encoding=encoding,
                        problem=problem,
                    )
                )
        except PermissionError as exc:
            raise DatasetError(f"Cannot read {exc.filename}: permission denied.") from None
        if not items:
            exts = ", ".join(sorted(IMAGE_EXTENSIONS))
            raise DatasetError(f"No images found in {folder} (looked for {exts}).")
        return cls(folder, items)

    @classmethod
    def from_manifest(cls, manifest: str | os.PathLike[str]) -> Dataset:
        """Load a dataset saved with :meth:`save_manifest`."""
        path = Path(manifest)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            root = Path(data.get("root") or path.parent)
            if not root.is_absolute():
                root = (path.parent / root).resolve()
            images = [
                ImageItem(
                    path=(root / entry["file"]),
                    caption=entry.get("caption"),
                    repeats=_optional_int(entry.get("repeats")),
                )
                for entry in data["images"]
            ]
        except FileNotFoundError:
            raise DatasetError(f"Manifest {path} does not exist.") from None
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise DatasetError(f"Manifest {path} cannot be read: {exc}.") from None
        return cls(root, images)

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
            "images": [
                {
                    "file": self.relative_name(item),
                    "caption": item.caption,
                    "repeats": item.repeats,
                }
                for item in self.images
            ],
        }
        return atomic_write_text(target, json.dumps(data, indent=2, ensure_ascii=False) + "\n")

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
        return Dataset(self.root, [replace(item) for item in self.images])

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
    except (OSError, ValueError, SyntaxError) as exc:
        return f"Image cannot be decoded ({exc})."
    except Image.DecompressionBombError:
        return "Image is too large to decode safely."
    return None


def _walk_images(folder: Path) -> Iterable[Path]:
    def on_error(exc: OSError) -> None:
        if folder == Path(exc.filename or ""):
            raise exc

    found: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(folder, onerror=on_error):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if name.startswith("."):
                continue
            if os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS:
                found.append(Path(dirpath) / name)
    return found


def _optional_int(value: Any) -> int | None:
    return None if value is None else max(1, int(value))


def _repeats_for(path: Path, root: Path) -> int | None:
    for part in path.relative_to(root).parts[:-1]:
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
