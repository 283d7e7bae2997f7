"""``prepare_dataset``: real images written by the tests, prepared into a separate folder."""

from __future__ import annotations

import hashlib
import io
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from lora_studio.core import preprocess
from lora_studio.core.buckets import make_buckets, place, placement_for
from lora_studio.core.config import LoraConfig
from lora_studio.core.dataset import Dataset
from lora_studio.core.errors import OutputError
from lora_studio.core.preprocess import (
    MANIFEST_NAME,
    FileStatus,
    PrepareMode,
    PrepareOptions,
    PrepareProgress,
    best_window,
    plan_geometry,
    prepare_dataset,
    preview_assignments,
    smart_crop_box,
)

# ---- images ------------------------------------------------------------------------------


def photo(width: int, height: int, seed: int = 0) -> Image.Image:
    """Smooth random colours, like a photo (and compressible)."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (max(2, height // 16), max(2, width // 16), 3), np.uint8)
    return Image.fromarray(small).resize((width, height), Image.Resampling.BICUBIC)


def off_centre_subject(width: int = 1024, height: int = 512, centre_x: int = 140) -> Image.Image:
    """A plain, softly shaded grey scene with a colourful, detailed object near the left."""
    yy, xx = np.mgrid[0:height, 0:width]
    grey = 110 + 30 * (xx / width) + 10 * (yy / height)
    arr = np.stack([grey, grey, grey], axis=-1)
    inside = (xx - centre_x) ** 2 + (yy - height // 2) ** 2 < 100**2
    checker = ((xx // 12 + yy // 12) % 2).astype(bool)
    arr[inside & checker] = (230, 30, 30)
    arr[inside & ~checker] = (250, 210, 40)
    return Image.fromarray(arr.astype(np.uint8), "RGB")


def save(img: Image.Image, path: Path, **kwargs: object) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".png":
        kwargs.setdefault("compress_level", 1)  # quick to write
    img.save(path, **kwargs)
    return path


def jpeg_with_orientation(img: Image.Image, path: Path, orientation: int) -> Path:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return save(img, path, exif=exif.tobytes(), quality=95)


def tree_bytes(root: Path) -> dict[str, bytes]:
    return {
        p.relative_to(root).as_posix(): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.name != MANIFEST_NAME
    }


def tree_state(root: Path) -> dict[str, tuple[str, int]]:
    return {
        p.relative_to(root).as_posix(): (
            hashlib.sha256(p.read_bytes()).hexdigest(),
            p.stat().st_mtime_ns,
        )
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


SIZES = {
    "wide.jpg": (1600, 900),
    "tall.png": (900, 1600),
    "square.png": (1000, 1000),
    "small.jpg": (700, 500),
}
#: kohya buckets at 512 (sides multiples of 64, area <= 512^2), worked out by hand.
BUCKETS_512 = {
    "wide.jpg": (640, 384),
    "tall.png": (384, 640),
    "square.png": (512, 512),
    "small.jpg": (576, 448),
}


@pytest.fixture
def shapes(tmp_path: Path) -> Path:
    root = tmp_path / "shapes"
    for n, (name, size) in enumerate(SIZES.items()):
        save(photo(*size, seed=n), root / name)
        (root / name).with_suffix(".txt").write_text(f"shape {n}", encoding="utf-8")
    return root


# ---- sizes per mode ----------------------------------------------------------------------


@pytest.mark.parametrize("mode", list(PrepareMode))
@pytest.mark.parametrize("buckets", [False, True])
def test_every_mode_gives_the_exact_target_size(shapes, tmp_path, mode, buckets) -> None:
    out = tmp_path / "out"
    result = prepare_dataset(shapes, out, resolution=512, mode=mode, buckets=buckets, workers=2)
    assert result.ok and result.prepared == 4 and result.unchanged == 0
    for name in SIZES:
        expected = BUCKETS_512[name] if buckets else (512, 512)
        with Image.open(out / Path(name).with_suffix(".png")) as img:
            assert img.size == expected, (name, mode, buckets)
            assert img.mode == "RGB"


def test_crop_with_buckets_is_the_trainers_placement(shapes, tmp_path) -> None:
    config = LoraConfig(resolution=512, enable_bucket=True)
    result = prepare_dataset(shapes, tmp_path / "out", resolution=512, buckets=True, config=config)
    buckets = make_buckets(512, config.min_bucket_side, config.max_bucket_side)
    for file in result.files:
        placement = place(*SIZES[Path(file.source).name], buckets, 512)
        geometry = file.geometry
        assert geometry is not None
        assert geometry.scaled == placement.scaled
        assert geometry.crop is not None and geometry.crop[:2] == (
            placement.crop_left,
            placement.crop_top,
        )
        assert placement_for(*SIZES[Path(file.source).name], config) == placement


def test_pad_letterboxes_with_the_chosen_colour(tmp_path) -> None:
    src = tmp_path / "src"
    save(Image.new("RGB", (1000, 500), (0, 200, 0)), src / "green.png")
    result = prepare_dataset(src, tmp_path / "out", resolution=256, mode="pad", pad_color="#ff00ff")
    (file,) = result.files
    assert file.geometry is not None and file.geometry.paste == (0, 64)
    with Image.open(tmp_path / "out" / "green.png") as img:
        arr = np.asarray(img)
    assert arr.shape == (256, 256, 3)
    assert (arr[:60] == (255, 0, 255)).all() and (arr[-60:] == (255, 0, 255)).all()
    assert (np.abs(arr[70:186].astype(int) - (0, 200, 0)) <= 2).all()


def test_fill_stretches_without_cropping(tmp_path) -> None:
    src = tmp_path / "src"
    img = Image.new("RGB", (1000, 250), (255, 0, 0))
    img.paste((0, 0, 255), (500, 0, 1000, 250))
    save(img, src / "halves.png")
    prepare_dataset(src, tmp_path / "out", resolution=128, mode="fill")
    arr = np.asarray(Image.open(tmp_path / "out" / "halves.png"))
    assert arr.shape == (128, 128, 3)
    assert (arr[:, :60] == (255, 0, 0)).all() and (arr[:, 68:] == (0, 0, 255)).all()


# ---- smart crop --------------------------------------------------------------------------


def _red_yellow_pixels(path: Path) -> int:
    arr = np.asarray(Image.open(path)).astype(int)
    red = (arr[..., 0] > 200) & (arr[..., 1] < 80) & (arr[..., 2] < 80)
    yellow = (arr[..., 0] > 200) & (arr[..., 1] > 170) & (arr[..., 2] < 90)
    return int((red | yellow).sum())


def test_smart_crop_keeps_an_off_centre_subject_that_centre_crop_cuts(tmp_path) -> None:
    src = tmp_path / "src"
    save(off_centre_subject(), src / "scene.png")
    crop = prepare_dataset(src, tmp_path / "crop", resolution=512, mode="crop")
    smart = prepare_dataset(src, tmp_path / "smart", resolution=512, mode="smart")
    assert _red_yellow_pixels(tmp_path / "crop" / "scene.png") == 0
    kept = _red_yellow_pixels(tmp_path / "smart" / "scene.png")
    whole = np.pi * 100**2
    assert kept > 0.97 * whole  # the whole disc (anti-aliased edge aside)
    crop_box = crop.files[0].geometry.crop  # type: ignore[union-attr]
    smart_box = smart.files[0].geometry.crop  # type: ignore[union-attr]
    assert crop_box == (256, 0, 768, 512)
    assert smart_box is not None and smart_box[0] <= 40 and smart_box[2] - smart_box[0] == 512


def test_smart_crop_of_a_featureless_image_is_the_centre() -> None:
    img = Image.new("RGB", (900, 300), (90, 90, 90))
    assert smart_crop_box(img, (300, 300)) == (300, 0, 600, 300)


def test_best_window_prefers_the_salient_block_and_ties_go_to_the_centre() -> None:
    saliency = np.zeros((10, 40), np.float32)
    saliency[:, 31:35] = 1.0
    left, top = best_window(saliency, 10, 10)
    assert top == 0 and 25 <= left <= 30  # holds the block, nearest the centre possible
    assert best_window(np.ones((10, 40), np.float32), 10, 10) == (15, 0)


def test_smart_crop_finds_the_subject_on_the_short_axis_too() -> None:
    tall = off_centre_subject().transpose(Image.Transpose.TRANSPOSE)  # subject near the top
    assert tall.size == (512, 1024)
    box = smart_crop_box(tall, (512, 512))
    assert box[0] == 0 and box[1] <= 40 and box[3] - box[1] == 512


# ---- layout, captions, originals --------------------------------------------------------


def test_captions_and_repeat_folders_are_carried_over(tmp_path) -> None:
    src = tmp_path / "src"
    save(photo(300, 200), src / "10_cat toy" / "a b.jpg")
    (src / "10_cat toy" / "a b.txt").write_text("cat toy, on a table", encoding="utf-8")
    save(photo(200, 300, 1), src / "no caption.png")
    save(photo(256, 256, 2), src / "sub" / "café.png")
    (src / "sub" / "café.txt").write_bytes("crème brûlée".encode("cp1252"))
    out = tmp_path / "out"
    result = prepare_dataset(src, out, resolution=128)
    assert result.ok and result.captions_written == 2
    assert (out / "10_cat toy" / "a b.txt").read_text("utf-8") == "cat toy, on a table\n"
    assert (out / "sub" / "café.txt").read_text("utf-8") == "crème brûlée\n"
    assert not (out / "no caption.txt").exists()
    prepared = Dataset.from_directory(out)
    by_name = {prepared.relative_name(i): i for i in prepared}
    assert set(by_name) == {"10_cat toy/a b.png", "no caption.png", "sub/café.png"}
    assert by_name["10_cat toy/a b.png"].repeats == 10
    assert by_name["sub/café.png"].caption == "crème brûlée"


def test_originals_are_never_modified(shapes, tmp_path) -> None:
    before = tree_state(shapes)
    prepare_dataset(shapes, tmp_path / "out", resolution=256, mode="smart", buckets=True)
    prepare_dataset(shapes, tmp_path / "out", resolution=128, mode="pad")
    assert tree_state(shapes) == before


def test_same_stem_different_extensions_do_not_collide(tmp_path) -> None:
    src = tmp_path / "src"
    save(photo(100, 100), src / "cat.jpg")
    save(photo(100, 100, 1), src / "cat.png")
    result = prepare_dataset(src, tmp_path / "out", resolution=64)
    assert sorted(f.output for f in result.files) == ["cat.png", "cat_png.png"]


def test_the_output_folder_must_be_outside_the_dataset_and_ours(shapes, tmp_path) -> None:
    with pytest.raises(OutputError, match="inside the dataset"):
        prepare_dataset(shapes, shapes / "prepared", resolution=64)
    with pytest.raises(OutputError, match="inside the prepared folder"):
        prepare_dataset(shapes, shapes.parent, resolution=64)
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(OutputError, match="not empty"):
        prepare_dataset(shapes, foreign, resolution=64)
    assert (foreign / "notes.txt").read_text() == "mine"


# ---- the cache ---------------------------------------------------------------------------


def test_a_second_run_over_an_unchanged_folder_does_no_work(shapes, tmp_path, monkeypatch) -> None:
    out = tmp_path / "out"
    first = prepare_dataset(shapes, out, resolution=128, buckets=True)
    assert (first.prepared, first.unchanged) == (4, 0)
    state = tree_state(out)

    def no_work(task: object) -> object:
        raise AssertionError("an image was read on the second run")

    monkeypatch.setattr(preprocess, "_process", no_work)
    second = prepare_dataset(shapes, out, resolution=128, buckets=True)
    assert (second.prepared, second.unchanged, second.captions_written) == (0, 4, 0)
    assert second.summary() == "0 prepared, 4 unchanged"
    assert tree_state(out) == state  # same bytes, same mtimes, manifest included


def test_only_what_changed_is_done_again(shapes, tmp_path) -> None:
    out = tmp_path / "out"
    prepare_dataset(shapes, out, resolution=128)
    before = tree_state(out)

    # Touched but identical: hashed, found unchanged, nothing written.
    os.utime(shapes / "wide.jpg", ns=(1, 1))
    # New pixels.
    save(photo(1600, 900, seed=99), shapes / "tall.png")
    # New caption only: the image is not redone.
    (shapes / "square.txt").write_text("new words", encoding="utf-8")
    # Gone: its output and caption go too.
    (shapes / "small.jpg").unlink()
    (shapes / "small.txt").unlink()
    # An output the user deleted comes back.
    (out / "wide.png").unlink()

    result = prepare_dataset(shapes, out, resolution=128)
    status = {f.source: f.status for f in result.files}
    assert status == {
        "square.png": FileStatus.UNCHANGED,
        "tall.png": FileStatus.PREPARED,
        "wide.jpg": FileStatus.PREPARED,
    }
    assert result.removed == 1 and result.captions_written == 1
    after = tree_state(out)
    assert not (out / "small.png").exists() and not (out / "small.txt").exists()
    assert after["square.png"] == before["square.png"]
    assert after["square.txt"] != before["square.txt"]
    assert after["tall.png"][0] != before["tall.png"][0]
    assert after["wide.png"][0] == before["wide.png"][0]  # same source, same pixels

    os.utime(shapes / "square.png", ns=(5, 5))
    again = prepare_dataset(shapes, out, resolution=128)
    assert (again.prepared, again.unchanged) == (0, 3)
    assert tree_state(out)["square.png"] == after["square.png"]


def test_changing_an_option_redoes_everything_but_irrelevant_ones_do_not(shapes, tmp_path) -> None:
    out = tmp_path / "out"
    prepare_dataset(shapes, out, resolution=128, mode="crop")
    same = prepare_dataset(shapes, out, resolution=128, mode="crop", pad_color="red")
    assert same.unchanged == 4  # the padding colour does not matter when cropping
    other = prepare_dataset(shapes, out, resolution=96, mode="crop")
    assert other.prepared == 4
    assert Image.open(out / "wide.png").size == (96, 96)


def test_cancel_leaves_only_whole_files_and_the_next_run_continues(tmp_path) -> None:
    src = tmp_path / "src"
    for n in range(10):
        save(photo(400, 300, seed=n), src / "5_x" / f"img{n}.jpg")
        (src / "5_x" / f"img{n}.txt").write_text(f"image {n}", encoding="utf-8")
    seen: list[PrepareProgress] = []
    out = tmp_path / "out"
    result = prepare_dataset(
        src,
        out,
        resolution=128,
        workers=2,
        progress=seen.append,
        should_stop=lambda: len(seen) >= 3,
    )
    assert result.cancelled and not result.ok
    pending = [f for f in result.files if f.status is FileStatus.PENDING]
    done = [f for f in result.files if f.status is FileStatus.PREPARED]
    assert pending and done and len(pending) + len(done) == 10
    assert "cancelled with" in result.summary()
    assert not [p for p in out.rglob("*") if p.name.endswith(".tmp") or p.name.startswith(".img")]
    images = sorted(out.rglob("*.png"))
    assert [p.relative_to(out).as_posix() for p in images] == sorted(f.output for f in done)
    for path in images:
        with Image.open(path) as img:
            img.load()
            assert img.size == (128, 128)
        assert path.with_suffix(".txt").is_file()
    rest = prepare_dataset(src, out, resolution=128, workers=2)
    assert (rest.prepared, rest.unchanged) == (len(pending), len(done))


def test_parallel_and_serial_outputs_are_identical(shapes, tmp_path) -> None:
    save(off_centre_subject(600, 300), shapes / "scene.png")
    outs = {}
    for label, workers, executor in [
        ("serial", 1, "thread"),
        ("threads", 2, "thread"),
        ("processes", 2, "process"),
    ]:
        prepare_dataset(
            shapes,
            tmp_path / label,
            resolution=128,
            mode="smart",
            buckets=True,
            workers=workers,
            executor=executor,  # type: ignore[arg-type]
        )
        outs[label] = tree_bytes(tmp_path / label)
    assert len(outs["serial"]) == 9  # five images, four captions
    assert outs["serial"] == outs["threads"] == outs["processes"]


# ---- odd images --------------------------------------------------------------------------


def test_odd_modes_are_converted_correctly(tmp_path) -> None:
    src = tmp_path / "src"
    # RGBA: a transparent field with an opaque red square -> white, not black, around it.
    rgba = Image.new("RGBA", (200, 200), (0, 0, 0, 0))
    rgba.paste((255, 0, 0, 255), (75, 75, 125, 125))
    save(rgba, src / "rgba.png")
    # CMYK JPEG, pure cyan.
    save(Image.new("CMYK", (200, 200), (255, 0, 0, 0)), src / "cmyk.jpg", quality=95)
    # 16-bit greyscale: a left-to-right ramp over the whole 0-65535 range.
    ramp = np.tile(np.linspace(0, 65535, 128).astype(np.uint16), (128, 1))
    save(Image.fromarray(ramp), src / "deep.png")
    # Palette with a transparent index.
    pal = Image.new("P", (100, 100), 1)
    pal.putpalette([0, 0, 0, 0, 0, 255] + [0] * 762)
    pal.paste(0, (0, 0, 100, 50))
    save(pal, src / "palette.png", transparency=0)
    # Greyscale + alpha, and bilevel.
    save(Image.new("LA", (64, 64), (0, 0)), src / "la.png")
    save(Image.new("1", (64, 64), 1), src / "bilevel.png")

    result = prepare_dataset(src, tmp_path / "out", resolution=64)
    assert result.ok, [(f.source, f.error) for f in result.failed]

    def pixels(name: str) -> np.ndarray:
        with Image.open(tmp_path / "out" / name) as img:
            assert img.mode == "RGB" and img.size == (64, 64)
            return np.asarray(img).astype(int)

    rgba_out = pixels("rgba.png")
    assert (rgba_out[:10, :10] == 255).all()  # flattened on white
    assert tuple(rgba_out[32, 32]) == (255, 0, 0)
    cyan = pixels("cmyk.png")[32, 32]
    assert cyan[0] < 40 and cyan[1] > 215 and cyan[2] > 215
    deep = pixels("deep.png")[:, :, 0]
    assert deep[:, 0].max() < 10 and deep[:, -1].min() > 245  # scaled, not clipped
    assert 110 < deep[:, 32].mean() < 145
    palette = pixels("palette.png")
    assert (palette[:28] == 255).all()  # transparent half on white
    assert tuple(palette[50, 32]) == (0, 0, 255)
    assert (pixels("la.png") == 255).all()
    assert (pixels("bilevel.png") == 255).all()
    # Another background for the transparency.
    prepare_dataset(src, tmp_path / "black", resolution=64, background="black")
    assert (np.asarray(Image.open(tmp_path / "black" / "rgba.png"))[:10, :10] == 0).all()


@pytest.mark.parametrize("scale", [1, 4], ids=["full decode", "draft decode"])
def test_exif_rotation_is_applied(tmp_path, scale) -> None:
    src = tmp_path / "src"
    stored = Image.new("RGB", (900 * scale, 400 * scale), (0, 0, 255))
    stored.paste((255, 0, 0), (0, 0, 200 * scale, 400 * scale))  # red on the stored left edge
    # Orientation 6: the camera was turned; displayed, the image is 400x900 and the
    # stored left edge is at the top.
    jpeg_with_orientation(stored, src / "turned.jpg", 6)
    result = prepare_dataset(src, tmp_path / "out", resolution=512, buckets=True)
    (file,) = result.files
    assert file.geometry is not None and file.geometry.original == (400 * scale, 900 * scale)
    with Image.open(tmp_path / "out" / "turned.png") as img:
        assert img.size == (320, 704)  # the portrait bucket, not the landscape one
        arr = np.asarray(img).astype(int)
    assert arr[5, img.width // 2, 0] > 200 and arr[5, img.width // 2, 2] < 60  # red on top
    assert arr[-5, img.width // 2, 2] > 200  # blue at the bottom
    assert not Image.open(tmp_path / "out" / "turned.png").getexif().get(0x0112)


def test_big_jpegs_are_decoded_in_draft_mode(tmp_path, monkeypatch) -> None:
    from PIL import JpegImagePlugin

    src = tmp_path / "src"
    save(photo(2400, 1800), src / "big.jpg", quality=90)
    save(photo(300, 200), src / "near.jpg", quality=90)
    calls: list[tuple[int, int] | None] = []
    original = JpegImagePlugin.JpegImageFile.draft

    def spy(self, mode, size):  # type: ignore[no-untyped-def]
        calls.append(size)
        return original(self, mode, size)

    monkeypatch.setattr(JpegImagePlugin.JpegImageFile, "draft", spy)
    result = prepare_dataset(src, tmp_path / "out", resolution=256, workers=1)
    assert result.ok
    assert calls == [(341, 256)]  # only the big one, asked for its scaled size
    assert Image.open(tmp_path / "out" / "big.png").size == (256, 256)


def test_unreadable_images_are_reported_and_skipped(shapes, tmp_path) -> None:
    (shapes / "broken.png").write_bytes(b"this is not a picture")
    (shapes / "empty.jpg").write_bytes(b"")
    whole = io.BytesIO()
    photo(400, 300).save(whole, format="JPEG")
    (shapes / "truncated.jpg").write_bytes(whole.getvalue()[: len(whole.getvalue()) // 2])
    save(Image.new("RGB", (4, 4)), shapes / "tiny.png")
    result = prepare_dataset(shapes, tmp_path / "out", resolution=64, workers=2)
    failed = {f.source: f.error for f in result.failed}
    assert set(failed) == {"broken.png", "empty.jpg", "truncated.jpg", "tiny.png"}
    assert "not a readable image" in failed["broken.png"].lower()
    assert "too small" in failed["tiny.png"]
    assert result.prepared == 4 and not result.ok
    assert not (tmp_path / "out" / "broken.png").exists()
    assert "4 failed" in result.summary()


# ---- preview -----------------------------------------------------------------------------


def test_preview_matches_prepare_and_writes_nothing(shapes, tmp_path) -> None:
    (shapes / "broken.png").write_bytes(b"nope")
    save(off_centre_subject(), shapes / "scene.png")
    before = tree_state(tmp_path)
    plans = preview_assignments(shapes, resolution=512, mode="smart", buckets=True)
    assert tree_state(tmp_path) == before
    by_source = {p.source: p for p in plans}
    assert by_source["broken.png"].geometry is None and by_source["broken.png"].problem
    for name, bucket in BUCKETS_512.items():
        geometry = by_source[name].geometry
        assert geometry is not None and geometry.target == bucket
        assert geometry.bucket is not None and str(geometry.bucket) == "{}x{}".format(*bucket)
    result = prepare_dataset(shapes, tmp_path / "out", resolution=512, mode="smart", buckets=True)
    for file in result.files:
        if file.geometry is not None:
            assert by_source[file.source].geometry == file.geometry
    assert by_source["scene.png"].geometry.crop[0] < 100  # type: ignore[union-attr]


def test_plan_geometry_is_pure_arithmetic() -> None:
    options = PrepareOptions(resolution=512, mode=PrepareMode.PAD, buckets=False)
    geometry = plan_geometry(1000, 500, options)
    assert (geometry.target, geometry.scaled, geometry.paste) == ((512, 512), (512, 256), (0, 128))
    crop = plan_geometry(1000, 500, PrepareOptions(resolution=512))
    assert (crop.scaled, crop.crop) == ((1024, 512), (256, 0, 768, 512))


# ---- nothing crashes the preparer --------------------------------------------------------

_MODES = ["1", "L", "LA", "P", "RGB", "RGBA", "CMYK", "I", "I;16", "F", "YCbCr"]
_FORMATS = {"png": "PNG", "jpg": "JPEG", "webp": "WEBP", "bmp": "BMP", "tif": "TIFF"}


def _run_quiet(prepare: Callable[[Path, Path], object]) -> None:
    with tempfile.TemporaryDirectory() as scratch:
        src, out = Path(scratch) / "src", Path(scratch) / "out"
        src.mkdir()
        prepare(src, out)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    data=st.binary(max_size=600),
    name=st.text(
        alphabet=st.characters(blacklist_categories=["Cs", "Cc"], blacklist_characters="/\\"),
        min_size=1,
        max_size=20,
    ).filter(lambda s: s.strip(" .") == s and s not in (".", "..")),
    ext=st.sampled_from(sorted(_FORMATS)),
)
def test_random_bytes_and_odd_names_never_crash(data: bytes, name: str, ext: str) -> None:
    def prepare(src: Path, out: Path) -> None:
        try:
            (src / f"{name}.{ext}").write_bytes(data)
        except OSError:
            return  # a name the file system refuses is not the preparer's problem
        save(photo(40, 30), src / "fine.png")
        result = prepare_dataset(src, out, resolution=32, workers=2)
        statuses = {f.source: f.status for f in result.files}
        assert statuses.pop("fine.png") is FileStatus.PREPARED
        assert all(s in (FileStatus.PREPARED, FileStatus.FAILED) for s in statuses.values())

    _run_quiet(prepare)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    mode=st.sampled_from(_MODES),
    ext=st.sampled_from(sorted(_FORMATS)),
    width=st.integers(1, 90),
    height=st.integers(1, 90),
    orientation=st.integers(1, 8),
    prep_mode=st.sampled_from(list(PrepareMode)),
    buckets=st.booleans(),
)
def test_any_image_pillow_writes_is_prepared_to_size_or_reported(
    mode: str,
    ext: str,
    width: int,
    height: int,
    orientation: int,
    prep_mode: PrepareMode,
    buckets: bool,
) -> None:
    rng = np.random.default_rng(width * 100 + height)
    img = Image.fromarray(rng.integers(0, 256, (height, width, 3), np.uint8), "RGB").convert(
        mode if mode not in ("I;16",) else "L"
    )
    if mode == "I;16":
        img = Image.fromarray(np.asarray(img).astype(np.uint16) * 257)
    buffer = io.BytesIO()
    exif = Image.Exif()
    exif[0x0112] = orientation
    try:
        img.save(buffer, format=_FORMATS[ext], exif=exif.tobytes())
    except (OSError, ValueError, KeyError, TypeError):
        return  # Pillow cannot write this mode in this format

    def prepare(src: Path, out: Path) -> None:
        (src / f"img.{ext}").write_bytes(buffer.getvalue())
        result = prepare_dataset(src, out, resolution=64, mode=prep_mode, buckets=buckets)
        (file,) = result.files
        if file.status is FileStatus.FAILED:
            assert file.error and (min(width, height) < 8 or "decoded" in file.error)
            return
        assert file.status is FileStatus.PREPARED and file.geometry is not None
        with Image.open(out / file.output) as prepared:
            assert prepared.size == file.geometry.target and prepared.mode == "RGB"
        if not buckets:
            assert file.geometry.target == (64, 64)

    _run_quiet(prepare)
