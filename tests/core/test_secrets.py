from __future__ import annotations

import json

import keyring
import pytest
from keyring.backends.fail import Keyring as NoKeyring

from lora_studio.core.secrets import (
    HUGGINGFACE,
    KEYRING_SERVICE,
    SecretError,
    delete_token,
    fallback_file,
    get_token,
    redact,
    save_token,
)


def test_explicit_then_environment_then_keyring(memory_keyring, monkeypatch) -> None:
    monkeypatch.delenv("HF_TOKEN", raising=False)
    assert get_token(HUGGINGFACE) is None
    save_token(HUGGINGFACE, " hf_from_keyring ")
    assert memory_keyring.passwords[(KEYRING_SERVICE, "huggingface")] == "hf_from_keyring"
    assert get_token(HUGGINGFACE) == "hf_from_keyring"
    monkeypatch.setenv("HF_TOKEN", "hf_from_env")
    assert get_token(HUGGINGFACE) == "hf_from_env"
    assert get_token(HUGGINGFACE, "hf_explicit") == "hf_explicit"
    delete_token(HUGGINGFACE)
    delete_token(HUGGINGFACE)  # twice is fine
    monkeypatch.delenv("HF_TOKEN")
    assert get_token(HUGGINGFACE) is None


@pytest.fixture
def no_keyring():
    previous = keyring.get_keyring()
    keyring.set_keyring(NoKeyring())
    yield
    keyring.set_keyring(previous)


def test_without_a_keyring_the_token_goes_to_an_owner_only_file(no_keyring, monkeypatch) -> None:
    monkeypatch.delenv("HF_TOKEN", raising=False)
    assert get_token(HUGGINGFACE) is None
    warning = save_token(HUGGINGFACE, " hf_in_file ")
    path = fallback_file()
    assert warning is not None and str(path) in warning and "not encrypted" in warning
    assert path.stat().st_mode & 0o777 == 0o600
    assert json.loads(path.read_text(encoding="utf-8")) == {"huggingface": "hf_in_file"}
    assert get_token(HUGGINGFACE) == "hf_in_file"
    monkeypatch.setenv("HF_TOKEN", "hf_from_env")
    assert get_token(HUGGINGFACE) == "hf_from_env"  # the environment still wins
    monkeypatch.delenv("HF_TOKEN")
    # a file others can read is not trusted (as ssh does with keys)
    path.chmod(0o644)
    assert get_token(HUGGINGFACE) is None
    path.chmod(0o600)
    delete_token(HUGGINGFACE)
    assert not path.exists() and get_token(HUGGINGFACE) is None


def test_without_any_place_to_keep_it_saving_names_the_environment_variable(
    no_keyring, monkeypatch, tmp_path
) -> None:
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("x", encoding="utf-8")
    monkeypatch.setenv("LORA_STUDIO_HOME", str(blocker))  # config dir under a file
    with pytest.raises(SecretError, match="set the HF_TOKEN environment variable"):
        save_token(HUGGINGFACE, "hf_x")


def test_redact_hides_every_secret() -> None:
    assert redact("Bearer hf_abc failed for hf_abc", "hf_abc", None) == "Bearer *** failed for ***"


def test_the_redacting_filter_hides_headers_and_bearer_tokens(caplog) -> None:
    import logging

    from lora_studio.core.secrets import redacting_logger

    logger = redacting_logger("lora_studio.test.redact")
    with caplog.at_level(logging.DEBUG, logger="lora_studio.test.redact"):
        logger.debug("> Authorization: Bearer sk-abc123")
        logger.debug("headers %s", {"authorization": "Token r8_xyz", "accept": "json"})
        logger.debug("retrying with bearer hf_TOKEN.value-1 now")
        logger.debug("x-api-key=plainsecret; other=fine")
    text = caplog.text
    for secret in ("sk-abc123", "r8_xyz", "hf_TOKEN.value-1", "plainsecret"):
        assert secret not in text
    assert "other=fine" in text and "'accept': 'json'" in text
    assert len(redacting_logger("lora_studio.test.redact").filters) == 1
