"""Turning what a captioner says into a training caption. Pure functions, no I/O.

:func:`postprocess` runs, in order:

1. :func:`normalize_whitespace` - one line, single spaces;
2. :func:`strip_boilerplate` - the filler captioners put around the content ("arafed",
   "there is a", "an image of", "this is", a dangling "in the style of"...), from the
   data-driven table :data:`DEFAULT_BOILERPLATE` (case-insensitive, whole words);
3. :func:`normalize_commas` - ``a ,b,,c`` becomes ``a, b, c``;
4. :func:`dedupe_tags` - comma-separated tags kept once, case-insensitively, first
   spelling wins;
5. :func:`put_trigger_first` - the trigger word leads, added when missing, never doubled;
6. :func:`limit_length` - at most N characters and/or N tags, cut at tag (then word)
   boundaries, the trigger word always kept.

:func:`apply_mode` is the step the batch run uses: ``fill`` and ``overwrite`` take the new
caption, ``append`` puts the new tags after the existing caption (which is never
rewritten, only followed). :func:`strip_llm_chatter` removes what chat models wrap a
caption in ("Here is a caption:", quotes, ``<think>`` blocks, bullet lists).
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass, field
from typing import Literal

Where = Literal["start", "end", "anywhere"]


class CaptionMode(enum.StrEnum):
    """What a batch run does with an image's existing caption."""

    #: caption only images that have no caption
    FILL = "fill"
    #: replace every caption
    OVERWRITE = "overwrite"
    #: keep the caption and add the new tags after it
    APPEND = "append"


@dataclass(frozen=True)
class Boilerplate:
    """One phrase to remove.

    Attributes:
        phrase: the words, matched case-insensitively as whole words (any run of
            whitespace between them).
        where: ``start`` (the caption begins with it), ``end`` (it trails the caption)
            or ``anywhere``.
        replacement: what takes its place (``"a"`` for "there is a").
    """

    phrase: str
    where: Where = "start"
    replacement: str = ""


#: The filler BLIP, BLIP-2 and chatty LLMs put around a caption. Rules apply in order,
#: repeatedly, until none matches (so "this is an image of a cat" becomes "a cat").
DEFAULT_BOILERPLATE: tuple[Boilerplate, ...] = (
    # BLIP's invented word for a person or animal ("arafed man sitting on a bench").
    Boilerplate("an arafed", "anywhere", "a"),
    Boilerplate("an araffe", "anywhere", "a"),
    Boilerplate("arafed", "anywhere"),
    Boilerplate("araffed", "anywhere"),
    Boilerplate("araffe", "anywhere"),
    Boilerplate("arafe", "anywhere"),
    Boilerplate("there is a", "start", "a"),
    Boilerplate("there is an", "start", "an"),
    Boilerplate("there are", "start"),
    Boilerplate("there is", "start"),
    Boilerplate("this is", "start"),
    Boilerplate("this image shows", "start"),
    Boilerplate("the image shows", "start"),
    Boilerplate("the image features", "start"),
    Boilerplate("the image depicts", "start"),
    Boilerplate("the picture shows", "start"),
    Boilerplate("in this image", "start"),
    Boilerplate("an image of", "start"),
    Boilerplate("a picture of", "start"),
    Boilerplate("an picture of", "start"),
    # BLIP runs out of tokens or ideas: "a painting of a house in the style of".
    Boilerplate("in the style of", "end"),
    Boilerplate("in the style", "end"),
    Boilerplate("and", "end"),
    Boilerplate("with", "end"),
    Boilerplate("of", "end"),
)

_WHITESPACE = re.compile(r"\s+")
_COMMAS = re.compile(r"\s*,[\s,]*")
_SPACE_BEFORE_PUNCT = re.compile(r"\s+([.;:!?])")
_MAX_PASSES = 20


def normalize_whitespace(text: str) -> str:
    """One line: every run of whitespace (newlines and tabs too) becomes one space."""
    return _WHITESPACE.sub(" ", text).strip()


def normalize_commas(text: str) -> str:
    """``a ,b,, c ,`` -> ``a, b, c``; no space before ``. ; : ! ?``; no leading or
    trailing commas."""
    text = _COMMAS.sub(", ", normalize_whitespace(text))
    text = _SPACE_BEFORE_PUNCT.sub(r"\1", text)
    return text.strip(" ,")


def split_tags(text: str) -> list[str]:
    """The comma-separated parts of ``text``, whitespace-normalised, empty ones dropped."""
    return [tag for tag in (normalize_whitespace(t) for t in text.split(",")) if tag]


