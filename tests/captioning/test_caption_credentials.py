"""Tokens: an in-memory keyring backend (a real keyring backend class), the "no backend"
fallback, environment variables, and the token never leaving the keyring in clear."""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator

import keyring
import keyring.backend
import keyring.backends.fail
import pytest
from caption_servers import HF_TOKEN, hf_inference
from memory_keyring import MemoryKeyring

from lora_studio.captioning.credentials import (
    delete_token,
    find_token,
    store_token,
)
from lora_studio.captioning.registry import create_provider
from lora_studio.cli import main
from lora_studio.core.secrets import fallback_file


@pytest.fixture
def no_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "OPENAI_API_KEY", "MY_TOKEN"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def no_keyring(no_env) -> Iterator[None]:
    previous = keyring.get_keyring()
    keyring.set_keyring(keyring.backends.fail.Keyring())
    yield
    keyring.set_keyring(previous)


def test_a_stored_token_is_found_in_the_keyring(memory_keyring: MemoryKeyring) -> None:
    store_token("hf-api", f"  {HF_TOKEN}\n")
    assert memory_keyring.passwords == {("lora-studio", "huggingface"): HF_TOKEN}
    lookup = find_token("hf-api")
    assert lookup.token == HF_TOKEN and lookup.source == "keyring" and not lookup.notes
    assert HF_TOKEN not in repr(lookup)
    store_token("openai", "sk-local")
    assert find_token("openai").token == "sk-local"
    delete_token("hf-api")
    assert find_token("hf-api").token is None
    delete_token("hf-api")  # nothing there: no error


def test_explicit_then_named_env_then_env_then_keyring(
    memory_keyring: MemoryKeyring, monkeypatch: pytest.MonkeyPatch
) -> None:
    store_token("hf-api", "from-keyring")
    monkeypatch.setenv("HUGGING_FACE_HUB_TOKEN", "from-old-env")
    assert find_token("hf-api").source == "env:HUGGING_FACE_HUB_TOKEN"
    monkeypatch.setenv("HF_TOKEN", "from-env")
    assert find_token("hf-api").token == "from-env"
    monkeypatch.setenv("MY_TOKEN", "from-my-var")
    assert find_token("hf-api", env_var="MY_TOKEN").token == "from-my-var"
    assert find_token("hf-api", explicit="given", env_var="MY_TOKEN").token == "given"


def test_without_a_keyring_backend_the_lookup_says_why_and_uses_the_env(
    no_keyring, monkeypatch: pytest.MonkeyPatch
) -> None:
    lookup = find_token("hf-api")
    assert lookup.token is None and lookup.source == "none"
    (note,) = lookup.notes
    assert "OS keyring is not available" in note and "no keyring backend" in note
    assert "HF_TOKEN" in note
    monkeypatch.setenv("HF_TOKEN", HF_TOKEN)
    assert find_token("hf-api").token == HF_TOKEN
    # saving falls back to the owner-only file, with a warning that says so
    warning = store_token("hf-api", "x" * 20)
    assert warning is not None and "no keyring" in warning and "readable only by you" in warning
    monkeypatch.delenv("HF_TOKEN")
    lookup = find_token("hf-api")
    assert (lookup.token, lookup.source) == ("x" * 20, "file")


def test_a_broken_keyring_is_a_note_not_a_crash(no_env) -> None:
    class Broken(MemoryKeyring):
        def get_password(self, service: str, username: str) -> str | None:
            raise RuntimeError("org.freedesktop.DBus.Error.ServiceUnknown")

    previous = keyring.get_keyring()
    keyring.set_keyring(Broken())
    try:
        lookup = find_token("openai")
    finally:
        keyring.set_keyring(previous)
    assert lookup.token is None and "DBus" in lookup.notes[0]


async def test_the_hf_provider_sends_the_keyring_token(
    memory_keyring: MemoryKeyring, serve, caplog
) -> None:
    caplog.set_level(logging.DEBUG)
    server = serve(hf_inference(token=HF_TOKEN))
    store_token("hf-api", HF_TOKEN)
    provider = create_provider("hf-api", url=server.url)
    from PIL import Image

    caption = await provider.caption(Image.new("RGB", (20, 20), (20, 200, 20)))
    await provider.aclose()
    assert caption.text == "arafed green square"
    assert server.requests[0].headers["authorization"] == f"Bearer {HF_TOKEN}"
    assert HF_TOKEN not in repr(provider) and HF_TOKEN not in caplog.text


def test_cli_set_token_reads_stdin_and_never_prints_it(
    memory_keyring: MemoryKeyring, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO(HF_TOKEN + "\n"))
    assert main(["caption", "set-token"]) == 0
    out, err = capsys.readouterr()
    assert "OS keyring" in out and HF_TOKEN not in out + err
    assert memory_keyring.passwords[("lora-studio", "huggingface")] == HF_TOKEN
    assert main(["caption", "set-token", "--delete"]) == 0
    assert memory_keyring.passwords == {}


def test_cli_set_token_without_a_keyring_warns_and_keeps_it_owner_only(
    no_keyring, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO("hf_secret_value_123\n"))
    assert main(["caption", "set-token"]) == 0
    out, err = capsys.readouterr()
    assert err.startswith("lora-studio: warning:") and err.count("\n") == 1
    assert "no keyring" in err and "hf_secret_value_123" not in out + err
    path = fallback_file()
    assert path.stat().st_mode & 0o777 == 0o600
    assert find_token("hf-api").token == "hf_secret_value_123"
    assert main(["caption", "set-token", "--delete"]) == 0
    assert not path.exists()
