"""Caption proposals: automatic captions waiting for review, and the provenance of the
captions that were accepted.

An automatic captioner never writes over a caption on its own. Its captions arrive as
**proposals**; the user accepts (the caption file is written) or rejects (the proposal is
dropped) each one, in the caption grid or with ``lora-studio caption review``. A proposal
remembers the caption the image had when it was made (``previous``): if the caption has
changed on disk since (the user edited it), accepting it is a **conflict** and nothing is
written unless forced. Accepted captions keep their **provenance**: which provider and
model made them, when, in which mode, and the caption they replaced (an undo path).

Storage: the dataset folder's ``dataset.json`` (the manifest of
:meth:`~lora_studio.core.dataset.Dataset.save_manifest`) with two more sections::

    {
      "version": 1, "root": ".", "caption_extension": ".txt",
      "images": [{"file": "a.png", "caption": "...", "repeats": null}, ...],
      "proposals": {
        "a.png": {"text": "sks, a red fox", "provider": "ollama", "model": "llava",
                  "created_at": "2025-01-01T12:00:00Z", "mode": "fill",
                  "previous": null, "prompt": "..."}
      },
      "provenance": {
        "b.png": {"provider": "blip", "model": "Salesforce/blip-image-captioning-base",
                  "created_at": "...", "accepted_at": "...", "mode": "overwrite",
                  "edited": false, "previous": "old caption"}
      }
    }

Keys are image paths relative to the dataset folder, ``/``-separated. Why there and why
it is safe: opening a folder that has images indexes the images, their caption files and
``metadata.jsonl`` only, so ``dataset.json`` beside them changes nothing about how the
folder opens, and :meth:`~lora_studio.core.dataset.Dataset.from_manifest` ignores keys
it does not know. A folder with *no* images but a ``dataset.json`` opens that manifest,
and a user may open ``dataset.json`` itself, so the file is always kept a complete
manifest: every save rewrites ``images`` from the open dataset (captions as the dataset
holds them, accepted ones included) when the manifest describes this folder; a manifest
whose ``root`` points at another folder keeps its ``images`` untouched. Any other key
is kept as it was.

Every change re-reads the file, changes its sections and writes it atomically (temp file,
fsync, rename) under a per-file lock, so a store in the window and ``lora-studio caption``
in a terminal do not undo each other's proposals. A ``dataset.json`` that cannot be read
is never overwritten (:class:`~lora_studio.core.errors.DatasetError` says so).
Captions are written with :func:`~lora_studio.core.dataset.write_caption`, so they go
where they came from (sidecar or ``metadata.jsonl`` row).
"""

from __future__ import annotations

import difflib
import enum
import json
import logging
import os
import re
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from lora_studio.core.atomic import atomic_write_text
from lora_studio.core.dataset import (
    MANIFEST_FILE,
    MANIFEST_VERSION,
    Dataset,
    ImageItem,
    read_item_caption,
    write_caption,
)
from lora_studio.core.errors import CaptionError, DatasetError

log = logging.getLogger(__name__)

PROPOSALS_KEY = "proposals"
PROVENANCE_KEY = "provenance"

_LOCKS: dict[str, threading.Lock] = {}
_LOCKS_GUARD = threading.Lock()


def now_iso() -> str:
    """The current UTC time as ``2025-01-01T12:00:00Z``."""
    return datetime.now(UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def _same_caption(a: str | None, b: str | None) -> bool:
    """No caption and an empty caption are the same; surrounding whitespace is not content."""
    return (a or "").strip() == (b or "").strip()


@dataclass(frozen=True)
class Proposal:
    """An automatic caption waiting for review.

    Attributes:
        path: the image, relative to the dataset folder (``/``-separated).
        text: the proposed caption (post-processed, mode applied).
        provider: the provider kind that made it (``blip``, ``ollama``...).
        model: the model that made it.
        created_at: when (UTC, ISO 8601).
        mode: ``fill``, ``overwrite`` or ``append``.
        previous: the image's caption when the proposal was made (``None``: none).
        prompt: the prompt the captioner was given, if any.
    """

    path: str
    text: str
    provider: str
    model: str
    created_at: str = field(default_factory=now_iso)
    mode: str = "fill"
    previous: str | None = None
    prompt: str | None = None

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "text": self.text,
            "provider": self.provider,
            "model": self.model,
            "created_at": self.created_at,
            "mode": self.mode,
            "previous": self.previous,
        }
        if self.prompt:
            data["prompt"] = self.prompt
        return data

    @classmethod
    def from_json(cls, path: str, data: Any) -> Proposal | None:
        """Read one entry; ``None`` (logged) when it is not a proposal."""
        if not isinstance(data, dict) or not isinstance(data.get("text"), str):
            log.warning("Ignoring a malformed caption proposal for %s", path)
            return None
        previous = data.get("previous")
        prompt = data.get("prompt")
        return cls(
            path=path,
            text=data["text"],
            provider=str(data.get("provider") or "unknown"),
            model=str(data.get("model") or "unknown"),
            created_at=str(data.get("created_at") or ""),
            mode=str(data.get("mode") or "fill"),
            previous=previous if isinstance(previous, str) else None,
            prompt=prompt if isinstance(prompt, str) else None,
        )


