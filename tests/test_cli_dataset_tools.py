"""``lora-studio dataset validate`` and ``lora-studio dataset export``, in-process."""

from __future__ import annotations

import json
import shutil

import pytest
from image_factory import picture, write_broken
from PIL import Image

from lora_studio.cli import main
from lora_studio.commands import DATASET_COMMANDS


def test_both_commands_are_registered() -> None:
    assert {"dataset_validate", "dataset_export"} <= set(DATASET_COMMANDS)


def test_validate_a_clean_dataset_exits_0_with_warnings_grouped(sample_dataset, capsys) -> None:
    assert main(["dataset", "validate", str(sample_dataset)]) == 0
    out, err = capsys.readouterr()
    assert err == ""
    assert "Warnings: 2 in 2 file(s)" in out
    assert "papercut_11.png: No caption" in out and "[missing_caption]" in out
    assert "Notes: 12 (converted correctly, not problems)" in out
    assert "palette_converted: 12 file(s)" in out
    assert "Errors" not in out
    assert out.rstrip().splitlines()[-1] == "12 files checked: 0 errors, 2 warnings, 12 notes"


def test_validate_with_errors_exits_1_with_one_line_on_stderr(sample_dataset, capsys) -> None:
    write_broken(sample_dataset, sample_dataset / "papercut_01.png")
    assert main(["dataset", "validate", str(sample_dataset)]) == 1
    out, err = capsys.readouterr()
    assert "Errors: 3 in 3 file(s)" in out
    assert "empty.png: The file is empty (0 bytes). [zero_byte]" in out
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("lora-studio: error: 3 file(s)")


def test_validate_json(sample_dataset, capsys) -> None:
    (sample_dataset / "zero.png").write_bytes(b"")
    assert main(["dataset", "validate", str(sample_dataset), "--json", "--family", "sdxl"]) == 1
    out, _ = capsys.readouterr()
    data = json.loads(out)
    assert data["family"] == "sdxl" and data["min_side"] == 768
    assert len(data["files"]) == 13 == data["summary"]["files"]
    by_path = {entry["path"]: entry for entry in data["files"]}
    assert by_path["zero.png"]["code"] == "zero_byte"
    assert by_path["papercut_01.png"]["code"] == "too_small"  # 512 px < SDXL's 768


def test_validate_options(tmp_path, capsys) -> None:
    folder = tmp_path / "set"
    folder.mkdir()
    picture(100, 100, 1).save(folder / "a.png")
    (folder / "a.caption").write_text("a caption", "utf-8")
    picture(120, 100, 2).save(folder / "big.png")
    (folder / "big.caption").write_text("another", "utf-8")
    code = main(
        [
            "dataset",
            "validate",
            str(folder),
            "--min-side",
            "64",
            "--caption-extension",
            "caption",
            "--max-pixels",
            "11000",
            "--json",
        ]
    )
    data = json.loads(capsys.readouterr().out)
    assert code == 1
    by_path = {entry["path"]: entry for entry in data["files"]}
    assert by_path["a.png"]["issues"] == []
    assert by_path["big.png"]["code"] == "too_many_pixels"
    assert Image.MAX_IMAGE_PIXELS and Image.MAX_IMAGE_PIXELS > 11000, "the limit is restored"
    assert main(["dataset", "validate", str(folder), "--min-side", "0"]) == 1
    assert "--min-side must be at least 1" in capsys.readouterr().err


def test_validate_a_missing_folder_is_one_line(tmp_path, capsys) -> None:
    assert main(["dataset", "validate", str(tmp_path / "nope")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "does not exist" in err[0]


def test_export_kohya_and_metadata(sample_dataset, tmp_path, capsys) -> None:
    out = tmp_path / "kohya"
    assert (
        main(
            [
                "dataset",
                "export",
                str(sample_dataset),
                "--to",
                "kohya",
                "--out",
                str(out),
                "--repeats",
                "5",
                "--concept",
                "papercut style",
            ]
        )
        == 0
    )
    assert "Wrote 12 image(s) and 10 caption file(s)" in capsys.readouterr().out
    assert len(list((out / "5_papercut style").glob("*.png"))) == 12
    # Again: every file is in the way, so nothing is written and the command says so.
    again = ["dataset", "export", str(sample_dataset), "--to", "kohya", "--out", str(out)]
    assert main([*again, "--repeats", "5", "--concept", "papercut style"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "already exist" in err[0]

    hf = tmp_path / "hf"
    assert main(["dataset", "export", str(out), "--to", "metadata", "--out", str(hf)]) == 0
    assert "copied 12 image(s)" in capsys.readouterr().out
    rows = [json.loads(line) for line in (hf / "metadata.jsonl").read_text("utf-8").splitlines()]
    assert len(rows) == 12 and sum(1 for r in rows if "text" in r) == 10
    assert rows[0]["file_name"].startswith("5_papercut style/")


def test_export_metadata_in_place_then_validate_reads_it(sample_dataset, capsys) -> None:
    for caption in sample_dataset.glob("*.txt"):
        shutil.move(caption, caption.with_suffix(".keep"))
    target = sample_dataset / "metadata.jsonl"
    assert (
        main(
            [
                "dataset",
                "export",
                str(sample_dataset),
                "--to",
                "metadata",
                "--out",
                str(target),
                "--caption-extension",
                ".keep",
            ]
        )
        == 0
    )
    capsys.readouterr()
    assert main(["dataset", "validate", str(target), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    missing = [e["path"] for e in data["files"] if e["code"] == "missing_caption"]
    assert missing == ["papercut_11.png", "papercut_12.png"]


@pytest.mark.parametrize("command", ["validate", "export"])
def test_help_mentions_the_options(command, capsys) -> None:
    with pytest.raises(SystemExit):
        main(["dataset", command, "--help"])
    out = capsys.readouterr().out
    assert "--caption-extension" in out
    assert ("--family" in out) if command == "validate" else ("--overwrite" in out)
