"""Frames from real video files and OpenTimelineIO timelines made by the tests.

The video and the edit are described in ``tests/frame_media.py``; the counts below follow
from its four scenes (A sharp/static, B sharp/moving, C blurred, D = A again).
"""

from __future__ import annotations

import json
import tempfile
from fractions import Fraction
from pathlib import Path

import numpy as np
import opentimelineio as otio
import pytest
from frame_media import (
    FPS,
    HEIGHT,
    RED,
    TEAL,
    WIDTH,
    clip,
    picture_at,
    timeline_of,
    write_edit,
    write_video,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from lora_studio.core.errors import ConfigError, DatasetError
from lora_studio.core.frames import (
    FrameOptions,
    FrameProgress,
    FrameSampling,
    clock_label,
    extract_frames,
    is_timeline_file,
    laplacian_variance,
    read_timeline_clips,
    safe_stem,
    timecode,
)
from lora_studio.core.imaging import dhash, hamming

RAW = {"blur_threshold": 0.0, "dedupe_distance": -1}  # filters off


@pytest.fixture(scope="module")
def video(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_video(tmp_path_factory.mktemp("media") / "scenes.mp4")


@pytest.fixture
def edit(tmp_path: Path, video: Path) -> Path:
    return write_edit(tmp_path / "edit", video)


def _names(result) -> list[str]:
    return [f.path.name for f in result.frames]


def _times(result) -> list[float]:
    return [round(f.time, 3) for f in result.frames]


def _mean_colour(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"), dtype=np.float32).mean(axis=(0, 1))


# ---- sampling and filters on a video ------------------------------------------------------


def test_every_seconds_drops_blurry_frames_and_near_duplicates(video, tmp_path) -> None:
    out = tmp_path / "out"
    result = extract_frames(video, out, FrameOptions(every_seconds=0.5))

    # 16 samples: A 0.0 kept + 3 duplicates, B 4 kept, C 4 blurry, D 4 duplicates of A.
    assert _names(result) == [
        "scenes_00-00-00-000.png",
        "scenes_00-00-02-000.png",
        "scenes_00-00-02-500.png",
        "scenes_00-00-03-000.png",
        "scenes_00-00-03-500.png",
    ]
    assert (result.skipped_blurry, result.skipped_duplicates) == (4, 7)
    assert result.problems == [] and not result.cancelled and result.sources == 1
    assert sorted(p.name for p in out.iterdir()) == _names(result)  # no captions, no temp files
    for frame in result.frames:
        assert frame.source == video and frame.clip is None and frame.sharpness > 1000
        with Image.open(frame.path) as image:
            assert (image.format, image.mode, image.size) == ("PNG", "RGB", (WIDTH, HEIGHT))


def test_without_filters_every_sample_is_written_at_its_time(video, tmp_path) -> None:
    result = extract_frames(video, tmp_path, FrameOptions(every_seconds=0.5, **RAW))
    assert _times(result) == [k / 2 for k in range(16)]
    assert (result.skipped_blurry, result.skipped_duplicates) == (0, 0)
    blurred = result.frames[8]  # 4.0 s, scene C
    assert blurred.sharpness < 1.0
    assert laplacian_variance(np.asarray(Image.open(blurred.path).convert("L"))) < 5.0


def test_far_apart_samples_seek_and_land_on_the_exact_frame(video, tmp_path) -> None:
    # 5 s apart is past the seek distance; the keyframe before 5.0 s is at 2.5 s.
    result = extract_frames(video, tmp_path, FrameOptions(every_seconds=5, **RAW))
    assert _times(result) == [0.0, 5.0]
    assert _mean_colour(result.frames[1].path)[1] > 100  # scene C is green/magenta


def test_every_n_frames(video, tmp_path) -> None:
    result = extract_frames(
        video, tmp_path, FrameOptions(sampling=FrameSampling.FRAMES, every_frames=10)
    )
    assert _times(result) == [0.0, 2.0, 3.0]
    assert (result.skipped_blurry, result.skipped_duplicates) == (2, 3)


def test_scenes_give_the_middle_frame_of_each_scene(video, tmp_path) -> None:
    raw = extract_frames(video, tmp_path / "raw", FrameOptions(sampling="scenes", **RAW))
    assert _times(raw) == [1.0, 3.0, 5.0, 7.0]

    filtered = extract_frames(video, tmp_path / "filtered", FrameOptions(sampling="scenes"))
    assert _times(filtered) == [1.0, 3.0]  # C is blurry, D repeats A
    assert (filtered.skipped_blurry, filtered.skipped_duplicates) == (1, 1)


def test_scene_threshold_and_shortest_scene(video, tmp_path) -> None:
    one_scene = extract_frames(
        video, tmp_path / "a", FrameOptions(sampling="scenes", scene_threshold=1.0, **RAW)
    )
    assert _times(one_scene) == [4.0]
    # Cuts closer than 3 s to the previous one are ignored: only the cut at 4 s is kept.
    long_scenes = extract_frames(
        video, tmp_path / "b", FrameOptions(sampling="scenes", min_scene_seconds=3, **RAW)
    )
    assert _times(long_scenes) == [2.0, 6.0]


def test_jpeg_output_and_frame_limit(video, tmp_path) -> None:
    result = extract_frames(
        video, tmp_path, FrameOptions(every_seconds=0.5, image_format="jpg", max_frames=2)
    )
    assert _names(result) == ["scenes_00-00-00-000.jpg", "scenes_00-00-02-000.jpg"]
    assert result.limit_reached and "frame limit" in result.summary()
    with Image.open(result.frames[0].path) as image:
        assert image.format == "JPEG"
        scene_a = picture_at(0).astype(np.float32).mean(axis=(0, 1))
        assert abs(_mean_colour(result.frames[0].path) - scene_a).max() < 6


def test_nothing_is_overwritten_and_stale_captions_are_not_inherited(video, tmp_path) -> None:
    options = FrameOptions(every_seconds=2, **RAW)
    first = extract_frames(video, tmp_path, options)
    before = {f.path: f.path.read_bytes() for f in first.frames}
    (tmp_path / "scenes_00-00-02-000.txt").unlink(missing_ok=True)
    # A caption whose image was deleted must not become the caption of a new frame.
    first.frames[0].path.unlink()
    (tmp_path / "scenes_00-00-00-000.txt").write_text("an old caption", encoding="utf-8")
    second = extract_frames(video, tmp_path, options)

    assert _names(second) == [
        "scenes_00-00-00-000_2.png",
        "scenes_00-00-02-000_2.png",
        "scenes_00-00-04-000_2.png",
        "scenes_00-00-06-000_2.png",
    ]
    for path, data in list(before.items())[1:]:
        assert path.read_bytes() == data


def test_progress_reports_and_cooperative_cancel(video, tmp_path) -> None:
    seen: list[FrameProgress] = []
    extract_frames(video, tmp_path / "a", FrameOptions(**RAW), progress=seen.append)
    assert seen[0].fraction == 0.0 and seen[-1].message == "done" and seen[-1].overall == 1.0
    fractions = [p.fraction for p in seen if p.fraction is not None]
    assert fractions == sorted(fractions)
    assert seen[-1].frames_written == 8 and {p.source for p in seen} == {"scenes.mp4"}

    polls = 0

    def should_stop() -> bool:  # polled once per decoded frame: stop during the 25th
        nonlocal polls
        polls += 1
        return polls >= 25

    result = extract_frames(video, tmp_path / "b", FrameOptions(**RAW), should_stop=should_stop)
    assert result.cancelled and "cancelled" in result.summary()
    assert _times(result) == [0.0, 1.0, 2.0]
    assert sorted(p.name for p in (tmp_path / "b").iterdir()) == _names(result)


def test_frames_are_turned_upright_and_square_pixelled(tmp_path) -> None:
    def marked(_: int) -> np.ndarray:
        picture = np.full((HEIGHT, WIDTH, 3), 255, np.uint8)
        picture[:20, :20] = RED  # top-left corner, as stored
        picture[40:80, ::8] = 0  # detail, so the frame is not "blurry"
        return picture

    # A phone held upright: stored landscape, displayed rotated 90 degrees clockwise.
    rotated = write_video(tmp_path / "phone.mp4", frames=3, picture=marked, rotation=-90)
    frame = extract_frames(rotated, tmp_path / "a", FrameOptions(**RAW)).frames[0]
    image = np.asarray(Image.open(frame.path).convert("RGB"))
    assert image.shape[:2] == (WIDTH, HEIGHT)  # portrait
    assert image[5, -5, 0] > 200 and image[5, -5, 1] < 80  # the red corner is now top-right

    wide = write_video(tmp_path / "dv.mp4", frames=3, picture=marked, sample_aspect=Fraction(2))
    frame = extract_frames(wide, tmp_path / "b", FrameOptions(**RAW)).frames[0]
    assert Image.open(frame.path).size == (2 * WIDTH, HEIGHT)


# ---- timelines --------------------------------------------------------------------------


def test_timeline_clips_extract_only_their_used_range(edit, tmp_path) -> None:
    out = tmp_path / "frames"
    result = extract_frames(edit, out, FrameOptions(every_seconds=0.5, **RAW))
    media = (edit.parent / "media" / "clip.mp4").resolve()

    by_clip: dict[str, list[tuple[str, float, str | None]]] = {}
    for frame in result.frames:
        assert frame.source.resolve() == media
        by_clip.setdefault(str(frame.clip), []).append(
            (frame.path.name, round(frame.time, 3), frame.timecode)
        )
    assert by_clip == {
        "Shot One": [
            ("Shot One_00-00-02-00.png", 2.0, "00:00:02:00"),
            ("Shot One_00-00-02-12.png", 2.5, "00:00:02:12"),
            ("Shot One_00-00-03-00.png", 3.0, "00:00:03:00"),
            ("Shot One_00-00-03-12.png", 3.5, "00:00:03:12"),
        ],
        "Shot/Two: take?": [
            ("Shot_Two_ take__00-00-06-00.png", 6.0, "00:00:06:00"),
            ("Shot_Two_ take__00-00-06-12.png", 6.5, "00:00:06:12"),
        ],
        "Timecoded": [
            ("Timecoded_01-00-00-12.png", 0.5, "01:00:00:12"),
            ("Timecoded_01-00-01-00.png", 1.0, "01:00:01:00"),
        ],
    }
    # The pictures are those of the ranges: scene B for Shot One, A/D for the others.
    for frame in result.frames:
        colour = _mean_colour(frame.path)
        if frame.clip == "Shot One":
            assert abs(colour[2] - TEAL[2]) < 60 and colour[0] < 120
        else:
            assert colour[0] > 200

    # The missing file is reported for its clip; generated, disabled and audio clips are not.
    assert [(p.source, p.media) for p in result.problems] == [
        ("Missing Shot", edit.parent / "media" / "nope.mp4")
    ]
    assert "not found" in result.problems[0].message
    assert result.sources == 4 and sorted(p.name for p in out.iterdir()) == sorted(
        f.path.name for f in result.frames
    )


def test_near_duplicates_are_dropped_across_clips(edit, tmp_path) -> None:
    result = extract_frames(edit, tmp_path, FrameOptions(every_seconds=0.5))
    # Shot One: 4 distinct; Shot Two keeps 6.0 (scene D); Timecoded's scene A frames and
    # Shot Two's 6.5 repeat it.
    assert [(f.clip, round(f.time, 1)) for f in result.frames] == [
        ("Shot One", 2.0),
        ("Shot One", 2.5),
        ("Shot One", 3.0),
        ("Shot One", 3.5),
        ("Shot/Two: take?", 6.0),
    ]
    assert result.skipped_duplicates == 3


def test_scenes_inside_a_clip_range(edit, tmp_path) -> None:
    result = extract_frames(edit, tmp_path, FrameOptions(sampling="scenes", **RAW))
    # Each clip lies inside one scene, so each gives the middle of its used range.
    assert [(f.clip, round(f.time, 2)) for f in result.frames] == [
        ("Shot One", 3.0),
        ("Shot/Two: take?", 6.5),
        ("Timecoded", 1.0),
    ]


def test_read_timeline_clips_lists_what_the_timeline_says(edit) -> None:
    clips = read_timeline_clips(edit)
    assert [(c.name, c.track) for c in clips] == [
        ("Shot One", "V1"),
        ("Missing Shot", "V1"),
        ("Shot/Two: take?", "V1"),
        ("Timecoded", "V2"),
    ]
    shot_one, missing, _, timecoded = clips
    assert shot_one.media == edit.parent / "media" / "clip.mp4" and shot_one.problem is None
    assert (shot_one.source_start, shot_one.source_duration, shot_one.rate) == (2.0, 2.0, 24.0)
    assert missing.problem and "nope.mp4" in missing.problem
    assert timecoded.media_start == 3600.0


def test_edl_style_ranges_use_the_files_start_timecode(tmp_path) -> None:
    """No available range on the timeline (as EDLs give): the file's timecode places it."""
    media = tmp_path / "tc.mov"
    write_video(media)
    import av

    # Rewrite with a start timecode tag, as cameras do.
    tagged = tmp_path / "tagged.mov"
    with av.open(str(media)) as src, av.open(str(tagged), "w") as dst:
        stream = dst.add_stream_from_template(src.streams.video[0])
        stream.metadata["timecode"] = "10:00:00:00"
        for packet in src.demux(src.streams.video[0]):
            if packet.dts is None:
                continue
            packet.stream = stream
            dst.mux(packet)
    track = otio.schema.Track(kind=otio.schema.TrackKind.Video)
    track.append(clip("Cam A", "tagged.mov", 36002.0, 1.0))  # 10:00:02:00, 1 s
    track.append(clip("Outside", "tagged.mov", 50000.0, 1.0))
    timeline = timeline_of(track)
    path = tmp_path / "edl_like.otio"
    otio.adapters.write_to_file(timeline, str(path))

    result = extract_frames(path, tmp_path / "out", FrameOptions(every_seconds=0.5, **RAW))
    assert [(f.path.name, round(f.time, 2)) for f in result.frames] == [
        ("Cam A_10-00-02-00.png", 2.0),
        ("Cam A_10-00-02-12.png", 2.5),
    ]
    assert [p.source for p in result.problems] == ["Outside"]
    assert "outside its media file" in result.problems[0].message


def test_a_timeline_whose_every_clip_is_missing_reports_each(tmp_path) -> None:
    track = otio.schema.Track(kind=otio.schema.TrackKind.Video)
    track.append(clip("One", "gone.mp4", 0, 1))
    track.append(clip("Two", None, 0, 1))
    track.append(clip("Three", "https://example.com/a.mp4", 0, 1))
    (tmp_path / "junk.mp4").write_bytes(b"not a video at all")
    track.append(clip("Four", "junk.mp4", 0, 1))
    path = tmp_path / "t.otio"
    otio.adapters.write_to_file(timeline_of(track), str(path))
    result = extract_frames(path, tmp_path / "out", FrameOptions())
    assert result.frames == [] and [p.source for p in result.problems] == [
        "One",
        "Two",
        "Three",
        "Four",
    ]
    messages = [p.message for p in result.problems]
    assert "not found" in messages[0]
    assert "no media" in messages[1]
    assert "not a local file" in messages[2]
    assert "not a video" in messages[3]
    assert json.loads(json.dumps(result.to_dict()))["problems"][0]["source"] == "One"


# ---- errors -----------------------------------------------------------------------------


def test_clear_errors_for_bad_sources(tmp_path) -> None:
    with pytest.raises(DatasetError, match="does not exist"):
        extract_frames(tmp_path / "missing.mp4", tmp_path / "out")
    with pytest.raises(DatasetError, match="is a folder"):
        extract_frames(tmp_path, tmp_path / "out")
    text = tmp_path / "notes.mp4"
    text.write_text("hello", encoding="utf-8")
    with pytest.raises(DatasetError, match="notes.mp4 is not a video"):
        extract_frames(text, tmp_path / "out")
    broken = tmp_path / "broken.otio"
    broken.write_text("{ this is not json", encoding="utf-8")
    with pytest.raises(DatasetError, match="broken.otio is not a timeline"):
        extract_frames(broken, tmp_path / "out")
    edl = tmp_path / "cut.edl"
    edl.write_text("TITLE: cut\n", encoding="utf-8")
    with pytest.raises(DatasetError, match="otio-cmx3600-adapter"):
        extract_frames(edl, tmp_path / "out")
    lone_clip = tmp_path / "clip.otio"
    otio.adapters.write_to_file(clip("c", "x.mp4", 0, 1), str(lone_clip))
    with pytest.raises(DatasetError, match="holds no timeline"):
        extract_frames(lone_clip, tmp_path / "out")


def test_audio_only_file_is_not_a_video(tmp_path) -> None:
    import av

    path = tmp_path / "tone.wav"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("pcm_s16le", rate=8000)
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 800), np.int16), format="s16")
        frame.sample_rate = 8000
        for packet in [*stream.encode(frame), *stream.encode()]:
            container.mux(packet)
    with pytest.raises(DatasetError, match="no video stream"):
        extract_frames(path, tmp_path / "out")


