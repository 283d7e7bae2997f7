"""Pure tag operations behind the caption editor's batch edits (no Qt)."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from lora_studio.core.config import ModelFamily
from lora_studio.core.tags import (
    BatchEdit,
    BatchKind,
    TagCounter,
    TagPatternError,
    add_tag,
    compile_find,
    cut_index,
    dedupe_tags,
    estimate_tokens,
    find_matches,
    parse_tags,
    remove_tag,
    replace_in,
    sort_tags,
    tag_counts,
    tag_under_cursor,
    token_limit,
    trigger_first,
)

TAG_CASES = [
    # (name, function, caption, args, expected)
    ("add at end", add_tag, "sks, a dog", ("grass",), "sks, a dog, grass"),
    ("add at start", add_tag, "sks, a dog", ("grass", 0), "grass, sks, a dog"),
    ("add at position", add_tag, "a, b, c", ("x", 1), "a, x, b, c"),
    ("add past the end", add_tag, "a, b", ("x", 9), "a, b, x"),
    ("add to empty", add_tag, "", ("x",), "x"),
    ("add present tag", add_tag, "a, Grass", ("grass",), "a, Grass"),
    ("add after a sentence", add_tag, "A dog on grass.", ("sks",), "A dog on grass, sks"),
    ("remove", remove_tag, "a, b, c", ("b",), "a, c"),
    ("remove is whole-tag only", remove_tag, "a dog on grass", ("dog",), "a dog on grass"),
    ("remove every copy", remove_tag, "b, a, B, c", ("b",), "a, c"),
    ("remove ignores full stop", remove_tag, "a, grass.", ("grass",), "a"),
    ("dedupe", dedupe_tags, "a, b, A, c, b", (), "a, b, c"),
    ("dedupe unchanged", dedupe_tags, "a,b", (), "a,b"),
    ("sort", sort_tags, "c, a, B", (), "a, B, c"),
    ("sort keeps trigger", sort_tags, "c, sks, a", ("sks",), "sks, a, c"),
    ("sort sentence", sort_tags, "A dog. On grass", (), "A dog. On grass"),
    ("trigger added", trigger_first, "a dog", ("sks",), "sks, a dog"),
    ("trigger moved", trigger_first, "a, sks, b", ("sks",), "sks, a, b"),
    ("trigger kept", trigger_first, "sks, a", ("sks",), "sks, a"),
    (
        "trigger starts sentence",
        trigger_first,
        "sks dog on a beach",
        ("sks",),
        "sks dog on a beach",
    ),
    ("trigger doubled", trigger_first, "sks, a, sks", ("sks",), "sks, a"),
]


@pytest.mark.parametrize(
    ("function", "caption", "args", "expected"),
    [case[1:] for case in TAG_CASES],
    ids=[case[0] for case in TAG_CASES],
)
def test_tag_operations(function, caption: str, args: tuple, expected: str) -> None:
    assert function(caption, *args) == expected


def test_find_and_replace_plain_and_regex() -> None:
    plain = compile_find("a.b")
    assert find_matches("a.b axb A.B", plain) == [
        m for m in find_matches("a.b axb A.B", plain) if m.text.lower() == "a.b"
    ]
    assert len(find_matches("a.b axb A.B", plain)) == 2
    assert replace_in("a.b, axb", plain, "c", regex=False) == "c, axb"
    pattern = compile_find(r"(\w+) hair", regex=True)
    assert replace_in("sks, red hair, blue eyes", pattern, r"\1-haired", regex=True) == (
        "sks, red-haired, blue eyes"
    )
    # An emptied tag leaves no doubled comma behind.
    assert replace_in("a, blurry, b", compile_find("blurry"), "", regex=False) == "a, b"
    assert replace_in("unchanged", compile_find("zzz"), "y", regex=False) == "unchanged"


def test_a_bad_regex_is_a_clear_error() -> None:
    with pytest.raises(TagPatternError, match="position 0: missing"):
        compile_find("(red|blue", regex=True)
    with pytest.raises(TagPatternError, match="empty"):
        compile_find("x*", regex=True)
    with pytest.raises(TagPatternError, match="replacement"):
        replace_in("red", compile_find("red", regex=True), r"\2", regex=True)


def test_counts_and_cursor() -> None:
    counts = tag_counts(["sks, dog, Dog", "sks, cat", "a sentence."])
    assert counts == {"sks": 2, "a sentence.": 1, "cat": 1, "dog": 1}
    assert tag_under_cursor("sks, red ha", 11) == (5, 11)
    assert tag_under_cursor("red", 2) == (0, 2)


def test_token_estimate_and_limits() -> None:
    assert estimate_tokens("") == 0
    assert estimate_tokens("a photo of a dog, 2 cats") == 8
    assert estimate_tokens("word " * 80) == 80
    assert token_limit(ModelFamily.SDXL).limit == 75
    assert token_limit("flux").encoder == "T5"
    assert token_limit(None).limit == 75


tags = (
    st.text(alphabet=st.characters(blacklist_characters=",\r\n"), min_size=1, max_size=12)
    .map(lambda s: re.sub(r"\s+", " ", s).strip())
    .filter(bool)
)
captions = st.lists(tags, max_size=8).map(", ".join)


@given(captions, tags)
def test_add_then_remove_leaves_the_other_tags(caption: str, tag: str) -> None:
    added = add_tag(caption, tag)
    assert (
        sum(
            1
            for t in parse_tags(added)
            if t.casefold().rstrip(" .;:!?") == tag.casefold().rstrip(" .;:!?")
        )
        >= 1
    )
    removed = remove_tag(added, tag)
    assert all(
        t.casefold().rstrip(" .;:!?") != tag.casefold().rstrip(" .;:!?")
        for t in parse_tags(removed)
    )


@given(captions)
def test_dedupe_and_sort_are_idempotent_and_keep_tags(caption: str) -> None:
    once = dedupe_tags(caption)
    assert dedupe_tags(once) == once
    ordered = sort_tags(once)
    assert sort_tags(ordered) == ordered
    assert sorted(t.casefold() for t in parse_tags(ordered)) == sorted(
        t.casefold() for t in parse_tags(once)
    )


@given(captions, tags)
def test_trigger_first_never_doubles(caption: str, trigger: str) -> None:
    result = trigger_first(caption, trigger)
    assert trigger_first(result, trigger) == result
    key = trigger.casefold().rstrip(" .;:!?")
    assert sum(1 for t in parse_tags(result) if t.casefold().rstrip(" .;:!?") == key) <= 1


def test_batch_edit_plans_only_the_changes() -> None:
    captions = {"a.png": "sks, red hair", "b.png": "blue hair", "c.png": "a cat"}
    plan = BatchEdit(BatchKind.REPLACE, find=r"(\w+) hair", replace=r"\1-haired", regex=True).plan(
        captions
    )
    assert plan == {
        "a.png": ("sks, red hair", "sks, red-haired"),
        "b.png": ("blue hair", "blue-haired"),
    }
    assert BatchEdit(BatchKind.ADD, tag="sks", position=0).plan(captions) == {
        "b.png": ("blue hair", "sks, blue hair"),
        "c.png": ("a cat", "sks, a cat"),
    }
    assert BatchEdit(BatchKind.DEDUPE).plan(captions) == {}
    with pytest.raises(TagPatternError, match="replacement"):
        BatchEdit(BatchKind.REPLACE, find="(x)", replace=r"\3", regex=True).plan(captions)
    with pytest.raises(TagPatternError, match="Type the tag"):
        BatchEdit(BatchKind.REMOVE, tag=" ").plan(captions)


def test_cut_index_is_where_the_estimate_passes_the_limit() -> None:
    text = "word " * 80
    assert cut_index(text, 75) == 75 * 5
    assert cut_index("a short caption", 75) is None


def test_the_counter_gives_the_same_counts_and_remembers_captions() -> None:
    captions = ["sks, dog, Dog", "sks, cat", "a sentence."]
    counter = TagCounter()
    assert counter.count(captions) == tag_counts(captions)
    assert counter.count([*captions, "cat"]) == {"sks": 2, "cat": 2, "a sentence.": 1, "dog": 1}
