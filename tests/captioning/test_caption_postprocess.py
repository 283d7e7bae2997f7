"""Post-processing: pure functions, table-driven."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from lora_studio.captioning.postprocess import (
    Boilerplate,
    CaptionMode,
    PostProcessOptions,
    apply_mode,
    dedupe_tags,
    limit_length,
    normalize_commas,
    normalize_whitespace,
    postprocess,
    put_trigger_first,
    strip_boilerplate,
    strip_llm_chatter,
)

BOILERPLATE_CASES = [
    ("arafed at start", "arafed man sitting on a bench", "man sitting on a bench"),
    ("arafed any case", "a photo of an ARAFFE woman", "a photo of a woman"),
    ("araffe inside", "there is a araffe dog on a couch", "a dog on a couch"),
    ("there is a", "there is a dog on the beach", "a dog on the beach"),
    ("there is an", "There is an owl in a tree", "an owl in a tree"),
    ("there are", "there are two cats", "two cats"),
    ("an image of", "an image of a red fox", "a red fox"),
    ("a picture of", "A Picture Of a lighthouse", "a lighthouse"),
    ("this is chain", "this is an image of a cat", "a cat"),
    ("the image shows", "The image shows a boat at sea", "a boat at sea"),
    ("dangling style", "a painting of a house in the style of", "a painting of a house"),
    ("dangling and", "a girl with a hat and", "a girl with a hat"),
    ("style kept mid", "in the style of van gogh, a field", "in the style of van gogh, a field"),
    ("whole words only", "thereisa arafedness", "thereisa arafedness"),
    ("nothing to do", "a red fox, snow", "a red fox, snow"),
]


@pytest.mark.parametrize(
    ("text", "expected"),
    [case[1:] for case in BOILERPLATE_CASES],
    ids=[case[0] for case in BOILERPLATE_CASES],
)
def test_strip_boilerplate(text: str, expected: str) -> None:
    assert strip_boilerplate(text) == expected


def test_the_boilerplate_list_is_data() -> None:
    rules = (Boilerplate("lorem ipsum", "anywhere"), Boilerplate("photo by", "end"))
    assert strip_boilerplate("a LOREM  ipsum cat photo by", rules) == "a cat"
    assert strip_boilerplate("arafed cat", rules) == "arafed cat"  # not in this table


WHITESPACE_COMMA_CASES = [
    ("spaces", "  a   red\tfox \n", "a red fox"),
    ("comma spacing", "a ,b,c ,  d", "a, b, c, d"),
    ("double commas", "a,, b,,,c", "a, b, c"),
    ("leading trailing", ", a, b ,", "a, b"),
    ("space before period", "a fox . in snow !", "a fox. in snow!"),
    ("empty", "  ,  , ", ""),
]


@pytest.mark.parametrize(
    ("text", "expected"),
    [case[1:] for case in WHITESPACE_COMMA_CASES],
    ids=[case[0] for case in WHITESPACE_COMMA_CASES],
)
def test_normalize_commas(text: str, expected: str) -> None:
    assert normalize_commas(text) == expected


def test_normalize_whitespace_makes_one_line() -> None:
    assert normalize_whitespace("a\n\nb\r\n c") == "a b c"


DEDUPE_CASES = [
    ("case insensitive first kept", "Red fox, snow, red FOX, Snow", "Red fox, snow"),
    ("inner spaces", "red  fox, red fox", "red fox"),
    ("no tags", "", ""),
    ("sentence untouched", "a fox and a fox", "a fox and a fox"),
]


@pytest.mark.parametrize(
    ("text", "expected"),
    [case[1:] for case in DEDUPE_CASES],
    ids=[case[0] for case in DEDUPE_CASES],
)
def test_dedupe_tags(text: str, expected: str) -> None:
    assert dedupe_tags(text) == expected


TRIGGER_CASES = [
    ("added", "a red fox", "sks", "sks, a red fox"),
    ("moved to front", "a red fox, sks, snow", "sks", "sks, a red fox, snow"),
    ("not doubled", "sks, a fox, SKS", "sks", "sks, a fox"),
    ("trailing punctuation", "a fox, sks.", "sks", "sks, a fox"),
    ("already leading a phrase", "sks dog on a beach", "sks", "sks dog on a beach"),
    (
        "multi-word trigger",
        "a cut-out fox, papercut style",
        "papercut style",
        "papercut style, a cut-out fox",
    ),
    ("empty caption", "", "sks", "sks"),
    ("no trigger", "a, b", "", "a, b"),
]


@pytest.mark.parametrize(
    ("text", "trigger", "expected"),
    [case[1:] for case in TRIGGER_CASES],
    ids=[case[0] for case in TRIGGER_CASES],
)
def test_put_trigger_first(text: str, trigger: str, expected: str) -> None:
    assert put_trigger_first(text, trigger) == expected


LIMIT_CASES = [
    ("tags", "a, b, c, d", {"max_tags": 2}, "a, b"),
    ("tags keep", "sks, b, c", {"max_tags": 1, "keep": 2}, "sks, b"),
    ("chars whole tags", "red fox, white snow, blue sky", {"max_chars": 20}, "red fox, white snow"),
    (
        "chars cut a sentence at a word",
        "a red fox standing in deep snow",
        {"max_chars": 17},
        "a red fox",
    ),
    ("chars keep trigger", "papercut style, a fox", {"max_chars": 5, "keep": 1}, "papercut style"),
    ("under the limit", "a fox", {"max_chars": 50, "max_tags": 5}, "a fox"),
]


@pytest.mark.parametrize(
    ("text", "kwargs", "expected"),
    [case[1:] for case in LIMIT_CASES],
    ids=[case[0] for case in LIMIT_CASES],
)
def test_limit_length(text: str, kwargs: dict, expected: str) -> None:
    assert limit_length(text, **kwargs) == expected


POSTPROCESS_CASES = [
    (
        "blip output",
        "arafed  fox sitting in the snow , in the style of",
        PostProcessOptions(trigger_word="sks"),
        "sks, fox sitting in the snow",
    ),
    (
        "tags deduped",
        "fox, Snow, fox ,snow, winter",
        PostProcessOptions(),
        "fox, Snow, winter",
    ),
    (
        "limit after trigger",
        "there is a fox, snow, winter, forest",
        PostProcessOptions(trigger_word="sks", max_tags=3),
        "sks, a fox, snow",
    ),
    (
        "boilerplate kept when asked",
        "there is a fox",
        PostProcessOptions(strip_boilerplate=False),
        "there is a fox",
    ),
]


@pytest.mark.parametrize(
    ("text", "options", "expected"),
    [case[1:] for case in POSTPROCESS_CASES],
    ids=[case[0] for case in POSTPROCESS_CASES],
)
def test_postprocess(text: str, options: PostProcessOptions, expected: str) -> None:
    assert postprocess(text, options) == expected


MODE_CASES = [
    ("fill takes new", None, "there is a fox", "fill", "a fox"),
    ("overwrite ignores previous", "old words", "a fox", "overwrite", "a fox"),
    ("append adds new tags only", "my fox, Snow", "snow, a tree", "append", "my fox, Snow, a tree"),
    ("append to nothing", "", "a fox", "append", "a fox"),
    ("append keeps user filler", "there is my fox", "a tree", "append", "there is my fox, a tree"),
]


@pytest.mark.parametrize(
    ("previous", "new", "mode", "expected"),
    [case[1:] for case in MODE_CASES],
    ids=[case[0] for case in MODE_CASES],
)
def test_apply_mode(previous: str | None, new: str, mode: str, expected: str) -> None:
    assert apply_mode(previous, new, mode) == expected


def test_append_never_cuts_the_users_caption() -> None:
    options = PostProcessOptions(trigger_word="sks", max_tags=2)
    result = apply_mode("one, two, three", "four, five", CaptionMode.APPEND, options)
    assert result == "sks, one, two, three"


CHATTER_CASES = [
    ("preamble", "Here is a caption for the image: A red fox in snow.", "A red fox in snow."),
    ("sure preamble", "Sure! Here's the caption:\n\na red fox", "a red fox"),
    ("label", "Caption: a red fox", "a red fox"),
    ("quotes", '"a red fox in the snow"', "a red fox in the snow"),
    ("curly quotes", "\u201ca red fox\u201d", "a red fox"),
    ("think block", "<think>The user wants...</think>\na red fox", "a red fox"),
    ("bullets", "- red fox\n- snow\n- winter forest", "red fox, snow, winter forest"),
    ("bold", "**a red fox**", "a red fox"),
    ("plain", "a red fox", "a red fox"),
]


@pytest.mark.parametrize(
    ("text", "expected"),
    [case[1:] for case in CHATTER_CASES],
    ids=[case[0] for case in CHATTER_CASES],
)
def test_strip_llm_chatter(text: str, expected: str) -> None:
    assert strip_llm_chatter(text) == expected


@given(st.text(max_size=120), st.sampled_from(["", "sks", "papercut style"]))
def test_postprocess_is_idempotent_and_one_line(text: str, trigger: str) -> None:
    options = PostProcessOptions(trigger_word=trigger)
    once = postprocess(text, options)
    assert "\n" not in once and "  " not in once
    assert postprocess(once, options) == once
    if trigger:
        assert once.split(", ")[0] == trigger
        assert [t.casefold() for t in once.split(", ")].count(trigger.casefold()) == 1
