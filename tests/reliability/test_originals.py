"""The user's originals are never modified: every command that reads a dataset or a video
is run over one, and every original file's bytes (and modification time) are compared
before and after."""

from __future__ import annotations

import hashlib
import shutil
import sys
from pathlib import Path

from PIL import Image

TESTS = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(TESTS), str(TESTS / "captioning")]

from caption_servers import LoopbackServer, openai_chat  # noqa: E402
from frame_media import write_video  # noqa: E402

from lora_studio.cli import main  # noqa: E402


def _fingerprints(folder: Path) -> dict[str, tuple[str, int]]:
    return {
        str(p.relative_to(folder)): (
            hashlib.sha256(p.read_bytes()).hexdigest(),
            p.stat().st_mtime_ns,
        )
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def test_no_command_modifies_an_original(
    tiny_model: Path, small_dataset: Path, tmp_path: Path, capsys, monkeypatch
) -> None:
    # odd originals too: an EXIF-rotated JPEG, a palette PNG with transparency, a 16-bit PNG
    photo = Image.new("RGB", (96, 64), (200, 40, 40))
    exif = photo.getexif()
    exif[0x0112] = 6  # rotate 90° on display
    photo.save(small_dataset / "rotated.jpg", exif=exif)
    Image.new("P", (40, 40)).save(small_dataset / "palette.png", transparency=0)
    Image.new("I;16", (48, 48), 30000).save(small_dataset / "deep.png")
    video = write_video(tmp_path / "media" / "clip.mp4")
    images = {k for k in _fingerprints(small_dataset) if not k.endswith(".txt")}
    before = _fingerprints(small_dataset)
    video_before = _fingerprints(video.parent)

    out = tmp_path / "work"
    assert main(["dataset", "stats", str(small_dataset)]) == 0
    assert main(["dataset", "validate", str(small_dataset)]) in (0, 1)  # findings are fine
    prepare = ["dataset", "prepare", str(small_dataset), "--out", str(out / "prepared")]
    assert main([*prepare, "--resolution", "64"]) == 0
    export = ["dataset", "export", str(small_dataset), "--out", str(out / "export")]
    assert main([*export, "--to", "kohya"]) == 0
    assert main(["dataset", "frames", str(video), "--out", str(out / "frames"), "--scenes"]) == 0
    train = ["train", str(small_dataset), "--preset", "fast", "--resolution", "64"]
    assert main([*train, "--max-steps", "2", "--output", str(out / "lora")]) == 0

    assert _fingerprints(small_dataset) == before  # not one byte, not one mtime
    assert _fingerprints(video.parent) == video_before

    # captioning writes captions (that is its job) and never touches an image
    server = LoopbackServer(openai_chat()).start()
    try:
        caption = ["caption", str(small_dataset), "--provider", "openai", "--yes"]
        assert main([*caption, "--url", server.url + "/v1", "--model", "llava"]) == 0
    finally:
        server.stop()
    after = _fingerprints(small_dataset)
    for name in images:
        assert after[name] == before[name], name
    for name, fingerprint in before.items():  # fill mode: the captions you wrote stay
        assert after[name] == fingerprint, name
    assert {k for k in after if k.endswith(".txt")} > {k for k in before if k.endswith(".txt")}
    capsys.readouterr()
    shutil.rmtree(out)
