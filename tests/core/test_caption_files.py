"""A caption file changed by another program is not written over (no Qt)."""

from __future__ import annotations

from pathlib import Path

import pytest

from lora_studio.core.caption_files import (
    CaptionChangedOnDisk,
    CaptionStamps,
    captions_changed_on_disk,
    remove_caption_checked,
    write_caption_checked,
)
from lora_studio.core.dataset import ImageItem


def _item(tmp_path: Path, caption: str | None) -> ImageItem:
    image = tmp_path / "a.png"
    image.write_bytes(b"")
    if caption is not None:
        (tmp_path / "a.txt").write_text(caption + "\n", encoding="utf-8")
    return ImageItem(image, caption=caption)


def test_a_save_over_an_outside_change_is_refused_unless_forced(tmp_path: Path) -> None:
    item = _item(tmp_path, "mine")
    (tmp_path / "a.txt").write_text("theirs\n", encoding="utf-8")
    assert captions_changed_on_disk([(item, "mine")]) == {item.path: "theirs"}
    with pytest.raises(CaptionChangedOnDisk) as caught:
        write_caption_checked(item, "new", "mine")
    assert caught.value.disk_text == "theirs"
    assert (tmp_path / "a.txt").read_text(encoding="utf-8") == "theirs\n"
    write_caption_checked(item, "new", "mine", force=True)
    assert (tmp_path / "a.txt").read_text(encoding="utf-8") == "new\n"


def test_unchanged_and_deleted_files_are_written(tmp_path: Path) -> None:
    item = _item(tmp_path, "mine")
    assert captions_changed_on_disk([(item, "mine")]) == {}
    write_caption_checked(item, "next", "mine")
    assert (tmp_path / "a.txt").read_text(encoding="utf-8") == "next\n"
    (tmp_path / "a.txt").unlink()
    write_caption_checked(item, "again", "next")
    assert (tmp_path / "a.txt").read_text(encoding="utf-8") == "again\n"


def test_removing_a_caption_deletes_its_file_unless_someone_changed_it(tmp_path: Path) -> None:
    item = _item(tmp_path, "added")
    remove_caption_checked(item, "added")
    assert not (tmp_path / "a.txt").exists() and item.caption is None
    remove_caption_checked(item, None)  # already gone: nothing to do
    (tmp_path / "a.txt").write_text("theirs\n", encoding="utf-8")
    with pytest.raises(CaptionChangedOnDisk):
        remove_caption_checked(item, "added")
    assert (tmp_path / "a.txt").exists()


def test_stamps_read_only_the_files_touched_since_the_last_look(tmp_path: Path) -> None:
    item = _item(tmp_path, "mine")
    stamps = CaptionStamps()
    assert captions_changed_on_disk([(item, "mine")], stamps) == {}
    (tmp_path / "a.txt").write_text("theirs, longer\n", encoding="utf-8")
    assert captions_changed_on_disk([(item, "mine")], stamps) == {item.path: "theirs, longer"}
    # Untouched since: not read again (the app has not taken it yet, but it was reported).
    assert captions_changed_on_disk([(item, "mine")], stamps) == {}
