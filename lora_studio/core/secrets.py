"""API tokens (Hugging Face, Replicate, OpenAI-compatible servers): the OS keyring, never a
plain file, never a log line.

A token is looked up in this order: given explicitly, the service's environment variable
(``HF_TOKEN``, ``REPLICATE_API_TOKEN``...), then the OS keyring (service ``lora-studio``,
user name = the service key). On a machine without a keyring backend (a headless Linux
box) saving fails with a message that says so, and the environment variable still works.
"""

from __future__ import annotations

import contextlib
import logging
import os
from dataclasses import dataclass

from lora_studio.core.errors import LoraStudioError

log = logging.getLogger(__name__)

KEYRING_SERVICE = "lora-studio"


class SecretError(LoraStudioError):
    """A token could not be stored or read."""


@dataclass(frozen=True)
class TokenSource:
    """Where a service's token comes from."""

    key: str  # the keyring user name, e.g. "huggingface"
    env_var: str  # e.g. "HF_TOKEN"
    label: str  # for messages, e.g. "Hugging Face"


HUGGINGFACE = TokenSource("huggingface", "HF_TOKEN", "Hugging Face")
REPLICATE = TokenSource("replicate", "REPLICATE_API_TOKEN", "Replicate")
OPENAI = TokenSource("openai", "OPENAI_API_KEY", "OpenAI-compatible server")
#: Optional: a ComfyUI behind an authenticating proxy (sent as ``Authorization: Bearer``).
COMFYUI = TokenSource("comfyui", "COMFYUI_API_TOKEN", "ComfyUI server")


def get_token(source: TokenSource, explicit: str | None = None) -> str | None:
    """The token for ``source``, or ``None`` when there is none anywhere."""
    if explicit:
        return explicit.strip()
    from_env = os.environ.get(source.env_var, "").strip()
    if from_env:
        return from_env
    try:
        import keyring
        from keyring.errors import KeyringError

        try:
            value = keyring.get_password(KEYRING_SERVICE, source.key)
        except KeyringError as exc:
            log.info("No keyring available for the %s token: %s", source.label, exc)
            return None
    except ImportError:
        return None
    return value.strip() if value else None


def save_token(source: TokenSource, token: str) -> None:
    """Store ``token`` in the OS keyring.

    Raises:
        SecretError: there is no usable keyring; the message names the environment
            variable to use instead.
    """
    try:
        import keyring
        from keyring.errors import KeyringError, NoKeyringError
    except ImportError:
        raise SecretError(_no_keyring(source)) from None
    try:
        keyring.set_password(KEYRING_SERVICE, source.key, token.strip())
    except NoKeyringError:
        raise SecretError(_no_keyring(source)) from None
    except KeyringError as exc:
        raise SecretError(f"The {source.label} token could not be saved: {exc}") from None


def delete_token(source: TokenSource) -> None:
    """Forget the keyring's token for ``source`` (no error when there is none)."""
    try:
        import keyring
        from keyring.errors import KeyringError, PasswordDeleteError
    except ImportError:
        return
    with contextlib.suppress(PasswordDeleteError, KeyringError):
        keyring.delete_password(KEYRING_SERVICE, source.key)


def redact(text: str, *secrets: str | None) -> str:
    """``text`` with every given secret replaced by ``***`` (for errors and logs)."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    return text


def _no_keyring(source: TokenSource) -> str:
    return (
        f"This system has no keyring to keep the {source.label} token in; set the "
        f"{source.env_var} environment variable instead."
    )
