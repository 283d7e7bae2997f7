from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from PIL import Image

from lora_studio.core.dataset import (
    Dataset,
    DatasetBuilder,
    ImageItem,
    check_image,
    read_caption,
    training_caption,
    write_caption,
)
from lora_studio.core.errors import CaptionError, DatasetError


def test_sample_dataset_loads(sample_dataset: Path) -> None:
    dataset = Dataset.from_directory(sample_dataset)
    assert len(dataset) == 12
    stats = dataset.stats()
    assert stats.total_images == 12
    assert stats.images_with_captions == 10
    assert stats.images_without_captions == 2
    assert stats.formats == {"png": 12}
    assert stats.top_tags[0] == ("papercut style", 10)
    assert stats.avg_caption_length > 50
    assert stats.problems == []
    names = [item.name for item in dataset]
    assert names == sorted(names)


def test_kohya_repeat_folders_set_repeats(tmp_path: Path, sample_dataset: Path) -> None:
    root = tmp_path / "kohya"
    (root / "10_papercut style").mkdir(parents=True)
    (root / "plain").mkdir()
    shutil.copy(sample_dataset / "papercut_01.png", root / "10_papercut style")
    shutil.copy(sample_dataset / "papercut_02.png", root / "plain")
    dataset = Dataset.from_directory(root)
    repeats = {item.name: item.repeats for item in dataset}
    assert repeats == {"papercut_01.png": 10, "papercut_02.png": None}
    assert dataset.samples_per_epoch(default_repeats=3) == 13
    assert dataset.stats().folders == {"10_papercut style": 1, "plain": 1}


def test_hidden_files_and_other_files_are_ignored(tmp_path: Path, sample_dataset: Path) -> None:
    root = tmp_path / "mixed"
    (root / ".thumbnails").mkdir(parents=True)
    shutil.copy(sample_dataset / "papercut_01.png", root / ".hidden.png")
    shutil.copy(sample_dataset / "papercut_01.png", root / ".thumbnails" / "a.png")
    shutil.copy(sample_dataset / "papercut_01.png", root / "shown.PNG")
    (root / "notes.md").write_text("hi", encoding="utf-8")
    assert [i.name for i in Dataset.from_directory(root)] == ["shown.PNG"]


@pytest.mark.parametrize(
    ("setup", "message"),
    [
        ("missing", "does not exist"),
        ("file", "is not a folder"),
        ("empty", "No images found"),
    ],
)
def test_unusable_folders_are_refused_clearly(tmp_path: Path, setup: str, message: str) -> None:
    target = tmp_path / "x"
    if setup == "file":
        target.write_text("not a folder", encoding="utf-8")
    elif setup == "empty":
        target.mkdir()
        (target / "readme.txt").write_text("no images here", encoding="utf-8")
    with pytest.raises(DatasetError, match=message):
        Dataset.from_directory(target)


def test_caption_edit_is_saved_atomically_and_survives_reload(sample_dataset: Path) -> None:
    dataset = Dataset.from_directory(sample_dataset)
    item = dataset.images[0]
    write_caption(item, "  papercut style, a brand new caption  ")
    assert item.caption == "papercut style, a brand new caption"
    assert item.caption_path.read_text(encoding="utf-8") == "papercut style, a brand new caption\n"
    assert not [p for p in sample_dataset.iterdir() if p.name.endswith(".tmp")]
    reloaded = Dataset.from_directory(sample_dataset)
    assert reloaded.images[0].caption == "papercut style, a brand new caption"


def test_caption_for_an_uncaptioned_image_creates_the_sidecar(sample_dataset: Path) -> None:
    item = Dataset.from_directory(sample_dataset).images[-1]
    assert item.caption is None and not item.caption_path.exists()
    write_caption(item, "papercut style, aurora")
    assert item.caption_path.read_text(encoding="utf-8") == "papercut style, aurora\n"


def test_non_utf8_caption_is_read_flagged_and_backed_up_on_save(
    tmp_path: Path, sample_dataset: Path
) -> None:
    tmp_path = tmp_path / "latin"
    tmp_path.mkdir()
    shutil.copy(sample_dataset / "papercut_01.png", tmp_path / "cafe.png")
    original = "café au lait, crème".encode("cp1252")
    (tmp_path / "cafe.txt").write_bytes(original)
    item = Dataset.from_directory(tmp_path).images[0]
    assert item.caption == "café au lait, crème"
    assert item.caption_encoding == "cp1252"
    assert item.problem and "not UTF-8" in item.problem
    assert Dataset(tmp_path, [item]).stats().problems
    write_caption(item, "café au lait, crème, edited")
    assert (tmp_path / "cafe.txt.orig").read_bytes() == original
    assert (tmp_path / "cafe.txt").read_text(encoding="utf-8") == "café au lait, crème, edited\n"
    assert item.problem is None


