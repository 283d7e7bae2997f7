"""``lora-studio caption``: proposals without --yes, files with --yes, review, exit codes,
Ctrl+C, and the tiny local model end to end."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from caption_servers import Reply, closed_port, ollama_native, write_images

from lora_studio.cli import main


def _manifest(folder: Path) -> dict:
    return json.loads((folder / "dataset.json").read_text(encoding="utf-8"))


def test_without_yes_captions_become_proposals(serve, colour_dataset: Path, capsys) -> None:
    server = serve(ollama_native(text="arafed {colour} square"))
    code = main(
        [
            "caption",
            str(colour_dataset),
            "--provider",
            "ollama",
            "--url",
            server.url,
            "--trigger",
            "sks",
        ]
    )
    out, err = capsys.readouterr()
    assert code == 0, err
    proposals = _manifest(colour_dataset)["proposals"]
    assert {k: v["text"] for k, v in proposals.items()} == {
        "red.png": "sks, red square",
        "blue.png": "sks, blue square",
    }
    assert not (colour_dataset / "red.txt").exists()
    assert "Proposed 2 caption(s) with ollama (llava)" in err and "1 skipped (has a caption)" in err
    assert "lora-studio caption review" in err

    assert main(["caption", "review", str(colour_dataset)]) == 0
    listing = capsys.readouterr().out
    assert "red.png  [ready]  ollama / llava" in listing
    assert "{+sks, red square+}" in listing

    assert main(["caption", "review", str(colour_dataset), "--reject", "blue.png"]) == 0
    assert main(["caption", "review", str(colour_dataset), "--accept", "all"]) == 0
    err = capsys.readouterr().err
    assert "Accepted 1 proposal(s)" in err
    assert (colour_dataset / "red.txt").read_text(encoding="utf-8") == "sks, red square\n"
    assert not (colour_dataset / "blue.txt").exists()
    data = _manifest(colour_dataset)
    assert "proposals" not in data and data["provenance"]["red.png"]["model"] == "llava"


def test_with_yes_captions_are_written_with_provenance(serve, colour_dataset: Path, capsys) -> None:
    server = serve(ollama_native())
    code = main(
        [
            "caption",
            str(colour_dataset),
            "--provider",
            "ollama",
            "--url",
            server.url,
            "--model",
            "llava",
            "--mode",
            "overwrite",
            "--yes",
            "--json",
        ]
    )
    out, err = capsys.readouterr()
    assert code == 0, err
    report = json.loads(out)
    assert report["counts"]["captioned"] == 3 and report["state"] == "finished"
    assert sorted(report["written"]) == ["blue.png", "green.png", "red.png"]
    assert (colour_dataset / "green.txt").read_text(encoding="utf-8") == "a green square\n"
    provenance = _manifest(colour_dataset)["provenance"]
    assert provenance["green.png"]["previous"] == "my own green caption"


def test_a_review_conflict_needs_force(serve, colour_dataset: Path, capsys) -> None:
    server = serve(ollama_native())
    assert main(["caption", str(colour_dataset), "--provider", "ollama", "--url", server.url]) == 0
    (colour_dataset / "red.txt").write_text("typed meanwhile", encoding="utf-8")
    assert main(["caption", "review", str(colour_dataset)]) == 0
    assert "red.png  [conflict]" in capsys.readouterr().out
    assert main(["caption", "review", str(colour_dataset), "--accept", "red.png"]) == 1
    err = capsys.readouterr().err
    assert "--force" in err and err.rstrip().splitlines()[-1].startswith("lora-studio: error:")
    assert (colour_dataset / "red.txt").read_text(encoding="utf-8") == "typed meanwhile"
    assert main(["caption", "review", str(colour_dataset), "--accept", "red.png", "--force"]) == 0
    assert (colour_dataset / "red.txt").read_text(encoding="utf-8") == "a red square\n"


def test_failed_images_are_listed_and_the_exit_code_is_1(
    serve, colour_dataset: Path, capsys
) -> None:
    server = serve(ollama_native())
    server.script(Reply(200, "{not json"))
    code = main(
        [
            "caption",
            str(colour_dataset),
            "--provider",
            "ollama",
            "--url",
            server.url,
            "--retries",
            "0",
        ]
    )
    err = capsys.readouterr().err
    assert code == 1
    assert "failed  blue.png: Ollama at" in err and "not JSON" in err
    assert err.rstrip().splitlines()[-1] == (
        "lora-studio: error: 1 of 2 image(s) could not be captioned (listed above)"
    )
    assert set(_manifest(colour_dataset)["proposals"]) == {"red.png"}  # the other is kept


def test_an_unreachable_server_is_one_error_line(colour_dataset: Path, capsys) -> None:
    url = f"http://127.0.0.1:{closed_port()}"
    code = main(
        ["caption", str(colour_dataset), "--provider", "openai", "--url", url, "--retries", "0"]
    )
    err = capsys.readouterr().err
    assert code == 1 and "connection refused" in err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--provider", "blip", "--url", "http://x"], "--url is for remote captioners"),
        (["--provider", "ollama", "--device", "cuda"], "--device is for blip and blip2"),
        (["--provider", "ollama", "--concurrency", "0"], "--concurrency must be at least 1"),
        ([], "Choose a captioner with --provider"),
    ],
)
def test_bad_options_are_one_error_line(colour_dataset: Path, capsys, argv, message) -> None:
    assert main(["caption", str(colour_dataset), *argv]) == 1
    err = capsys.readouterr().err
    assert err.startswith("lora-studio: error:") and message in err


def test_the_tiny_local_model_end_to_end(tmp_path: Path, capsys) -> None:
    model = tmp_path / "tiny-blip"
    assert main(["caption", "make-tiny-model", str(model), "--kind", "blip"]) == 0
    assert Path(capsys.readouterr().out.strip()) == model
    assert (model / "config.json").is_file() and (model / "model.safetensors").is_file()
    assert main(["caption", "make-tiny-model", str(model)]) == 1  # not empty
    folder = write_images(tmp_path / "d", {"a.png": "red", "b.png": "blue"})
    code = main(
        [
            "caption",
            str(folder),
            "--provider",
            "blip",
            "--model",
            str(model),
            "--max-new-tokens",
            "5",
            "--trigger",
            "sks",
            "--yes",
        ]
    )
    assert code == 0, capsys.readouterr().err
    for name in ("a", "b"):
        text = (folder / f"{name}.txt").read_text(encoding="utf-8")
        assert text.startswith("sks, ") and len(text) > len("sks, \n")
    assert _manifest(folder)["provenance"]["a.png"]["provider"] == "blip"


def test_ctrl_c_keeps_the_proposals_made_so_far(serve, tmp_path: Path) -> None:
    folder = write_images(tmp_path / "d", {f"{n}.png": "red" for n in range(5)})
    server = serve(ollama_native())
    ok = {"model": "llava", "response": "a square", "done": True}
    server.script(Reply(200, ok), Reply(200, ok), Reply(hang=True), Reply(hang=True))
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "lora_studio",
            "caption",
            str(folder),
            "--provider",
            "ollama",
            "--url",
            server.url,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    deadline = time.monotonic() + 30
    while len(server.requests) < 3 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(server.requests) == 3, "the CLI did not reach the third image"
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=30)
    assert process.returncode == 130, err
    assert "2 caption(s) made so far are kept as proposals" in err
    assert sorted(_manifest(folder)["proposals"]) == ["0.png", "1.png"]
