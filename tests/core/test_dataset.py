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
    first_images,
    read_caption,
    training_caption,
    write_caption,
)
from lora_studio.core.errors import CaptionError, DatasetError, OutputError
from lora_studio.core.formats import image_extensions


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


# ---- import: layouts, formats, caption extensions -------------------------------------------


def _png(path: Path, seed: int = 0, size: tuple[int, int] = (32, 24)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, (seed * 40 % 256, 90, 160)).save(path)
    return path


def test_every_supported_format_is_indexed_and_others_are_noted(tmp_path: Path) -> None:
    for ext, fmt in [
        (".png", "PNG"),
        (".jpg", "JPEG"),
        (".jpeg", "JPEG"),
        (".webp", "WEBP"),
        (".bmp", "BMP"),
        (".tif", "TIFF"),
        (".TIFF", "TIFF"),
        (".gif", "GIF"),
    ]:
        Image.new("RGB", (16, 16)).save(tmp_path / f"img{ext}", format=fmt)
    (tmp_path / "phone.heic").write_bytes(b"not decoded while indexing")
    (tmp_path / "raw.CR2").write_bytes(b"camera raw")
    dataset = Dataset.from_directory(tmp_path)
    names = sorted(item.name for item in dataset)
    expected = ["img.TIFF", "img.bmp", "img.jpeg", "img.jpg", "img.png", "img.tif", "img.webp"]
    if ".heic" in image_extensions():  # a HEIC plugin is installed here
        expected.append("phone.heic")
    assert names == sorted(expected)
    noted = {note.path.name: note for note in dataset.notes}
    assert noted["img.gif"].code == "unsupported_format" and "GIF" in noted["img.gif"].message
    assert "camera raw" in noted["raw.CR2"].message
    if ".heic" not in image_extensions():
        assert "pillow-heif" in noted["phone.heic"].message


def test_heic_and_avif_follow_the_registered_plugins(monkeypatch) -> None:
    registered = dict(Image.registered_extensions())
    registered.pop(".avif", None)
    registered[".heic"] = "HEIF"
    monkeypatch.setattr(Image, "registered_extensions", lambda: registered)
    extensions = image_extensions()
    assert ".heic" in extensions and ".avif" not in extensions
    assert ".png" in extensions and ".tiff" in extensions


def test_only_file_listings_and_captions_are_read_when_indexing(tmp_path, monkeypatch) -> None:
    for n in range(5):
        _png(tmp_path / "10_thing" / f"{n}.png", n).with_suffix(".txt").write_text(f"c{n}")
    opened: list[object] = []
    monkeypatch.setattr(Image, "open", lambda *a, **k: opened.append(a) or 1 / 0)
    dataset = Dataset.from_directory(tmp_path)
    assert len(dataset) == 5 and opened == []
    assert [item.caption for item in dataset] == [f"c{n}" for n in range(5)]


@pytest.mark.parametrize("extension", [".caption", "caption", ".TXT2"])
def test_caption_extension_is_configurable(tmp_path: Path, extension: str) -> None:
    ext = extension if extension.startswith(".") else "." + extension
    root = tmp_path / "kohya"
    image = _png(root / "5_zxq dog" / "a b.png")
    image.with_suffix(ext).write_text("zxq dog, from the caption file\n", "utf-8")
    image.with_suffix(".txt").write_text("ignored: the other extension", "utf-8")
    dataset = Dataset.from_directory(root, caption_extension=extension)
    item = dataset.images[0]
    assert item.caption == "zxq dog, from the caption file"
    assert item.repeats == 5 and item.caption_extension == ext
    assert dataset.caption_extension == ext
    write_caption(item, "zxq dog, edited")
    assert image.with_suffix(ext).read_text("utf-8") == "zxq dog, edited\n"
    assert image.with_suffix(".txt").read_text("utf-8") == "ignored: the other extension"


@pytest.mark.parametrize("extension", ["", ".", "a/b", ".png", ".tar.gz"])
def test_bad_caption_extensions_are_refused(tmp_path: Path, extension: str) -> None:
    _png(tmp_path / "a.png")
    with pytest.raises(DatasetError, match="extension"):
        Dataset.from_directory(tmp_path, caption_extension=extension)


