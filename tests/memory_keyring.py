"""A real keyring backend that keeps passwords in a dict: the OS keyring's stand-in for
tests (this machine, like CI, has no Secret Service). The ``memory_keyring`` fixture in
tests/conftest.py installs it, with no token in the environment."""

from __future__ import annotations

from keyring.backend import KeyringBackend
from keyring.errors import PasswordDeleteError

#: every variable a token may come from, cleared while the memory keyring is in use
TOKEN_VARIABLES = (
    "HF_TOKEN",
    "HUGGING_FACE_HUB_TOKEN",
    "OPENAI_API_KEY",
    "REPLICATE_API_TOKEN",
    "COMFYUI_API_TOKEN",
)


class MemoryKeyring(KeyringBackend):
    """Passwords in :attr:`passwords`, keyed by ``(service, user name)``."""

    priority = 1  # type: ignore[assignment]

    def __init__(self) -> None:
        super().__init__()
        self.passwords: dict[tuple[str, str], str] = {}

    def get_password(self, service: str, username: str) -> str | None:
        return self.passwords.get((service, username))

    def set_password(self, service: str, username: str, password: str) -> None:
        self.passwords[(service, username)] = password

    def delete_password(self, service: str, username: str) -> None:
        if self.passwords.pop((service, username), None) is None:
            raise PasswordDeleteError("not stored")
