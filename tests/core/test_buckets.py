from __future__ import annotations

import math

import pytest

from lora_studio.core.buckets import Bucket, make_buckets, place, square_placement


def test_buckets_are_multiples_of_64_within_the_area_and_sides() -> None:
    buckets = make_buckets(512, min_side=256, max_side=1024)
    assert Bucket(512, 512) in buckets
    for b in buckets:
        assert b.width % 64 == 0 and b.height % 64 == 0
        assert 256 <= b.width <= 1024 and 256 <= b.height <= 1024
        assert b.width * b.height <= 512 * 512
        assert Bucket(b.height, b.width) in buckets  # both orientations
    assert Bucket(1024, 256) in buckets and Bucket(256, 1024) in buckets


@pytest.mark.parametrize(
    ("size", "bucket"),
    [
        ((1024, 1024), Bucket(512, 512)),
        ((1920, 1080), Bucket(640, 384)),  # 16:9 -> the closest aspect of area <= 512^2
        ((1080, 1920), Bucket(384, 640)),
        ((3000, 1000), Bucket(832, 256)),
        ((100, 100), Bucket(512, 512)),  # small images are enlarged by default
    ],
)
def test_images_go_to_the_closest_aspect(size, bucket) -> None:
    placement = place(*size, make_buckets(512, 256, 1024), 512)
    assert placement.bucket == bucket
    w, h = size
    assert abs(math.log(bucket.aspect) - math.log(w / h)) < 0.2


def test_placement_covers_the_bucket_and_crops_centred() -> None:
    p = place(1920, 1080, make_buckets(512), 512)
    assert p.scaled[0] >= p.bucket.width and p.scaled[1] >= p.bucket.height
    assert p.crop_left == (p.scaled[0] - p.bucket.width) // 2
    assert p.crop_top == (p.scaled[1] - p.bucket.height) // 2
    assert p.original == (1920, 1080)


def test_no_upscale_keeps_small_images_at_their_size() -> None:
    p = place(300, 200, make_buckets(512), 512, no_upscale=True)
    assert p.bucket == Bucket(256, 192)
    assert p.scaled[0] <= 300 and p.scaled[1] <= 200
    big = place(2000, 2000, make_buckets(512), 512, no_upscale=True)
    assert big.bucket == Bucket(512, 512)


def test_square_placement_is_the_classic_centre_crop() -> None:
    p = square_placement(800, 600, 512)
    assert p.bucket == Bucket(512, 512)
    assert p.scaled == (683, 512)
    assert (p.crop_left, p.crop_top) == (85, 0)


def test_a_resolution_below_the_minimum_side_still_trains_at_that_resolution() -> None:
    buckets = make_buckets(64, min_side=256, max_side=2048)
    assert Bucket(64, 64) in buckets
    assert max(b.width * b.height for b in buckets) <= 64 * 64
    assert place(512, 512, buckets, 64).bucket == Bucket(64, 64)