def test_unreadable_caption_does_not_stop_indexing(tmp_path: Path) -> None:
    _png(tmp_path / "a.png")
    _png(tmp_path / "b.png").with_suffix(".txt").write_text("fine", "utf-8")
    (tmp_path / "a.txt").mkdir()
    dataset = Dataset.from_directory(tmp_path)
    a, b = dataset.images
    assert a.caption is None and a.caption_error and "cannot be read" in a.caption_error
    assert b.caption == "fine"


def test_unicode_and_spaces_in_names(tmp_path: Path) -> None:
    folder = tmp_path / "3_caf\u00e9 style"
    image = _png(folder / "  \u5199\u771f \u00e9t\u00e9 (1).png")
    image.with_suffix(".txt").write_text("\u00e9t\u00e9, \u5199\u771f", "utf-8")
    dataset = Dataset.from_directory(tmp_path)
    assert dataset.images[0].caption == "\u00e9t\u00e9, \u5199\u771f"
    assert dataset.images[0].repeats == 3
    out = dataset.export_kohya(tmp_path.parent / f"{tmp_path.name}-out")
    again = Dataset.from_directory(out.target)
    assert [i.name for i in again] == [image.name]
    assert again.images[0].caption == "\u00e9t\u00e9, \u5199\u771f"


# ---- metadata.jsonl --------------------------------------------------------------------------


def _hf_folder(root: Path) -> Path:
    _png(root / "a.png", 1)
    _png(root / "b.png", 2)
    _png(root / "sub" / "c.png", 3)
    _png(root / "d.png", 4)  # no row
    rows = [
        '{"file_name": "a.png", "text": "caption a", "score": 0.5}',
        "",
        '{"file_name": "./sub/c.png", "text": "caption c", "tags": ["x", "y"]}',
        '{"file_name": "b.png", "text": "caption b"}',
        '{"file_name": "gone.png", "text": "a file that is not there"}',
    ]
    (root / "metadata.jsonl").write_bytes(("\r\n".join(rows) + "\r\n").encode("utf-8"))
    return root


def test_metadata_jsonl_captions_are_read(tmp_path: Path) -> None:
    dataset = Dataset.from_directory(_hf_folder(tmp_path / "hf"))
    captions = {dataset.relative_name(i): i.caption for i in dataset}
    assert captions == {
        "a.png": "caption a",
        "b.png": "caption b",
        "d.png": None,
        "sub/c.png": "caption c",
    }
    meta = tmp_path / "hf" / "metadata.jsonl"
    assert all(item.metadata is not None and item.metadata.file == meta for item in dataset)
    assert dataset.notes == []


def test_caption_column_may_be_called_caption(tmp_path: Path) -> None:
    _png(tmp_path / "a.png")
    (tmp_path / "metadata.jsonl").write_text('{"file_name": "a.png", "caption": "hi"}\n')
    item = Dataset.from_directory(tmp_path).images[0]
    assert item.caption == "hi" and item.metadata is not None
    write_caption(item, "hello")
    row = json.loads((tmp_path / "metadata.jsonl").read_text())
    assert row == {"file_name": "a.png", "caption": "hello"}


def test_metadata_caption_edits_write_back_and_keep_everything_else(tmp_path: Path) -> None:
    root = _hf_folder(tmp_path / "hf")
    meta = root / "metadata.jsonl"
    before = meta.read_bytes().split(b"\r\n")
    dataset = Dataset.from_directory(root)
    items = {dataset.relative_name(i): i for i in dataset}
    write_caption(items["sub/c.png"], "  caption c, edited  ")
    write_caption(items["d.png"], "a new row for d")
    after = meta.read_bytes().split(b"\r\n")
    assert after[0] == before[0] and after[1] == b"" and after[3:5] == before[3:5]
    assert json.loads(after[2]) == {
        "file_name": "./sub/c.png",
        "text": "caption c, edited",
        "tags": ["x", "y"],
    }
    assert json.loads(after[-1]) == {"file_name": "d.png", "text": "a new row for d"}
    assert not (root / "sub" / "c.txt").exists() and not (root / "d.txt").exists()
    assert not [p for p in root.iterdir() if p.name.startswith(".")], "no temp files left"
    reread = {dataset.relative_name(i): i.caption for i in Dataset.from_directory(root)}
    assert reread["sub/c.png"] == "caption c, edited" and reread["d.png"] == "a new row for d"


