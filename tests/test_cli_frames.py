"""``lora-studio dataset frames`` in-process, on a real video and timeline; one subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import opentimelineio as otio
import pytest
from frame_media import clip, timeline_of, write_edit, write_video

from lora_studio.cli import main


@pytest.fixture(scope="module")
def video(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_video(tmp_path_factory.mktemp("media") / "scenes.mp4")


def _frames(*args: object) -> list[str]:
    return ["dataset", "frames", *(str(a) for a in args)]


def test_every_seconds_prints_a_summary(video, tmp_path, capsys) -> None:
    out = tmp_path / "out"
    code = main(_frames(video, "--out", out, "--every-seconds", "0.5"))
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert captured.out.splitlines() == [
        f"Wrote 5 frames to {out} (from scenes.mp4).",
        "  skipped: 4 blurry, 7 near-duplicate",
    ]
    assert len(list(out.glob("scenes_*.png"))) == 5 and not list(out.glob("*.txt"))


def test_json_output_with_scenes_and_jpeg(video, tmp_path, capsys) -> None:
    code = main(_frames(video, "-o", tmp_path, "--scenes", "--format", "jpg", "--json"))
    data = json.loads(capsys.readouterr().out)
    assert code == 0
    assert [Path(f["path"]).name for f in data["frames"]] == [
        "scenes_00-00-01-000.jpg",
        "scenes_00-00-03-000.jpg",
    ]
    assert (data["skipped_blurry"], data["skipped_duplicates"], data["problems"]) == (1, 1, [])
    assert data["frames"][0]["time"] == 1.0 and data["frames"][0]["clip"] is None


def test_every_frames_with_filters_off_and_a_limit(video, tmp_path, capsys) -> None:
    code = main(
        _frames(
            video,
            "--out",
            tmp_path,
            "--every-frames",
            "10",
            "--blur-threshold",
            "0",
            "--dedupe-distance",
            "-1",
            "--max-frames",
            "6",
        )
    )
    out = capsys.readouterr().out
    assert code == 0
    assert "Wrote 6 frames" in out and "stopped at --max-frames 6" in out
    assert sorted(p.name for p in tmp_path.iterdir())[-1] == "scenes_00-00-05-000.png"


def test_timeline_reports_the_missing_clip_and_extracts_the_rest(video, tmp_path, capsys) -> None:
    edit = write_edit(tmp_path / "edit", video)
    code = main(_frames(edit, "--out", tmp_path / "out", "--every-seconds", "0.5"))
    captured = capsys.readouterr()
    assert code == 0, captured.err
    lines = captured.out.splitlines()
    assert lines[0] == f"Wrote 5 frames to {tmp_path / 'out'} (from cut.otio, 4 clips)."
    assert lines[1] == "  skipped: 3 near-duplicate"
    assert lines[2].startswith("  problem: Missing Shot: media file not found: ")
    assert lines[2].endswith("nope.mp4")
    assert (tmp_path / "out" / "Shot One_00-00-02-12.png").is_file()


def test_nothing_extractable_is_an_error(tmp_path, capsys) -> None:
    track = otio.schema.Track(kind=otio.schema.TrackKind.Video)
    track.append(clip("Gone", "gone.mov", 0, 1))
    path = tmp_path / "t.otio"
    otio.adapters.write_to_file(timeline_of(track), str(path))
    code = main(_frames(path, "--out", tmp_path / "out"))
    captured = capsys.readouterr()
    assert code == 1
    assert "  problem: Gone: media file not found" in captured.out
    assert captured.err.splitlines() == [
        "lora-studio: error: No frames could be extracted from t.otio: Gone: media file not "
        f"found: {tmp_path / 'gone.mov'}"
    ]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["missing.mp4"], "does not exist"),
        (["notes.mp4"], "notes.mp4 is not a video LoRA Studio can read"),
        (["cut.edl"], "No OpenTimelineIO adapter for .edl files is installed"),
        (["notes.mp4", "--every-seconds", "0"], "Every N seconds must be at least 0.001"),
        (["notes.mp4", "--dedupe-distance", "99"], "must be at most 64"),
    ],
)
def test_user_errors_are_one_line(tmp_path, capsys, args, message) -> None:
    (tmp_path / "notes.mp4").write_text("not a video", encoding="utf-8")
    (tmp_path / "cut.edl").write_text("TITLE: x\n", encoding="utf-8")
    code = main(_frames(tmp_path / args[0], "--out", tmp_path / "out", *args[1:]))
    err = capsys.readouterr().err.splitlines()
    assert code == 1 and len(err) == 1
    assert err[0].startswith("lora-studio: error: ") and message in err[0]


def test_sampling_modes_are_exclusive(video, tmp_path, capsys) -> None:
    with pytest.raises(SystemExit) as exc:
        main(_frames(video, "--out", tmp_path, "--scenes", "--every-seconds", "1"))
    assert exc.value.code == 2
    assert "not allowed with argument" in capsys.readouterr().err


def test_as_a_real_process(video, tmp_path) -> None:
    env = {**os.environ, "PYTHONIOENCODING": "utf-8"}
    done = subprocess.run(
        [sys.executable, "-m", "lora_studio", *_frames(video, "--out", tmp_path, "--json")],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    frames = json.loads(done.stdout)["frames"]
    assert [Path(f["path"]).name for f in frames] == [
        "scenes_00-00-00-000.png",
        "scenes_00-00-02-000.png",
        "scenes_00-00-03-000.png",
    ]


def test_ctrl_c_stops_after_the_current_frame(video, tmp_path, capsys, monkeypatch) -> None:
    import signal

    from lora_studio.commands import dataset_frames

    real = dataset_frames.extract_frames
    before = signal.getsignal(signal.SIGINT)

    def interrupted(*args, should_stop, **kwargs):
        assert not should_stop()
        signal.raise_signal(signal.SIGINT)  # the user presses Ctrl+C once
        assert should_stop()
        return real(*args, should_stop=should_stop, **kwargs)

    monkeypatch.setattr(dataset_frames, "extract_frames", interrupted)
    code = main(_frames(video, "--out", tmp_path))
    captured = capsys.readouterr()
    assert code == 130
    assert captured.err.splitlines() == [
        "lora-studio: error: interrupted; the frames written so far are kept"
    ]
    assert signal.getsignal(signal.SIGINT) is before
