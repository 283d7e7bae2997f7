"""``validate_dataset``: one entry per file, every check on real files, never a crash."""

from __future__ import annotations

import json
import shutil
import string
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from image_factory import picture, write_broken, write_every_kind
from PIL import Image

from lora_studio.core.config import ModelFamily
from lora_studio.core.dataset import Dataset
from lora_studio.core.formats import image_extensions
from lora_studio.core.validate import (
    MIN_SIDE,
    Severity,
    ValidationReport,
    check_image_file,
    dhash,
    hamming,
    near_duplicate_groups,
    validate_dataset,
)


def codes(report: ValidationReport, path: Path) -> set[str]:
    return {issue.code for issue in report.by_path()[path].issues}


def caption_all(folder: Path) -> None:
    for image in folder.iterdir():
        if image.suffix.lower() in image_extensions():
            image.with_suffix(".txt").write_text(f"a picture called {image.stem}", "utf-8")


@pytest.fixture
def every_kind(tmp_path: Path) -> dict[str, Path]:
    made = write_every_kind(tmp_path / "kinds")
    caption_all(tmp_path / "kinds")
    return made


def test_every_format_and_mode_is_read_and_its_conversion_noted(every_kind) -> None:
    report = validate_dataset(Dataset.from_directory(every_kind["png"].parent))
    assert not report.has_errors, report.issues(Severity.ERROR)
    assert report.issues(Severity.WARNING) == []
    expected = {
        "png": set(),
        "jpeg": set(),
        "webp": set(),
        "bmp": set(),
        "tiff": set(),
        "rgba": {"alpha_flattened"},
        "la": {"alpha_flattened"},
        "palette": {"palette_converted", "alpha_flattened"},
        "cmyk": {"cmyk_converted"},
        "gray16": {"high_bit_depth"},
        "rotated": {"exif_rotated"},
    }
    for kind, path in every_kind.items():
        assert codes(report, path) == expected[kind], kind
    rotated = report.by_path()[every_kind["rotated"]]
    assert (rotated.width, rotated.height) == (640, 800), "sizes are as displayed"
    assert report.by_path()[every_kind["gray16"]].mode == "I;16"
    assert "white" in report.by_path()[every_kind["rgba"]].issues[0].message
    assert report.problem_files == 0 and report.summary().endswith("0 errors, 0 warnings, 7 notes")


def test_a_48_bit_png_is_noted_as_scaled(tmp_path: Path) -> None:
    from image_factory import png16_rgb

    path = png16_rgb(tmp_path / "deep.png", (65535, 32768, 0), size=(600, 600))
    facts = check_image_file(path)
    assert [i.code for i in facts.issues] == ["high_bit_depth"]