def test_concurrent_metadata_edits_are_all_kept(tmp_path: Path) -> None:
    from concurrent.futures import ThreadPoolExecutor

    for n in range(24):
        _png(tmp_path / f"{n:02d}.png", n)
    (tmp_path / "metadata.jsonl").write_text(
        "".join(json.dumps({"file_name": f"{n:02d}.png", "text": "old"}) + "\n" for n in range(24))
    )
    dataset = Dataset.from_directory(tmp_path)
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda item: write_caption(item, f"new {item.path.stem}"), dataset.images))
    reread = Dataset.from_directory(tmp_path)
    assert [i.caption for i in reread] == [f"new {n:02d}" for n in range(24)]


def test_metadata_wins_over_a_sidecar_and_says_so(tmp_path: Path) -> None:
    _png(tmp_path / "a.png").with_suffix(".txt").write_text("sidecar", "utf-8")
    _png(tmp_path / "b.png").with_suffix(".txt").write_text("same", "utf-8")
    _png(tmp_path / "c.png").with_suffix(".txt").write_text("only a sidecar", "utf-8")
    (tmp_path / "metadata.jsonl").write_text(
        '{"file_name": "a.png", "text": "metadata"}\n{"file_name": "b.png", "text": "same"}\n'
        '{"file_name": "c.png", "other": 1}\n'
    )
    dataset = Dataset.from_directory(tmp_path)
    a, b, c = dataset.images
    assert (a.caption, b.caption, c.caption) == ("metadata", "same", "only a sidecar")
    assert c.metadata is None, "a row without a caption column leaves the sidecar in charge"
    assert [(n.path.name, n.code) for n in dataset.notes] == [("a.png", "caption_conflict")]


def test_bad_and_non_utf8_metadata(tmp_path: Path) -> None:
    _png(tmp_path / "a.png")
    raw = '{"file_name": "a.png", "text": "caf\u00e9"}\n[1, 2]\n{broken\n'.encode("cp1252")
    (tmp_path / "metadata.jsonl").write_bytes(raw)
    dataset = Dataset.from_directory(tmp_path)
    assert dataset.images[0].caption == "caf\u00e9"
    assert {n.code for n in dataset.notes} == {"metadata_not_utf8", "metadata_bad_rows"}
    write_caption(dataset.images[0], "caf\u00e9 cr\u00e8me")
    assert (tmp_path / "metadata.jsonl.orig").read_bytes() == raw, "the original is kept"
    lines = (tmp_path / "metadata.jsonl").read_text("utf-8").splitlines()
    assert json.loads(lines[0])["text"] == "caf\u00e9 cr\u00e8me"
    assert lines[1:] == ["[1, 2]", "{broken"], "rows it cannot read are kept as they were"


def test_nearest_metadata_file_wins(tmp_path: Path) -> None:
    _png(tmp_path / "train" / "a.png")
    (tmp_path / "metadata.jsonl").write_text('{"file_name": "train/a.png", "text": "outer"}\n')
    (tmp_path / "train" / "metadata.jsonl").write_text('{"file_name": "a.png", "text": "inner"}\n')
    item = Dataset.from_directory(tmp_path).images[0]
    assert item.caption == "inner" and item.metadata.file == tmp_path / "train" / "metadata.jsonl"