def join_tags(tags: list[str]) -> str:
    return ", ".join(tags)


def _pattern(rule: Boilerplate) -> re.Pattern[str]:
    words = rule.phrase.split()
    body = r"\s+".join(re.escape(word) for word in words)
    phrase = rf"(?<![\w]){body}(?![\w])"
    if rule.where == "start":
        return re.compile(rf"^[\s,;:.\-]*{phrase}[\s,;:\-]*", re.IGNORECASE)
    if rule.where == "end":
        return re.compile(rf"[\s,;:\-]*{phrase}[\s,;:.\-]*$", re.IGNORECASE)
    return re.compile(phrase, re.IGNORECASE)


def strip_boilerplate(text: str, rules: tuple[Boilerplate, ...] = DEFAULT_BOILERPLATE) -> str:
    """``text`` without the phrases of ``rules`` (see :data:`DEFAULT_BOILERPLATE`)."""
    compiled = [(rule, _pattern(rule)) for rule in rules]
    current = normalize_whitespace(text)
    for _ in range(_MAX_PASSES):
        before = current
        for rule, pattern in compiled:
            if rule.where == "start":
                replacement = rule.replacement + " " if rule.replacement else ""
            elif rule.where == "end":
                replacement = " " + rule.replacement if rule.replacement else ""
            else:
                replacement = rule.replacement
            current = normalize_whitespace(pattern.sub(lambda _m, r=replacement: r, current))
        if current == before:
            break
    return current


def dedupe_tags(text: str) -> str:
    """Each comma-separated tag once (compared case-insensitively); the first spelling stays."""
    seen: set[str] = set()
    kept: list[str] = []
    for tag in split_tags(text):
        key = tag.casefold()
        if key not in seen:
            seen.add(key)
            kept.append(tag)
    return join_tags(kept)


def put_trigger_first(text: str, trigger: str) -> str:
    """``trigger`` as the first tag: added when missing, moved when elsewhere, never doubled.

    A caption whose first tag already starts with the trigger word ("sks dog on a
    beach" for ``sks``) is left as it is.
    """
    word = normalize_whitespace(trigger)
    if not word:
        return join_tags(split_tags(text))
    key = _tag_key(word)
    rest = [tag for tag in split_tags(text) if _tag_key(tag) != key]
    had_it = len(rest) != len(split_tags(text))
    if rest and not had_it and rest[0].casefold().startswith(word.casefold() + " "):
        return join_tags(rest)
    return join_tags([word, *rest])


def _tag_key(tag: str) -> str:
    """How tags compare: case-insensitively, without trailing sentence punctuation."""
    return tag.casefold().rstrip(" .;:!?")


def limit_length(
    text: str, *, max_chars: int | None = None, max_tags: int | None = None, keep: int = 0
) -> str:
    """``text`` cut to at most ``max_tags`` tags and ``max_chars`` characters.

    Whole tags are dropped from the end; a single tag longer than the limit is cut at a
    word boundary. The first ``keep`` tags (the trigger word, a caption being appended
    to) are never dropped, even when they alone exceed a limit.
    """
    tags = split_tags(text)
    if max_tags is not None and max_tags >= 0:
        tags = tags[: max(max_tags, keep)]
    if max_chars is None or max_chars <= 0 or len(join_tags(tags)) <= max_chars:
        return join_tags(tags)
    kept: list[str] = []
    for index, tag in enumerate(tags):
        candidate = join_tags([*kept, tag])
        if index < keep or len(candidate) <= max_chars:
            kept.append(tag)
            continue
        room = max_chars - len(join_tags(kept)) - (2 if kept else 0)
        cut = _cut_words(tag, room)
        if cut:
            kept.append(cut)
        break
    return join_tags(kept)


def _cut_words(text: str, limit: int) -> str:
    if limit <= 0:
        return ""
    if len(text) <= limit:
        return text
    cut = text[: limit + 1]
    space = cut.rfind(" ")
    cut = cut[:space] if space > 0 else ""
    return cut.rstrip(" ,;:-")