def test_utf8_bom_is_understood(tmp_path: Path) -> None:
    path = tmp_path / "a.txt"
    path.write_bytes("\ufeffhello, world\n".encode())
    assert read_caption(path) == ("hello, world", "utf-8")


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write to read-only folders")
def test_failed_caption_save_keeps_the_old_file(sample_dataset: Path) -> None:
    item = Dataset.from_directory(sample_dataset).images[0]
    before = item.caption_path.read_bytes()
    sample_dataset.chmod(0o555)
    try:
        with pytest.raises(CaptionError, match="Could not save the caption of papercut_01.png"):
            write_caption(item, "new text")
    finally:
        sample_dataset.chmod(0o755)
    assert item.caption_path.read_bytes() == before


def test_failed_caption_save_when_the_target_is_a_folder(sample_dataset: Path) -> None:
    # Works as root too: renaming a file over a directory always fails.
    item = Dataset.from_directory(sample_dataset).images[-1]
    item.caption_path.mkdir()
    with pytest.raises(CaptionError, match="Could not save the caption"):
        write_caption(item, "text")
    assert item.caption is None
    assert not [p for p in sample_dataset.iterdir() if p.name.endswith(".tmp")]


def test_corrupt_images_are_found_by_verify(sample_dataset: Path) -> None:
    (sample_dataset / "papercut_03.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    (sample_dataset / "truncated.png").write_bytes(
        (sample_dataset / "papercut_04.png").read_bytes()[:2000]
    )
    dataset = Dataset.from_directory(sample_dataset)
    bad = {item.name: why for item, why in dataset.verify_images()}
    assert set(bad) == {"papercut_03.png", "truncated.png"}
    assert "corrupt" in bad["papercut_03.png"] or "decoded" in bad["papercut_03.png"]
    assert dataset.find(sample_dataset / "papercut_03.png").problem == bad["papercut_03.png"]


def test_check_image_reasons(tmp_path: Path) -> None:
    assert check_image(tmp_path / "nope.png") == "Image file is missing."
    tiny = tmp_path / "tiny.png"
    Image.new("RGB", (4, 4)).save(tiny)
    assert "too small" in (check_image(tiny) or "")


def test_manifest_round_trip(sample_dataset: Path, tmp_path: Path) -> None:
    dataset = Dataset.from_directory(sample_dataset)
    manifest = dataset.save_manifest(tmp_path / "dataset.json")
    data = json.loads(manifest.read_text(encoding="utf-8"))
    assert data["version"] == 1 and len(data["images"]) == 12
    loaded = Dataset.from_manifest(manifest)
    assert [i.path for i in loaded] == [i.path for i in dataset]
    assert [i.caption for i in loaded] == [i.caption for i in dataset]


def test_broken_manifest_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "dataset.json"
    path.write_text("{not json", encoding="utf-8")
    with pytest.raises(DatasetError, match="cannot be read"):
        Dataset.from_manifest(path)


def test_builder_writes_images_and_captions(tmp_path: Path) -> None:
    builder = DatasetBuilder(tmp_path / "built")
    builder.add_image(Image.new("RGB", (64, 48), "red"), "a red square")
    builder.add_image(Image.new("RGB", (64, 48), "blue"), "")
    dataset = builder.build()
    assert len(dataset) == 2
    reread = Dataset.from_directory(tmp_path / "built")
    assert [i.caption for i in reread] == ["a red square", None]
    with pytest.raises(DatasetError, match="already exists"):
        builder.add_image(Image.new("RGB", (8, 8)), "x", name="image_00001")


def test_tag_frequency_is_per_folder(sample_dataset: Path) -> None:
    freq = Dataset.from_directory(sample_dataset).tag_frequency()
    assert freq["dataset"]["papercut style"] == 10


@pytest.mark.parametrize(
    ("caption", "trigger", "expected"),
    [
        ("a hill", "zxq", "zxq, a hill"),
        ("zxq, a hill", "zxq", "zxq, a hill"),
        ("A ZXQ hill", "zxq", "A ZXQ hill"),
        (None, "zxq", "zxq"),
        ("a hill", "", "a hill"),
    ],
)
def test_training_caption_puts_the_trigger_word_first(caption, trigger, expected) -> None:
    assert training_caption(ImageItem(Path("x.png"), caption=caption), trigger) == expected