def test_open_takes_a_folder_a_manifest_or_a_metadata_file(tmp_path: Path) -> None:
    root = _hf_folder(tmp_path / "hf")
    assert len(Dataset.open(root / "metadata.jsonl")) == 4
    manifest = Dataset.open(root).save_manifest(tmp_path / "elsewhere" / "dataset.json")
    assert len(Dataset.open(manifest)) == 4
    only_manifest = tmp_path / "elsewhere"
    assert [i.caption for i in Dataset.open(only_manifest)] == [
        i.caption for i in Dataset.open(root)
    ]
    with pytest.raises(DatasetError, match="is a file"):
        Dataset.open(root / "a.png")


def test_manifest_remembers_the_caption_extension(tmp_path: Path) -> None:
    _png(tmp_path / "d" / "a.png").with_suffix(".caption").write_text("x", "utf-8")
    dataset = Dataset.from_directory(tmp_path / "d", caption_extension=".caption")
    loaded = Dataset.from_manifest(dataset.save_manifest(tmp_path / "dataset.json"))
    assert loaded.caption_extension == ".caption"
    assert loaded.images[0].caption_path.name == "a.caption"


# ---- export ------------------------------------------------------------------------------------


def _mixed(root: Path) -> Dataset:
    _png(root / "10_zxq dog" / "a.png", 1).with_suffix(".txt").write_text("dog a", "utf-8")
    _png(root / "10_zxq dog" / "deep" / "b.png", 2).with_suffix(".txt").write_text("dog b")
    _png(root / "loose" / "x.png", 3).with_suffix(".txt").write_text("loose x", "utf-8")
    _png(root / "loose" / "x.jpg", 4)  # same stem as x.png; no caption
    _png(root / "other" / "x.png", 5).with_suffix(".txt").write_text("other x", "utf-8")
    return Dataset.from_directory(root)


def _tree(folder: Path) -> list[str]:
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())


def test_export_kohya_layout_round_trips(tmp_path: Path) -> None:
    dataset = _mixed(tmp_path / "my set")
    report = dataset.export_kohya(tmp_path / "out", default_repeats=2)
    # loose/x.jpg and loose/x.png share x.txt (kohya pairs captions by stem): both get it.
    assert report.images == 5 and report.captions == 5
    assert _tree(tmp_path / "out") == [
        "10_zxq dog/a.png",
        "10_zxq dog/a.txt",
        "10_zxq dog/deep_b.png",
        "10_zxq dog/deep_b.txt",
        "2_my set/loose_x-2.png",
        "2_my set/loose_x-2.txt",
        "2_my set/loose_x.jpg",
        "2_my set/loose_x.txt",
        "2_my set/other_x.png",
        "2_my set/other_x.txt",
    ]
    again = Dataset.from_directory(tmp_path / "out")
    assert sorted(i.caption or "" for i in again) == [
        "dog a",
        "dog b",
        "loose x",
        "loose x",
        "other x",
    ]
    assert {i.repeats for i in again} == {10, 2}
    assert not [p for p in (tmp_path).iterdir() if p.name.startswith(".")], "staging removed"


def test_export_kohya_never_overwrites_without_being_asked(tmp_path: Path) -> None:
    dataset = _mixed(tmp_path / "src")
    out = tmp_path / "out"
    (out / "10_zxq dog").mkdir(parents=True)
    (out / "10_zxq dog" / "a.txt").write_text("the user's own file", "utf-8")
    (out / "unrelated.txt").write_text("keep me", "utf-8")
    with pytest.raises(OutputError, match="already exist"):
        dataset.export_kohya(out)
    assert _tree(out) == ["10_zxq dog/a.txt", "unrelated.txt"], "nothing was written"
    dataset.export_kohya(out, overwrite=True)
    assert (out / "10_zxq dog" / "a.txt").read_text("utf-8") == "dog a\n"
    assert (out / "unrelated.txt").read_text("utf-8") == "keep me"


def test_export_into_the_dataset_is_refused(tmp_path: Path) -> None:
    dataset = _mixed(tmp_path / "src")
    with pytest.raises(OutputError, match="inside the dataset"):
        dataset.export_kohya(tmp_path / "src" / "export")
    with pytest.raises(OutputError, match="is a file"):
        dataset.export_kohya(tmp_path / "src" / "loose" / "x.png")