def test_options_are_validated() -> None:
    with pytest.raises(ConfigError, match="Every N seconds must be at least"):
        FrameOptions(every_seconds=0).validate()
    with pytest.raises(ConfigError, match="Near-duplicate distance must be at most 64"):
        FrameOptions(dedupe_distance=65).validate()
    with pytest.raises(ConfigError):
        FrameOptions(sampling="sometimes")
    assert FrameOptions(sampling="frames", image_format="jpg").sampling is FrameSampling.FRAMES


# Written once per example under a fresh folder; no function-scoped fixtures in @given.
@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    data=st.binary(max_size=4096),
    suffix=st.sampled_from([".mp4", ".mkv", ".otio", ".otioz", ".bin", "", ".edl", ".avi"]),
)
def test_random_bytes_never_crash(data: bytes, suffix: str) -> None:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / f"input{suffix}"
        path.write_bytes(data)
        try:
            result = extract_frames(path, Path(folder) / "out", FrameOptions(max_frames=3))
        except DatasetError as exc:
            assert str(exc)
        else:
            assert len(result.frames) <= 3


# ---- building blocks --------------------------------------------------------------------


def test_sharpness_and_hash_measures() -> None:
    flat = np.full((64, 64), 128, np.uint8)
    checker = (np.indices((64, 64)).sum(axis=0) % 2 * 255).astype(np.uint8)
    assert laplacian_variance(flat) == 0.0 and laplacian_variance(checker) > 10_000
    assert laplacian_variance(np.zeros((2, 2), np.uint8)) == 0.0

    gradient = np.tile(np.linspace(0, 255, 200), (150, 1)).astype(np.uint8)
    gradient[40:90, 30:70] = 255
    image = Image.fromarray(gradient)
    smaller = image.resize((100, 75), Image.Resampling.BILINEAR)
    assert hamming(dhash(gradient), dhash(image)) == 0
    assert hamming(dhash(image), dhash(smaller)) <= 4
    assert hamming(dhash(image), dhash(image.transpose(Image.Transpose.FLIP_LEFT_RIGHT))) > 20


