"""Pure operations on captions as comma-separated tags, for the caption editor's batch edits.

A caption is read as tags separated by commas (``"sks, a dog, grass"``); a sentence caption
without commas is one tag, so the operations never cut a sentence apart: removing a tag only
removes a whole comma-separated part, adding one adds a part. Tags compare case-insensitively
and without trailing sentence punctuation (``"grass."`` is ``"grass"``), and keep the
spelling they were written with. Every function takes and returns plain strings; nothing
here knows about files or Qt (the GUI applies these through undo commands).

The token count is an *estimate* of what CLIP's byte-level BPE makes of a caption: core
imports no tokenizer (see :mod:`lora_studio.training.tokens` for the exact count with a
base model's own tokenizer). It splits words as CLIP does (letter runs, single digits,
punctuation runs) and counts a common-length word as one token and long words as several.
On English captions it is within a few tokens of the real count, good enough to warn that
the text encoder will cut a caption off.
"""

from __future__ import annotations

import collections
import enum
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TypeVar

from lora_studio.core.config import ModelFamily

K = TypeVar("K")
_WHITESPACE = re.compile(r"\s+")
_TRAILING = " .;:!?"


class TagPatternError(ValueError):
    """A find-and-replace pattern that is not a valid regular expression."""


def normalize(tag: str) -> str:
    """One line: runs of whitespace become one space; no space at either end."""
    return _WHITESPACE.sub(" ", tag).strip()


def parse_tags(caption: str) -> list[str]:
    """The comma-separated parts of ``caption``, whitespace-normalised, empty ones dropped."""
    return [t for t in (normalize(part) for part in caption.split(",")) if t]


def join_tags(tags: Iterable[str]) -> str:
    return ", ".join(tags)


def tag_key(tag: str) -> str:
    """How tags compare: case-insensitive, without trailing sentence punctuation."""
    return normalize(tag).casefold().rstrip(_TRAILING)


def has_tag(caption: str, tag: str) -> bool:
    key = tag_key(tag)
    return any(tag_key(t) == key for t in parse_tags(caption))


def add_tag(caption: str, tag: str, position: int | None = None) -> str:
    """``caption`` with ``tag`` added: at index ``position`` (0: first; past the end or
    ``None``: last). A tag already present is left where it is (never doubled)."""
    tag = normalize(tag).strip(",")
    tags = parse_tags(caption)
    if not tag or any(tag_key(t) == tag_key(tag) for t in tags):
        return caption
    at = len(tags) if position is None else max(0, min(position, len(tags)))
    if at == len(tags) and tags:
        # A sentence's full stop belongs at the very end, not before the new tag.
        last = tags[-1]
        if last.endswith(".") and not last.endswith(".."):
            tags[-1] = last[:-1].rstrip()
    tags.insert(at, tag)
    return join_tags(tags)


def remove_tag(caption: str, tag: str) -> str:
    """``caption`` without the tag ``tag`` (every copy); unchanged when it has none."""
    key = tag_key(tag)
    tags = parse_tags(caption)
    kept = [t for t in tags if tag_key(t) != key]
    return caption if len(kept) == len(tags) else join_tags(kept)


def dedupe_tags(caption: str) -> str:
    """Each tag once; the first spelling and position stay. Unchanged when nothing repeats."""
    seen: set[str] = set()
    kept: list[str] = []
    tags = parse_tags(caption)
    for t in tags:
        if tag_key(t) not in seen:
            seen.add(tag_key(t))
            kept.append(t)
    return caption if len(kept) == len(tags) else join_tags(kept)


def sort_tags(caption: str, keep_first: str = "") -> str:
    """Tags in alphabetical order (case-insensitive); the tag ``keep_first`` (the trigger
    word), when present, stays in front. A caption of one tag is unchanged."""
    tags = parse_tags(caption)
    if len(tags) < 2:
        return caption
    key = tag_key(keep_first) if keep_first.strip() else None
    front = [t for t in tags if key is not None and tag_key(t) == key]
    rest = sorted((t for t in tags if key is None or tag_key(t) != key), key=tag_key)
    result = join_tags([*front, *rest])
    return caption if parse_tags(result) == tags else result