@dataclass(frozen=True)
class Provenance:
    """Where an accepted caption came from.

    Attributes:
        path: the image, relative to the dataset folder.
        provider, model, created_at, mode: copied from the proposal.
        accepted_at: when it was written.
        edited: the user changed the proposed text before accepting it.
        previous: the caption it replaced (``None``: there was none) - the undo path.
    """

    path: str
    provider: str
    model: str
    created_at: str
    accepted_at: str
    mode: str = "fill"
    edited: bool = False
    previous: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "provider": self.provider,
            "model": self.model,
            "created_at": self.created_at,
            "accepted_at": self.accepted_at,
            "mode": self.mode,
            "edited": self.edited,
            "previous": self.previous,
        }

    @classmethod
    def from_json(cls, path: str, data: Any) -> Provenance | None:
        if not isinstance(data, dict):
            return None
        previous = data.get("previous")
        return cls(
            path=path,
            provider=str(data.get("provider") or "unknown"),
            model=str(data.get("model") or "unknown"),
            created_at=str(data.get("created_at") or ""),
            accepted_at=str(data.get("accepted_at") or ""),
            mode=str(data.get("mode") or "fill"),
            edited=bool(data.get("edited", False)),
            previous=previous if isinstance(previous, str) else None,
        )


class ProposalState(enum.StrEnum):
    """A proposal compared with the caption on disk now."""

    #: the caption is as it was when the proposal was made: accepting it is safe
    READY = "ready"
    #: the caption changed since (the user edited it): accepting needs ``force``
    CONFLICT = "conflict"
    #: the caption already is the proposed text
    SAME = "same"
    #: the image is no longer in the dataset
    MISSING = "missing"


@dataclass(frozen=True)
class DiffOp:
    """One run of a word diff: ``equal``, ``delete`` (only in the old text) or ``insert``."""

    kind: Literal["equal", "delete", "insert"]
    text: str


_DIFF_TOKENS = re.compile(r"\s+|\w+(?:['\u2019-]\w+)*|[^\w\s]")


def word_diff(old: str, new: str) -> list[DiffOp]:
    """Word-level diff of ``old`` -> ``new``, for showing a proposal beside the caption.

    The ops, in order, rebuild both texts: ``equal`` + ``delete`` runs give ``old``,
    ``equal`` + ``insert`` runs give ``new``. Whitespace and punctuation are tokens of
    their own, so a changed comma does not mark the whole word as changed.
    """
    a = _DIFF_TOKENS.findall(old)
    b = _DIFF_TOKENS.findall(new)
    ops: list[DiffOp] = []

    def emit(kind: Literal["equal", "delete", "insert"], tokens: list[str]) -> None:
        if not tokens:
            return
        text = "".join(tokens)
        if ops and ops[-1].kind == kind:
            ops[-1] = DiffOp(kind, ops[-1].text + text)
        else:
            ops.append(DiffOp(kind, text))

    matcher = difflib.SequenceMatcher(a=a, b=b, autojunk=False)
    for tag, i1, i2, j1, j2 in matcher.get_opcodes():
        if tag == "equal":
            emit("equal", a[i1:i2])
        else:
            emit("delete", a[i1:i2])
            emit("insert", b[j1:j2])
    return ops


