from __future__ import annotations

import keyring
import pytest
from keyring.backend import KeyringBackend
from keyring.backends.fail import Keyring as NoKeyring
from keyring.errors import PasswordDeleteError

from lora_studio.core.secrets import (
    HUGGINGFACE,
    KEYRING_SERVICE,
    SecretError,
    delete_token,
    get_token,
    redact,
    save_token,
)


class MemoryKeyring(KeyringBackend):
    """A real keyring backend that keeps passwords in memory (tests have no OS keyring)."""

    priority = 1

    def __init__(self) -> None:
        super().__init__()
        self.store: dict[tuple[str, str], str] = {}

    def get_password(self, service: str, username: str) -> str | None:
        return self.store.get((service, username))

    def set_password(self, service: str, username: str, password: str) -> None:
        self.store[(service, username)] = password

    def delete_password(self, service: str, username: str) -> None:
        if (service, username) not in self.store:
            raise PasswordDeleteError("not found")
        del self.store[(service, username)]


@pytest.fixture
def memory_keyring():
    previous = keyring.get_keyring()
    backend = MemoryKeyring()
    keyring.set_keyring(backend)
    yield backend
    keyring.set_keyring(previous)


def test_explicit_then_environment_then_keyring(memory_keyring, monkeypatch) -> None:
    monkeypatch.delenv("HF_TOKEN", raising=False)
    assert get_token(HUGGINGFACE) is None
    save_token(HUGGINGFACE, " hf_from_keyring ")
    assert memory_keyring.store[(KEYRING_SERVICE, "huggingface")] == "hf_from_keyring"
    assert get_token(HUGGINGFACE) == "hf_from_keyring"
    monkeypatch.setenv("HF_TOKEN", "hf_from_env")
    assert get_token(HUGGINGFACE) == "hf_from_env"
    assert get_token(HUGGINGFACE, "hf_explicit") == "hf_explicit"
    delete_token(HUGGINGFACE)
    delete_token(HUGGINGFACE)  # twice is fine
    monkeypatch.delenv("HF_TOKEN")
    assert get_token(HUGGINGFACE) is None


def test_without_a_keyring_saving_names_the_environment_variable(monkeypatch) -> None:
    previous = keyring.get_keyring()
    keyring.set_keyring(NoKeyring())
    try:
        monkeypatch.delenv("HF_TOKEN", raising=False)
        assert get_token(HUGGINGFACE) is None
        with pytest.raises(SecretError, match="set the HF_TOKEN environment variable"):
            save_token(HUGGINGFACE, "hf_x")
    finally:
        keyring.set_keyring(previous)


def test_redact_hides_every_secret() -> None:
    assert redact("Bearer hf_abc failed for hf_abc", "hf_abc", None) == "Bearer *** failed for ***"