def trigger_first(caption: str, trigger: str) -> str:
    """``trigger`` as the first tag: added when missing, moved when elsewhere, never doubled.
    A caption whose first tag already starts with the trigger word (``"sks dog on a beach"``
    for ``sks``) is unchanged."""
    word = normalize(trigger)
    if not word:
        return caption
    tags = parse_tags(caption)
    key = tag_key(word)
    rest = [t for t in tags if tag_key(t) != key]
    if tags and tag_key(tags[0]) == key and len(rest) == len(tags) - 1:
        return caption
    if rest and len(rest) == len(tags) and rest[0].casefold().startswith(word.casefold() + " "):
        return caption
    return join_tags([word, *rest])


# ---- find and replace -----------------------------------------------------------------------


@dataclass(frozen=True)
class Match:
    """One match of a find pattern in a caption: ``caption[start:end]``."""

    start: int
    end: int
    text: str


def compile_find(
    find: str, *, regex: bool = False, case_sensitive: bool = False
) -> re.Pattern[str]:
    """The pattern for ``find`` (plain text is escaped).

    Raises:
        TagPatternError: ``find`` is empty, or not a valid regular expression (the message
            says where and why).
    """
    if not find:
        raise TagPatternError("Type the text to find.")
    flags = 0 if case_sensitive else re.IGNORECASE
    try:
        pattern = re.compile(find if regex else re.escape(find), flags)
    except re.error as exc:
        where = f" at position {exc.pos}" if exc.pos is not None else ""
        raise TagPatternError(f"Not a valid regular expression{where}: {exc.msg}.") from None
    if pattern.fullmatch(""):
        raise TagPatternError("The pattern matches empty text; it would insert everywhere.")
    return pattern


def find_matches(caption: str, pattern: re.Pattern[str]) -> list[Match]:
    return [Match(m.start(), m.end(), m.group(0)) for m in pattern.finditer(caption)]


def replace_in(caption: str, pattern: re.Pattern[str], replacement: str, *, regex: bool) -> str:
    """``caption`` with every match of ``pattern`` replaced; with ``regex``, ``\\1`` and
    ``\\g<name>`` in ``replacement`` refer to groups. Commas and spaces left doubled by the
    replacement (an emptied tag) are tidied; a caption without matches is unchanged.

    Raises:
        TagPatternError: the replacement refers to a group the pattern does not have.
    """
    if not pattern.search(caption):
        return caption
    try:
        if regex:
            result = pattern.sub(replacement, caption)
        else:
            result = pattern.sub(lambda _m: replacement, caption)
    except (re.error, IndexError) as exc:
        raise TagPatternError(f"The replacement is not valid: {exc}.") from None
    if "," in caption or "," in result:
        tidy = join_tags(parse_tags(result))
        # Keep a sentence that lost no tag as the user wrote it.
        if tidy != normalize(result):
            return tidy
    return result


# ---- counts ------------------------------------------------------------------------------


def tag_counts(captions: Iterable[str]) -> dict[str, int]:
    """How many captions have each tag (a tag twice in one caption counts once), keyed by
    the first spelling met; most frequent first, then alphabetically."""
    counts: collections.Counter[str] = collections.Counter()
    spelling: dict[str, str] = {}
    for caption in captions:
        seen: set[str] = set()
        for t in parse_tags(caption):
            key = tag_key(t)
            if key not in seen:
                seen.add(key)
                spelling.setdefault(key, t)
                counts[key] += 1
    ordered = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    return {spelling[k]: n for k, n in ordered if k}


