"""Known fake tokens go through every room that uses one — a Replicate training (good and
refused token), a ComfyUI server behind a token, captioning with an OpenAI-compatible key —
and then every file the app wrote (history, config TOML, manifests, outputs, logs) and
everything it printed or logged is searched for them."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(TESTS / "backends"), str(TESTS / "captioning")]

from caption_servers import LoopbackServer, openai_chat  # noqa: E402
from comfyui_server import FakeComfyUI  # noqa: E402
from replicate_server import ACCOUNT, ReplicateStandIn  # noqa: E402
from replicate_server import TOKEN as REPLICATE_TOKEN  # noqa: E402
from test_cli_remote import LoopThread  # noqa: E402

from lora_studio.cli import main  # noqa: E402

WRONG_REPLICATE = "r8_WrongTokenThatMustNeverShow0001"
OPENAI_KEY = "sk-leaktest-0123456789abcdefSECRET"
COMFY_TOKEN = "comfy-leaktest-token-SECRET-42"


def _everything_written(*roots: Path) -> dict[Path, bytes]:
    files = {}
    for root in roots:
        for path in root.rglob("*"):
            if path.is_file() and not path.is_symlink():
                files[path] = path.read_bytes()
    return files


def test_no_token_reaches_a_file_a_log_or_the_terminal(
    small_dataset: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    import keyring

    monkeypatch.setattr(keyring, "get_password", lambda *_: None)
    caplog.set_level(logging.DEBUG)  # every log line of every library, at its most verbose
    home = Path(str(tmp_path / "home"))
    out = tmp_path / "out"
    printed: list[str] = []
    loop = LoopThread()
    replicate = loop.run(lambda: ReplicateStandIn(steps_per_poll=8).start())
    comfy = FakeComfyUI(tmp_path / "comfy", generation="new", step_delay=0.002)
    comfy.token = COMFY_TOKEN
    loop.run(comfy.start)
    chat = LoopbackServer(openai_chat(api_key=OPENAI_KEY)).start()
    try:
        replicate_args = [
            "train",
            str(small_dataset),
            "--backend",
            "replicate",
            "--backend-url",
            replicate.api_url,
            "--destination",
            f"{ACCOUNT}/leaktest",
            "--max-steps",
            "4",
            "--poll-interval",
            "0.01",
            "--output",
            str(out),
            "--save-config",
            str(tmp_path / "saved.toml"),
        ]
        monkeypatch.setenv("REPLICATE_API_TOKEN", REPLICATE_TOKEN)
        assert main(replicate_args) == 0
        monkeypatch.setenv("REPLICATE_API_TOKEN", WRONG_REPLICATE)
        assert main(replicate_args) == 1  # refused: the message must not echo it

        monkeypatch.setenv("COMFYUI_API_TOKEN", COMFY_TOKEN)
        comfy_args = ["train", str(small_dataset), "--backend", "comfyui"]
        comfy_args += ["--backend-url", comfy.url, "--max-steps", "3", "--rank", "4"]
        comfy_args += ["--checkpoint", "v1-5-pruned-emaonly.safetensors"]
        assert main([*comfy_args, "--poll-interval", "0.05", "--output", str(out)]) == 0

        monkeypatch.setenv("OPENAI_API_KEY", OPENAI_KEY)
        caption = ["caption", str(small_dataset), "--provider", "openai", "--mode", "overwrite"]
        assert main([*caption, "--url", chat.url + "/v1", "--model", "llava"]) == 0
        assert main(["caption", "review", str(small_dataset), "--accept", "all"]) == 0
        printed.append(capsys.readouterr().out)
        assert main(["jobs", "list", "--json"]) == 0
        listing = capsys.readouterr().out
        printed.append(listing)
        jobs = json.loads(listing)
        assert len(jobs) == 2  # the refused token never got as far as a job
        for job in jobs:
            assert main(["jobs", "show", job["id"], "--json", "--log", "500"]) == 0
    finally:
        chat.stop()
        loop.run(comfy.stop)
        loop.run(replicate.close)
        loop.close()
    captured = capsys.readouterr()
    printed += [captured.out, captured.err, caplog.text]

    # the tokens were really used (so not finding them below means something)
    assert any(auth == f"Bearer {REPLICATE_TOKEN}" for *_, auth in replicate.requests)
    assert any(auth == f"Bearer {WRONG_REPLICATE}" for *_, auth in replicate.requests)
    assert any(r.headers.get("authorization") == f"Bearer {OPENAI_KEY}" for r in chat.requests)

    written = _everything_written(home, out, small_dataset, tmp_path / "saved.toml")
    assert any(p.name.endswith(".sqlite3") for p in written)  # the history was searched
    assert any(p.name == "dataset.json" for p in written)
    for token in (REPLICATE_TOKEN, WRONG_REPLICATE, OPENAI_KEY, COMFY_TOKEN):
        for path, data in written.items():
            assert token.encode() not in data, f"{token[:6]}... leaked into {path}"
        for text in printed:
            assert token not in text, f"{token[:6]}... was printed or logged"
