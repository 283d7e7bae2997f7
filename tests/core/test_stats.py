"""Dataset statistics from image headers and captions (no pixels decoded, no torch)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from lora_studio.core.buckets import make_buckets, place, square_placement
from lora_studio.core.config import LoraConfig
from lora_studio.core.dataset import Dataset
from lora_studio.core.imaging import read_header
from lora_studio.core.stats import (
    aspect_bin,
    caption_stats,
    dataset_statistics,
    resolution_bin,
    stats_report,
)

#: name -> (stored size, EXIF orientation, caption)
IMAGES = {
    "10_fox/wide.jpg": ((1920, 1080), 1, "fox, snow, forest"),
    "10_fox/turned.jpg": ((1200, 800), 6, "fox, Snow"),  # displayed 800x1200
    "10_fox/square.png": ((512, 512), 1, "fox"),
    "cats/small.png": ((200, 300), 1, None),
    "cats/big.png": ((3000, 1000), 1, "cat, sofa, sofa"),
}


def _write(root: Path) -> Path:
    for name, ((w, h), orientation, caption) in IMAGES.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        img = Image.new("RGB", (w, h), (120, 80, 40))
        if orientation != 1:
            exif = Image.Exif()
            exif[0x0112] = orientation
            img.save(path, exif=exif.tobytes())
        else:
            img.save(path, compress_level=1) if path.suffix == ".png" else img.save(path)
        if caption is not None:
            path.with_suffix(".txt").write_text(caption, encoding="utf-8")
    (root / "cats" / "broken.png").write_bytes(b"\x89PNG not really")
    return root


@pytest.fixture
def dataset(tmp_path: Path) -> Dataset:
    return Dataset.from_directory(_write(tmp_path / "ds"))


def test_histograms_come_from_headers_with_exif_rotation(dataset, monkeypatch) -> None:
    def no_decoding(self: Image.Image, *args: object) -> None:
        raise AssertionError("pixel data was decoded")

    monkeypatch.setattr(Image.Image, "load", no_decoding)
    monkeypatch.setattr("PIL.ImageFile.ImageFile.load", no_decoding)
    stats = dataset_statistics(dataset)
    assert stats.total_images == 6 and stats.readable_images == 5
    assert [name for name, _ in stats.unreadable] == ["cats/broken.png"]
    assert stats.resolution_histogram == {"<256": 1, "512-767": 1, "768-1023": 2, "1024-1535": 1}
    assert stats.aspect_histogram == {"2:3": 2, "1:1": 1, "16:9": 1, "3:1": 1}
    assert dict(stats.top_sizes) == {
        "1920x1080": 1,
        "800x1200": 1,
        "512x512": 1,
        "200x300": 1,
        "3000x1000": 1,
    }
    assert (stats.min_side, stats.max_side) == (200, 3000)
    assert stats.rotated == 1
    assert stats.modes == {"RGB": 5}


def test_bins() -> None:
    assert resolution_bin(4000, 255) == "<256"
    assert resolution_bin(2048, 4096) == "2048+"
    assert aspect_bin(1920, 1080) == "16:9" and aspect_bin(1080, 1920) == "9:16"
    assert aspect_bin(10, 100) == "1:3" and aspect_bin(1000, 999) == "1:1"


@pytest.mark.parametrize("enable_bucket", [True, False])
def test_bucket_distribution_is_the_trainers_placement(dataset, enable_bucket) -> None:
    config = LoraConfig(resolution=512, enable_bucket=enable_bucket)
    stats = dataset_statistics(dataset, config=config)
    buckets = make_buckets(512, config.min_bucket_side, config.max_bucket_side)
    expected: dict[str, int] = {}
    for item in dataset:
        try:
            header = read_header(item.path)
        except Exception:
            continue
        placement = (
            place(header.width, header.height, buckets, 512)
            if enable_bucket
            else square_placement(header.width, header.height, 512)
        )
        expected[str(placement.bucket)] = expected.get(str(placement.bucket), 0) + 1
    assert dict(stats.buckets or []) == expected
    assert sum(n for _, n in stats.buckets or []) == 5
    assert stats.upscaled == 1  # only the 200x300 image is smaller than its bucket
    assert stats.bucket_settings is not None and stats.bucket_settings["resolution"] == 512
    if enable_bucket:
        assert dict(stats.buckets or [])["384x640"] == 2  # the portrait ones, rotation applied


def test_captions_and_tags_match_the_dataset(dataset) -> None:
    stats = dataset_statistics(dataset)
    legacy = dataset.stats()
    assert stats.captions.captioned == legacy.images_with_captions == 4
    assert stats.captions.mean_chars == pytest.approx(legacy.avg_caption_length)
    assert stats.captions.mean_words == pytest.approx(legacy.avg_caption_words)
    assert stats.captions.max_chars == len("fox, snow, forest")
    assert stats.captions.mean_tokens is None and stats.captions.tokenizer is None
    assert stats.tag_frequency == dataset.tag_frequency()
    assert stats.tag_frequency["10_fox"] == {"fox": 3, "snow": 1, "forest": 1, "Snow": 1}
    assert stats.tag_frequency["cats"] == {"cat": 1, "sofa": 2}
    assert stats.top_tags[0] == ("fox", 3)


def test_token_counts_use_the_given_counter(dataset) -> None:
    words = caption_stats(
        dataset, lambda text: len(text.split()), token_limit=2, tokenizer_name="words"
    )
    assert words.tokenizer == "words" and words.token_limit == 2
    assert words.max_tokens == 3 and words.mean_tokens == pytest.approx((3 + 2 + 1 + 3) / 4)
    assert words.over_limit == ("10_fox/wide.jpg", "cats/big.png")


def test_header_cache_is_used_and_filled(dataset) -> None:
    cache: dict[Path, object] = {}
    first = dataset_statistics(dataset, headers=cache)  # type: ignore[arg-type]
    assert len(cache) == 6
    for path in list(cache):
        path.unlink()  # nothing left to read: the cache has to answer
    again = dataset_statistics(dataset, headers=cache)  # type: ignore[arg-type]
    assert again.to_dict() == first.to_dict()


def test_stop_returns_what_was_read(dataset) -> None:
    calls = iter(range(100))
    stats = dataset_statistics(dataset, should_stop=lambda: next(calls) >= 2)
    assert stats.cancelled and stats.readable_images + len(stats.unreadable) == 2


def test_to_dict_is_json_and_the_report_reads_well(dataset) -> None:
    stats = dataset_statistics(
        dataset,
        config=LoraConfig(resolution=512),
        count_tokens=lambda text: len(text.split(",")),
        token_limit=2,
        tokenizer_name="commas",
    )
    data = json.loads(json.dumps(stats.to_dict()))
    assert data["aspect_histogram"]["2:3"] == 2
    assert data["captions"]["over_limit"] == ["10_fox/wide.jpg", "cats/big.png"]
    text = "\n".join(stats_report(stats))
    assert "aspect ratio:" in text and "16:9" in text
    assert "caption tokens:" in text and "(commas)" in text
    assert "2 captions exceed 2 tokens" in text
    assert "cats/broken.png" in text
    assert "1 images are smaller than their bucket" in text


def test_dataset_statistics_method_is_the_same_as_the_function(tmp_path) -> None:
    from lora_studio.core.dataset import Dataset
    from lora_studio.core.stats import dataset_statistics

    folder = tmp_path / "few"
    folder.mkdir()
    from PIL import Image

    for i, size in enumerate([(64, 32), (32, 64), (48, 48)]):
        Image.new("RGB", size, (i * 50, 0, 0)).save(folder / f"{i}.png")
        (folder / f"{i}.txt").write_text(f"tag {i}, shared", encoding="utf-8")
    dataset = Dataset.from_directory(folder)
    assert dataset.statistics().to_dict() == dataset_statistics(dataset).to_dict()