class TagCounter:
    """:func:`tag_counts` that remembers each caption's tags, so counting again after a
    few edits of a big dataset only parses the changed captions."""

    def __init__(self) -> None:
        self._parsed: dict[str, tuple[tuple[str, str], ...]] = {}

    def _tags(self, caption: str) -> tuple[tuple[str, str], ...]:
        found = self._parsed.get(caption)
        if found is None:
            seen: dict[str, str] = {}
            for t in parse_tags(caption):
                seen.setdefault(tag_key(t), t)
            found = tuple(seen.items())
            self._parsed[caption] = found
        return found

    def count(self, captions: Iterable[str]) -> dict[str, int]:
        texts = list(captions)
        if len(self._parsed) > 2 * len(texts) + 1000:
            self._parsed = {}  # forget captions edited away
        counts: collections.Counter[str] = collections.Counter()
        spelling: dict[str, str] = {}
        for caption in texts:
            for key, tag in self._tags(caption):
                spelling.setdefault(key, tag)
                counts[key] += 1
        ordered = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
        return {spelling[k]: n for k, n in ordered if k}


def tag_under_cursor(text: str, cursor: int) -> tuple[int, int]:
    """``(start, end)`` of the tag that ``cursor`` is in: from after the previous comma
    (and its spaces) to the cursor. The completer replaces that span."""
    cursor = max(0, min(cursor, len(text)))
    start = text.rfind(",", 0, cursor) + 1
    while start < cursor and text[start].isspace():
        start += 1
    return start, cursor


# ---- tokens ------------------------------------------------------------------------------

#: CLIP's pre-tokenizer (regex), without the special tokens: letter runs, single digits,
#: punctuation runs.
_CLIP_WORDS = re.compile(r"'s|'t|'re|'ve|'m|'ll|'d|[^\W\d_]+|\d|[^\s\w]+|_+", re.IGNORECASE)


@dataclass(frozen=True)
class TokenLimit:
    """A family's caption limit: ``encoder`` cuts captions after ``limit`` tokens (start and
    end tokens not counted)."""

    encoder: str
    limit: int


#: CLIP takes 77 tokens including its start and end tokens. SD 3.5 also feeds T5 (256),
#: but its CLIP encoders cut at 75 and condition the pooled vector, so CLIP's limit is the
#: one that loses words. Flux reads the prompt through T5 (512 for dev).
TOKEN_LIMITS: dict[ModelFamily, TokenLimit] = {
    ModelFamily.SD15: TokenLimit("CLIP", 75),
    ModelFamily.SDXL: TokenLimit("CLIP", 75),
    ModelFamily.SD3: TokenLimit("CLIP", 75),
    ModelFamily.FLUX: TokenLimit("T5", 512),
}


