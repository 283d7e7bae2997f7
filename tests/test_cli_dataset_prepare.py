"""``lora-studio dataset prepare``, in process."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from lora_studio.cli import main


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    root = tmp_path / "photos"
    (root / "3_dog").mkdir(parents=True)
    Image.new("RGB", (400, 200), (200, 30, 30)).save(root / "3_dog" / "wide.jpg")
    (root / "3_dog" / "wide.txt").write_text("dog, running", encoding="utf-8")
    Image.new("RGBA", (150, 300), (0, 0, 0, 0)).save(root / "tall.png")
    (root / "broken.png").write_bytes(b"not an image")
    return root


def test_prepare_then_again_with_json(folder, tmp_path, capsys) -> None:
    out = tmp_path / "prepared"
    args = ["dataset", "prepare", str(folder), "--out", str(out), "--resolution", "128"]
    assert main([*args, "--buckets", "--mode", "pad", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert (data["prepared"], data["unchanged"], data["failed"]) == (2, 0, 1)
    assert data["options"]["mode"] == "pad" and data["options"]["buckets"] is True
    by_source = {f["source"]: f for f in data["files"]}
    assert by_source["broken.png"]["status"] == "failed"
    assert Image.open(out / "3_dog" / "wide.png").size == tuple(
        by_source["3_dog/wide.jpg"]["geometry"]["target"]
    )
    assert (out / "3_dog" / "wide.txt").read_text("utf-8") == "dog, running\n"

    assert main([*args, "--buckets", "--mode", "pad"]) == 0
    captured = capsys.readouterr()
    assert captured.out.startswith("0 prepared, 2 unchanged, 1 failed")
    assert "skipped broken.png" in captured.err


def test_preview_prints_buckets_and_writes_nothing(folder, tmp_path, capsys) -> None:
    before = sorted(tmp_path.rglob("*"))
    code = main(
        ["dataset", "prepare", str(folder), "--resolution", "512", "--buckets", "--preview"]
    )
    assert code == 0
    out = capsys.readouterr().out
    assert "3_dog/wide.jpg -> 3_dog/wide.png  400x200 -> 704x320" in out
    assert "broken.png: not usable" in out
    assert out.strip().splitlines()[-1].startswith("buckets: ")
    assert sorted(tmp_path.rglob("*")) == before
    assert (
        main(["dataset", "prepare", str(folder), "--resolution", "512", "--preview", "--json"]) == 0
    )
    data = json.loads(capsys.readouterr().out)
    assert data["buckets"] == [{"size": "512x512", "count": 2}]


def test_usage_errors(folder, tmp_path, capsys) -> None:
    assert main(["dataset", "prepare", str(folder), "--resolution", "128"]) == 2
    assert "--out is required" in capsys.readouterr().err
    assert (
        main(["dataset", "prepare", str(folder), "--out", str(folder / "x"), "--resolution", "128"])
        == 1
    )
    assert "inside the dataset" in capsys.readouterr().err
    code = main(
        [
            "dataset",
            "prepare",
            str(folder),
            "--out",
            str(tmp_path / "o"),
            "--resolution",
            "64",
            "--mode",
            "pad",
            "--pad-color",
            "not-a-colour",
        ]
    )
    assert code == 1 and "Unknown colour" in capsys.readouterr().err