def test_export_metadata_in_place_and_elsewhere(tmp_path: Path) -> None:
    dataset = _mixed(tmp_path / "src")
    in_place = dataset.export_metadata_jsonl(tmp_path / "src")
    assert in_place.target == tmp_path / "src" / "metadata.jsonl" and in_place.copied == 0
    rows = [json.loads(line) for line in in_place.target.read_text("utf-8").splitlines()]
    assert {r["file_name"]: r.get("text") for r in rows}["10_zxq dog/deep/b.png"] == "dog b"
    assert len(rows) == 5 and in_place.captions == 5
    with pytest.raises(OutputError, match="already exists"):
        dataset.export_metadata_jsonl(tmp_path / "src" / "metadata.jsonl")

    copy = dataset.export_metadata_jsonl(
        tmp_path / "hf" / "metadata.jsonl", caption_column="caption"
    )
    assert copy.copied == 5
    again = Dataset.from_directory(tmp_path / "hf")
    assert sorted(i.caption or "" for i in again) == sorted(i.caption or "" for i in dataset)
    assert all(i.metadata is not None and i.metadata.column == "caption" for i in again)


def test_export_metadata_overwrite_keeps_other_columns(tmp_path: Path) -> None:
    root = _hf_folder(tmp_path / "hf")
    dataset = Dataset.from_directory(root)
    write_caption(dataset.images[1], "b, edited")  # b.png
    target = root / "metadata.jsonl"
    dataset.export_metadata_jsonl(target, overwrite=True)
    rows = {r["file_name"]: r for r in map(json.loads, target.read_text("utf-8").splitlines())}
    assert rows["a.png"] == {"file_name": "a.png", "text": "caption a", "score": 0.5}
    assert rows["sub/c.png"]["tags"] == ["x", "y"]
    assert rows["b.png"]["text"] == "b, edited"
    assert rows["gone.png"]["text"] == "a file that is not there", "rows of other files stay"
    assert "text" not in rows["d.png"]


def test_metadata_captions_may_hold_line_separators(tmp_path: Path) -> None:
    _png(tmp_path / "a.png")
    _png(tmp_path / "b.png", 2)
    text = "line one\u2028line two\x85end"
    rows = [{"file_name": "a.png", "text": text}, {"file_name": "b.png", "text": "b"}]
    (tmp_path / "metadata.jsonl").write_text(
        "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), "utf-8"
    )
    a, b = Dataset.from_directory(tmp_path).images
    assert (a.caption, b.caption) == (text, "b")
    write_caption(b, "b\u2028edited")
    a, b = Dataset.from_directory(tmp_path).images
    assert (a.caption, b.caption) == (text, "b\u2028edited")


def test_first_images_come_in_the_datasets_own_order(tmp_path: Path) -> None:
    """The window prefetches these thumbnails while it indexes: they must be the grid's
    first rows, whatever the layout (top-level files first, then folders, names sorted)."""
    root = tmp_path / "set"
    for folder in ("20_b style", "10_a style", ".hidden"):
        (root / folder).mkdir(parents=True)
    picture_bytes = _tiny_png()
    for name in (
        "z.png",
        "a.jpg",
        ".secret.png",
        "notes.txt",
        "10_a style/2.png",
        "10_a style/1.png",
        "20_b style/x.png",
        ".hidden/h.png",
    ):
        (root / name).write_bytes(picture_bytes)
    listed = [item.path for item in Dataset.from_directory(root).images]
    assert first_images(root, 100) == listed
    assert [p.relative_to(root).as_posix() for p in listed] == [
        "a.jpg",
        "z.png",
        "10_a style/1.png",
        "10_a style/2.png",
        "20_b style/x.png",
    ]
    assert first_images(root, 3) == listed[:3]
    assert first_images(tmp_path / "missing", 5) == []


def _tiny_png() -> bytes:
    import io

    from PIL import Image

    out = io.BytesIO()
    Image.new("RGB", (16, 16), (10, 20, 30)).save(out, format="PNG")
    return out.getvalue()