def estimate_tokens(caption: str) -> int:
    """About how many tokens CLIP makes of ``caption`` (start/end tokens not included)."""
    count = 0
    for piece in _CLIP_WORDS.findall(caption.lower()):
        if piece[0].isalpha():
            # Common words are one token in CLIP's 49k vocabulary; long or rare ones split
            # into pieces of about four letters.
            count += 1 if len(piece) <= 8 else 1 + -(-(len(piece) - 8) // 4)
        else:
            count += len(piece) if not piece.startswith("'") else 1
    return count


def cut_index(caption: str, limit: int) -> int | None:
    """Where the text encoder cuts ``caption`` off (the index of the first character it
    does not read) by :func:`estimate_tokens`; ``None`` when all of it fits."""
    count = 0
    for match in _CLIP_WORDS.finditer(caption.lower()):
        piece = match.group(0)
        if piece[0].isalpha():
            count += 1 if len(piece) <= 8 else 1 + -(-(len(piece) - 8) // 4)
        else:
            count += len(piece) if not piece.startswith("'") else 1
        if count > limit:
            return match.start()
    return None


def token_limit(family: ModelFamily | str | None) -> TokenLimit:
    """The caption limit of ``family`` (CLIP's when unknown)."""
    try:
        return TOKEN_LIMITS[ModelFamily(family)] if family else TOKEN_LIMITS[ModelFamily.SD15]
    except ValueError:
        return TOKEN_LIMITS[ModelFamily.SD15]


# ---- batch edits ---------------------------------------------------------------------------


class BatchKind(enum.StrEnum):
    """The caption editor's batch operations."""

    ADD = "add"
    REMOVE = "remove"
    REPLACE = "replace"
    TRIGGER_FIRST = "trigger_first"
    SORT = "sort"
    DEDUPE = "dedupe"


@dataclass(frozen=True)
class BatchEdit:
    """One batch operation and its parameters, applied caption by caption.

    Attributes:
        kind: what to do.
        tag: the tag to add or remove; the trigger word (trigger first; kept first by sort).
        position: where to add: ``0`` first, ``None`` last, ``N`` before the N-th tag.
        find, replace, regex, case_sensitive: find and replace.
    """

    kind: BatchKind
    tag: str = ""
    position: int | None = None
    find: str = ""
    replace: str = ""
    regex: bool = False
    case_sensitive: bool = False

    def pattern(self) -> re.Pattern[str]:
        """The find pattern (:func:`compile_find`). Raises :class:`TagPatternError`."""
        return compile_find(self.find, regex=self.regex, case_sensitive=self.case_sensitive)

    def check(self) -> None:
        """Raises :class:`TagPatternError` (with the reason) when the edit cannot run."""
        needs_tag = self.kind in (BatchKind.ADD, BatchKind.REMOVE, BatchKind.TRIGGER_FIRST)
        if needs_tag and not normalize(self.tag).strip(","):
            what = "trigger word" if self.kind is BatchKind.TRIGGER_FIRST else "tag"
            raise TagPatternError(f"Type the {what}.")
        if self.kind is BatchKind.REPLACE:
            pattern = self.pattern()
            if self.regex:
                _check_template(pattern, self.replace)

    def apply(self, caption: str) -> str:
        """``caption`` after this edit (the same string when nothing changes)."""
        if self.kind is BatchKind.ADD:
            return add_tag(caption, self.tag, self.position)
        if self.kind is BatchKind.REMOVE:
            return remove_tag(caption, self.tag)
        if self.kind is BatchKind.REPLACE:
            return replace_in(caption, self.pattern(), self.replace, regex=self.regex)
        if self.kind is BatchKind.TRIGGER_FIRST:
            return trigger_first(caption, self.tag)
        if self.kind is BatchKind.SORT:
            return sort_tags(caption, self.tag)
        return dedupe_tags(caption)

    def plan(self, captions: Mapping[K, str]) -> dict[K, tuple[str, str]]:
        """``{key: (before, after)}`` for the captions this edit changes.

        Raises:
            TagPatternError: the edit cannot run (see :meth:`check`).
        """
        self.check()
        if self.kind is BatchKind.REPLACE:
            pattern = self.pattern()
            changed = {}
            for key, text in captions.items():
                after = replace_in(text, pattern, self.replace, regex=self.regex)
                if after != text:
                    changed[key] = (text, after)
            return changed
        return {k: (t, a) for k, t in captions.items() if (a := self.apply(t)) != t}


def _check_template(pattern: re.Pattern[str], replacement: str) -> None:
    """Raises :class:`TagPatternError` when ``replacement`` names a group ``pattern`` lacks
    or has a bad escape - now, rather than at the first match."""
    # The parser of templates is private and renamed across Python versions.
    parse = getattr(re, "_compile_template", None)
    if parse is not None:  # Python >= 3.12: (pattern, repl)
        call = lambda: parse(pattern, replacement)  # noqa: E731
    else:
        compile_repl = getattr(re, "_compile_repl", None)
        if compile_repl is None:  # pragma: no cover
            return
        call = lambda: compile_repl(replacement, pattern)  # noqa: E731
    try:
        call()
    except (re.error, IndexError) as exc:
        raise TagPatternError(f"The replacement is not valid: {exc}.") from None
