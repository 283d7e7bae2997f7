"""Tokens for the remote captioners, on top of :mod:`lora_studio.core.secrets`.

The storage is the project's: the OS keyring, service ``lora-studio``, user name
``huggingface`` for the Hugging Face Inference API and ``openai`` for OpenAI-compatible
servers (:data:`SOURCES`); never a plain file, never a log line. ``lora-studio caption
set-token`` stores one.

What this module adds is a lookup that says where the token came from and, when the
keyring could not be asked (no backend on a headless Linux, a locked or broken one),
why - so the CLI and the window can say it instead of failing later with a 401. Order,
first found wins (the same as :func:`lora_studio.core.secrets.get_token`, plus two):

1. the token passed explicitly;
2. the environment variable named with ``--token-env`` (an explicit choice);
3. the service's environment variable (``HF_TOKEN``, ``OPENAI_API_KEY``), then
   ``HUGGING_FACE_HUB_TOKEN`` (huggingface_hub's older name);
4. the OS keyring.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field

from lora_studio.captioning.base import CaptionerError, one_line
from lora_studio.core import secrets
from lora_studio.core.secrets import KEYRING_SERVICE, TokenSource

log = logging.getLogger(__name__)

#: the token source of each provider kind that sends one
SOURCES: dict[str, TokenSource] = {"hf-api": secrets.HUGGINGFACE, "openai": secrets.OPENAI}
#: more environment variables read after the source's own
EXTRA_ENV_VARS: dict[str, tuple[str, ...]] = {"hf-api": ("HUGGING_FACE_HUB_TOKEN",)}

__all__ = [
    "KEYRING_SERVICE",
    "SOURCES",
    "CredentialsError",
    "TokenLookup",
    "delete_token",
    "find_token",
    "store_token",
    "token_source",
]


class CredentialsError(CaptionerError):
    """A token could not be stored in the OS keyring."""


@dataclass(frozen=True)
class TokenLookup:
    """Where a token was found.

    Attributes:
        token: the token (``None``: none found). Not part of ``repr``.
        source: ``explicit``, ``env:NAME``, ``keyring``, ``file`` (the fallback file of
            :mod:`lora_studio.core.secrets`) or ``none``.
        notes: user-facing lines about what went wrong on the way (keyring unavailable...).
    """

    token: str | None = field(repr=False)
    source: str
    notes: tuple[str, ...] = ()


def token_source(kind: str) -> TokenSource:
    """The :class:`~lora_studio.core.secrets.TokenSource` of provider ``kind``.

    Raises:
        CredentialsError: the kind sends no token.
    """
    try:
        return SOURCES[kind]
    except KeyError:
        raise CredentialsError(f"The {kind} captioner uses no token.") from None


def find_token(
    kind: str,
    *,
    explicit: str | None = None,
    env_var: str | None = None,
    use_keyring: bool = True,
) -> TokenLookup:
    """Find the token for provider ``kind`` (see the module docstring for the order)."""
    if explicit and explicit.strip():
        return TokenLookup(explicit.strip(), "explicit")
    notes: list[str] = []
    if env_var:
        value = os.environ.get(env_var, "").strip()
        if value:
            return TokenLookup(value, f"env:{env_var}")
        notes.append(f"{env_var} is not set.")
    source = SOURCES.get(kind)
    names = ((source.env_var,) if source else ()) + EXTRA_ENV_VARS.get(kind, ())
    for name in names:
        value = os.environ.get(name, "").strip()
        if value:
            return TokenLookup(value, f"env:{name}", tuple(notes))
    if source is not None and use_keyring:
        token, problem = _keyring_get(source)
        if token:
            return TokenLookup(token, "keyring", tuple(notes))
        from_file = secrets.file_token(source)
        if from_file:
            return TokenLookup(from_file, "file", tuple(notes))
        if problem:
            notes.append(f"{problem} Set {source.env_var} in the environment instead.")
    return TokenLookup(None, "none", tuple(notes))


def store_token(kind: str, token: str) -> str | None:
    """Save ``token`` for provider ``kind`` in the OS keyring (or, on a system without one,
    the owner-only fallback file: the warning to show is returned).

    Raises:
        CredentialsError: an empty token, or no usable keyring (the message names the
            environment variable to use instead).
    """
    source = token_source(kind)
    if not token.strip():
        raise CredentialsError("The token is empty; nothing was stored.")
    try:
        return secrets.save_token(source, token)
    except secrets.SecretError as exc:
        raise CredentialsError(str(exc)) from None
    except Exception as exc:  # third-party backends raise their own types (dbus...)
        raise CredentialsError(
            f"The {source.label} token could not be saved in the OS keyring "
            f"({_reason(exc)}); set {source.env_var} in the environment instead."
        ) from None


def delete_token(kind: str) -> None:
    """Forget the keyring's token for provider ``kind`` (no error when there is none)."""
    secrets.delete_token(token_source(kind))


def _keyring_get(source: TokenSource) -> tuple[str | None, str | None]:
    """``(token, None)``; ``(None, None)`` when nothing is stored; ``(None, why)`` when
    the keyring cannot be asked."""
    try:
        import keyring

        value = keyring.get_password(KEYRING_SERVICE, source.key)
    except Exception as exc:  # NoKeyringError on a headless Linux; dbus errors; locked
        reason = _reason(exc)
        log.debug("OS keyring unavailable for the %s token: %s", source.label, reason)
        return None, f"The OS keyring is not available ({reason})."
    return ((value.strip() or None) if value else None), None


def _reason(exc: BaseException) -> str:
    try:
        import keyring.errors
    except ImportError:  # pragma: no cover - keyring is a dependency
        return "the keyring package is not installed"
    if isinstance(exc, keyring.errors.NoKeyringError):
        return (
            "no keyring backend; on Linux install and unlock a Secret Service such as "
            "GNOME Keyring or KWallet"
        )
    if isinstance(exc, keyring.errors.KeyringLocked):
        return "the keyring is locked"
    return one_line(str(exc), 120) or type(exc).__name__