@dataclass(frozen=True)
class ProposalView:
    """A proposal as the review shows it: beside the caption on disk now.

    Attributes:
        proposal: the proposal.
        current: the image's caption now (``None``: none, or the image is missing).
        state: see :class:`ProposalState`.
        image: the image file (``None`` when it is missing).
    """

    proposal: Proposal
    current: str | None
    state: ProposalState
    image: Path | None

    @property
    def path(self) -> str:
        return self.proposal.path

    @property
    def diff(self) -> list[DiffOp]:
        """:func:`word_diff` of the current caption -> the proposed one."""
        return word_diff(self.current or "", self.proposal.text)


@dataclass
class AcceptReport:
    """What :meth:`ProposalStore.accept` (or :meth:`ProposalStore.apply`) did.

    Attributes:
        accepted: image path -> the caption written.
        conflicts: proposals not applied because the caption changed since (use ``force``).
        missing: proposals whose image is no longer in the dataset (kept, not applied).
        failed: image path -> why the caption could not be written (kept, not applied).
        unknown: paths that have no proposal.
    """

    accepted: dict[str, str] = field(default_factory=dict)
    conflicts: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    unknown: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (self.conflicts or self.missing or self.failed or self.unknown)


class ProposalStore:
    """The proposals and provenance of one dataset, kept in its ``dataset.json``.

    Every method reads the file and, when it changes something, writes it back
    atomically; none keeps state between calls, so several stores (a window and a
    terminal) can share a dataset. Methods do file I/O: call them from a worker thread
    in the GUI (``await asyncio.to_thread(store.accept, paths)``).

    Accepting writes caption files and updates the matching :class:`ImageItem` of the
    dataset (its ``caption``), so the dataset stays what is on disk; the returned
    :class:`AcceptReport` lists the new captions for a view to refresh.

    Args:
        dataset: the open dataset (its folder holds the manifest).
        manifest: the manifest file (default ``<dataset folder>/dataset.json``).
    """

    def __init__(self, dataset: Dataset, manifest: str | os.PathLike[str] | None = None) -> None:
        self.dataset = dataset
        self.manifest_path = (
            Path(manifest) if manifest is not None else dataset.root / MANIFEST_FILE
        )

    # ---- reading ---------------------------------------------------------------------

    def key(self, path: str | os.PathLike[str]) -> str:
        """The manifest key of an image: its path relative to the dataset folder."""
        candidate = Path(path)
        if candidate.is_absolute():
            try:
                return candidate.relative_to(self.dataset.root).as_posix()
            except ValueError:
                pass
            try:
                return candidate.resolve().relative_to(self.dataset.root.resolve()).as_posix()
            except (ValueError, OSError):
                return candidate.as_posix()
        text = candidate.as_posix()
        while text.startswith("./"):
            text = text[2:]
        return text

    def proposals(self) -> dict[str, Proposal]:
        """Every pending proposal, by image path."""
        return _proposals_in(self._read())

    def provenance(self) -> dict[str, Provenance]:
        """Where each accepted caption came from, by image path."""
        section = self._read().get(PROVENANCE_KEY)
        result: dict[str, Provenance] = {}
        if isinstance(section, dict):
            for path, entry in section.items():
                record = Provenance.from_json(str(path), entry)
                if record is not None:
                    result[str(path)] = record
        return result

    def review(self, paths: Iterable[str | os.PathLike[str]] | None = None) -> list[ProposalView]:
        """The proposals (all, or those of ``paths``) beside the captions on disk now,
        in dataset order. Reads every caption concerned: call it off the GUI thread."""
        proposals = self.proposals()
        keys = self._select(proposals, paths)[0]
        items = self._items()
        order = {name: index for index, name in enumerate(items)}
        views: list[ProposalView] = []
        for key in sorted(keys, key=lambda k: (order.get(k, len(order)), k)):
            proposal = proposals[key]
            item = items.get(key)
            if item is None:
                views.append(ProposalView(proposal, None, ProposalState.MISSING, None))
                continue
            current = read_item_caption(item)
            views.append(
                ProposalView(proposal, current, proposal_state(proposal, current), item.path)
            )
        return views

    # ---- changing --------------------------------------------------------------------

    def add(self, proposals: Iterable[Proposal]) -> int:
        """Store ``proposals`` (a newer proposal for an image replaces the older one).

        Returns:
            how many were stored.

        Raises:
            DatasetError: ``dataset.json`` cannot be read or written.
        """
        batch = [p for p in proposals]
        if not batch:
            return 0
        with self._lock():
            data = self._read()
            section = _section(data, PROPOSALS_KEY)
            for proposal in batch:
                section[self.key(proposal.path)] = proposal.to_json()
            self._write(data)
        return len(batch)

    def reject(self, paths: Iterable[str | os.PathLike[str]] | None = None) -> list[str]:
        """Drop the proposals of ``paths`` (all when ``None``); caption files are not
        touched. Returns the paths whose proposal was dropped."""
        with self._lock():
            data = self._read()
            proposals = _proposals_in(data)
            keys, _unknown = self._select(proposals, paths)
            if not keys:
                return []
            section = _section(data, PROPOSALS_KEY)
            for key in keys:
                section.pop(key, None)
            self._write(data)
        return keys

    def accept(
        self,
        paths: Iterable[str | os.PathLike[str]] | None = None,
        *,
        force: bool = False,
        texts: Mapping[str, str] | None = None,
    ) -> AcceptReport:
        """Write the proposed captions of ``paths`` (all when ``None``) and drop those
        proposals; their provenance is recorded.

        Args:
            paths: images (relative paths or image files); ``None``: every proposal.
            force: also apply proposals whose caption changed since they were made
                (otherwise they are reported as conflicts and kept).
            texts: image path -> the text to write instead of the proposed one (the user
                edited it in the review); recorded as ``edited`` in the provenance.

        Raises:
            DatasetError: ``dataset.json`` cannot be read or written (caption files
                already written stay written; accepting again finds them the same).
        """
        overrides = {self.key(k): v for k, v in (texts or {}).items()}
        with self._lock():
            data = self._read()
            proposals = _proposals_in(data)
            keys, unknown = self._select(proposals, paths)
            report = AcceptReport(unknown=unknown)
            self._apply(data, [proposals[k] for k in keys], report, force, overrides)
            self._write(data)
        return report

    def apply(self, proposals: Iterable[Proposal], *, force: bool = False) -> AcceptReport:
        """Write ``proposals`` at once (``lora-studio caption --yes``), recording their
        provenance. One whose caption changed since it was made is not written but kept
        as a pending proposal (a conflict), unless ``force``."""
        batch = list(proposals)
        report = AcceptReport()
        if not batch:
            return report
        with self._lock():
            data = self._read()
            section = _section(data, PROPOSALS_KEY)
            for proposal in batch:
                section[self.key(proposal.path)] = proposal.to_json()
            self._apply(data, batch, report, force, {})
            self._write(data)
        return report

    # ---- internals -------------------------------------------------------------------

    def _items(self) -> dict[str, ImageItem]:
        return {self.dataset.relative_name(item): item for item in self.dataset.images}

    def _select(
        self,
        proposals: Mapping[str, Proposal],
        paths: Iterable[str | os.PathLike[str]] | None,
    ) -> tuple[list[str], list[str]]:
        if paths is None:
            return list(proposals), []
        keys: list[str] = []
        unknown: list[str] = []
        for path in paths:
            key = self.key(path)
            if key in proposals:
                if key not in keys:
                    keys.append(key)
            else:
                unknown.append(key)
        return keys, unknown

    def _apply(
        self,
        data: dict[str, Any],
        batch: list[Proposal],
        report: AcceptReport,
        force: bool,
        overrides: Mapping[str, str],
    ) -> None:
        items = self._items()
        pending = _section(data, PROPOSALS_KEY)
        provenance = _section(data, PROVENANCE_KEY)
        for proposal in batch:
            key = self.key(proposal.path)
            item = items.get(key)
            if item is None:
                report.missing.append(key)
                continue
            try:
                current = read_item_caption(item)
            except DatasetError as exc:
                report.failed[key] = str(exc)
                continue
            text = overrides.get(key, proposal.text).strip()
            already = _same_caption(current, text)
            if not force and not already and not _same_caption(current, proposal.previous):
                report.conflicts.append(key)
                continue
            if not already:
                try:
                    saved = write_caption(replace(item), text)
                except CaptionError as exc:
                    report.failed[key] = str(exc)
                    continue
                for name in ("caption", "caption_encoding", "caption_error", "problem"):
                    setattr(item, name, getattr(saved, name))
            else:
                item.caption = current
            pending.pop(key, None)
            report.accepted[key] = text
            provenance[key] = Provenance(
                path=key,
                provider=proposal.provider,
                model=proposal.model,
                created_at=proposal.created_at,
                accepted_at=now_iso(),
                mode=proposal.mode,
                edited=key in overrides and overrides[key].strip() != proposal.text.strip(),
                # Written before (e.g. by a run that stopped before saving the manifest):
                # what it replaced is what the proposal saw.
                previous=proposal.previous if already else current,
            ).to_json()

    def _lock(self) -> threading.Lock:
        name = os.path.normcase(os.path.abspath(self.manifest_path))
        with _LOCKS_GUARD:
            return _LOCKS.setdefault(name, threading.Lock())

    def _read(self) -> dict[str, Any]:
        try:
            raw = self.manifest_path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return {}
        except (OSError, UnicodeDecodeError) as exc:
            reason = getattr(exc, "strerror", None) or str(exc)
            raise DatasetError(
                f"{self.manifest_path} cannot be read ({reason}); caption proposals are kept "
                f"there, so it is left as it is."
            ) from None
        try:
            data = json.loads(raw)
        except ValueError as exc:
            raise DatasetError(
                f"{self.manifest_path} is not valid JSON ({exc}); fix or move it away "
                f"(caption proposals are kept there, so it is not overwritten)."
            ) from None
        if not isinstance(data, dict):
            raise DatasetError(
                f"{self.manifest_path} is not a dataset manifest (not a JSON object); move it "
                f"away to keep caption proposals there."
            )
        return data

    def _describes_this_folder(self, data: Mapping[str, Any]) -> bool:
        root = data.get("root")
        if root in (None, "", "."):
            return True
        try:
            target = Path(str(root))
            if not target.is_absolute():
                target = self.manifest_path.parent / target
            return target.resolve() == self.dataset.root.resolve()
        except OSError:
            return False

    def _write(self, data: dict[str, Any]) -> None:
        if not data or self._describes_this_folder(data):
            try:
                root = os.path.relpath(self.dataset.root, self.manifest_path.parent)
            except ValueError:  # another drive on Windows
                root = str(self.dataset.root)
            manifest = {
                "version": data.get("version", MANIFEST_VERSION),
                "root": root,
                "caption_extension": self.dataset.caption_extension,
                "images": [
                    {
                        "file": self.dataset.relative_name(item),
                        "caption": item.caption,
                        "repeats": item.repeats,
                    }
                    for item in self.dataset.images
                ],
            }
            # The manifest's own keys first (as save_manifest writes them), then the rest.
            data = {**manifest, **{k: v for k, v in data.items() if k not in manifest}}
        for name in (PROPOSALS_KEY, PROVENANCE_KEY):
            if name in data and not data[name]:
                del data[name]
        text = json.dumps(data, indent=2, ensure_ascii=False)
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:  # file names that are not valid UTF-8
            text = json.dumps(data, indent=2)
        try:
            self.manifest_path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_text(self.manifest_path, text + "\n")
        except OSError as exc:
            raise DatasetError(
                f"Cannot save {self.manifest_path}: {exc.strerror or exc}."
            ) from None


def _section(data: dict[str, Any], name: str) -> dict[str, Any]:
    section = data.get(name)
    if not isinstance(section, dict):
        section = {}
        data[name] = section
    return section


def _proposals_in(data: Mapping[str, Any]) -> dict[str, Proposal]:
    section = data.get(PROPOSALS_KEY)
    result: dict[str, Proposal] = {}
    if isinstance(section, dict):
        for path, entry in section.items():
            proposal = Proposal.from_json(str(path), entry)
            if proposal is not None:
                result[str(path)] = proposal
    return result


def proposal_state(proposal: Proposal, current: str | None) -> ProposalState:
    """How ``proposal`` stands against the caption ``current`` (``None``: no caption):
    ``same``, ``ready`` (the caption is the one it was proposed over) or ``conflict``.
    (``missing`` is for an image that is gone, which only the store can tell.)"""
    if _same_caption(current, proposal.text):
        return ProposalState.SAME
    if _same_caption(current, proposal.previous):
        return ProposalState.READY
    return ProposalState.CONFLICT