def test_names_are_safe_and_say_where_a_frame_came_from() -> None:
    assert safe_stem("Shot/Two: take?") == "Shot_Two_ take_"
    assert safe_stem("  ..hidden.  ") == "hidden"
    assert safe_stem("CON") == "_CON" and safe_stem("nul.txt") == "_nul.txt"
    assert safe_stem("Café 東京") == "Café 東京"
    assert safe_stem("...", fallback="clip") == "clip"
    assert len(safe_stem("x" * 500)) == 80
    assert clock_label(3723.5) == "01-02-03-500" and clock_label(0) == "00-00-00-000"
    assert timecode(2.5, 24) == "00:00:02:12"
    assert timecode(3600.5, 25) == "01:00:00:12"
    assert timecode(2.5, 10) == "00:00:02.500"  # no SMPTE timecode at 10 fps


def test_timeline_detection_by_extension() -> None:
    assert is_timeline_file("cut.otio") and is_timeline_file("CUT.EDL")
    assert is_timeline_file("cut.fcpxml") and not is_timeline_file("clip.mp4")


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("media/a b.mp4", "edit/media/a b.mp4"),
        ("file:///abs/a%20b.mp4", "/abs/a b.mp4"),
        ("file://localhost/abs/x.mov", "/abs/x.mov"),
        ("/abs/y.mov", "/abs/y.mov"),
    ],
)
def test_media_urls_resolve_against_the_timeline_folder(url, expected, tmp_path) -> None:
    from lora_studio.core.frames import _path_from_url

    path, problem = _path_from_url(url, tmp_path / "edit")
    assert problem is None
    assert path == (tmp_path / expected if not expected.startswith("/") else Path(expected))


def test_unreachable_media_urls_are_problems(tmp_path) -> None:
    from lora_studio.core.frames import _path_from_url

    assert _path_from_url("https://cdn.example/a.mp4", tmp_path)[0] is None
    assert "another machine" in str(_path_from_url("file://server/share/a.mp4", tmp_path)[1])


def test_frame_rate_of_the_test_video_is_what_the_counts_assume(video) -> None:
    import av

    with av.open(str(video)) as container:
        assert container.streams.video[0].average_rate == FPS