def test_broken_files_each_get_one_error_and_the_run_goes_on(every_kind, tmp_path) -> None:
    folder = every_kind["png"].parent
    broken = write_broken(folder, every_kind["jpeg"])
    png = every_kind["png"].read_bytes()
    (folder / "half.png").write_bytes(png[: len(png) // 2])
    report = validate_dataset(Dataset.from_directory(folder))
    assert len(report.files) == len(every_kind) + 4, "one entry per file"
    errors = {issue.path: issue.code for issue in report.issues(Severity.ERROR)}
    assert errors == {
        broken["truncated"]: "truncated",
        broken["zero"]: "zero_byte",
        broken["random"]: "corrupt",
        folder / "half.png": "truncated",
    }
    for path in errors:
        entry = report.by_path()[path]
        assert entry.severity is Severity.ERROR and entry.unreadable
        assert not any(i.code == "missing_caption" for i in entry.issues)
    assert set(report.unreadable()) == set(errors)
    assert report.by_path()[every_kind["png"]].issues == []


def test_header_only_mode_misses_truncation_but_is_fast_and_safe(every_kind) -> None:
    folder = every_kind["png"].parent
    broken = write_broken(folder, every_kind["jpeg"])
    report = validate_dataset(Dataset.from_directory(folder), check_pixels=False)
    assert not report.checked_pixels
    assert codes(report, broken["truncated"]) == {"missing_caption"}  # the header is intact
    assert codes(report, broken["zero"]) == {"zero_byte"}
    assert codes(report, broken["random"]) == {"corrupt"}


def test_unsupported_formats_are_reported_not_skipped_silently(tmp_path: Path) -> None:
    folder = tmp_path / "mixed"
    folder.mkdir()
    picture(600, 600, 1).save(folder / "good.png")
    picture(600, 600, 2).save(folder / "anim.gif")
    picture(600, 600, 3).save(folder / "disguised.png", format="GIF")
    picture(600, 600, 4).save(folder / "really a png.jpg", format="PNG")
    (folder / "phone.heic").write_bytes(b"\x00\x00\x00\x18ftypheic" + bytes(64))
    dataset = Dataset.from_directory(folder)
    assert [item.name for item in dataset] == ["disguised.png", "good.png", "really a png.jpg"]
    report = validate_dataset(dataset)
    assert codes(report, folder / "anim.gif") == {"unsupported_format"}
    assert "GIF" in report.by_path()[folder / "anim.gif"].issues[0].message
    assert "unsupported_format" in codes(report, folder / "disguised.png")
    assert codes(report, folder / "really a png.jpg") == {"missing_caption", "extension_mismatch"}
    if ".heic" not in image_extensions():
        heic = report.by_path()[folder / "phone.heic"]
        assert heic.severity is Severity.ERROR and "pillow-heif" in heic.issues[0].message


@pytest.mark.parametrize(
    ("family", "min_side", "side", "expected"),
    [
        (None, None, 600, set()),
        (ModelFamily.SD15, None, 600, set()),
        (ModelFamily.SD15, None, 500, {"too_small"}),
        (ModelFamily.SDXL, None, 600, {"too_small"}),
        ("flux", None, 800, set()),
        (ModelFamily.SDXL, 256, 600, set()),
        (None, None, 4, {"unusable_size"}),
    ],
)
def test_minimum_side_per_family(tmp_path, family, min_side, side, expected) -> None:
    path = tmp_path / "img.png"
    picture(side, side, 1).save(path)
    path.with_suffix(".txt").write_text("x", "utf-8")
    report = validate_dataset(Dataset.from_directory(tmp_path), family=family, min_side=min_side)
    assert codes(report, path) == expected
    if family is not None and min_side is None:
        assert report.min_side == MIN_SIDE[ModelFamily(family)]
    severity = report.by_path()[path].severity
    assert severity is (Severity.ERROR if side < 8 else Severity.WARNING if expected else None)


def test_extreme_aspect_ratio_is_a_warning(tmp_path: Path) -> None:
    picture(2600, 600, 1).save(tmp_path / "banner.png")
    picture(1600, 600, 2).save(tmp_path / "wide.png")
    report = validate_dataset(Dataset.from_directory(tmp_path))
    assert "extreme_aspect_ratio" in codes(report, tmp_path / "banner.png")
    assert "extreme_aspect_ratio" not in codes(report, tmp_path / "wide.png")
    assert "4.3:1" in report.by_path()[tmp_path / "banner.png"].issues[0].message


def test_images_over_the_pixel_limit_are_flagged_and_never_decoded(tmp_path, monkeypatch):
    picture(120, 100, 1).save(tmp_path / "big.png")
    picture(600, 600, 2).save(tmp_path / "small.png")
    report = validate_dataset(Dataset.from_directory(tmp_path), max_pixels=12_000 - 1)
    assert codes(report, tmp_path / "big.png") == {"too_many_pixels"}
    assert "limit" in report.by_path()[tmp_path / "big.png"].issues[0].message
    assert report.max_pixels == 11_999
    # Pillow's own limit (at twice MAX_IMAGE_PIXELS it refuses to open): flagged, no crash.
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    report = validate_dataset(Dataset.from_directory(tmp_path), max_pixels=10**9)
    assert codes(report, tmp_path / "big.png") == {"too_many_pixels"}
    assert "decompression-bomb" in report.by_path()[tmp_path / "big.png"].issues[0].message
    assert report.max_pixels == 10**9


def test_exact_and_near_duplicates(tmp_path: Path) -> None:
    original = picture(800, 600, 1)
    original.save(tmp_path / "a original.png")
    shutil.copy(tmp_path / "a original.png", tmp_path / "b copy.png")
    original.resize((400, 300)).save(tmp_path / "c smaller.jpg", quality=80)
    brighter = Image.eval(original, lambda v: min(255, v + 6))
    brighter.save(tmp_path / "d brighter.png")
    picture(800, 600, 2).save(tmp_path / "e other.png")
    report = validate_dataset(Dataset.from_directory(tmp_path))
    issues = {i.path.name: i for i in report.issues() if i.code.endswith("duplicate")}
    assert set(issues) == {"b copy.png", "c smaller.jpg", "d brighter.png"}
    assert issues["b copy.png"].code == "duplicate"
    assert "a original.png" in issues["b copy.png"].message
    assert issues["c smaller.jpg"].code == "near_duplicate"
    assert "a original.png" in issues["c smaller.jpg"].message, "the bigger one is kept"
    assert issues["d brighter.png"].code == "near_duplicate"
    # A negative distance turns near-duplicates off (exact ones are still found).
    report = validate_dataset(Dataset.from_directory(tmp_path), near_duplicate_distance=-1)
    assert {i.code for i in report.issues() if i.code.endswith("duplicate")} == {"duplicate"}


def test_dhash_sees_what_training_sees(tmp_path: Path) -> None:
    base = picture(640, 480, 3)
    assert dhash(base) == dhash(base.resize((320, 240)))
    assert hamming(dhash(base), dhash(picture(640, 480, 4))) > 12
    rgba = base.convert("RGBA")
    rgba.putalpha(0)  # fully transparent: trains as plain white
    assert dhash(rgba) == dhash(Image.new("RGB", (640, 480), "white"))
    groups = near_duplicate_groups([0b1111, 0b1110, 1 << 40, 0b1111, (1 << 40) | 1], 1)
    assert sorted(map(sorted, groups)) == [[0, 1, 3], [2, 4]]


def test_caption_checks(tmp_path: Path) -> None:
    for seed, name in enumerate(("none", "empty", "latin", "ok", "unreadable")):
        picture(600, 600, seed).save(tmp_path / f"{name}.png")
    (tmp_path / "empty.txt").write_text("   \n", "utf-8")
    (tmp_path / "latin.txt").write_bytes("caf\u00e9 cr\u00e8me".encode("cp1252"))
    (tmp_path / "ok.txt").write_text("a caption", "utf-8")
    (tmp_path / "unreadable.txt").mkdir()  # a folder where the caption file should be
    report = validate_dataset(Dataset.from_directory(tmp_path))
    assert codes(report, tmp_path / "none.png") == {"missing_caption"}
    assert codes(report, tmp_path / "empty.png") == {"empty_caption"}
    assert codes(report, tmp_path / "latin.png") == {"caption_not_utf8"}
    assert "cp1252" in report.by_path()[tmp_path / "latin.png"].issues[0].message
    assert codes(report, tmp_path / "ok.png") == set()
    assert codes(report, tmp_path / "unreadable.png") == {"caption_unreadable"}


def test_unicode_and_space_laden_names(tmp_path: Path) -> None:
    names = [
        "caf\u00e9 au lait.png",
        "\u5199\u771f 01.jpg",
        " leading space.webp",
        "emoji \U0001f600.png",
    ]
    for index, name in enumerate(names):
        path = tmp_path / name
        picture(600, 600, index).save(path)
        path.with_suffix(".txt").write_text(f"caption {index} \u00e9\u00e8", "utf-8")
    dataset = Dataset.from_directory(tmp_path)
    assert sorted(item.name for item in dataset) == sorted(names)
    report = validate_dataset(dataset)
    assert report.problem_files == 0
    data = json.loads(json.dumps(report.to_dict(), ensure_ascii=False))
    assert sorted(entry["path"] for entry in data["files"]) == sorted(names)


def test_progress_and_stopping(tmp_path: Path) -> None:
    for index in range(12):
        picture(300, 300, index).save(tmp_path / f"{index:02d}.png")
    dataset = Dataset.from_directory(tmp_path)
    seen: list[tuple[int, int]] = []
    report = validate_dataset(dataset, progress=lambda d, t: seen.append((d, t)), workers=2)
    assert [d for d, _ in seen] == list(range(1, 13)) and {t for _, t in seen} == {12}
    assert not report.cancelled

    calls = 0

    def stop_soon() -> bool:
        nonlocal calls
        calls += 1
        return calls > 2

    stopped = validate_dataset(dataset, should_stop=stop_soon, workers=1)
    assert stopped.cancelled and "stopped" in stopped.summary()
    assert len(stopped.files) == 12, "every file still has its entry"
    assert sum(1 for f in stopped.files if f.width is not None) < 12


def test_report_as_json(every_kind) -> None:
    folder = every_kind["png"].parent
    write_broken(folder, every_kind["jpeg"])
    report = validate_dataset(Dataset.from_directory(folder), family="sdxl")
    data = json.loads(json.dumps(report.to_dict()))
    assert data["family"] == "sdxl" and data["min_side"] == 768
    assert data["summary"]["files"] == len(data["files"]) == len(every_kind) + 3
    assert data["summary"]["errors"] == 3
    bad = next(entry for entry in data["files"] if entry["path"] == "empty.png")
    assert bad["severity"] == "error" and bad["code"] == "zero_byte" and bad["message"]
    good = next(entry for entry in data["files"] if entry["path"] == "plain.png")
    assert good["code"] == "too_small" and good["width"] == 640  # 640 < SDXL's 768


def test_indexing_notes_become_entries(tmp_path: Path) -> None:
    picture(600, 600, 1).save(tmp_path / "a.png")
    (tmp_path / "metadata.jsonl").write_text(
        '{"file_name": "a.png", "text": "from metadata"}\nnot json\n', "utf-8"
    )
    (tmp_path / "a.txt").write_text("from the sidecar", "utf-8")
    report = validate_dataset(Dataset.from_directory(tmp_path))
    assert codes(report, tmp_path / "metadata.jsonl") == {"metadata_bad_rows"}
    assert codes(report, tmp_path / "a.png") == {"caption_conflict"}


# ---- never a crash -------------------------------------------------------------------------

_EXTENSIONS = sorted(image_extensions() | {".gif", ".heic"})


@pytest.mark.filterwarnings("ignore::UserWarning")  # Pillow warns about corrupt EXIF blocks
@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    data=st.one_of(
        st.binary(max_size=600),
        # Real headers followed by junk: the decoders get further before failing.
        st.sampled_from(
            [
                b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x01\x00\x00\x00\x01\x00\x08\x02",
                b"\xff\xd8\xff\xe0\x00\x10JFIF\x00",
                b"RIFF\x00\x00\x00\x00WEBPVP8 ",
                b"BM\x00\x00\x00\x00\x00\x00\x00\x00",
                b"II*\x00\x08\x00\x00\x00",
                b"GIF89a\x10\x00\x10\x00",
            ]
        ).flatmap(lambda head: st.binary(max_size=300).map(lambda tail: head + tail)),
    ),
    ext=st.sampled_from(_EXTENSIONS),
)
def test_random_bytes_never_crash_the_loader_or_the_validator(tmp_path_factory, data, ext):
    folder = tmp_path_factory.mktemp("random")
    path = folder / f"file{ext}"
    path.write_bytes(data)
    picture(64, 64, 1).save(folder / "good.png")  # a folder with only junk may have no images
    dataset = Dataset.from_directory(folder)
    report = validate_dataset(dataset, workers=1)
    entries = report.by_path()
    assert folder / "good.png" in entries
    if ext in image_extensions():
        assert path in entries
        entry = entries[path]
        if not data:
            assert entry.severity is Severity.ERROR
        for issue in entry.issues:
            assert issue.message and issue.code


_NAME_CHARS = st.characters(
    blacklist_categories=("Cs",),
    blacklist_characters="/\\\x00",
)


@settings(
    max_examples=30,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    stem=st.text(_NAME_CHARS, min_size=1, max_size=40).filter(
        lambda s: s not in (".", "..") and not s.startswith(".") and len(s.encode()) < 200
    ),
    caption=st.text(max_size=80),
)
def test_odd_file_names_never_crash_and_captions_round_trip(tmp_path_factory, stem, caption):
    from lora_studio.core.dataset import write_caption

    folder = tmp_path_factory.mktemp("names")
    path = folder / f"{stem}.png"
    try:
        picture(64, 64, 2).save(path)
    except OSError:  # a name this file system refuses
        return
    dataset = Dataset.from_directory(folder)
    assert [item.path for item in dataset] == [path]
    report = validate_dataset(dataset, workers=1)
    assert report.by_path()[path].issues
    item = dataset.images[0]
    write_caption(item, caption)
    assert Dataset.from_directory(folder).images[0].caption == caption.strip()


def test_surrogate_file_names_are_handled(tmp_path: Path) -> None:
    # A file name that is not valid UTF-8 (Linux allows any bytes).
    try:
        name = (tmp_path / "bad\udcff name.png").as_posix()
        picture(64, 64, 3).save(name)
    except (OSError, UnicodeEncodeError):
        pytest.skip("this file system refuses names that are not UTF-8")
    dataset = Dataset.from_directory(tmp_path)
    report = validate_dataset(dataset, workers=1)
    json.dumps(report.to_dict())
    manifest = dataset.save_manifest(tmp_path / "dataset.json")
    assert [i.path for i in Dataset.from_manifest(manifest)] == [i.path for i in dataset]


def test_printable_ascii_name_alphabet_smoke(tmp_path: Path) -> None:
    # Every printable ASCII character that a file name may hold, in one name.
    stem = "".join(c for c in string.printable if c not in "/\\\t\n\r\x0b\x0c")
    path = tmp_path / f"x{stem}.png"
    picture(64, 64, 4).save(path)
    report = validate_dataset(Dataset.from_directory(tmp_path), workers=1)
    assert path in report.by_path()