@dataclass(frozen=True)
class PostProcessOptions:
    """How captions are cleaned up before they are proposed or written."""

    trigger_word: str = field(
        default="",
        metadata={
            "help": "put this word first in every caption (added when missing, never doubled)"
        },
    )
    strip_boilerplate: bool = field(
        default=True,
        metadata={"help": 'remove captioner filler ("arafed", "there is a", "an image of"...)'},
    )
    boilerplate: tuple[Boilerplate, ...] = field(
        default=DEFAULT_BOILERPLATE, metadata={"help": "the phrases removed"}
    )
    dedupe_tags: bool = field(default=True, metadata={"help": "keep each comma-separated tag once"})
    max_chars: int | None = field(
        default=None, metadata={"help": "cut captions to this many characters"}
    )
    max_tags: int | None = field(
        default=None, metadata={"help": "cut captions to this many comma-separated tags"}
    )


def postprocess(text: str, options: PostProcessOptions | None = None) -> str:
    """A captioner's text cleaned up as a training caption (see the module docstring)."""
    opts = options or PostProcessOptions()
    result = normalize_whitespace(text)
    if opts.strip_boilerplate:
        result = strip_boilerplate(result, opts.boilerplate)
    result = normalize_commas(result)
    if opts.dedupe_tags:
        result = dedupe_tags(result)
    keep = 0
    if opts.trigger_word.strip():
        result = put_trigger_first(result, opts.trigger_word)
        keep = 1
    return limit_length(result, max_chars=opts.max_chars, max_tags=opts.max_tags, keep=keep)


def apply_mode(
    previous: str | None,
    new: str,
    mode: CaptionMode | str,
    options: PostProcessOptions | None = None,
) -> str:
    """The caption an image gets: ``new`` cleaned up, after ``previous`` in append mode.

    In append mode the existing caption is only normalised (whitespace and commas), never
    stripped or cut; new tags it already has are not added again.
    """
    opts = options or PostProcessOptions()
    if CaptionMode(mode) is not CaptionMode.APPEND or not (previous or "").strip():
        return postprocess(new, opts)
    old = normalize_commas(previous or "")
    cleaned = postprocess(
        new,
        PostProcessOptions(
            trigger_word="",
            strip_boilerplate=opts.strip_boilerplate,
            boilerplate=opts.boilerplate,
            dedupe_tags=opts.dedupe_tags,
        ),
    )
    old_keys = {tag.casefold() for tag in split_tags(old)}
    added = [tag for tag in split_tags(cleaned) if tag.casefold() not in old_keys]
    combined = join_tags([*split_tags(old), *added])
    if opts.dedupe_tags:
        combined = dedupe_tags(combined)
    keep = len(split_tags(old))
    if opts.trigger_word.strip():
        before = split_tags(combined)
        combined = put_trigger_first(combined, opts.trigger_word)
        keep += 1 if len(split_tags(combined)) > len(before) else 0
    return limit_length(combined, max_chars=opts.max_chars, max_tags=opts.max_tags, keep=keep)


# ---- chat-model answers -----------------------------------------------------------------

_THINK = re.compile(r"<think>.*?</think>", re.IGNORECASE | re.DOTALL)
_FENCE = re.compile(r"^```[\w-]*\s*|\s*```$")
_PREAMBLE = re.compile(
    r"^(?:(?:sure|certainly|of course|okay|ok)[,!.]?\s+)?"
    r"(?:here(?:'s| is| are)\b[^:\n]{0,80}:\s*)",
    re.IGNORECASE,
)
_LABEL = re.compile(r"^(?:\*\*)?(?:caption|tags|description|answer)(?:\*\*)?\s*:\s*", re.IGNORECASE)
_BULLET = re.compile(r"^\s*(?:[-*\u2022]|\d+[.)])\s+")
_QUOTES = (('"', '"'), ("'", "'"), ("\u201c", "\u201d"), ("\u2018", "\u2019"))


def strip_llm_chatter(text: str) -> str:
    """A chat model's answer reduced to the caption: no ``<think>`` block, code fence,
    "Here is a caption:" preamble, "Caption:" label, bold markers or surrounding quotes;
    a bullet list becomes comma-separated tags."""
    result = _THINK.sub("", text).strip()
    result = _FENCE.sub("", result).strip()
    result = _PREAMBLE.sub("", result).strip()
    result = _LABEL.sub("", result).strip()
    lines = [line for line in result.splitlines() if line.strip()]
    if len(lines) > 1 and all(_BULLET.match(line) for line in lines):
        result = ", ".join(_BULLET.sub("", line).strip() for line in lines)
    result = result.replace("**", "")
    result = normalize_whitespace(result)
    for left, right in _QUOTES:
        if len(result) >= 2 and result.startswith(left) and result.endswith(right):
            result = result[1:-1].strip()
            break
    return result
